//! The downloader's side of HTTP/1.1: one connection to one source, a
//! request head out, a response head in (parsed with httparse), then the
//! body read straight into the caller's buffer.
//!
//! A [`Connection`] may carry several requests in turn (keep-alive, one at
//! a time, never pipelined), which is how a multi-source download asks one
//! source for piece after piece. This module must not trust what a source
//! says: heads are bounded ([`MAX_RESPONSE_HEAD_BYTES`],
//! [`MAX_RESPONSE_HEADERS`]), bodies are read only as far as the caller
//! allows, and bytes a source sends beyond an announced body are reported
//! ([`Connection::has_stray_bytes`]) rather than taken for the next
//! response. A connection also keeps track of whether it may carry another
//! request once its current response is done ([`Connection::reusable`]),
//! which is what `pool` asks before keeping it for the next file.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use p2p_proto::protocol::Source;

use super::error::SourceError;
use super::limits::{
    scaled, CONNECT_TIMEOUT, FIRST_BYTE_TIMEOUT, HEAD_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT,
};

/// Largest response head accepted (status line and headers): far more than
/// any file server sends, small enough that a hostile peer cannot make us
/// buffer much.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Most response headers parsed (and most trailer fields after a chunked
/// body).
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// Longest line of a chunked body's framing (chunk size with extensions,
/// trailer field).
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// The URL path of a shared file: the file server's own scheme, one
/// place for both sides.
pub use crate::http::handler::file_url as file_path;

/// The URL path of a shared file's piece list (a peer extension).
pub use crate::http::handler::pieces_url as pieces_path;

/// A `GET` request head for `path` on `addr`, ending with the blank line;
/// `extra` holds further header lines, each ending in CRLF.
pub fn get_request(addr: &str, path: &str, close: bool, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: p2p-peer/{}\r\n\
         Accept-Encoding: identity\r\n{}{extra}\r\n",
        env!("CARGO_PKG_VERSION"),
        if close { "Connection: close\r\n" } else { "" },
    )
}

/// The parts of a response head a download needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub content_length: Option<u64>,
    pub content_range: Option<String>,
    pub etag: Option<String>,
    /// The source closes the connection after this response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// The body comes with `Transfer-Encoding: chunked` (any
    /// `Content-Length` is then ignored, as RFC 9112 requires).
    pub chunked: bool,
}

impl ResponseHead {
    fn from_parsed(parsed: &httparse::Response<'_, '_>) -> Result<ResponseHead, String> {
        let status = parsed.code.ok_or("no status code")?;
        let mut head = ResponseHead {
            status,
            reason: parsed.reason.unwrap_or("").to_owned(),
            content_length: None,
            content_range: None,
            etag: None,
            close: parsed.version == Some(0),
            chunked: false,
        };
        for header in parsed.headers.iter() {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| format!("header {} is not UTF-8", header.name))?
                .trim();
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let len = digits(value).ok_or_else(|| format!("bad Content-Length {value:?}"))?;
                if head.content_length.is_some_and(|old| old != len) {
                    return Err("conflicting Content-Length headers".to_owned());
                }
                head.content_length = Some(len);
            } else if name.eq_ignore_ascii_case("content-range") {
                head.content_range = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("etag") {
                head.etag = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        head.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") && head.close {
                        head.close = parsed.version != Some(0);
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(',').map(str::trim) {
                    if coding.eq_ignore_ascii_case("chunked") {
                        head.chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") {
                        return Err(format!("unsupported Transfer-Encoding {value:?}"));
                    }
                }
            }
        }
        if head.chunked {
            head.content_length = None;
        }
        Ok(head)
    }

    /// The entity tag without quotes and weak marker, as our peers send
    /// the file's SHA-256.
    pub fn etag_value(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .map(|etag| etag.trim_start_matches("W/").trim_matches('"'))
    }
}

/// One connection to a source.
#[derive(Debug)]
pub struct Connection {
    /// `host:port` of the source, for messages.
    addr: String,
    stream: TcpStream,
    /// Bytes received but not yet consumed: the rest of a head's read,
    /// i.e. the start of its body.
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Where a chunked body is, when the response has one.
    chunked: Option<Chunked>,
    /// The current response allows another request after it: no
    /// `Connection: close`, and a body of announced length (not chunked, not
    /// "until the source closes").
    keep_alive: bool,
    /// Body bytes of the current response not yet read (of its
    /// `Content-Length`).
    body_left: u64,
    /// Something went wrong on this connection (an I/O error, an early
    /// close, a bad head, more body than announced): never reuse it.
    broken: bool,
    /// At least one byte of the current response arrived. A request on a
    /// reused connection that fails before this may be sent again on a new
    /// one (the source closed the idle connection as we reused it).
    answered: bool,
}

/// The decoder's place in a `Transfer-Encoding: chunked` body.
#[derive(Debug, Clone, Copy, Default)]
struct Chunked {
    /// Data bytes left in the current chunk.
    left: u64,
    /// The current chunk's data is complete; its CRLF comes next.
    after_data: bool,
    /// The last chunk and the trailers have been read.
    done: bool,
}

impl Connection {
    /// Connects to `addr` (`ip:port` or `[ipv6]:port`: never a host name,
    /// which would have to be resolved) within [`CONNECT_TIMEOUT`] and sets
    /// the read and write timeouts.
    pub fn open(addr: &str) -> Result<Connection, SourceError> {
        let err = |source| SourceError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let sa: SocketAddr = addr.parse().map_err(|_| {
            err(io::Error::new(
                ErrorKind::InvalidInput,
                "not an IP address and port; host names are not resolved",
            ))
        })?;
        let stream = TcpStream::connect_timeout(&sa, scaled(CONNECT_TIMEOUT)).map_err(err)?;
        let net = |source| SourceError::Network {
            addr: addr.to_owned(),
            source,
        };
        stream
            .set_read_timeout(Some(scaled(READ_TIMEOUT)))
            .map_err(net)?;
        stream
            .set_write_timeout(Some(scaled(WRITE_TIMEOUT)))
            .map_err(net)?;
        // Requests are small and wait for their answer: no Nagle delay.
        stream.set_nodelay(true).map_err(net)?;
        Ok(Connection {
            addr: addr.to_owned(),
            stream,
            buffer: vec![0u8; MAX_RESPONSE_HEAD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            chunked: None,
            keep_alive: false,
            body_left: 0,
            broken: false,
            answered: false,
        })
    }

    /// Whether this connection may carry another request now: the last
    /// response allowed it, its whole body was read and nothing more came,
    /// and nothing went wrong.
    pub fn reusable(&self) -> bool {
        self.keep_alive && !self.broken && self.body_left == 0 && !self.has_stray_bytes()
    }

    /// Whether no byte of the current response has arrived (see
    /// [`Connection::reusable`]'s use in `pool`).
    pub fn unanswered(&self) -> bool {
        !self.answered
    }

    /// Whether an idle connection still looks usable: the source has
    /// neither closed it nor sent anything unasked (checked without
    /// blocking). The source may still close it a moment later, which is
    /// why a request on a reused connection is retried once.
    pub fn idle_and_open(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut one = [0u8; 1];
        let peeked = self.stream.peek(&mut one);
        let restored = self.stream.set_nonblocking(false).is_ok();
        restored && matches!(peeked, Err(e) if e.kind() == ErrorKind::WouldBlock)
    }

    /// `host:port` of the source.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket, e.g. to shut it down from another thread.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }

    fn network(&self, source: io::Error) -> SourceError {
        SourceError::Network {
            addr: self.addr.clone(),
            source,
        }
    }

    fn bad(&self, reason: &str) -> SourceError {
        SourceError::BadResponse {
            addr: self.addr.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Sends a request head (see [`get_request`]).
    pub fn send(&mut self, head: &str) -> Result<(), SourceError> {
        self.answered = false;
        let sent = self.stream.write_all(head.as_bytes());
        sent.map_err(|e| {
            self.broken = true;
            self.network(e)
        })
    }

    /// Reads until the blank line that ends the head, at most
    /// [`MAX_RESPONSE_HEAD_BYTES`], and parses it; interim `1xx` answers
    /// (`100 Continue`) are skipped. The first byte must come within
    /// [`FIRST_BYTE_TIMEOUT`] and the whole head within [`HEAD_TIMEOUT`] of
    /// the call, however the source paces its bytes. Body bytes that came
    /// with it stay buffered for [`read_body`](Self::read_body).
    pub fn read_head(&mut self) -> Result<ResponseHead, SourceError> {
        self.read_head_within(FIRST_BYTE_TIMEOUT, HEAD_TIMEOUT)
    }

    /// [`read_head`](Self::read_head) with other deadlines (both scaled),
    /// for answers a source may have to compute first (a piece list).
    pub fn read_head_within(
        &mut self,
        first_byte: Duration,
        whole_head: Duration,
    ) -> Result<ResponseHead, SourceError> {
        // Whatever is buffered now arrived before the request was answered.
        if self.start < self.end {
            return Err(self.bad("bytes before the response head"));
        }
        self.start = 0;
        self.end = 0;
        self.chunked = None;
        self.keep_alive = false;
        self.body_left = 0;
        let asked = Instant::now();
        let result = self.read_head_by(asked + scaled(first_byte), asked + scaled(whole_head));
        let restored = self
            .stream
            .set_read_timeout(Some(scaled(READ_TIMEOUT)))
            .map_err(|e| self.network(e));
        let (head, ()) = match (result, restored) {
            (Ok(head), Ok(())) => (head, ()),
            (Err(e), _) | (_, Err(e)) => {
                self.broken = true;
                return Err(e);
            }
        };
        match head.content_length {
            Some(len) if !head.close && !head.chunked => {
                self.keep_alive = true;
                self.body_left = len;
            }
            _ => {}
        }
        Ok(head)
    }

    fn read_head_by(
        &mut self,
        first_byte_by: Instant,
        head_by: Instant,
    ) -> Result<ResponseHead, SourceError> {
        let mut received = false;
        loop {
            if self.start < self.end {
                let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.buffer[self.start..self.end]) {
                    Ok(httparse::Status::Complete(head_len)) => {
                        let head = ResponseHead::from_parsed(&parsed).map_err(|r| self.bad(&r))?;
                        self.start += head_len;
                        if head.status == 101 {
                            return Err(self.bad("101 Switching Protocols to a GET"));
                        }
                        if (100..200).contains(&head.status) {
                            // An interim answer: the real one follows.
                            continue;
                        }
                        if head.chunked {
                            self.chunked = Some(Chunked::default());
                        }
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial)
                        if self.start == 0 && self.end == self.buffer.len() =>
                    {
                        return Err(self.bad("response head longer than 16 KiB"));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(self.bad(&e.to_string())),
                }
                if self.start > 0 {
                    self.buffer.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
            } else {
                self.start = 0;
                self.end = 0;
            }
            let deadline = if received { head_by } else { first_byte_by };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SourceError::Stalled {
                    addr: self.addr.clone(),
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| self.network(e))?;
            let n = match self.stream.read(&mut self.buffer[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(SourceError::Stalled {
                        addr: self.addr.clone(),
                    })
                }
                Err(e) => return Err(self.network(e)),
            };
            if n == 0 {
                return Err(self.bad("the connection closed before the response head ended"));
            }
            self.end += n;
            received = true;
            self.answered = true;
        }
    }

    /// Reads body bytes: first those buffered with the head, then from the
    /// socket; a chunked body is decoded. `Ok(0)` means the body ended (the
    /// last chunk) or the source closed the connection.
    pub fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(mut state) = self.chunked else {
            let n = self.read_raw(out);
            self.count_body(&n, out.len());
            return n;
        };
        let n = self.read_chunked(&mut state, out);
        if n.is_err() {
            self.broken = true;
        }
        self.chunked = Some(state);
        n
    }

    /// Keeps [`Connection::reusable`] true to what a plain body read did.
    fn count_body(&mut self, read: &io::Result<usize>, asked: usize) {
        match *read {
            Ok(n) if n as u64 <= self.body_left && (n > 0 || asked == 0) => {
                self.body_left -= n as u64;
            }
            // An error, the source closed, or more than it announced.
            _ => self.broken = true,
        }
    }

    /// Bytes as they come: buffered first, then the socket.
    fn read_raw(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let n = out.len().min(self.end - self.start);
            out[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        loop {
            match self.stream.read(out) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// One byte of the framing of a chunked body (refills the buffer).
    fn framing_byte(&mut self) -> io::Result<u8> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            let n = loop {
                match self.stream.read(&mut self.buffer) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the connection closed inside the chunked framing",
                ));
            }
            self.end = n;
        }
        let byte = self.buffer[self.start];
        self.start += 1;
        Ok(byte)
    }

    /// One CRLF-terminated framing line (chunk size or trailer), without
    /// its ending, at most [`MAX_CHUNK_LINE_BYTES`].
    fn framing_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            match self.framing_byte()? {
                b'\n' => {
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Ok(line);
                }
                byte if line.len() < MAX_CHUNK_LINE_BYTES => line.push(byte),
                _ => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "chunk framing line too long",
                    ))
                }
            }
        }
    }

    fn read_chunked(&mut self, state: &mut Chunked, out: &mut [u8]) -> io::Result<usize> {
        if state.done || out.is_empty() {
            return Ok(0);
        }
        if state.left == 0 {
            if state.after_data && !self.framing_line()?.is_empty() {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "no CRLF after a chunk's data",
                ));
            }
            state.after_data = false;
            let line = self.framing_line()?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailer fields, then the blank line.
                let mut trailers = 0;
                while !self.framing_line()?.is_empty() {
                    trailers += 1;
                    if trailers > MAX_RESPONSE_HEADERS {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            "too many trailer fields",
                        ));
                    }
                }
                state.done = true;
                return Ok(0);
            }
            state.left = size;
        }
        let want = usize::try_from(state.left)
            .unwrap_or(usize::MAX)
            .min(out.len());
        let n = self.read_raw(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the connection closed inside a chunk",
            ));
        }
        state.left -= n as u64;
        state.after_data = state.left == 0;
        Ok(n)
    }

    /// Whether a chunked body has ended where the caller stopped reading
    /// (reads the last chunk's framing); always true for other bodies,
    /// whose end is checked with [`has_stray_bytes`](Self::has_stray_bytes).
    pub fn body_ended(&mut self) -> io::Result<bool> {
        if self.chunked.is_none() {
            return Ok(true);
        }
        let mut one = [0u8; 1];
        Ok(self.read_body(&mut one)? == 0)
    }

    /// Fills `out` with body bytes; fails with `UnexpectedEof` when the
    /// source closes first (how many arrived is then in `filled`).
    pub fn read_body_exact(&mut self, out: &mut [u8], filled: &mut usize) -> io::Result<()> {
        while *filled < out.len() {
            match self.read_body(&mut out[*filled..])? {
                0 => return Err(io::Error::from(ErrorKind::UnexpectedEof)),
                n => *filled += n,
            }
        }
        Ok(())
    }

    /// Whether bytes arrived beyond the body just read: a source that sends
    /// more than it announced cannot be trusted with the next request.
    pub fn has_stray_bytes(&self) -> bool {
        self.start < self.end
    }

    /// Whether the source has more to send after a body whose length was
    /// not announced (reads one byte to find out).
    pub fn has_more(&mut self) -> Result<bool, SourceError> {
        let mut one = [0u8; 1];
        self.read_body(&mut one)
            .map(|n| n > 0)
            .map_err(|e| self.network(e))
    }
}

/// `bytes first-last/total`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (digits(first)?, digits(last)?, digits(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

/// Plain decimal digits.
pub use p2p_proto::decimal::parse_decimal as digits;

/// An `ETag` that names another digest means the peer's file changed since
/// it registered; no `ETag` at all is left to the digest check.
pub fn check_etag(head: &ResponseHead, source: &Source, name: &str) -> Result<(), SourceError> {
    match (head.etag_value(), head.etag.as_deref()) {
        (Some(value), Some(etag)) if value != source.sha256 => Err(SourceError::Changed {
            addr: source.addr(),
            name: name.to_owned(),
            etag: etag.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A response whose head has been read; its body is read from `conn`.
#[derive(Debug)]
pub struct Response {
    pub conn: Connection,
    pub head: ResponseHead,
}

impl std::ops::Deref for Response {
    type Target = ResponseHead;

    fn deref(&self) -> &ResponseHead {
        &self.head
    }
}

/// Connects to the source and sends `GET /files/<name>`, with a guarded
/// range when resuming at `range`, asking the source to close after it;
/// reads the response head.
pub fn request_file(
    source: &Source,
    name: &str,
    range: Option<u64>,
) -> Result<Response, SourceError> {
    let mut conn = Connection::open(&source.addr())?;
    let head = exchange(&mut conn, &file_request(source, name, range, true))?;
    Ok(Response { conn, head })
}

/// The request head of `GET /files/<name>` from `source`, with a guarded
/// range when resuming at `range`; `close` asks the source to close after
/// answering.
pub fn file_request(source: &Source, name: &str, range: Option<u64>, close: bool) -> String {
    let extra = match range {
        Some(first) => format!(
            "Range: bytes={first}-\r\nIf-Range: \"{}\"\r\n",
            source.sha256
        ),
        None => String::new(),
    };
    get_request(&source.addr(), &file_path(name), close, &extra)
}

/// Sends a request head on `conn` and reads the response head.
pub fn exchange(conn: &mut Connection, request: &str) -> Result<ResponseHead, SourceError> {
    conn.send(request)?;
    conn.read_head()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn url_paths_escape_everything_but_unreserved() {
        assert_eq!(file_path("a b/c?d#e%"), "/files/a%20b%2Fc%3Fd%23e%25");
        assert_eq!(file_path("x-y_z.~"), "/files/x-y_z.~");
        assert_eq!(pieces_path("a b"), "/pieces/a%20b");
    }

    #[test]
    fn requests_ask_for_keep_alive_or_close() {
        let keep = get_request("h:1", "/files/a", false, "Range: bytes=0-9\r\n");
        assert!(keep.starts_with("GET /files/a HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(keep.ends_with("Range: bytes=0-9\r\n\r\n"));
        assert!(!keep.contains("Connection"));
        assert!(get_request("h:1", "/", true, "").contains("\r\nConnection: close\r\n\r\n"));
    }

    /// Two responses on one connection, the first body partly in the
    /// head's read; then stray bytes after a body.
    #[test]
    fn keep_alive_responses_and_stray_bytes() {
        // The suites' scripted fake source: these two replies in turn on one
        // connection, the second with bytes after its body.
        let answered = std::sync::atomic::AtomicUsize::new(0);
        let fake = p2p_tests::FakeSource::start(move |_, stream| {
            let replies = [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
                b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nETag: \"ab\"\r\n\r\nabcEXTRA",
            ];
            let n = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            replies
                .get(n)
                .is_some_and(|reply| stream.write_all(reply).is_ok())
        });
        let addr = fake.addr.to_string();
        let mut conn = Connection::open(&addr).unwrap();
        conn.send(&get_request(&addr, "/a", false, "")).unwrap();
        let head = conn.read_head().unwrap();
        assert_eq!(
            (head.status, head.content_length, head.close),
            (200, Some(5), false)
        );
        let mut body = [0u8; 5];
        conn.read_body_exact(&mut body, &mut 0).unwrap();
        assert_eq!(&body, b"hello");
        assert!(!conn.has_stray_bytes());
        conn.send(&get_request(&addr, "/b", false, "")).unwrap();
        let head = conn.read_head().unwrap();
        assert_eq!(head.etag_value(), Some("ab"));
        let mut body = [0u8; 3];
        conn.read_body_exact(&mut body, &mut 0).unwrap();
        // "EXTRA" came in the same segment or follows; either way it is not
        // a head of ours.
        if !conn.has_stray_bytes() {
            let mut more = [0u8; 8];
            assert!(conn.read_body(&mut more).unwrap() > 0);
        }
    }

    #[test]
    fn heads_that_close_or_misbehave() {
        let parse = |text: &str| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            parsed.parse(text.as_bytes()).unwrap();
            ResponseHead::from_parsed(&parsed)
        };
        assert!(
            parse("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(parse("HTTP/1.0 200 OK\r\n\r\n").unwrap().close);
        assert!(
            !parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .chunked
        );
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
    }
}
