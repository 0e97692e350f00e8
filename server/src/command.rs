//! Applies one parsed request to the registry and produces its reply.
//!
//! SEARCH reads the in-memory [`Index`] when it is enabled and loaded (else
//! the [`Store`]'s pool, like FIND), writes
//! go to the [`WriterHandle`] (which answers only after the commit and after
//! the index shows it): one at a time ([`Registry::apply`]), or a run of
//! writes a client pipelined as one submission ([`Registry::apply_writes`],
//! one commit wait for the run). The caller's identity is the host the
//! server saw on the socket, never one the client claims. Storage errors
//! become `ERR internal` here, the one place they are mapped to the protocol:
//! the client gets a short reason, the log gets the details (paths, SQLite
//! messages), which are no business of a client.
//!
//! Loopback sources: a peer on the registry's own machine registers from
//! `127.0.0.1` (or `[::1]`), an address useless to any other machine. When
//! the server listens on all interfaces, SEARCH gives such a source to each
//! client as the address that client used to reach the registry (the local
//! address of its connection, [`Caller::local_host`]), with the registered
//! port: the registry's machine as the client sees it.

use std::time::Duration;

use std::sync::Arc;

use crate::index::{Index, Key};
use crate::store::{self, Store};
use crate::writer::{Outcome, Write, WriteError, WriterHandle, Writes};
use p2p_proto::protocol::{self, name_key, ErrorCode, Reply, Request, Source};

/// Who sent a request, as the server saw the connection.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's address as written on the wire (`1.2.3.4`, `[::1]`).
    pub host: String,
    /// The address the client reached the registry at, same form, when
    /// loopback sources are to be shown as it (the listener is bound to
    /// all interfaces); `None` leaves every source as registered.
    pub local_host: Option<String>,
}

impl Caller {
    /// A caller whose sources are shown as registered.
    pub fn plain(host: &str) -> Caller {
        Caller {
            host: host.to_owned(),
            local_host: None,
        }
    }
}

/// Whether a stored host (`127.0.0.1`, `[::1]`) is a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_canonical().is_loopback())
        .unwrap_or(false)
}

/// The host a source registered from `host` is shown as to a caller
/// whose loopback sources are shown as `local_host` (see the module docs).
fn shown_host<'h>(host: &'h str, local_host: Option<&'h str>) -> &'h str {
    match local_host {
        Some(local) if host != local && is_loopback_host(host) => local,
        _ => host,
    }
}

/// Shows every loopback source as `local_host` (see the module docs).
fn rewrite_loopback(sources: &mut [Source], local_host: &str) {
    for source in sources {
        if shown_host(&source.host, Some(local_host)) != source.host {
            source.host = local_host.to_owned();
        }
    }
}

/// What a worker needs to apply requests; shared by all workers.
pub struct Registry {
    pub store: Store,
    /// Live registrations in memory: answers SEARCH when enabled
    /// (`--memory-index`) and loaded; otherwise SEARCH is an SQLite query.
    pub index: Arc<Index>,
    pub writer: WriterHandle,
    /// How long a registration lives without a heartbeat.
    pub ttl: Duration,
}

impl Registry {
    /// The write `request` from `caller` asks for, if it is one (REGISTER,
    /// UNREGISTER, HEARTBEAT): what the worker may submit together with the
    /// writes pipelined after it ([`Registry::apply_writes`]).
    pub fn write_of(request: &Request<'_>, caller: &Caller) -> Option<Write> {
        let host = caller.host.as_str();
        match *request {
            Request::Register {
                port,
                size,
                sha256,
                name,
            } => Some(Write::Register {
                host: host.to_owned(),
                port,
                name: name.to_owned(),
                size,
                sha256: sha256.to_owned(),
            }),
            Request::Unregister { port, name } => Some(Write::Unregister {
                host: host.to_owned(),
                port,
                name: name.to_owned(),
            }),
            Request::Heartbeat { port } => Some(Write::Heartbeat {
                host: host.to_owned(),
                port,
            }),
            _ => None,
        }
    }

    /// The replies to `writes` from `caller`, in order, once all of them
    /// are committed (one submission, one wait): see
    /// [`WriterHandle::submit_all`].
    pub fn apply_writes<'c>(
        &self,
        writes: Writes,
        caller: &'c Caller,
    ) -> impl Iterator<Item = Reply> + 'c {
        let host = caller.host.as_str();
        self.writer
            .submit_all(writes)
            .into_iter()
            .map(move |outcome| reply_to_write(outcome, host))
    }

    /// SEARCH for `name` answered by the index, written straight into
    /// `out` (a connection's reply buffer) with no reply built: nothing is
    /// allocated per request. `false`, with nothing written, when the index
    /// cannot answer (disabled, loading, reloading): then
    /// [`Registry::apply`] asks the database.
    pub fn search_into(&self, name: &str, caller: &Caller, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let local = caller.local_host.as_deref();
        let answered =
            self.index
                .search_with(&Key::of_name(name), self.live_since(), |count, sources| {
                    if count == 0 {
                        Reply::NotFound.write_to(out);
                        return;
                    }
                    protocol::write_found_status(out, count);
                    for s in sources {
                        let host = shown_host(s.host, local);
                        protocol::write_source_line(out, host, s.port, s.size, s.sha256);
                    }
                });
        if answered.is_none() {
            out.truncate(start); // possibly half-loaded
        }
        answered.is_some()
    }

    /// The reply to `request` from `caller`.
    pub fn apply(&self, request: Request<'_>, caller: &Caller) -> Reply {
        let host = caller.host.as_str();
        if let Some(write) = Registry::write_of(&request, caller) {
            return reply_to_write(self.writer.submit(write), host);
        }
        match request {
            Request::Search { name } => {
                let live_since = self.live_since();
                // The index answers once loaded; before that (and without
                // --memory-index, or while it reloads) the database does.
                let mut sources = match self.index.search(&Key::of_name(name), live_since) {
                    Some(sources) => sources,
                    None => match self.store.search(&name_key(name), live_since) {
                        Ok(sources) => sources,
                        Err(e) => return internal(&e, e.short_reason(), host),
                    },
                };
                if sources.is_empty() {
                    return Reply::NotFound;
                }
                if let Some(local) = &caller.local_host {
                    rewrite_loopback(&mut sources, local);
                }
                Reply::Found(sources)
            }
            Request::Find { words } => match self.store.find(&words, self.live_since()) {
                Ok(hits) => Reply::Results(hits),
                Err(e @ store::StoreError::TooManyWords) => {
                    Reply::Err(ErrorCode::BadRequest, e.to_string())
                }
                Err(e) => internal(&e, e.short_reason(), host),
            },
            Request::Ping => Reply::Pong,
            Request::Quit => Reply::Bye,
            // Answered above, by `write_of`; never reached.
            Request::Register { .. } | Request::Unregister { .. } | Request::Heartbeat { .. } => {
                Reply::Err(ErrorCode::Internal, "write not dispatched".into())
            }
        }
    }

    fn live_since(&self) -> i64 {
        store::live_since(store::now_ms(), self.ttl)
    }
}

/// The reply to a write's outcome, for a client at `host`.
fn reply_to_write(outcome: Result<Outcome, WriteError>, host: &str) -> Reply {
    match outcome {
        Ok(Outcome::Registered) | Ok(Outcome::Unregistered(true)) => Reply::Ok,
        Ok(Outcome::Unregistered(false)) => Reply::NotFound,
        Ok(Outcome::Refreshed(n)) => Reply::Refreshed(n),
        Ok(Outcome::HostFull(limit)) => Reply::Err(
            ErrorCode::Busy,
            format!("too many registrations from {host} (limit {limit}); unregister some first"),
        ),
        Err(e) => internal(&e, e.short_reason(), host),
    }
}

/// `ERR internal` with a short reason; the full error goes to the log.
/// Running out of read connections is load, not a fault: `ERR busy`.
fn internal(detail: &dyn std::fmt::Display, short: &str, host: &str) -> Reply {
    tracing::error!(client = host, error = %detail, "request failed");
    let code = if short == store::OVERLOADED {
        ErrorCode::Busy
    } else {
        ErrorCode::Internal
    };
    Reply::Err(code, short.to_owned())
}
