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
//! Shutdown: [`ShutdownHandle::shutdown`] marks the server closing, shuts the
//! read side of every open socket (workers finish the request in hand, answer
//! it, then see end of input), and wakes the acceptor by shutting down the
//! listening socket (which works even when its address has gone away, e.g.
//! an interface removed), which stops accepting
//! and drops the channel. [`Server::run`] then joins the workers; with them
//! go the last writer handles, so the writer commits what is queued, closes
//! the database, and `run` returns.

use std::collections::HashMap;
use std::io::{self, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

use crate::command::{Caller, Registry};
use crate::connection::{Connection, FrameError, Limits};
use crate::store::{self, OpenMode, Store, StoreError, SyncMode};
use crate::writer::{self, WriterConfig, DEFAULT_MAX_PER_HOST};
use p2p_proto::protocol::{self, ErrorCode, Reply, Request};

/// Default connection limit: hundreds of peers keeping a connection open
/// must still leave room for new clients.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

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

/// Longest pause after a failing `accept` (e.g. out of file descriptors),
/// so the acceptor backs off instead of spinning.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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
    tracker: Arc<Tracker>,
    /// A second handle on the listening socket, for shutdown to wake accept.
    waker: Arc<TcpListener>,
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
        let waker = listener
            .try_clone()
            .map(Arc::new)
            .map_err(|source| ServerError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
        let mut config = config;
        config.max_connections = fit_to_descriptors(config.max_connections, config.readers);
        // Bound first, so a taken port does not leave a new database behind.
        let conn = store::open_connection(&config.db, OpenMode::CreateOrMigrate, config.sync)?;
        let store = Store::open_readers(&config.db, config.readers)?;
        let (writer, writer_thread) = writer::spawn(
            conn,
            WriterConfig {
                path: config.db.clone(),
                ttl: config.ttl,
                sweep_every: (config.ttl / 4)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60)),
                max_per_host: config.max_per_host,
            },
        )
        .map_err(|source| ServerError::Thread {
            what: "writer",
            source,
        })?;
        Ok(Server {
            listener,
            local_addr,
            registry: Arc::new(Registry {
                store,
                writer,
                ttl: config.ttl,
            }),
            writer_thread,
            config,
            tracker: Arc::new(Tracker::default()),
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
            tracker: Arc::clone(&self.tracker),
            wake_addr: wake_address(self.local_addr),
            listener: Arc::clone(&self.waker),
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
            tracker,
            waker,
        } = self;
        let (queue, jobs) = unbounded::<Job>();
        let mut pool = Pool {
            jobs,
            registry,
            tracker: Arc::clone(&tracker),
            limits: config.limits,
            rewrite_loopback: local_addr.ip().is_unspecified(),
            threads: Vec::new(),
        };
        pool.grow_to(config.workers.min(config.max_connections).max(1))?;
        tracing::info!(%local_addr, db = %config.db, "serving");

        let mut backoff = Duration::from_millis(5);
        for incoming in listener.incoming() {
            let stream = match incoming {
                Ok(stream) => {
                    backoff = Duration::from_millis(5);
                    stream
                }
                Err(_) if tracker.is_closing() => break, // woken by shutdown
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to close.
                    tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            let Ok(peer) = stream.peer_addr() else {
                continue; // already gone
            };
            let (id, open, idle) = match tracker.admit(&stream, peer.ip(), config.max_connections) {
                Admission::Admitted { id, open, idle } => (id, open, idle),
                Admission::Busy => {
                    tracing::warn!(client = %peer, limit = config.max_connections, "connection limit reached");
                    let limit = config.max_connections;
                    reject_busy(
                        stream,
                        &format!("too many connections (limit {limit}); try again later"),
                    );
                    continue;
                }
                Admission::Untrackable(e) => {
                    // Without a second handle shutdown could not reach it.
                    tracing::warn!(client = %peer, error = %e, "cannot track connection; closing it");
                    continue;
                }
                Admission::Closing => break, // shutdown began (we were woken for it)
            };
            if let Err(e) = pool.grow_to(open) {
                if pool.threads.len() < open {
                    // No thread for it: refuse this one, serve the others.
                    tracing::warn!(client = %peer, error = %e, "cannot start a worker; refusing");
                    tracker.remove(id);
                    reject_busy(stream, "no worker thread free; try again later");
                    continue;
                }
            }
            if queue
                .send(Job {
                    stream,
                    peer,
                    id,
                    idle,
                })
                .is_err()
            {
                break;
            }
        }
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
    /// Its entry in the [`Tracker`].
    id: u64,
    /// Raised by the connection while it waits for a request.
    idle: Arc<AtomicBool>,
}

/// Frees a connection's slot when its worker is done with it, also when the
/// worker panicked.
struct SlotGuard<'a> {
    tracker: &'a Tracker,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.tracker.remove(self.id);
    }
}

/// The worker threads and what they share.
struct Pool {
    jobs: Receiver<Job>,
    registry: Arc<Registry>,
    tracker: Arc<Tracker>,
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
            let tracker = Arc::clone(&self.tracker);
            let limits = self.limits;
            let rewrite = self.rewrite_loopback;
            let thread = thread::Builder::new()
                .name(format!("worker-{}", self.threads.len()))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    for job in jobs.iter() {
                        let _open = crate::metrics::connection_opened();
                        let _slot = SlotGuard {
                            tracker: &tracker,
                            id: job.id,
                        };
                        let peer = job.peer;
                        // A bug met by one connection must not cost the
                        // pool a worker: log it and take the next one.
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            serve_connection(job, &registry, limits, rewrite)
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
fn serve_connection(job: Job, registry: &Registry, limits: Limits, rewrite_loopback: bool) {
    let Job {
        stream, peer, idle, ..
    } = job;
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
    loop {
        let reply = match conn.read_line() {
            Ok(line) => {
                match protocol::parse_request(line).inspect(crate::metrics::count_request) {
                    Ok(Request::Quit) => {
                        conn.write_reply(&Reply::Bye);
                        conn.close_gracefully();
                        return;
                    }
                    Ok(request) => registry.apply(request, &caller),
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

/// The open connections, so shutdown can reach every one of them, their
/// count per address, for the connection limit and its fair sharing.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

/// What [`Tracker::admit`] decided about a new connection.
enum Admission {
    /// Recorded; `open` connections now (with those being evicted), this one included.
    Admitted {
        id: u64,
        open: usize,
        idle: Arc<AtomicBool>,
    },
    /// The connection limit is reached, and no address holds more than this one would.
    Busy,
    /// No second handle could be made (out of descriptors).
    Untrackable(std::io::Error),
    /// Shutdown has begun.
    Closing,
}

/// One open connection as the tracker knows it.
struct Entry {
    /// A second handle on the socket, used only to shut it down.
    stream: TcpStream,
    ip: IpAddr,
    idle: Arc<AtomicBool>,
    /// Told to end to make room; no longer counted against the limit.
    evicted: bool,
}

#[derive(Default)]
struct TrackerState {
    closing: bool,
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// Connections per client address, evicted ones not counted.
    per_ip: HashMap<IpAddr, usize>,
    /// Entries evicted whose worker has not finished yet.
    evicted: usize,
}

impl TrackerState {
    /// Makes room for a connection from `ip`: ends a connection of the
    /// address holding the most, if it holds more than `ip` would after
    /// admission, idle connections first. `false` when no address may yield.
    fn evict_for(&mut self, ip: IpAddr) -> bool {
        let mine = self.per_ip.get(&ip).copied().unwrap_or(0);
        let Some((&top, &count)) = self.per_ip.iter().max_by_key(|(_, &n)| n) else {
            return false;
        };
        if count <= mine + 1 {
            return false;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.ip == top && !e.evicted)
            .max_by_key(|(_, e)| e.idle.load(Ordering::Relaxed))
            .map(|(&id, _)| id);
        let Some(entry) = victim.and_then(|id| self.entries.get_mut(&id)) else {
            return false;
        };
        tracing::info!(client = %top, idle = entry.idle.load(Ordering::Relaxed), connections = count, "slots short: closing a connection of the address holding the most");
        // An idle worker sees end of input at once; a busy one after the
        // request in hand.
        let _ = entry.stream.shutdown(Shutdown::Read);
        entry.evicted = true;
        self.evicted += 1;
        if let Some(n) = self.per_ip.get_mut(&top) {
            *n -= 1;
        }
        true
    }
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a few inserts, removes or flag changes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Records a new connection from `ip` unless the server is closing or
    /// `limit` connections are open and no address may yield one (see the
    /// module docs). Checked and recorded under one lock, so a connection
    /// accepted as shutdown begins is either reached by it or refused.
    fn admit(&self, stream: &TcpStream, ip: IpAddr, limit: usize) -> Admission {
        let mut state = self.lock();
        if state.closing {
            return Admission::Closing;
        }
        let ip = ip.to_canonical();
        if state.entries.len() - state.evicted >= limit && !state.evict_for(ip) {
            return Admission::Busy;
        }
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => return Admission::Untrackable(e),
        };
        let id = state.next_id;
        state.next_id += 1;
        let idle = Arc::new(AtomicBool::new(false));
        state.entries.insert(
            id,
            Entry {
                stream: handle,
                ip,
                idle: Arc::clone(&idle),
                evicted: false,
            },
        );
        *state.per_ip.entry(ip).or_insert(0) += 1;
        Admission::Admitted {
            id,
            open: state.entries.len(),
            idle,
        }
    }

    fn remove(&self, id: u64) {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(&id) else {
            return;
        };
        if entry.evicted {
            state.evicted -= 1;
        } else if let Some(n) = state.per_ip.get_mut(&entry.ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&entry.ip);
            }
        }
    }

    /// Marks the server closing and ends the input of every open connection.
    fn close_all(&self) {
        let mut state = self.lock();
        state.closing = true;
        for entry in state.entries.values() {
            let _ = entry.stream.shutdown(Shutdown::Read);
        }
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
    tracker: Arc<Tracker>,
    wake_addr: SocketAddr,
    listener: Arc<TcpListener>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tracker.close_all();
        // The acceptor is blocked in accept(). Shutting the listening socket
        // down wakes it with an error (Linux), also when its address is gone;
        // a connection to it is the fallback for systems that do not.
        if rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read).is_err() {
            let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_millis(200));
        }
    }
}

/// Where to connect to reach our own listener (an unspecified address
/// cannot be connected to).
fn wake_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback socket pair: (server side, client side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn open(tracker: &Tracker) -> usize {
        let state = tracker.lock();
        state.entries.len() - state.evicted
    }

    #[test]
    fn a_panicking_worker_frees_its_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tracker = Tracker::default();
        let (stream, _client) = pair(&listener);
        let Admission::Admitted { id, .. } = tracker.admit(&stream, Ipv4Addr::LOCALHOST.into(), 4)
        else {
            panic!("admitted");
        };
        assert_eq!(open(&tracker), 1);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _slot = SlotGuard {
                tracker: &tracker,
                id,
            };
            panic!("a bug while serving");
        }));
        assert!(result.is_err());
        assert_eq!(open(&tracker), 0, "the slot was freed by the guard");
        assert!(tracker.lock().per_ip.is_empty());
    }

    #[test]
    fn at_the_limit_the_address_with_the_most_yields_an_idle_connection_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tracker = Tracker::default();
        let hog: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        let other: IpAddr = Ipv4Addr::new(10, 0, 0, 2).into();
        let mut held = Vec::new();
        let mut flags = Vec::new();
        for i in 0..4 {
            let (stream, client) = pair(&listener);
            let Admission::Admitted { idle, .. } = tracker.admit(&stream, hog, 4) else {
                panic!("admitted");
            };
            // One idle connection of four.
            idle.store(i == 2, Ordering::Relaxed);
            flags.push(idle);
            held.push((stream, client));
        }
        let (stream, _c) = pair(&listener);
        assert!(
            matches!(tracker.admit(&stream, hog, 4), Admission::Busy),
            "the hog's own next one is refused"
        );
        assert!(matches!(
            tracker.admit(&stream, other, 4),
            Admission::Admitted { .. }
        ));
        let state = tracker.lock();
        let evicted: Vec<bool> = state
            .entries
            .values()
            .filter(|e| e.evicted)
            .map(|e| e.idle.load(Ordering::Relaxed))
            .collect();
        assert_eq!(evicted, [true], "exactly one, the idle one");
        assert_eq!(state.per_ip.get(&hog), Some(&3));
        assert_eq!(state.per_ip.get(&other), Some(&1));
        drop(state);
        // 3 against 1: the newcomer's address may take one more (3 > 2),
        // then no more (2 against 2 after that would not be fairer).
        let (s2, _c2) = pair(&listener);
        assert!(matches!(
            tracker.admit(&s2, other, 4),
            Admission::Admitted { .. }
        ));
        let (s3, _c3) = pair(&listener);
        assert!(matches!(tracker.admit(&s3, other, 4), Admission::Busy));
    }
}
