//! Reading request heads off a connection: framing, limits, the deadline,
//! and the few headers the file server looks at.
//!
//! The request line and headers are parsed with `httparse` from one
//! fixed-size buffer per connection ([`MAX_HEAD_BYTES`]); bytes after a head
//! (a pipelined request) stay in the buffer for the next call. Requests
//! with a body are answered and then the connection is closed, so this
//! module never reads a body.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Largest request head (request line plus headers) accepted. Bounds the
/// memory each connection holds; longer heads get `431`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields accepted in one request; more get `431`.
pub const MAX_HEADERS: usize = 64;

/// The request methods, as far as this server cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other method: answered with `405`.
    Other(String),
}

/// The parts of one request head the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target exactly as sent (still percent-encoded).
    pub target: String,
    /// Whether the client allows the connection to stay open afterwards
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The request announces a body (`Content-Length` > 0 or any
    /// `Transfer-Encoding`). The body is never read, so the connection
    /// is closed after the response.
    pub has_body: bool,
    /// The `Range` header value; `None` when absent or sent more than once.
    pub range: Option<Vec<u8>>,
    /// The `If-Range` header value.
    pub if_range: Option<Vec<u8>>,
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection between requests: the normal end.
    #[error("connection closed by the client")]
    Closed,
    /// Nothing arrived before the deadline while waiting for a request.
    #[error("idle connection timed out")]
    Idle,
    /// Part of a head arrived but not all of it before the deadline.
    #[error("request head not complete before the read timeout")]
    TimedOut,
    /// The head is longer than [`MAX_HEAD_BYTES`] or has more than
    /// [`MAX_HEADERS`] fields.
    #[error("request head too large")]
    TooLarge,
    /// The head is not HTTP/1.x.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// The connection failed (reset, closed in the middle of a head, ...).
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

/// Buffered reading of request heads for one connection.
pub struct HeadReader {
    /// Fixed-size: a connection never holds more than this.
    buf: Box<[u8]>,
    /// How many bytes of `buf` hold received, not yet consumed data.
    len: usize,
}

impl Default for HeadReader {
    fn default() -> Self {
        HeadReader::new()
    }
}

impl HeadReader {
    pub fn new() -> HeadReader {
        HeadReader {
            buf: vec![0; MAX_HEAD_BYTES].into_boxed_slice(),
            len: 0,
        }
    }

    /// Reads the next request head. `timeout` bounds the whole wait, from
    /// this call until the head is complete, so a client trickling bytes
    /// cannot hold the connection longer than that.
    pub fn read_request(
        &mut self,
        stream: &TcpStream,
        timeout: Duration,
    ) -> Result<Request, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut reader = stream;
        loop {
            if self.len > 0 {
                if let Some((request, used)) = parse_head(&self.buf[..self.len])? {
                    self.buf.copy_within(used..self.len, 0);
                    self.len -= used;
                    return Ok(request);
                }
                if self.len == self.buf.len() {
                    return Err(ReadError::TooLarge);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.timed_out());
            }
            stream.set_read_timeout(Some(remaining))?;
            match reader.read(&mut self.buf[self.len..]) {
                Ok(0) if self.len == 0 => return Err(ReadError::Closed),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out())
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn timed_out(&self) -> ReadError {
        if self.len == 0 {
            ReadError::Idle
        } else {
            ReadError::TimedOut
        }
    }
}

/// Parses one head from the start of `data`: the request and how many bytes
/// it used, or `None` when the head is not complete yet.
pub fn parse_head(data: &[u8]) -> Result<Option<(Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(data) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::TooLarge),
        Err(e) => return Err(ReadError::Malformed(e)),
    };
    // A complete parse always fills method, path and version.
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ReadError::Malformed(httparse::Error::Token));
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    let (mut close, mut keep_alive) = (false, false);
    let mut has_body = false;
    let mut ranges = Vec::new();
    let mut if_range = None;
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            has_body |= header.value.trim_ascii().iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        } else if name.eq_ignore_ascii_case("range") {
            ranges.push(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("if-range") {
            if_range = Some(header.value.to_vec());
        }
    }
    let keep_alive = !close && (minor >= 1 || keep_alive);
    let range = match ranges.len() {
        1 => ranges.pop(),
        _ => None,
    };
    Ok(Some((
        Request {
            method,
            target: target.to_owned(),
            keep_alive,
            has_body,
            range,
            if_range,
        },
        used,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Request {
        let (request, used) = parse_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!(used, text.len());
        request
    }

    #[test]
    fn parses_a_get_with_range() {
        let r = parse(
            "GET /files/a%20b HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\nIf-Range: \"e\"\r\n\r\n",
        );
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, "/files/a%20b");
        assert!(r.keep_alive);
        assert!(!r.has_body);
        assert_eq!(r.range.as_deref(), Some(&b"bytes=1-2"[..]));
        assert_eq!(r.if_range.as_deref(), Some(&b"\"e\""[..]));
    }

    #[test]
    fn connection_rules_per_version() {
        assert!(!parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").keep_alive);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn bodies_and_duplicate_ranges() {
        assert!(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").has_body);
        assert!(!parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(parse("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
        let r = parse("GET / HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n");
        assert_eq!(r.range, None);
        assert_eq!(
            parse("DELETE / HTTP/1.1\r\n\r\n").method,
            Method::Other("DELETE".into())
        );
    }

    #[test]
    fn partial_malformed_and_oversized_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        assert!(matches!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"NOT HTTP AT ALL\r\n\r\n"),
            Err(ReadError::Malformed(_))
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(ReadError::TooLarge)
        ));
    }

    #[test]
    fn pipelined_heads_leave_the_rest() {
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (first, used) = parse_head(two).unwrap().unwrap();
        assert_eq!(first.target, "/a");
        let (second, _) = parse_head(&two[used..]).unwrap().unwrap();
        assert_eq!(second.target, "/b");
    }
}
