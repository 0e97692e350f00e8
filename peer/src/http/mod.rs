//! The peer's HTTP/1.1 file server: what other peers, curl and browsers
//! download from (contract, "Peer-to-peer transfer").
//!
//! # Layout
//! - this module: [`FileServer`]: the acceptor thread, the bounded worker
//!   pool, the connection limit, timeouts and shutdown.
//! - [`request`]: reading request heads off a connection, with size limits
//!   and a deadline.
//! - [`handler`]: routing one request and streaming the file or its piece list.
//! - [`range`]: the `Range` / `If-Range` decision (pure).
//! - [`response`]: status lines and header blocks.
//! - [`pieces`]: the cache of piece lists served at `/pieces/<name>`.
//! - [`throttle`]: the upload limit, a token bucket shared by all connections.
//! - [`deadline`]: body writes (`sendfile` too) that honour the write timeout.
//!
//! # Design
//! The caller binds the listener (so it reports "port in use" itself). One
//! acceptor thread admits at most [`FileServerConfig::max_connections`]
//! connections at once. Admitted connections go over a crossbeam channel
//! to exactly that many worker threads, each serving one connection at a
//! time for as many keep-alive requests as it carries.
//!
//! Fair sharing of the slots: while slots are free anyone may take them
//! (one address may open many). When they run short, the client address
//! holding the most connections yields first: a newcomer from an address
//! holding at least two fewer takes the place of one of the top holder's
//! connections, an idle one (waiting for its next request) before a busy
//! one, which is shut down; anyone else over the limit (the top holder
//! itself included) gets `503` with `Connection: close`. So one address
//! can never lock the others out. A connection that stops reading frees its
//! worker after the write timeout ([`deadline`]).
//!
//! The accept loop, the connection table with that admission policy, the
//! acceptor's wake-up and the linger-before-close are the shared skeleton
//! in crate `p2p_net`; this module gives them the file server's policy (a
//! reclaimed connection is cut at once, a new one counts as idle).
//!
//! This module serves only what [`SharedDir::resolve`] accepts; it must
//! never build a path itself, never buffer a file body (bodies are copied
//! from the file to the socket), and never let one client's error or
//! stalled socket stop the server.

pub mod deadline;
pub mod handler;
pub mod hasher;
pub mod pieces;
pub mod range;
pub mod request;
pub mod response;
pub mod throttle;

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use p2p_net::{accept_loop, Admission, ConnTable, Policy, Slot, Waker};

use crate::files::{HashCache, SharedDir};
use handler::{Next, Site};
use hasher::Hasher;
use pieces::PieceCache;
use request::{HeadReader, ReadError};
use response::{plain, Status};
use throttle::RateLimiter;

/// Default for [`FileServerConfig::max_connections`]: enough for a handful
/// of downloaders with several connections each, few enough threads to
/// leave a small machine responsive.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Default for [`FileServerConfig::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`FileServerConfig::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the acceptor may block writing a `503` to a client over the
/// limit; the acceptor must stay free to accept.
pub const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// After the server decides to close a connection, it stops sending and
/// reads (and discards) what the client still sends for at most this long,
/// so that unread request bytes do not make the kernel reset the
/// connection and destroy the response before the client reads it.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes discarded while lingering before a close.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024;

/// Pauses after a failing `accept` (e.g. out of file descriptors): the
/// shared accept loop's, doubling from the first to the longest.
pub use p2p_net::{ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_START};

/// How long shutdown may take connecting to its own listener to wake the
/// acceptor out of `accept`, where shutting the listening socket down does
/// not (the fallback).
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// The file server's connection-table policy: a reclaimed connection, and
/// every connection at shutdown, is cut at once (both directions); a new
/// connection counts as idle until its first request arrives.
const TABLE_POLICY: Policy = Policy {
    reclaim: Shutdown::Both,
    close: Shutdown::Both,
    starts_idle: true,
};

/// Limits of the file server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileServerConfig {
    /// Connections served at once (also the number of worker threads).
    /// None of the three limits may be zero.
    pub max_connections: usize,
    /// Longest wait for a complete request head, counted from when the
    /// server starts waiting for it (so it is also the keep-alive idle
    /// timeout); a client that trickles bytes cannot hold a worker longer.
    pub read_timeout: Duration,
    /// Longest a single write may block on a client that
    /// stopped reading, before the connection is dropped.
    pub write_timeout: Duration,
    /// Most bytes per second sent over all connections together (file
    /// bodies only); `None` is unlimited (`--max-upload-rate`).
    pub max_upload_rate: Option<u64>,
}

impl Default for FileServerConfig {
    fn default() -> Self {
        FileServerConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_upload_rate: None,
        }
    }
}

/// Why the file server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A limit in [`FileServerConfig`] is zero.
    #[error("file server: {0} must not be zero")]
    BadConfig(&'static str),
    #[error("file server: cannot use the listener: {0}")]
    Listener(io::Error),
    #[error("file server: cannot start a thread: {0}")]
    Spawn(io::Error),
}

/// A running file server. Dropping it (or calling [`shutdown`](Self::shutdown))
/// stops it.
pub struct FileServer {
    local_addr: SocketAddr,
    /// Tells the acceptor and the workers to stop at their next check.
    stopping: Arc<AtomicBool>,
    connections: Arc<ConnTable>,
    /// Gets the acceptor out of `accept` at shutdown.
    waker: Waker,
    /// Never sends; dropping it disconnects the workers' stop receiver,
    /// which wakes every idle worker.
    stop_tx: Option<Sender<()>>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Closed at shutdown so no worker sleeps on the upload limit.
    limiter: Option<Arc<RateLimiter>>,
}

impl FileServer {
    /// Starts serving `shared` on `listener` (already bound by the caller).
    pub fn start(
        listener: TcpListener,
        shared: SharedDir,
        hashes: HashCache,
        config: FileServerConfig,
    ) -> Result<FileServer, HttpError> {
        FileServer::start_with_pieces(listener, shared, hashes, PieceCache::new(), config)
    }

    /// Like [`start`](Self::start), with piece lists the caller may have
    /// computed already (`peer serve` does, while hashing for registration).
    pub fn start_with_pieces(
        listener: TcpListener,
        shared: SharedDir,
        hashes: HashCache,
        pieces: PieceCache,
        config: FileServerConfig,
    ) -> Result<FileServer, HttpError> {
        if config.max_connections == 0 {
            return Err(HttpError::BadConfig("max_connections"));
        }
        if config.read_timeout.is_zero() {
            return Err(HttpError::BadConfig("read_timeout"));
        }
        if config.write_timeout.is_zero() {
            return Err(HttpError::BadConfig("write_timeout"));
        }
        if config.max_upload_rate == Some(0) {
            return Err(HttpError::BadConfig("max_upload_rate"));
        }
        let limiter = config
            .max_upload_rate
            .map(|rate| Arc::new(RateLimiter::new(rate)));
        let local_addr = listener.local_addr().map_err(HttpError::Listener)?;
        listener
            .set_nonblocking(false)
            .map_err(HttpError::Listener)?;
        let waker = Waker::new(&listener, WAKE_TIMEOUT).map_err(HttpError::Listener)?;
        // Admitted connections are at most the limit plus those being
        // reclaimed (each one at most once): twice the limit always fits.
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(2 * config.max_connections);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut server = FileServer {
            local_addr,
            stopping: Arc::new(AtomicBool::new(false)),
            connections: ConnTable::new(TABLE_POLICY),
            waker,
            stop_tx: Some(stop_tx),
            acceptor: None,
            workers: Vec::with_capacity(config.max_connections),
            limiter: limiter.clone(),
        };
        let hasher = Hasher::start(hashes.clone(), pieces.clone(), Arc::clone(&server.stopping))
            .map_err(HttpError::Spawn)?;
        let site = Arc::new(Site {
            shared,
            hashes,
            pieces,
            hasher,
            limiter,
        });
        for i in 0..config.max_connections {
            let worker = Worker {
                jobs: job_rx.clone(),
                stop: stop_rx.clone(),
                stopping: Arc::clone(&server.stopping),
                site: Arc::clone(&site),
                read_timeout: config.read_timeout,
            };
            // On error, dropping `server` stops the workers already started.
            let handle = thread::Builder::new()
                .name(format!("http-worker-{i}"))
                .spawn(move || worker.run())
                .map_err(HttpError::Spawn)?;
            server.workers.push(handle);
        }
        let acceptor = Acceptor {
            listener,
            jobs: job_tx,
            stopping: Arc::clone(&server.stopping),
            connections: Arc::clone(&server.connections),
            config,
        };
        let handle = thread::Builder::new()
            .name("http-acceptor".into())
            .spawn(move || acceptor.run())
            .map_err(HttpError::Spawn)?;
        server.acceptor = Some(handle);
        tracing::info!(addr = %local_addr, "file server listening");
        Ok(server)
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (transfers in progress are
    /// cut), and joins all threads.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.is_finished() || self.waker.wake() {
                if acceptor.join().is_err() {
                    tracing::error!("file server acceptor thread panicked");
                }
            } else {
                // It leaves on its next accept; nothing it does then matters
                // because the connection table is closed below.
                tracing::warn!(addr = %self.local_addr, "could not wake the file server acceptor; leaving it behind");
            }
        }
        if let Some(limiter) = &self.limiter {
            limiter.close();
        }
        self.connections.close_all();
        self.stop_tx = None;
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("file server worker thread panicked");
            }
        }
        tracing::info!(addr = %self.local_addr, "file server stopped");
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An admitted connection on its way to a worker. Field order matters:
/// the slot is dropped before the stream.
struct Job {
    slot: Slot,
    stream: TcpStream,
    client: SocketAddr,
}

struct Acceptor {
    listener: TcpListener,
    jobs: Sender<Job>,
    stopping: Arc<AtomicBool>,
    connections: Arc<ConnTable>,
    config: FileServerConfig,
}

impl Acceptor {
    fn run(self) {
        accept_loop(
            "file server",
            &self.listener,
            || self.stopping.load(Ordering::SeqCst),
            |stream, client| {
                self.dispatch(stream, client);
                ControlFlow::Continue(())
            },
        );
    }

    fn dispatch(&self, stream: TcpStream, client: SocketAddr) {
        if let Err(e) = configure(&stream, &self.config) {
            tracing::warn!(%client, "cannot configure connection: {e}");
            return;
        }
        match self
            .connections
            .admit(&stream, client.ip(), self.config.max_connections)
        {
            Admission::Admitted(slot) => {
                let job = Job {
                    slot,
                    stream,
                    client,
                };
                // The channel holds twice the limit, more than are ever
                // admitted at once (see `start_with_pieces`): never full.
                if let Err(e) = self.jobs.try_send(job) {
                    tracing::error!(%client, "no worker for connection: {e}");
                    refuse(e.into_inner().stream, client);
                }
            }
            Admission::Full => {
                tracing::warn!(%client, limit = self.config.max_connections, "too many connections, refused with 503");
                refuse(stream, client);
            }
            Admission::Closed => {}
            Admission::Untrackable(e) => {
                tracing::warn!(%client, "cannot register connection: {e}")
            }
        }
    }
}

fn configure(stream: &TcpStream, config: &FileServerConfig) -> io::Result<()> {
    // Heads are written separately from bodies; Nagle would hold the last
    // small segment back waiting for an ACK.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(config.write_timeout))?;
    stream.set_read_timeout(Some(config.read_timeout))
}

/// Answers `503` and closes, from the acceptor: bounded by
/// [`BUSY_WRITE_TIMEOUT`], no lingering.
fn refuse(mut stream: TcpStream, client: SocketAddr) {
    let _ = stream.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
    let response = plain(Status::ServiceUnavailable, true, false);
    if let Err(e) = stream.write_all(&response) {
        tracing::debug!(%client, "sending 503: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
}

struct Worker {
    jobs: Receiver<Job>,
    stop: Receiver<()>,
    stopping: Arc<AtomicBool>,
    site: Arc<Site>,
    read_timeout: Duration,
}

impl Worker {
    fn run(self) {
        loop {
            crossbeam_channel::select! {
                recv(self.jobs) -> job => match job {
                    Ok(job) => self.serve(job),
                    Err(_) => return,
                },
                recv(self.stop) -> _ => return,
            }
        }
    }

    /// Serves requests on one connection until either side ends it.
    fn serve(&self, job: Job) {
        let Job {
            slot,
            mut stream,
            client,
        } = job;
        let mut reader = HeadReader::new();
        let linger = loop {
            if self.stopping.load(Ordering::SeqCst) {
                break false;
            }
            let request = match reader.read_request(&stream, self.read_timeout) {
                Ok(request) => request,
                Err(ReadError::Closed | ReadError::Idle) => break false,
                Err(e) => {
                    tracing::debug!(%client, "{e}");
                    let status = match e {
                        ReadError::TimedOut => Status::RequestTimeout,
                        ReadError::TooLarge => Status::HeaderFieldsTooLarge,
                        ReadError::Malformed(_) => Status::BadRequest,
                        _ => break false,
                    };
                    let _ = stream.write_all(&plain(status, true, false));
                    break true;
                }
            };
            slot.set_idle(false);
            match handler::respond(&mut stream, &request, &self.site, client) {
                Ok(Next::KeepAlive) => slot.set_idle(true),
                Ok(Next::Close) => break true,
                Err(e) => {
                    tracing::debug!(%client, target = request.target, "connection dropped: {e}");
                    break false;
                }
            }
        };
        drop(slot);
        // At shutdown nothing waits for the client.
        if linger && !self.stopping.load(Ordering::SeqCst) {
            p2p_net::linger_close(&stream, LINGER_TIMEOUT, LINGER_MAX_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    fn start(config: FileServerConfig) -> Result<FileServer, HttpError> {
        let tmp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = SharedDir::open(tmp.path()).unwrap();
        FileServer::start(listener, shared, HashCache::new(), config)
    }

    // The admission and fair-share tests of the connection table are in
    // crate `p2p_net` (table.rs); end to end in tests/e2e/peer_slots.rs.

    #[test]
    fn refuses_zero_limits() {
        for (config, field) in [
            (
                FileServerConfig {
                    max_connections: 0,
                    ..FileServerConfig::default()
                },
                "max_connections",
            ),
            (
                FileServerConfig {
                    read_timeout: Duration::ZERO,
                    ..FileServerConfig::default()
                },
                "read_timeout",
            ),
            (
                FileServerConfig {
                    write_timeout: Duration::ZERO,
                    ..FileServerConfig::default()
                },
                "write_timeout",
            ),
            (
                FileServerConfig {
                    max_upload_rate: Some(0),
                    ..FileServerConfig::default()
                },
                "max_upload_rate",
            ),
        ] {
            let err = start(config).err().expect("zero limit accepted");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn starts_and_stops_on_an_unspecified_address() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let shared = SharedDir::open(tmp.path()).unwrap();
        let server = FileServer::start(
            listener,
            shared,
            HashCache::new(),
            FileServerConfig::default(),
        )
        .unwrap();
        assert!(server.local_addr().port() != 0);
        // Dropping must wake the acceptor through the loopback address.
        drop(server);
    }

    /// A server over a folder holding `name` with `content`.
    fn serving(
        name: &str,
        content: &[u8],
        config: FileServerConfig,
    ) -> (tempfile::TempDir, FileServer) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(name), content).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = SharedDir::open(tmp.path()).unwrap();
        let server = FileServer::start(listener, shared, HashCache::new(), config).unwrap();
        (tmp, server)
    }

    /// One request on a fresh connection; the whole response as text
    /// (lossy) and as bytes.
    fn exchange(server: &FileServer, request: &str) -> Vec<u8> {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        out
    }

    fn body(response: &[u8]) -> &[u8] {
        let at = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        &response[at + 4..]
    }

    #[test]
    fn serves_piece_lists_with_the_file_rules() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let (_tmp, server) = serving("a b.bin", &content, FileServerConfig::default());
        let expected = crate::pieces::PieceList::hash(
            &mut &content[..],
            crate::pieces::PIECE_SIZE,
            &mut |_| {},
        )
        .unwrap();
        let ok = exchange(
            &server,
            "GET /pieces/a%20b.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&ok);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
        assert!(text.contains(&format!("\r\nETag: \"{}\"\r\n", expected.sha256)));
        assert_eq!(body(&ok), expected.to_document().as_bytes());
        assert_eq!(
            crate::pieces::PieceList::parse(body(&ok)).unwrap(),
            expected
        );

        let head = exchange(
            &server,
            "HEAD /pieces/a%20b.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(body(&head).is_empty());
        assert!(String::from_utf8_lossy(&head).contains(&format!(
            "Content-Length: {}\r\n",
            expected.to_document().len()
        )));
        for (request, status) in [
            ("GET /pieces/missing HTTP/1.1", "404"),
            ("GET /pieces/a%2Fb HTTP/1.1", "400"),
            ("GET /pieces/.. HTTP/1.1", "400"),
            ("POST /pieces/a%20b.bin HTTP/1.1", "405"),
        ] {
            let reply = exchange(&server, &format!("{request}\r\nConnection: close\r\n\r\n"));
            let line = String::from_utf8_lossy(&reply);
            assert!(
                line.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request}: {line}"
            );
        }
    }

    #[test]
    fn the_upload_limit_holds_for_all_connections_together() {
        const RATE: u64 = 4 * 1024 * 1024;
        let content = vec![7u8; 2 * 1024 * 1024];
        let (_tmp, server) = serving(
            "f",
            &content,
            FileServerConfig {
                max_upload_rate: Some(RATE),
                ..FileServerConfig::default()
            },
        );
        let server = Arc::new(server);
        let started = Instant::now();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let server = Arc::clone(&server);
                thread::spawn(move || {
                    exchange(
                        &server,
                        "GET /files/f HTTP/1.1\r\nConnection: close\r\n\r\n",
                    )
                })
            })
            .collect();
        for reader in readers {
            let response = reader.join().unwrap();
            assert_eq!(body(&response), &content[..]);
        }
        // 4 MiB at 4 MiB/s, less the burst: close to a second, not half.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn shutdown_wakes_a_transfer_waiting_on_the_limit() {
        let content = vec![1u8; 1024 * 1024];
        let (_tmp, server) = serving(
            "f",
            &content,
            FileServerConfig {
                max_upload_rate: Some(throttle::MIN_RATE),
                ..FileServerConfig::default()
            },
        );
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream.write_all(b"GET /files/f HTTP/1.1\r\n\r\n").unwrap();
        let mut first = [0u8; 64];
        stream.read_exact(&mut first).unwrap();
        let started = Instant::now();
        server.shutdown();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
