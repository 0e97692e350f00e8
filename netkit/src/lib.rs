//! The blocking-server skeleton every listener of the system shares: the
//! registry's line protocol server and the peer's HTTP file server.
//!
//! - [`accept`]: the accept loop with back-off on failure, and the
//!   [`Waker`](accept::Waker) that gets a blocked `accept` out at shutdown.
//! - [`table`]: the connection table: admission under one lock with the
//!   fair-share policy (the address holding the most yields first, idle
//!   connections before busy ones), the [`Slot`](table::Slot) each admitted
//!   connection holds, and shutdown of every open connection.
//! - [`linger`]: closing gracefully, so unread request bytes do not make
//!   the kernel reset a connection before the client reads our answer.
//!
//! This crate knows sockets only: no protocol, no threads of its own, no
//! storage. What to answer a refused client and how to serve an admitted
//! one stay with each server.

pub mod accept;
pub mod linger;
pub mod table;

pub use accept::{accept_loop, Waker, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_START};
pub use linger::linger_close;
pub use table::{Admission, ConnTable, Policy, Slot};
