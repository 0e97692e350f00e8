//! The wire vocabulary of the p2p file sharing system, shared by the
//! registry (`dht-server`), the peer, the admin tool, the load generator and
//! the tests. It builds no database and opens no socket except in the
//! blocking [`client`].
//!
//! # Layout
//! - [`protocol`]: request and reply lines, the name rules, the filename hash. Pure, no I/O.
//! - [`hex`], [`decimal`]: the digest and number forms of every wire format. Pure.
//! - [`paths`]: the URL scheme of a peer's file server (`/files/`, `/pieces/`). Pure.
//! - [`pieces`]: fixed-size pieces and the `/pieces` document (format, parse with limits);
//!   hashing reads from any `Read`, no sockets, no paths.
//! - [`client`]: a blocking client of the registry protocol over one TCP connection.
//! - [`mdns`]: the DNS-SD service type and TXT keys a registry is announced under.
//! - [`units`]: sizes in human units (`1.5 MiB`), one function for every program.

pub mod client;
pub mod decimal;
pub mod hex;
pub mod mdns;
pub mod paths;
pub mod pieces;
pub mod protocol;
pub mod units;
