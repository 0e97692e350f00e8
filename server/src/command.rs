//! Applies one parsed request to the registry and produces its reply.
//!
//! Reads go to the [`Store`]'s pool, writes to the [`WriterHandle`] (which
//! answers only after the commit). The caller's identity is the host the
//! server saw on the socket, never one the client claims. Storage errors
//! become `ERR internal` here, the one place they are mapped to the protocol.

use std::time::Duration;

use crate::store::{self, Store};
use crate::writer::{Outcome, Write, WriterHandle};
use p2p_proto::protocol::{name_key, ErrorCode, Reply, Request};

/// What a worker needs to apply requests; shared by all workers.
pub struct Registry {
    pub store: Store,
    pub writer: WriterHandle,
    /// How long a registration lives without a heartbeat.
    pub ttl: Duration,
}

impl Registry {
    /// The reply to `request` from a client at `host` (as written on the wire).
    pub fn apply(&self, request: Request<'_>, host: &str) -> Reply {
        match request {
            Request::Register {
                port,
                size,
                sha256,
                name,
            } => self.write(
                Write::Register {
                    host: host.to_owned(),
                    port,
                    name: name.to_owned(),
                    size,
                    sha256: sha256.to_owned(),
                },
                host,
            ),
            Request::Unregister { port, name } => self.write(
                Write::Unregister {
                    host: host.to_owned(),
                    port,
                    name: name.to_owned(),
                },
                host,
            ),
            Request::Heartbeat { port } => self.write(
                Write::Heartbeat {
                    host: host.to_owned(),
                    port,
                },
                host,
            ),
            Request::Search { name } => {
                match self.store.search(&name_key(name), self.live_since()) {
                    Ok(sources) if sources.is_empty() => Reply::NotFound,
                    Ok(sources) => Reply::Found(sources),
                    Err(e) => internal(&e, host),
                }
            }
            Request::Find { words } => match self.store.find(&words, self.live_since()) {
                Ok(hits) => Reply::Results(hits),
                Err(e) => internal(&e, host),
            },
            Request::Ping => Reply::Pong,
            Request::Quit => Reply::Bye,
        }
    }

    fn live_since(&self) -> i64 {
        store::live_since(store::now_ms(), self.ttl)
    }

    fn write(&self, write: Write, host: &str) -> Reply {
        match self.writer.submit(write) {
            Ok(Outcome::Registered) | Ok(Outcome::Unregistered(true)) => Reply::Ok,
            Ok(Outcome::Unregistered(false)) => Reply::NotFound,
            Ok(Outcome::Refreshed(n)) => Reply::Refreshed(n),
            Err(e) => internal(&e, host),
        }
    }
}

fn internal(error: &dyn std::fmt::Display, host: &str) -> Reply {
    tracing::error!(client = host, %error, "request failed");
    Reply::Err(ErrorCode::Internal, error.to_string())
}
