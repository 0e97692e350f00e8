//! The registry of the p2p file sharing system ("DHT server"): it maps the
//! SHA-256 of a file name to the peers that share the file, keeps that map in
//! SQLite, and answers a one-line text protocol over TCP.
//!
//! # Layout
//! - [`protocol`]: request and reply lines, the name rules, the filename hash. Pure, no I/O.
//! - [`client`]: a blocking client of the protocol, shared by the peer, the admin tool and tests.
//! - [`store`]: the SQLite file: open, check, migrate, and every SQL statement.
//! - [`writer`]: the one thread that performs all writes, with group commit.
//! - [`connection`]: one socket's line framing, with the length limit and timeouts.
//! - [`command`]: applies a parsed request to the store and produces the reply.
//! - [`server`]: the listener, the worker pool, the connection limit, shutdown.
//!
//! A request flows one way: socket → [`connection`] → [`protocol::parse_request`]
//! → [`command`] → [`store`] (reads) or [`writer`] (writes) → reply.

pub mod client;
pub mod command;
pub mod connection;
pub mod protocol;
pub mod server;
pub mod store;
pub mod writer;
