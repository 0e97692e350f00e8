//! Keep-alive connections kept between the files of a batch (`peer get
//! NAME...`): after a file's whole body has arrived over a connection that
//! may carry another request ([`Connection::reusable`]), the connection
//! waits here, idle, and the next file from the same source (`host:port`)
//! is asked over it instead of over a new one. A batch of 10,000 small
//! files from one peer then opens about `--jobs` connections, not 10,000.
//!
//! Only clean connections come back: any error, stray bytes after a body,
//! `Connection: close`, a body of unannounced length or one not read to its
//! end, and the connection is closed instead. An idle connection is handed
//! out again only if it still looks open ([`Connection::idle_and_open`])
//! and has not waited longer than [`MAX_IDLE_TIME`]; and because a source
//! may close an idle connection just as we reuse it (the classic keep-alive
//! race), a request on a reused connection that fails before any byte of
//! the answer is sent again, once, on a new connection. Nothing about what
//! the bytes are is decided here: every file is still checked against its
//! registered size and SHA-256.
//!
//! The pool is bounded: at most `per_source` idle connections to one source
//! (a batch passes its `--jobs`) and [`MAX_IDLE_TOTAL`] in all; the oldest
//! idle connection makes room. Dropping the pool closes what it holds.
//!
//! This module must not hand one connection to two requests at once (a
//! connection is moved out of the pool while it is used), nor keep a
//! connection whose last exchange was not complete and clean.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p2p_proto::protocol::Source;

use super::error::SourceError;
use super::http::{exchange, file_request, Connection, Response};

/// Most idle connections the pool keeps, over all sources: each is a
/// socket on both sides, and a batch uses at most `--jobs` at once.
pub const MAX_IDLE_TOTAL: usize = 64;

/// An idle connection older than this is closed instead of reused: a source
/// closes idle keep-alive connections after its own timeout (our peers
/// after their read timeout, 30 s; other servers after as little as 5 s),
/// and a request on a connection it is closing costs a retry.
pub const MAX_IDLE_TIME: Duration = Duration::from_secs(4);

/// A pool of idle keep-alive connections, cheap to clone (the clones
/// share it), so the threads of a hedged request can take from it.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Most idle connections to one source.
    per_source: usize,
    /// Most idle connections in all.
    total: usize,
    idle: Mutex<Idle>,
    opened: AtomicU64,
    reused: AtomicU64,
    retried: AtomicU64,
}

/// The idle connections by `host:port`, most recently returned last.
#[derive(Debug, Default)]
struct Idle {
    by_source: HashMap<String, Vec<(Connection, Instant)>>,
    count: usize,
}

/// What a pool did, for the batch's log and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// New connections opened.
    pub opened: u64,
    /// Requests sent over an idle connection taken from the pool.
    pub reused: u64,
    /// Requests on a reused connection that failed before any answer and
    /// were sent again on a new one (counted in `opened` too).
    pub retried: u64,
}

impl Pool {
    /// A pool keeping at most `per_source` idle connections to each source
    /// (at least 1) and at most [`MAX_IDLE_TOTAL`] (or `per_source`, if
    /// more) in all.
    pub fn new(per_source: usize) -> Pool {
        let per_source = per_source.max(1);
        Pool {
            shared: Arc::new(Shared {
                per_source,
                total: MAX_IDLE_TOTAL.max(per_source),
                idle: Mutex::new(Idle::default()),
                opened: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                retried: AtomicU64::new(0),
            }),
        }
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            opened: self.shared.opened.load(Ordering::Relaxed),
            reused: self.shared.reused.load(Ordering::Relaxed),
            retried: self.shared.retried.load(Ordering::Relaxed),
        }
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // The lists stay consistent whatever a panicking holder did (each
        // change is a single push or remove with its count).
        self.shared.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /files/<name>` from `source` (from byte `range` on when
    /// resuming), over an idle connection to it when there is one, else
    /// over a new one; reads the response head. A reused connection that
    /// fails before any byte of the answer is replaced by a new one, once.
    pub fn request_file(
        &self,
        source: &Source,
        name: &str,
        range: Option<u64>,
    ) -> Result<Response, SourceError> {
        let addr = source.addr();
        let request = file_request(source, name, range, false);
        if let Some(mut conn) = self.take(&addr) {
            self.shared.reused.fetch_add(1, Ordering::Relaxed);
            match exchange(&mut conn, &request) {
                Ok(head) => return Ok(Response { conn, head }),
                // Closed or reset before answering: the source let the
                // idle connection go as we reused it. A stall is not that
                // (it already cost its deadline), nor is a bad answer.
                Err(SourceError::Network { .. } | SourceError::BadResponse { .. })
                    if conn.unanswered() =>
                {
                    self.shared.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = Connection::open(&addr)?;
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        let head = exchange(&mut conn, &request)?;
        Ok(Response { conn, head })
    }

    /// Keeps `conn` for the next request to its source if it may carry one
    /// ([`Connection::reusable`]); closes it otherwise, or when the pool is
    /// full for that source. When the whole pool is full, the oldest idle
    /// connection is closed to make room.
    pub fn put(&self, conn: Connection) {
        // Stray bytes or a close may also be waiting in the socket already.
        if !conn.reusable() || !conn.idle_and_open() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.by_source.entry(conn.addr().to_owned()).or_default();
        if list.len() >= self.shared.per_source {
            return;
        }
        list.push((conn, Instant::now()));
        idle.count += 1;
        if idle.count > self.shared.total {
            idle.drop_oldest();
        }
    }

    /// The most recently returned idle connection to `addr` that still
    /// looks usable; stale ones found on the way are closed.
    fn take(&self, addr: &str) -> Option<Connection> {
        let mut idle = self.lock();
        let list = idle.by_source.get_mut(addr)?;
        let mut found = None;
        let mut removed = 0;
        while let Some((conn, since)) = list.pop() {
            removed += 1;
            if since.elapsed() <= MAX_IDLE_TIME && conn.idle_and_open() {
                found = Some(conn);
                break;
            }
        }
        if list.is_empty() {
            idle.by_source.remove(addr);
        }
        idle.count -= removed;
        found
    }
}

impl Idle {
    /// Closes the idle connection that has waited longest.
    fn drop_oldest(&mut self) {
        let oldest = self
            .by_source
            .iter()
            .filter_map(|(addr, list)| list.first().map(|(_, since)| (*since, addr.clone())))
            .min();
        if let Some((_, addr)) = oldest {
            if let Some(list) = self.by_source.get_mut(&addr) {
                // Each list is oldest first.
                list.remove(0);
                self.count -= 1;
                if list.is_empty() {
                    self.by_source.remove(&addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Mutex;

    const BODY: &[u8] = b"hello";

    fn source(addr: std::net::SocketAddr) -> Source {
        Source {
            host: addr.ip().to_string(),
            port: addr.port(),
            size: BODY.len() as u64,
            sha256: "00".repeat(32),
        }
    }

    /// A source answering each request with `reply`, `answers` times per
    /// connection; then it reads the next request and closes unanswered.
    /// (The suites' scripted `FakeSource`, counting per connection.)
    fn serve(answers: usize, reply: &'static str) -> p2p_tests::FakeSource {
        let per_connection = Mutex::new(HashMap::<std::net::SocketAddr, usize>::new());
        let fake = p2p_tests::FakeSource::start(move |_, stream| {
            let Ok(peer) = stream.peer_addr() else {
                return false;
            };
            let mut counts = per_connection.lock().unwrap();
            let done = counts.entry(peer).or_insert(0);
            if *done >= answers {
                return false;
            }
            *done += 1;
            stream.write_all(reply.as_bytes()).is_ok()
        });
        fake
    }

    fn fetch(pool: &Pool, source: &Source) -> Result<Vec<u8>, SourceError> {
        let mut response = pool.request_file(source, "a", None)?;
        let mut body = vec![0u8; BODY.len()];
        response.conn.read_body_exact(&mut body, &mut 0).unwrap();
        pool.put(response.conn);
        Ok(body)
    }

    const KEEP: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn one_connection_carries_request_after_request() {
        let fake = serve(usize::MAX, KEEP);
        let addr = fake.addr;
        let pool = Pool::new(2);
        for _ in 0..5 {
            assert_eq!(fetch(&pool, &source(addr)).unwrap(), BODY);
        }
        assert_eq!(fake.connections(), 1);
        let stats = pool.stats();
        assert_eq!((stats.opened, stats.reused, stats.retried), (1, 4, 0));
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn a_connection_closed_unanswered_is_retried_once_on_a_new_one() {
        let fake = serve(1, KEEP);
        let addr = fake.addr;
        let pool = Pool::new(2);
        for _ in 0..3 {
            assert_eq!(fetch(&pool, &source(addr)).unwrap(), BODY);
        }
        assert_eq!(fake.connections(), 3);
        // The source reads the second request of each connection and
        // closes: each reuse fails unanswered and is sent again.
        let stats = pool.stats();
        assert_eq!((stats.opened, stats.reused, stats.retried), (3, 2, 2));
    }

    #[test]
    fn unclean_connections_are_not_kept() {
        let pool = Pool::new(4);
        for reply in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloSTRAY",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let addr = serve(usize::MAX, reply).addr;
            let mut response = pool.request_file(&source(addr), "a", None).unwrap();
            let mut body = vec![0u8; BODY.len()];
            response.conn.read_body_exact(&mut body, &mut 0).unwrap();
            pool.put(response.conn);
            assert_eq!(pool.idle(), 0, "{reply:?} was kept");
        }
        // A body not read to its end.
        let addr = serve(usize::MAX, KEEP).addr;
        let response = pool.request_file(&source(addr), "a", None).unwrap();
        pool.put(response.conn);
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn the_pool_is_bounded_per_source() {
        let fake = serve(usize::MAX, KEEP);
        let addr = fake.addr;
        let pool = Pool::new(2);
        let responses: Vec<Response> = (0..3)
            .map(|_| pool.request_file(&source(addr), "a", None).unwrap())
            .collect();
        for mut response in responses {
            let mut body = vec![0u8; BODY.len()];
            response.conn.read_body_exact(&mut body, &mut 0).unwrap();
            pool.put(response.conn);
        }
        assert_eq!(fake.connections(), 3);
        assert_eq!(pool.idle(), 2);
    }
}
