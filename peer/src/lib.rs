//! A peer of the p2p file sharing system: it shares the regular files of one
//! folder over HTTP/1.1, registers them with the registry, and downloads
//! files from other peers with verification and resume.
//!
//! # Layout
//! - [`files`]: the shared folder: safe name → path resolution, listing, streaming SHA-256.
//! - [`hashcache`]: the persistent hash cache (a checksummed file in the state folder).
//! - [`watch`]: the watcher thread that keeps registrations in step with the shared folder.
//! - [`writing`]: which shared files are open for writing, from the folder's notifications.
//! - [`http`]: the file server other peers (and curl, browsers) download from.
//! - [`download`]: search, fetch into `.part` from several sources at once (or one after the
//!   other), verify, rename; resume; sources that fail or lie are left out.
//! - [`find`]: `FIND` by words over the registry, suggestions, hits for people (escaped) and JSON.
//! - [`batch`]: many files in one call: pipelined lookups over one connection, a bounded pool of fetches, a summary.
//! - [`pieces`]: fixed-size pieces and their hashes, the `/pieces` document (no sockets, no paths).
//! - [`progress`]: progress bars on a terminal, plain lines otherwise.
//! - [`menu`]: the interactive numbered menu of the original design.
//! - [`serve`]: `peer serve`: register everything, heartbeat, unregister on exit.
//! - [`registration`]: register, heartbeat (background thread), re-register, unregister.
//! - [`discovery`]: which registry: `--server`, `P2P_SERVER`, one found by mDNS, or 127.0.0.1:9000.
//! - [`ui`]: the control UI: a page and a JSON API on loopback to search, download, watch progress.
//! - [`dht`]: `--dht`: announcing the shared folder on the Mainline DHT, finding sources there (each confirmed by a `HEAD`).
//! - [`background`]: a named thread that runs until stopped (the heartbeat, the watcher).
//! - [`config`]: the plain configuration every mode takes (the binary builds it from its command line).
pub mod background;
pub mod batch;
pub mod config;
pub mod dht;
pub mod discovery;
pub mod download;
pub mod files;
pub mod find;
pub mod hashcache;
pub mod http;
pub mod menu;
pub mod pieces;
pub mod progress;
pub mod registration;
pub mod serve;
pub mod ui;
pub mod watch;
pub mod writing;
