//! Reading one UI request off a connection: the head (parsed with
//! `httparse`, within the file server's [`MAX_HEAD_BYTES`] and
//! [`MAX_HEADERS`]) and a body of at most [`MAX_BODY_BYTES`], all before one
//! deadline. Every UI connection carries one request (the response closes
//! it), so nothing is kept between requests.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

pub use crate::http::request::{MAX_HEADERS, MAX_HEAD_BYTES};

/// Largest request body accepted (a JSON object naming one file); longer
/// ones get `413`.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// One UI request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiRequest {
    pub method: String,
    /// The target as sent (path and query, still percent-encoded).
    pub target: String,
    pub host: Option<String>,
    pub origin: Option<String>,
    /// The [`super::guard::TOKEN_HEADER`] value.
    pub token: Option<String>,
    pub body: Vec<u8>,
}

impl UiRequest {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string, without `?` (empty when none).
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Whether the request may change state (anything but `GET` and `HEAD`).
    pub fn changes_state(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// Why no request could be read; each maps to one status (or none).
#[derive(Debug, thiserror::Error)]
pub enum UiReadError {
    #[error("the connection closed or timed out before a request")]
    Gone,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("chunked request bodies are not accepted; send Content-Length")]
    Chunked,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

/// Reads one request from `stream`, all of it before `deadline`.
pub fn read_request(stream: &TcpStream, deadline: Instant) -> Result<UiRequest, UiReadError> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        if len > 0 {
            if let Some((mut request, used, body_len)) = parse(&buf[..len])? {
                let mut body = buf[used..len].to_vec();
                body.truncate(body_len);
                read_body(stream, &mut body, body_len, deadline)?;
                request.body = body;
                return Ok(request);
            }
            if len == buf.len() {
                return Err(UiReadError::HeadTooLarge);
            }
        }
        let n = read_some(stream, &mut buf[len..], deadline)?;
        if n == 0 {
            return Err(UiReadError::Gone);
        }
        len += n;
    }
}

fn read_body(
    stream: &TcpStream,
    body: &mut Vec<u8>,
    want: usize,
    deadline: Instant,
) -> Result<(), UiReadError> {
    let mut chunk = [0u8; 4096];
    while body.len() < want {
        let room = (want - body.len()).min(chunk.len());
        let n = read_some(stream, &mut chunk[..room], deadline)?;
        if n == 0 {
            return Err(UiReadError::Gone);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// One `read` with what is left of the deadline; 0 at end or timeout.
fn read_some(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, UiReadError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(0);
        }
        stream.set_read_timeout(Some(remaining))?;
        match (&mut &*stream).read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(0)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Parses a head from the start of `data`: the request (body still empty),
/// the head's length and the body's, or `None` when incomplete.
pub fn parse(data: &[u8]) -> Result<Option<(UiRequest, usize, usize)>, UiReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let used = match parsed.parse(data) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UiReadError::HeadTooLarge),
        Err(e) => return Err(UiReadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(UiReadError::Malformed("no request line".into()));
    };
    let mut request = UiRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        host: None,
        origin: None,
        token: None,
        body: Vec::new(),
    };
    let mut body_len = 0usize;
    let mut hosts = 0;
    for header in parsed.headers.iter() {
        let value = || String::from_utf8_lossy(header.value).trim().to_owned();
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            request.host = Some(value());
        } else if name.eq_ignore_ascii_case("origin") {
            request.origin = Some(value());
        } else if name.eq_ignore_ascii_case(super::guard::TOKEN_HEADER) {
            request.token = Some(value());
        } else if name.eq_ignore_ascii_case("content-length") {
            body_len = value()
                .parse()
                .map_err(|_| UiReadError::Malformed("bad Content-Length".into()))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(UiReadError::Chunked);
        }
    }
    if hosts > 1 {
        // Two Host headers: which one a proxy looked at is unknowable.
        request.host = None;
    }
    if body_len > MAX_BODY_BYTES {
        return Err(UiReadError::BodyTooLarge);
    }
    Ok(Some((request, used, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_the_guard_needs() {
        let text = "POST /api/downloads?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8390\r\n\
                    Origin: http://127.0.0.1:8390\r\nx-p2p-token: abc\r\nContent-Length: 2\r\n\r\n{}";
        let (r, used, body) = parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/api/downloads");
        assert_eq!(r.query(), "x=1");
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:8390"));
        assert_eq!(r.origin.as_deref(), Some("http://127.0.0.1:8390"));
        assert_eq!(r.token.as_deref(), Some("abc"));
        assert_eq!((used, body), (text.len() - 2, 2));
        assert!(r.changes_state());
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        let two_hosts = "GET / HTTP/1.1\r\nHost: a:1\r\nHost: b:1\r\n\r\n";
        assert_eq!(parse(two_hosts.as_bytes()).unwrap().unwrap().0.host, None);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(matches!(
            parse(big.as_bytes()),
            Err(UiReadError::BodyTooLarge)
        ));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(chunked.as_bytes()),
            Err(UiReadError::Chunked)
        ));
        assert!(matches!(
            parse(b"NOPE\r\n\r\n"),
            Err(UiReadError::Malformed(_))
        ));
        assert!(parse(b"GET / HTTP/1.1\r\nHo").unwrap().is_none());
    }
}
