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
//! Shutdown: [`ShutdownHandle::shutdown`] marks the server closing, shuts the
//! read side of every open socket (workers finish the request in hand, answer
//! it, then see end of input), and wakes the acceptor, which stops accepting
//! and drops the channel. [`Server::run`] then joins the workers; with them
//! go the last writer handles, so the writer commits what is queued, closes
//! the database, and `run` returns.

use std::collections::HashMap;
use std::io::{self, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

use crate::command::Registry;
use crate::connection::{Connection, FrameError, Limits};
use crate::store::{self, OpenMode, Store, StoreError, SyncMode};
use crate::writer::{self, WriterConfig};
use p2p_proto::protocol::{self, ErrorCode, Reply, Request};

/// Default connection limit: hundreds of peers keeping a connection open
/// must still leave room for new clients.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default number of workers started with the server; the pool grows past
/// it, one thread per open connection, up to the connection limit.
pub const DEFAULT_WORKERS: usize = 16;

/// Default time a registration lives without a heartbeat.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// Stack of a worker thread. A worker holds one connection's buffers and a
/// few SQLite calls deep; 256 KiB is ample and keeps a thousand workers cheap.
const WORKER_STACK: usize = 256 * 1024;

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
        })
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
        } = self;
        let (queue, jobs) = unbounded::<(TcpStream, SocketAddr, u64)>();
        let mut pool = Pool {
            jobs,
            registry,
            tracker: Arc::clone(&tracker),
            limits: config.limits,
            threads: Vec::new(),
        };
        pool.grow_to(config.workers.min(config.max_connections))?;
        tracing::info!(%local_addr, db = %config.db, "serving");

        let mut backoff = Duration::from_millis(5);
        for incoming in listener.incoming() {
            let stream = match incoming {
                Ok(stream) => {
                    backoff = Duration::from_millis(5);
                    stream
                }
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
            let (id, open) = match tracker.admit(&stream, config.max_connections) {
                Admission::Admitted { id, open } => (id, open),
                Admission::Busy => {
                    tracing::warn!(client = %peer, limit = config.max_connections, "connection limit reached");
                    reject_busy(stream, config.max_connections);
                    continue;
                }
                Admission::Untrackable(e) => {
                    // Without a second handle shutdown could not reach it.
                    tracing::warn!(client = %peer, error = %e, "cannot track connection; closing it");
                    continue;
                }
                Admission::Closing => break, // shutdown began (we were woken for it)
            };
            pool.grow_to(open)?;
            if queue.send((stream, peer, id)).is_err() {
                break;
            }
        }
        drop(listener);
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

/// The worker threads and what they share.
struct Pool {
    jobs: Receiver<(TcpStream, SocketAddr, u64)>,
    registry: Arc<Registry>,
    tracker: Arc<Tracker>,
    limits: Limits,
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
            let thread = thread::Builder::new()
                .name(format!("worker-{}", self.threads.len()))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    for (stream, peer, id) in jobs.iter() {
                        let _open = crate::metrics::connection_opened();
                        serve_connection(stream, peer, &registry, limits);
                        tracker.remove(id);
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
fn serve_connection(stream: TcpStream, peer: SocketAddr, registry: &Registry, limits: Limits) {
    let mut conn = match Connection::new(stream, peer, limits) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(client = %peer, error = %e, "cannot set up connection");
            return;
        }
    };
    let host = protocol::host_of(peer.ip());
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
                    Ok(request) => registry.apply(request, &host),
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
fn reject_busy(mut stream: TcpStream, limit: usize) {
    crate::metrics::count_busy_refusal();
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let line = format!("ERR busy too many connections (limit {limit}); try again later\n");
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }
}

/// The open connections, so shutdown can reach every one of them, and
/// their count, for the connection limit.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

/// What [`Tracker::admit`] decided about a new connection.
enum Admission {
    /// Recorded; `open` connections now, this one included.
    Admitted { id: u64, open: usize },
    /// The connection limit is reached.
    Busy,
    /// No second handle could be made (out of descriptors).
    Untrackable(std::io::Error),
    /// Shutdown has begun.
    Closing,
}

#[derive(Default)]
struct TrackerState {
    closing: bool,
    next_id: u64,
    /// A second handle on each open socket, used only to shut it down.
    streams: HashMap<u64, TcpStream>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a single insert, remove or flag change.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new connection unless the server is closing or `limit`
    /// connections are open. Checked and recorded under one lock, so a
    /// connection accepted as shutdown begins is either reached by it or
    /// refused.
    fn admit(&self, stream: &TcpStream, limit: usize) -> Admission {
        let mut state = self.lock();
        if state.closing {
            return Admission::Closing;
        }
        if state.streams.len() >= limit {
            return Admission::Busy;
        }
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => return Admission::Untrackable(e),
        };
        let id = state.next_id;
        state.next_id += 1;
        state.streams.insert(id, handle);
        Admission::Admitted {
            id,
            open: state.streams.len(),
        }
    }

    fn remove(&self, id: u64) {
        self.lock().streams.remove(&id);
    }

    /// Marks the server closing and ends the input of every open connection.
    fn close_all(&self) {
        let mut state = self.lock();
        state.closing = true;
        for stream in state.streams.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
}

/// Stops a running [`Server`]; safe to call from any thread, more than once.
#[derive(Clone)]
pub struct ShutdownHandle {
    tracker: Arc<Tracker>,
    wake_addr: SocketAddr,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tracker.close_all();
        // The acceptor is blocked in accept(): one connection wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
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
