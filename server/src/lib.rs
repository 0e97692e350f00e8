//! The registry of the p2p file sharing system ("DHT server"): it maps the
//! SHA-256 of a file name to the peers that share the file, keeps that map in
//! SQLite, and answers a one-line text protocol over TCP.
//!
//! # Layout
//! - [`store`]: the SQLite file: open, check, migrate, and every SQL statement.
//! - [`index`]: the in-memory copy of the registrations that answers SEARCH and FIND
//!   (`--memory-index`); [`names`] its word index, [`words`] FTS5's tokenizer ported.
//! - [`writer`]: the one thread that performs all writes, with group commit.
//! - [`connection`]: one socket's line framing, with the length limit and timeouts.
//! - [`command`]: applies a parsed request to the store and produces the reply.
//! - [`registry`]: `Registry::open`: the database, read pools and writer behind it.
//! - [`server`]: the listener, the worker pool, the connection limit, shutdown.
//! - [`fault`]: fault injection for tests (debug builds only).
//! - [`metrics`]: process-wide counters and histograms; [`web`] renders them at `/metrics`.
//! - [`web`]: `--http ADDR`: a read-only HTML page of the registry and `GET /metrics`.
//! - [`mdns`]: announcing the registry on the LAN by mDNS/DNS-SD (`--no-mdns` turns it off).
//!
//! The wire vocabulary (requests, replies, name rules, the client) lives in
//! the `p2p-proto` crate, shared with every other program.
//!
//! A request flows one way: socket → [`connection`] → `p2p_proto::protocol::parse_request`
//! → [`command`] → [`store`] (reads) or [`writer`] (writes) → reply.

pub mod command;
pub mod connection;
pub mod fault;
pub mod index;
pub mod mdns;
pub mod metrics;
pub mod names;
pub mod registry;
pub mod server;
pub mod store;
pub mod web;
pub mod words;
pub mod writer;
