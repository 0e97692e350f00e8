//! Response heads: the status line and header block, written in one piece
//! before any body.
//!
//! Only heads are built here; bodies are streamed by the caller straight
//! from the file to the socket, never through this module's buffer.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name sent in the `Server` header.
pub const SERVER_NAME: &str = concat!("p2p-peer/", env!("CARGO_PKG_VERSION"));

/// The statuses this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    PartialContent,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    RangeNotSatisfiable,
    HeaderFieldsTooLarge,
    InternalError,
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::PartialContent => 206,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::RangeNotSatisfiable => 416,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalError => 500,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::PartialContent => "Partial Content",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// A response head under construction. `Content-Length`, `Date`, `Server`
/// and `Connection: close` are always written by [`Head::write_to`].
#[derive(Debug, Clone)]
pub struct Head {
    pub status: Status,
    /// Exact length of the body that follows (also sent for `HEAD`).
    pub content_length: u64,
    /// Whether the server closes the connection after this response.
    pub close: bool,
    headers: Vec<(&'static str, String)>,
}

impl Head {
    pub fn new(status: Status, content_length: u64, close: bool) -> Head {
        Head {
            status,
            content_length,
            close,
            headers: Vec::new(),
        }
    }

    /// Adds a header. Values come from this server, never from a request,
    /// so they cannot smuggle a line break.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Head {
        self.headers.push((name, value.into()));
        self
    }

    /// The head as bytes, ending with the blank line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: {SERVER_NAME}\r\nDate: {}\r\nContent-Length: {}\r\n",
            self.status.code(),
            self.status.reason(),
            http_date(SystemTime::now()),
            self.content_length
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if self.close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Writes the head in one call and flushes it, so the body can then be
    /// copied to the raw socket.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.to_bytes())?;
        out.flush()
    }
}

/// The head and one-line body of an error response, for callers that add
/// headers before sending it with [`finish`].
pub fn error_head(status: Status, close: bool) -> (Head, String) {
    let body = format!("{} {}\n", status.code(), status.reason());
    let mut head = Head::new(status, body.len() as u64, close)
        .header("Content-Type", "text/plain; charset=utf-8");
    if status == Status::MethodNotAllowed {
        head = head.header("Allow", "GET, HEAD");
    }
    (head, body)
}

/// A complete response from a head and a small body; `head_only` leaves the
/// body out (a `HEAD` request).
pub fn finish(head: &Head, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = head.to_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// A complete error response whose body is a one-line explanation.
pub fn plain(status: Status, close: bool, head_only: bool) -> Vec<u8> {
    let (head, body) = error_head(status, close);
    finish(&head, &body, head_only)
}

/// Formats a time as an HTTP date (IMF-fixdate, RFC 9110 §5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`. Times before 1970 print as the epoch.
pub fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`, for unsigned days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_http_dates() {
        let at = |s| http_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(at(4_133_980_799), "Fri, 31 Dec 2100 23:59:59 GMT");
    }

    #[test]
    fn heads_end_with_a_blank_line_and_say_close() {
        let text = String::from_utf8(
            Head::new(Status::PartialContent, 3, true)
                .header("Content-Range", "bytes 0-2/9")
                .to_bytes(),
        )
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\n"));
        assert!(text.contains("\r\nContent-Length: 3\r\n"));
        assert!(text.contains("\r\nContent-Range: bytes 0-2/9\r\n"));
        assert!(text.ends_with("\r\nConnection: close\r\n\r\n"));
    }

    #[test]
    fn method_not_allowed_lists_the_methods() {
        let text = String::from_utf8(plain(Status::MethodNotAllowed, false, true)).unwrap();
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
