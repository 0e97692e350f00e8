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
//! response.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use p2p_proto::protocol::Source;

use super::error::SourceError;
use super::limits::{CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT};

/// Largest response head accepted (status line and headers): far more than
/// any file server sends, small enough that a hostile peer cannot make us
/// buffer much.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Most response headers parsed.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// What is escaped in a name placed in a URL path: everything except the
/// unreserved characters of RFC 3986.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URL path of a shared file.
pub fn file_path(name: &str) -> String {
    format!("/files/{}", utf8_percent_encode(name, PATH_SEGMENT))
}

/// The URL path of a shared file's piece list (a peer extension).
pub fn pieces_path(name: &str) -> String {
    format!("/pieces/{}", utf8_percent_encode(name, PATH_SEGMENT))
}

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
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && !value.eq_ignore_ascii_case("identity")
            {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
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
}

impl Connection {
    /// Connects to `addr` (`host:port`) within [`CONNECT_TIMEOUT`] and sets
    /// the read and write timeouts.
    pub fn open(addr: &str) -> Result<Connection, SourceError> {
        let err = |source| SourceError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
        let mut last = io::Error::new(ErrorKind::NotFound, "the address resolves to nothing");
        let mut connected = None;
        for sa in addrs {
            match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = connected.ok_or_else(|| err(last))?;
        let net = |source| SourceError::Network {
            addr: addr.to_owned(),
            source,
        };
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(net)?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(net)?;
        // Requests are small and wait for their answer: no Nagle delay.
        stream.set_nodelay(true).map_err(net)?;
        Ok(Connection {
            addr: addr.to_owned(),
            stream,
            buffer: vec![0u8; MAX_RESPONSE_HEAD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        })
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
        self.stream
            .write_all(head.as_bytes())
            .map_err(|e| self.network(e))
    }

    /// Reads until the blank line that ends the head, at most
    /// [`MAX_RESPONSE_HEAD_BYTES`], and parses it. Body bytes that came
    /// with it stay buffered for [`read_body`](Self::read_body).
    pub fn read_head(&mut self) -> Result<ResponseHead, SourceError> {
        // Whatever is buffered now arrived before the request was answered.
        if self.start < self.end {
            return Err(self.bad("bytes before the response head"));
        }
        self.start = 0;
        self.end = 0;
        loop {
            let n = match self.stream.read(&mut self.buffer[self.end..]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.network(e)),
            };
            if n == 0 {
                return Err(self.bad("the connection closed before the response head ended"));
            }
            self.end += n;
            let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buffer[..self.end]) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let head = ResponseHead::from_parsed(&parsed).map_err(|r| self.bad(&r))?;
                    self.start = head_len;
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if self.end == self.buffer.len() => {
                    return Err(self.bad("response head longer than 16 KiB"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(self.bad(&e.to_string())),
            }
        }
    }

    /// Reads body bytes: first those buffered with the head, then from the
    /// socket. `Ok(0)` means the source closed the connection.
    pub fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
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
pub fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
                b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nETag: \"ab\"\r\n\r\nabcEXTRA",
            ] {
                let _ = s.read(&mut buf).unwrap();
                s.write_all(reply).unwrap();
            }
        });
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
        server.join().unwrap();
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
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
    }
}
