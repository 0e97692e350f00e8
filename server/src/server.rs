//! The network side of the registry: the listener, the worker pool, the
//! connection limit and the shutdown path.
//!
//! The acceptor thread (the one that calls [`Server::run`]) accepts sockets
//! and hands them through a crossbeam channel to worker threads. Every open
//! connection is served by its own worker for its whole life, and the pool
//! grows on demand up to `max_connections`: a persistent connection that sits
//! idle therefore never delays a new client. Above the limit a new client is
//! answered `ERR busy` and closed at once. (`docs/architecture.md` says why
//! this beat parking idle sockets in a poller.)
//!
//! Fair slot sharing: while slots are plentiful one address may open as many
//! connections as it likes. At the limit, a newcomer takes the slot of the
//! address holding the most connections, provided that address holds more
//! than the newcomer would: one of its idle connections (waiting for a
//! request, nothing pending) is closed, or, if it has none idle, one of its
//! busy ones is ended after the request in hand. Otherwise the newcomer is
//! answered `ERR busy`. So one address can never lock the others out.
//!
//! Descriptors: each connection costs two (the socket and the tracker's
//! handle). At start the soft `RLIMIT_NOFILE` is raised to the hard limit,
//! and the connection limit is lowered to what the descriptors left after
//! [`FD_RESERVE`] allow, so a client over it is answered `ERR busy` instead
//! of meeting a server that cannot accept.
//!
//! Thread failures: a worker that cannot be started gets its connection
//! answered `ERR busy`, and the server goes on; a panicking worker frees its
//! slot (a drop guard) and keeps serving; a dead writer ends the process
//! (see [`crate::writer::EXIT_WRITER_DIED`]).
//!
//! The accept loop, the connection table with its fair-share admission and
//! the acceptor's wake-up are the shared skeleton in crate `p2p_net`; this
//! module gives them the registry's policy (a reclaimed or closing
//! connection has its read side shut, so the request in hand is answered).
//!
//! Shutdown: [`ShutdownHandle::shutdown`] marks the server closing, shuts the
//! read side of every open socket (workers finish the request in hand, answer
//! it, then see end of input), and wakes the acceptor by shutting down the
//! listening socket (which works even when its address has gone away, e.g.
//! an interface removed), which stops accepting
//! and drops the channel. [`Server::run`] then joins the workers; with them
//! go the last writer handles, so the writer commits what is queued, closes
//! the database, and `run` returns.

use std::io::{self, Read, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

use crate::command::{Caller, Registry};
use crate::connection::{Connection, FrameError, Limits};
use crate::registry::OpenError;
use crate::store::{self, StoreError, SyncMode};
use crate::writer::{Write, Writes, DEFAULT_MAX_PER_HOST};
use p2p_net::{accept_loop, Admission, ConnTable, Policy, Slot, Waker};
use p2p_proto::protocol::{self, ErrorCode, Reply, Request};

/// Default connection limit: hundreds of peers keeping a connection open
/// must still leave room for new clients.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Most writes one connection has in flight: a client that pipelines
/// REGISTER, UNREGISTER or HEARTBEAT lines has the ones already in its read
/// buffer, up to this many, submitted to the writer as one job and
/// answered after one commit (instead of one commit wait each). Bounds the
/// memory one connection's writes hold, and keeps a job well under the
/// writer's [`crate::writer::MAX_BATCH`] so the runs of several
/// connections share a commit.
pub const MAX_PIPELINED_WRITES: usize = 128;

/// Default number of workers started with the server; the pool grows past
/// it, one thread per open connection, up to the connection limit.
pub const DEFAULT_WORKERS: usize = 16;

/// Default time a registration lives without a heartbeat; defined in the
/// store layer (shared with `p2p-admin`), re-exported here.
pub use crate::store::DEFAULT_TTL;

/// Stack of a worker thread. A worker holds one connection's buffers and a
/// few SQLite calls deep; 256 KiB is ample and keeps a thousand workers cheap.
const WORKER_STACK: usize = 256 * 1024;

/// Descriptors kept back from connections: stdio, the listener and its
/// shutdown handle, the writer's database, WAL and shared-memory files, a
/// socket being refused, the signal handler's pipe, and a few for what
/// other parts of the process open.
/// The read pools' files come on top (three per connection).
pub const FD_RESERVE: u64 = 16;

/// Descriptors one connection holds: its socket and the tracker's handle.
const FDS_PER_CONNECTION: u64 = 2;

/// How long shutdown may take connecting to its own listener, the fallback
/// wake-up where shutting the listening socket down does not wake `accept`.
const WAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// The registry's connection-table policy: a reclaimed connection, and
/// every connection at shutdown, has its read side shut, so its worker
/// answers the request in hand and then sees end of input; a connection
/// is busy until it waits for its first request.
const TABLE_POLICY: Policy = Policy {
    reclaim: Shutdown::Read,
    close: Shutdown::Read,
    starts_idle: false,
};

/// Everything the server can be told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file; created with its schema when missing.
    pub db: String,
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Workers started up front (the pool grows to `max_connections`).
    pub workers: usize,
    /// Open connections served at once; one more is answered `ERR busy`.
    pub max_connections: usize,
    /// How long a registration lives without a heartbeat.
    pub ttl: Duration,
    pub sync: SyncMode,
    /// Read connections in the pool.
    pub readers: u32,
    pub limits: Limits,
    /// Most registrations one host may hold; 0 for no limit.
    pub max_per_host: u64,
    /// Answer SEARCH from an in-memory index (`--memory-index`): several
    /// times faster, but a change another process makes to the file (a
    /// `p2p-admin prune`) shows in SEARCH only after the writer's next
    /// `data_version` poll (up to 250 ms), not at once.
    pub memory_index: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            db: "registry.db".into(),
            listen: "0.0.0.0:9000".into(),
            workers: DEFAULT_WORKERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ttl: DEFAULT_TTL,
            sync: SyncMode::Full,
            readers: store::DEFAULT_READERS,
            limits: Limits::default(),
            max_per_host: DEFAULT_MAX_PER_HOST,
            memory_index: false,
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A bound, ready server. [`Server::run`] serves until shut down.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    writer_thread: JoinHandle<()>,
    config: Config,
    table: Arc<ConnTable>,
    /// A second handle on the listening socket, for shutdown to wake accept.
    waker: Waker,
}

impl Server {
    /// Opens (or creates) the database, starts the writer, and binds the listener.
    pub fn open(config: Config) -> Result<Server, ServerError> {
        if config.max_connections == 0 {
            return Err(ServerError::Config(
                "--max-connections must be at least 1".into(),
            ));
        }
        if config.ttl.is_zero() {
            return Err(ServerError::Config("--ttl must be longer than zero".into()));
        }
        let listener = TcpListener::bind(&config.listen).map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let waker = Waker::new(&listener, WAKE_TIMEOUT).map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let mut config = config;
        config.max_connections = fit_to_descriptors(config.max_connections, config.readers);
        // Bound first, so a taken port does not leave a new database behind.
        let (registry, writer_thread) = Registry::open(
            &config.db,
            config.sync,
            config.readers,
            config.ttl,
            config.max_per_host,
            config.memory_index,
        )
        .map_err(|e| match e {
            OpenError::Store(e) => ServerError::Store(e),
            OpenError::Writer(source) => ServerError::Thread {
                what: "writer",
                source,
            },
        })?;
        Ok(Server {
            listener,
            local_addr,
            registry: Arc::new(registry),
            writer_thread,
            config,
            table: ConnTable::new(TABLE_POLICY),
            waker,
        })
    }

    /// The connection limit in force: `--max-connections`, or less when
    /// the descriptor limit allows fewer.
    pub fn max_connections(&self) -> usize {
        self.config.max_connections
    }

    /// The address actually bound (the port is real even when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server from another thread (a signal handler).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            table: Arc::clone(&self.table),
            waker: self.waker.clone(),
        }
    }

    /// Accepts and serves connections until [`ShutdownHandle::shutdown`],
    /// then drains: in-flight requests are answered, the writer commits and
    /// the database is closed before this returns.
    pub fn run(self) -> Result<(), ServerError> {
        let Server {
            listener,
            local_addr,
            registry,
            writer_thread,
            config,
            table,
            waker,
        } = self;
        let (queue, jobs) = unbounded::<Job>();
        let mut pool = Pool {
            jobs,
            registry,
            limits: config.limits,
            rewrite_loopback: local_addr.ip().is_unspecified(),
            threads: Vec::new(),
        };
        pool.grow_to(config.workers.min(config.max_connections).max(1))?;
        tracing::info!(%local_addr, db = %config.db, "serving");

        let limit = config.max_connections;
        accept_loop(
            "registry",
            &listener,
            || table.is_closed(), // woken by shutdown
            |stream, peer| {
                let slot = match table.admit(&stream, peer.ip().to_canonical(), limit) {
                    Admission::Admitted(slot) => slot,
                    Admission::Full => {
                        tracing::warn!(client = %peer, limit, "connection limit reached");
                        reject_busy(
                            stream,
                            &format!("too many connections (limit {limit}); try again later"),
                        );
                        return ControlFlow::Continue(());
                    }
                    Admission::Untrackable(e) => {
                        // Without a second handle shutdown could not reach it.
                        tracing::warn!(client = %peer, error = %e, "cannot track connection; closing it");
                        return ControlFlow::Continue(());
                    }
                    Admission::Closed => return ControlFlow::Break(()), // shutdown began
                };
                let open = slot.open_at_admission();
                if let Err(e) = pool.grow_to(open) {
                    if pool.threads.len() < open {
                        // No thread for it: refuse this one, serve the others.
                        tracing::warn!(client = %peer, error = %e, "cannot start a worker; refusing");
                        drop(slot);
                        reject_busy(stream, "no worker thread free; try again later");
                        return ControlFlow::Continue(());
                    }
                }
                match queue.send(Job { stream, peer, slot }) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            },
        );
        drop(listener);
        drop(waker);
        drop(queue);
        tracing::info!("stopped accepting; finishing requests in flight");
        pool.join();
        // The pool's registry was the last holder of writer handles: the
        // writer now commits what is queued, closes the database and exits.
        if writer_thread.join().is_err() {
            tracing::error!("the writer thread panicked");
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// A connection handed to a worker.
struct Job {
    stream: TcpStream,
    peer: SocketAddr,
    /// Its place in the connection table, freed when the worker is done
    /// with it (also when the worker panicked).
    slot: Slot,
}

/// The worker threads and what they share.
struct Pool {
    jobs: Receiver<Job>,
    registry: Arc<Registry>,
    limits: Limits,
    /// The listener is bound to all interfaces: show loopback sources as
    /// the address each client reached us at.
    rewrite_loopback: bool,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts workers until there are at least `n`: one for every open
    /// connection, so a queued connection never waits behind an idle one.
    fn grow_to(&mut self, n: usize) -> Result<(), ServerError> {
        while self.threads.len() < n {
            let jobs = self.jobs.clone();
            let registry = Arc::clone(&self.registry);
            let limits = self.limits;
            let rewrite = self.rewrite_loopback;
            let thread = thread::Builder::new()
                .name(format!("worker-{}", self.threads.len()))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    for Job { stream, peer, slot } in jobs.iter() {
                        let _open = crate::metrics::connection_opened();
                        let idle = slot.idle_flag();
                        // Freed after the connection is closed (and on unwind).
                        let _slot = slot;
                        // A bug met by one connection must not cost the
                        // pool a worker: log it and take the next one.
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            serve_connection(stream, peer, idle, &registry, limits, rewrite)
                        }));
                        if served.is_err() {
                            tracing::error!(client = %peer, "a worker panicked serving a connection");
                        }
                    }
                })
                .map_err(|source| ServerError::Thread {
                    what: "worker",
                    source,
                })?;
            self.threads.push(thread);
        }
        Ok(())
    }

    fn join(self) {
        let Pool {
            jobs,
            registry,
            threads,
            ..
        } = self;
        drop(jobs);
        drop(registry);
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// Serves one client until it quits, closes, times out or misbehaves.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    idle: Arc<AtomicBool>,
    registry: &Registry,
    limits: Limits,
    rewrite_loopback: bool,
) {
    let local_host = if rewrite_loopback {
        stream.local_addr().ok().map(|a| protocol::host_of(a.ip()))
    } else {
        None
    };
    let mut conn = match Connection::new(stream, peer, limits, idle) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "cannot set up connection");
            return;
        }
    };
    let caller = Caller {
        host: protocol::host_of(peer.ip()),
        local_host,
    };
    tracing::debug!(client = %peer, "connected");
    // A SEARCH's name, copied out of the read buffer (reused: no allocation
    // per request once it has held the longest name).
    let mut name_buf = String::new();
    loop {
        let reply = match conn.read_line() {
            Ok(line) => {
                match protocol::parse_request(line).inspect(crate::metrics::count_request) {
                    Ok(Request::Quit) => {
                        conn.write_reply(&Reply::Bye);
                        conn.close_gracefully();
                        return;
                    }
                    Ok(request) => match Registry::write_of(&request, &caller) {
                        Some(write) => {
                            let run = pipelined_run(&mut conn, write, &caller);
                            for reply in registry.apply_writes(run, &caller) {
                                crate::metrics::count_reply(&reply);
                                conn.write_reply(&reply);
                            }
                            continue;
                        }
                        None => match request {
                            Request::Search { name } => {
                                // The name leaves the read buffer, so the
                                // reply can be written into the connection's.
                                name_buf.clear();
                                name_buf.push_str(name);
                                if registry.search_into(&name_buf, &caller, conn.output()) {
                                    continue;
                                }
                                registry.apply(Request::Search { name: &name_buf }, &caller)
                            }
                            request => registry.apply(request, &caller),
                        },
                    },
                    Err(e) => e.to_reply(),
                }
            }
            Err(FrameError::TooLong) => {
                return refuse(
                    conn,
                    ErrorCode::TooLong,
                    "request line longer than 4096 bytes",
                );
            }
            Err(FrameError::InvalidUtf8) => {
                return refuse(
                    conn,
                    ErrorCode::BadRequest,
                    "request line is not valid UTF-8",
                );
            }
            Err(e @ FrameError::WriteTimeout(_)) => {
                tracing::info!(client = %peer, error = %e, "closing a client that does not read");
                conn.abort();
                return;
            }
            Err(e @ FrameError::LineTimeout(_)) => {
                tracing::debug!(client = %peer, error = %e, "closing slow connection");
                return refuse(conn, ErrorCode::BadRequest, &e.to_string());
            }
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "connection ends");
                conn.close();
                return;
            }
        };
        crate::metrics::count_reply(&reply);
        conn.write_reply(&reply);
    }
}

/// The writes submitted together from one connection: the write just read
/// (`first`) and the writes that follow it already complete in the read
/// buffer, up to [`MAX_PIPELINED_WRITES`]. The first other line (a read, a
/// QUIT, a line that does not parse, one not yet complete) ends the run and
/// is left for the next `read_line`, so it is answered after the run is
/// committed: a client reads its own writes.
fn pipelined_run(conn: &mut Connection, first: Write, caller: &Caller) -> Writes {
    let mut run = Writes::new();
    run.push(first);
    while run.len() < MAX_PIPELINED_WRITES {
        let next = conn.take_buffered_line(|line| {
            let request = protocol::parse_request(line).ok()?;
            let write = Registry::write_of(&request, caller)?;
            crate::metrics::count_request(&request);
            Some(write)
        });
        match next {
            Some(write) => run.push(write),
            None => break,
        }
    }
    run
}

/// Answers a request that ends the connection, and closes it.
fn refuse(mut conn: Connection, code: ErrorCode, message: &str) {
    tracing::info!(client = %conn.peer(), %code, message, "closing connection after error");
    crate::metrics::count_error(code);
    conn.write_reply(&Reply::Err(code, message.to_owned()));
    conn.close_gracefully();
}

/// Tells a client over the connection limit so, without a worker: a short
/// write, our FIN, and whatever it already sent read away so that closing
/// does not reset the connection before it reads the reply.
fn reject_busy(mut stream: TcpStream, message: &str) {
    crate::metrics::count_busy_refusal();
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let line = format!("ERR busy {message}\n");
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// Raises the soft descriptor limit to the hard one and returns the
/// connection limit the descriptors allow, at most `wanted`.
fn fit_to_descriptors(wanted: usize, readers: u32) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the descriptor limit");
            limit = getrlimit(Resource::Nofile);
        }
    }
    let Some(fds) = limit.current else {
        return wanted; // unlimited
    };
    // Three files (database, WAL, shared memory) per read connection, FIND's included.
    let readers = u64::from(readers.max(1));
    let reserve = FD_RESERVE + 3 * (readers + (readers / 4).max(1));
    let allowed = (fds.saturating_sub(reserve) / FDS_PER_CONNECTION).max(1);
    let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
    if allowed < wanted {
        tracing::warn!(
            descriptors = fds,
            max_connections = allowed,
            "the descriptor limit allows fewer connections than --max-connections"
        );
        allowed
    } else {
        wanted
    }
}

/// Stops a running [`Server`]; safe to call from any thread, more than once.
#[derive(Clone)]
pub struct ShutdownHandle {
    table: Arc<ConnTable>,
    waker: Waker,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.table.close_all();
        // The acceptor is blocked in accept(); the waker gets it out, also
        // when the listening address has gone away.
        self.waker.wake();
    }
}

// The connection table's admission and fair-share tests are in crate
// `p2p_net` (table.rs); the registry's behaviour end to end in
// tests/e2e/registry_abuse.rs and tests/e2e/reliability.rs.
