//! `dht-server --http ADDR`: a small blocking HTTP/1.1 listener beside the
//! registry, serving a read-only HTML page of what is shared (`GET /`, with
//! a FIND-backed search as `GET /?q=WORDS`) and `GET /metrics` in the
//! Prometheus text exposition format 0.0.4.
//!
//! One acceptor thread, one short-lived thread per connection, at most
//! [`MAX_CONNECTIONS`] at once; every response closes its connection. The
//! page asks the registry over its own wire protocol (a FIND on a loopback
//! connection), so it shows exactly what any client would see; the
//! registration counts come from a read-only SQLite connection opened per
//! request (closed at once, so it never keeps the WAL alive at shutdown).
//! This module must never write to the registry, and a misbehaving browser
//! must cost it one of its own slots, never a registry worker.

mod page;
mod prometheus;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_proto::client::Client;
use p2p_proto::protocol::FindHit;

use crate::store::{self, admin::Stats, OpenMode, SyncMode};

/// Longest request head (request line and headers) accepted; longer is `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most headers in a request; more is `431`.
pub const MAX_HEADERS: usize = 32;

/// HTTP connections served at once; one more is answered `503` and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// The whole request head must arrive within this long after the connection opens.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time one write of the response may block on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest search text (`q=`) accepted, in bytes after decoding; longer is `400`.
pub const MAX_QUERY_BYTES: usize = 512;

/// Deadline for the page's FIND to the registry (connect, and each read and write).
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes read away after a response before closing (linger-before-close).
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024;

/// Longest wait for the client to finish sending after a response.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the HTTP listener needs to know.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Address to listen on (`--http`); port 0 picks a free port.
    pub listen: String,
    /// The registry's own listener, asked for FIND (an unspecified address
    /// is reached over loopback).
    pub registry: SocketAddr,
    /// The database, for the registration counts (opened read-only).
    pub db: String,
    /// The registry's TTL: what "live" means in the counts.
    pub ttl: Duration,
}

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot start the HTTP thread: {0}")]
    Thread(io::Error),
}

/// A bound HTTP listener, not yet serving.
pub struct WebServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Arc<WebConfig>,
}

impl WebServer {
    pub fn bind(mut config: WebConfig) -> Result<WebServer, WebError> {
        let bind_err = |source| WebError::Bind {
            addr: config.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&config.listen).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        // Where to connect to reach a listener bound to it.
        config.registry = p2p_net::accept::wake_address(config.registry);
        Ok(WebServer {
            listener,
            local_addr,
            config: Arc::new(config),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on a background thread for the rest of the process (it holds
    /// nothing that needs closing: the process may exit under it).
    pub fn spawn(self) -> Result<(), WebError> {
        thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || self.accept_loop())
            .map(drop)
            .map_err(WebError::Thread)
    }

    fn accept_loop(self) {
        let active = Arc::new(AtomicUsize::new(0));
        // The shared accept loop backs off when accept fails (out of
        // descriptors); this listener serves for the life of the process.
        p2p_net::accept_loop(
            "http",
            &self.listener,
            || false,
            |stream, _| {
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    refuse_busy(stream);
                    return ControlFlow::Continue(());
                }
                let slot = Slot(Arc::clone(&active));
                let config = Arc::clone(&self.config);
                let spawned = thread::Builder::new().name("http".into()).spawn(move || {
                    let _slot = slot;
                    serve(stream, &config);
                });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start an HTTP thread; connection dropped");
                }
                ControlFlow::Continue(())
            },
        );
    }
}

/// One of the [`MAX_CONNECTIONS`] slots, given back when dropped (also on a panic).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let body = "too many HTTP connections; try again later\n";
    let _ = stream.write_all(head(503, "text/plain; charset=utf-8", body.len(), &[]).as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// A response: status, content type, body, extra headers.
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn html(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            body,
            headers: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn head(status: u16, content_type: &str, len: usize, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'\r\n\
         Connection: close\r\n",
        reason(status)
    );
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Serves one request on `stream`, then closes it.
fn serve(mut stream: TcpStream, config: &WebConfig) {
    let peer = stream.peer_addr().ok();
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let (response, is_head) = match read_head(&mut stream) {
        Ok(Head { method, target }) => {
            let is_head = method == "HEAD";
            (route(&method, &target, config), is_head)
        }
        Err(HeadError::Closed) => return,
        Err(HeadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(HeadError::Timeout) => (Response::text(408, "request head too slow\n"), false),
        Err(HeadError::Bad(why)) => (Response::text(400, format!("{why}\n")), false),
    };
    let head = head(
        response.status,
        response.content_type,
        response.body.len(),
        &response.headers,
    );
    let result = stream.write_all(head.as_bytes()).and_then(|()| {
        if is_head {
            Ok(())
        } else {
            stream.write_all(response.body.as_bytes())
        }
    });
    if let Err(e) = result {
        tracing::debug!(client = ?peer, error = %e, "HTTP response not delivered");
    }
    p2p_net::linger_close(&stream, DRAIN_TIMEOUT, MAX_DRAIN_BYTES);
}

struct Head {
    method: String,
    target: String,
}

enum HeadError {
    Closed,
    TooLarge,
    Timeout,
    Bad(&'static str),
}

/// Reads the request head within [`HEAD_TIMEOUT`] and [`MAX_HEAD_BYTES`].
/// A body, if any, is never read: every route is a GET.
fn read_head(stream: &mut TcpStream) -> Result<Head, HeadError> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut filled = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Timeout);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Bad("request head incomplete")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Closed),
        };
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                let (Some(method), Some(target)) = (request.method, request.path) else {
                    return Err(HeadError::Bad("bad request line"));
                };
                return Ok(Head {
                    method: method.to_owned(),
                    target: target.to_owned(),
                });
            }
            Ok(httparse::Status::Partial) if filled == buf.len() => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Bad("malformed HTTP request")),
        }
    }
}

fn route(method: &str, target: &str, config: &WebConfig) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" && path != "/metrics" {
        return Response::text(404, "not found\n");
    }
    if method != "GET" && method != "HEAD" {
        let mut response = Response::text(405, "only GET and HEAD\n");
        response.headers.push(("Allow", "GET, HEAD"));
        return response;
    }
    if path == "/metrics" {
        return Response {
            status: 200,
            content_type: prometheus::CONTENT_TYPE,
            body: prometheus::render(crate::metrics::global(), stats(config).as_ref()),
            headers: Vec::new(),
        };
    }
    let query = match search_text(query) {
        Ok(q) => q,
        Err(why) => return Response::html(400, page::error(why)),
    };
    let words: Vec<&str> = query.split_whitespace().collect();
    let found = if words.is_empty() {
        None
    } else {
        Some(find(config.registry, &words))
    };
    Response::html(
        200,
        page::index(&query, found.as_ref(), stats(config).as_ref()),
    )
}

/// The decoded `q=` of a query string (`+` is a space), empty when absent.
fn search_text(query: &str) -> Result<String, &'static str> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "q" {
            continue;
        }
        let spaced = value.replace('+', " ");
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
        if bytes.len() > MAX_QUERY_BYTES {
            return Err("the search text is too long");
        }
        let text = String::from_utf8(bytes).map_err(|_| "the search text is not UTF-8")?;
        if text.chars().any(char::is_control) {
            return Err("the search text has control characters");
        }
        return Ok(text);
    }
    Ok(String::new())
}

/// FIND over the registry's own wire protocol, as any client would.
fn find(registry: SocketAddr, words: &[&str]) -> Result<Vec<FindHit>, String> {
    let addr = registry.to_string();
    let mut client = Client::connect_timeout(&addr, REGISTRY_TIMEOUT).map_err(|e| e.to_string())?;
    let hits = client.find(words).map_err(|e| e.to_string())?;
    let _ = client.quit();
    Ok(hits)
}

/// The registry's counts from a read-only connection, `None` (logged) when
/// the database cannot be read just now.
fn stats(config: &WebConfig) -> Option<Stats> {
    let read = || -> Result<Stats, String> {
        let conn = store::open_connection(&config.db, OpenMode::ExistingReadOnly, SyncMode::Normal)
            .map_err(|e| e.to_string())?;
        let live_since = store::live_since(store::now_ms(), config.ttl);
        store::admin::stats(&conn, live_since).map_err(|e| e.to_string())
    };
    match read() {
        Ok(stats) => Some(stats),
        Err(error) => {
            tracing::warn!(%error, "cannot read the registry's counts for HTTP");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_decodes_and_bounds() {
        assert_eq!(search_text("q=holiday+photos").unwrap(), "holiday photos");
        assert_eq!(search_text("x=1&q=%C3%A9t%C3%A9").unwrap(), "été");
        assert_eq!(search_text("").unwrap(), "");
        assert!(search_text("q=%FF").is_err());
        assert!(search_text("q=a%0Ab").is_err());
        assert!(search_text(&format!("q={}", "a".repeat(MAX_QUERY_BYTES + 1))).is_err());
    }
}
