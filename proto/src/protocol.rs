//! The registry wire protocol, version 1: request and reply types, how each
//! is parsed from and formatted to lines, the file-name rules and the
//! filename hash.
//!
//! This module is pure: it never touches a socket, a file or the database.
//! The server, the blocking [`client`](crate::client), the peer, the admin
//! tool and the tests all speak the protocol through it, so the wire format
//! is defined in exactly one place. See `docs/protocol.md` for the prose.

use std::fmt::{self, Write as _};

use sha2::{Digest, Sha256};

/// Longest request line the server accepts, counting its line ending.
/// Bounds the memory one client can make a worker hold.
pub const MAX_LINE_BYTES: usize = 4096;

/// Longest valid file name, in bytes of UTF-8 (the common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Most lines a `FIND` reply carries, so one query cannot dump the registry.
pub const MAX_FIND_RESULTS: usize = 100;

/// Most sources one `SEARCH` reply lists: the most recently seen ones. It
/// bounds the reply (about 100 bytes a source) however many ports one name
/// is registered on; `FOUND n` gives the number sent.
pub const MAX_SEARCH_SOURCES: usize = 200;

/// Length of a SHA-256 digest written as lowercase hex.
pub const SHA256_HEX_LEN: usize = 64;

/// One request line, parsed. Names borrow from the line they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Announce that the caller serves `name` on `port`.
    Register {
        port: u16,
        size: u64,
        sha256: &'a str,
        name: &'a str,
    },
    /// Withdraw one registration of the caller.
    Unregister {
        port: u16,
        name: &'a str,
    },
    /// Live sources of exactly this name.
    Search {
        name: &'a str,
    },
    /// Names whose words start with every given word.
    Find {
        words: Vec<&'a str>,
    },
    /// Refresh every registration of the caller on `port`.
    Heartbeat {
        port: u16,
    },
    Ping,
    Quit,
}

/// One place that holds a file: a peer address and what it announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The peer's IP as the registry saw it; IPv6 is written `[addr]`.
    pub host: String,
    pub port: u16,
    pub size: u64,
    pub sha256: String,
}

impl Source {
    /// `host:port`, the address a downloader connects to.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One line of a `FIND` reply: a distinct (name, size, content) and how
/// many live peers share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindHit {
    pub sources: u64,
    pub size: u64,
    pub sha256: String,
    pub name: String,
}

/// The error codes of `ERR <code> <message>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownCommand,
    BadName,
    TooLong,
    Busy,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::BadName => "bad_name",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
        }
    }

    fn parse(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "bad_request" => ErrorCode::BadRequest,
            "unknown_command" => ErrorCode::UnknownCommand,
            "bad_name" => ErrorCode::BadName,
            "too_long" => ErrorCode::TooLong,
            "busy" => ErrorCode::Busy,
            "internal" => ErrorCode::Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that could not be understood: the code and message of the
/// `ERR` reply it earns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The reply the server sends for this error.
    pub fn to_reply(&self) -> Reply {
        Reply::Err(self.code, self.message.clone())
    }
}

/// A reply: one status line, then for `FOUND` and `RESULTS` one line per item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK`, the answer to REGISTER and UNREGISTER.
    Ok,
    /// `OK <n>`, the answer to HEARTBEAT: how many registrations were refreshed.
    Refreshed(u64),
    NotFound,
    Found(Vec<Source>),
    Results(Vec<FindHit>),
    Pong,
    Bye,
    Err(ErrorCode, String),
}

/// A reply line that does not follow the protocol (client side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply line {line:?}: {reason}")]
pub struct ReplyError {
    pub line: String,
    pub reason: &'static str,
}

/// Splits a request line (without its line ending) into a [`Request`].
///
/// The command word is matched case-insensitively; fields are separated by
/// exactly one space; a name is the last field and runs to the end of the line.
pub fn parse_request(line: &str) -> Result<Request<'_>, ProtocolError> {
    if line.is_empty() {
        return Err(ProtocolError::bad_request("empty request line"));
    }
    let (word, rest) = match line.split_once(' ') {
        Some((word, rest)) => (word, Some(rest)),
        None => (line, None),
    };
    let command = Command::parse(word).ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {:?}", printable(word)),
        )
    })?;
    let mut fields = Fields {
        command: command.word(),
        rest,
    };
    let request = match command {
        Command::Register => {
            let port = parse_port(fields.next("port")?)?;
            let size = parse_size(fields.next("size")?)?;
            let sha256 = parse_sha256(fields.next("sha256")?)?;
            let name = validate_name(fields.last("name")?)?;
            Request::Register {
                port,
                size,
                sha256,
                name,
            }
        }
        Command::Unregister => {
            let port = parse_port(fields.next("port")?)?;
            let name = validate_name(fields.last("name")?)?;
            Request::Unregister { port, name }
        }
        Command::Search => Request::Search {
            name: validate_name(fields.last("name")?)?,
        },
        Command::Find => {
            let words: Vec<&str> = fields
                .last("words")?
                .split(' ')
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                return Err(ProtocolError::bad_request("FIND needs at least one word"));
            }
            if let Some(bad) = words.iter().find(|w| w.chars().any(char::is_control)) {
                return Err(ProtocolError::bad_request(format!(
                    "FIND word {:?} contains a control character",
                    printable(bad)
                )));
            }
            Request::Find { words }
        }
        Command::Heartbeat => {
            let port = parse_port(fields.next("port")?)?;
            fields.end()?;
            Request::Heartbeat { port }
        }
        Command::Ping => {
            fields.end()?;
            Request::Ping
        }
        Command::Quit => {
            fields.end()?;
            Request::Quit
        }
    };
    Ok(request)
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Register,
    Unregister,
    Search,
    Find,
    Heartbeat,
    Ping,
    Quit,
}

impl Command {
    const ALL: [Command; 7] = [
        Command::Register,
        Command::Unregister,
        Command::Search,
        Command::Find,
        Command::Heartbeat,
        Command::Ping,
        Command::Quit,
    ];

    fn word(self) -> &'static str {
        match self {
            Command::Register => "REGISTER",
            Command::Unregister => "UNREGISTER",
            Command::Search => "SEARCH",
            Command::Find => "FIND",
            Command::Heartbeat => "HEARTBEAT",
            Command::Ping => "PING",
            Command::Quit => "QUIT",
        }
    }

    fn parse(word: &str) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.word().eq_ignore_ascii_case(word))
    }
}

/// The fields after the command word, taken left to right.
struct Fields<'a> {
    command: &'static str,
    rest: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// The next space-separated field.
    fn next(&mut self, what: &str) -> Result<&'a str, ProtocolError> {
        let rest = self.rest.ok_or_else(|| self.missing(what))?;
        let (field, rest) = match rest.split_once(' ') {
            Some((field, rest)) => (field, Some(rest)),
            None => (rest, None),
        };
        if field.is_empty() {
            return Err(self.missing(what));
        }
        self.rest = rest;
        Ok(field)
    }

    /// Everything left on the line, spaces included (a name or word list).
    fn last(&mut self, what: &str) -> Result<&'a str, ProtocolError> {
        self.rest.take().ok_or_else(|| self.missing(what))
    }

    fn end(&self) -> Result<(), ProtocolError> {
        match self.rest {
            None => Ok(()),
            Some(_) => Err(ProtocolError::bad_request(format!(
                "{} takes no more fields",
                self.command
            ))),
        }
    }

    fn missing(&self, what: &str) -> ProtocolError {
        ProtocolError::bad_request(format!("{} is missing its {what}", self.command))
    }
}

fn parse_port(field: &str) -> Result<u16, ProtocolError> {
    match parse_decimal(field).and_then(|n| u16::try_from(n).ok()) {
        Some(port) if port != 0 => Ok(port),
        _ => Err(ProtocolError::bad_request(format!(
            "bad port {:?}: must be 1 to 65535",
            printable(field)
        ))),
    }
}

/// Largest size a registration can carry: SQLite stores signed 64-bit
/// integers, and no real file comes near 8 EiB.
pub const MAX_SIZE: u64 = i64::MAX as u64;

fn parse_size(field: &str) -> Result<u64, ProtocolError> {
    parse_decimal(field)
        .filter(|&size| size <= MAX_SIZE)
        .ok_or_else(|| {
            ProtocolError::bad_request(format!(
                "bad size {:?}: must be a byte count of at most {MAX_SIZE}",
                printable(field)
            ))
        })
}

use crate::decimal::parse_decimal;

fn parse_sha256(field: &str) -> Result<&str, ProtocolError> {
    if is_sha256_hex(field) {
        Ok(field)
    } else {
        Err(ProtocolError::bad_request(format!(
            "bad sha256 {:?}: must be 64 lowercase hex digits",
            printable(field)
        )))
    }
}

/// Whether `s` is a SHA-256 digest as the protocol writes it.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a file name is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("name contains a control character")]
    ControlChar,
    #[error("name contains '/' or '\\'")]
    Separator,
    #[error("name is '.' or '..'")]
    Dots,
    #[error("name begins or ends with a space")]
    EdgeSpace,
}

/// Checks the name rules of the contract: 1 to 255 bytes of UTF-8, no control
/// characters, no `/` or `\`, not `.` or `..`, no leading or trailing space.
///
/// Every name that becomes a path (the peer's shared and downloads folders)
/// passes through here first.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlChar);
    }
    if name.contains(['/', '\\']) {
        return Err(NameError::Separator);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(NameError::EdgeSpace);
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<&str, ProtocolError> {
    check_name(name)
        .map(|()| name)
        .map_err(|e| ProtocolError::new(ErrorCode::BadName, format!("{e}: {:?}", printable(name))))
}

/// The registry key of a file: SHA-256 of its UTF-8 name, as lowercase hex.
pub fn name_key(name: &str) -> String {
    to_hex(&Sha256::digest(name.as_bytes()))
}

/// Lowercase hex of a digest (kept here for the callers that import it
/// with the protocol).
pub use crate::hex::to_hex;

/// Shortens untrusted text for an error message: at most 64 characters,
/// control characters escaped by `{:?}` where it is printed.
fn printable(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() <= SHOWN {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(SHOWN).collect();
        cut.push('…');
        cut
    }
}

impl Request<'_> {
    /// Writes the request as one line, with its LF.
    pub fn write_line(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self {
            Request::Register {
                port,
                size,
                sha256,
                name,
            } => writeln!(out, "REGISTER {port} {size} {sha256} {name}"),
            Request::Unregister { port, name } => writeln!(out, "UNREGISTER {port} {name}"),
            Request::Search { name } => writeln!(out, "SEARCH {name}"),
            Request::Find { words } => writeln!(out, "FIND {}", words.join(" ")),
            Request::Heartbeat { port } => writeln!(out, "HEARTBEAT {port}"),
            Request::Ping => writeln!(out, "PING"),
            Request::Quit => writeln!(out, "QUIT"),
        };
    }

    /// The command word as written on the wire, for messages.
    pub fn command_word(&self) -> &'static str {
        match self {
            Request::Register { .. } => "REGISTER",
            Request::Unregister { .. } => "UNREGISTER",
            Request::Search { .. } => "SEARCH",
            Request::Find { .. } => "FIND",
            Request::Heartbeat { .. } => "HEARTBEAT",
            Request::Ping => "PING",
            Request::Quit => "QUIT",
        }
    }
}

impl Reply {
    /// Appends the whole reply, status line and item lines, each ending in LF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = self.write_lines(out);
    }

    fn write_lines(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        use std::io::Write as _;
        match self {
            Reply::Ok => out.write_all(b"OK\n"),
            Reply::Refreshed(n) => writeln!(out, "OK {n}"),
            Reply::NotFound => out.write_all(b"NOT_FOUND\n"),
            Reply::Found(sources) => {
                write_found_status(out, sources.len());
                for s in sources {
                    write_source_start(out, &s.host, s.port, s.size);
                    out.extend_from_slice(s.sha256.as_bytes());
                    out.push(b'\n');
                }
                Ok(())
            }
            Reply::Results(hits) => {
                writeln!(out, "RESULTS {}", hits.len())?;
                for h in hits {
                    writeln!(out, "{} {} {} {}", h.sources, h.size, h.sha256, h.name)?;
                }
                Ok(())
            }
            Reply::Pong => out.write_all(b"PONG\n"),
            Reply::Bye => out.write_all(b"BYE\n"),
            Reply::Err(code, message) => writeln!(out, "ERR {code} {}", one_line(message)),
        }
    }
}

/// Writes the status line of a SEARCH answer of `count` sources (`FOUND
/// count`), the bytes [`Reply::Found`] starts with; [`write_source_line`]
/// writes each source after it. For a server that answers from its own
/// data without building [`Source`]s.
pub fn write_found_status(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(b"FOUND ");
    push_decimal(out, count as u64);
    out.push(b'\n');
}

/// Writes one source line of a SEARCH answer, `host:port size sha256`, the
/// digest given as its 32 bytes: what [`Reply::Found`] writes for the
/// [`Source`] with `sha256` in lowercase hex.
pub fn write_source_line(out: &mut Vec<u8>, host: &str, port: u16, size: u64, sha256: &[u8; 32]) {
    write_source_start(out, host, port, size);
    crate::hex::push_hex(out, sha256);
    out.push(b'\n');
}

/// `host:port size ` of a source line.
fn write_source_start(out: &mut Vec<u8>, host: &str, port: u16, size: u64) {
    out.extend_from_slice(host.as_bytes());
    out.push(b':');
    push_decimal(out, u64::from(port));
    out.push(b' ');
    push_decimal(out, size);
    out.push(b' ');
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Keeps a message on one line whatever it quotes.
fn one_line(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

/// What the status line of a reply announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A complete reply of one line.
    Done(Reply),
    /// `FOUND n`: n source lines follow.
    Found(usize),
    /// `RESULTS n`: n result lines follow.
    Results(usize),
}

/// Most item lines a client accepts after `FOUND`/`RESULTS`, so a broken or
/// hostile server cannot make it allocate without bound.
pub const MAX_REPLY_ITEMS: usize = 1_000_000;

/// Parses a reply's status line (client side).
pub fn parse_status(line: &str) -> Result<Status, ReplyError> {
    let bad = |reason| ReplyError {
        line: line.to_owned(),
        reason,
    };
    let (word, rest) = match line.split_once(' ') {
        Some((w, r)) => (w, Some(r)),
        None => (line, None),
    };
    let count = |rest: Option<&str>| -> Result<usize, ReplyError> {
        rest.and_then(parse_decimal)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_REPLY_ITEMS)
            .ok_or_else(|| bad("bad item count"))
    };
    Ok(match (word, rest) {
        ("OK", None) => Status::Done(Reply::Ok),
        ("OK", Some(n)) => Status::Done(Reply::Refreshed(
            parse_decimal(n).ok_or_else(|| bad("bad count after OK"))?,
        )),
        ("NOT_FOUND", None) => Status::Done(Reply::NotFound),
        ("PONG", None) => Status::Done(Reply::Pong),
        ("BYE", None) => Status::Done(Reply::Bye),
        ("FOUND", rest) => Status::Found(count(rest)?),
        ("RESULTS", rest) => Status::Results(count(rest)?),
        ("ERR", Some(rest)) => {
            let (code, message) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = ErrorCode::parse(code).ok_or_else(|| bad("unknown error code"))?;
            Status::Done(Reply::Err(code, message.to_owned()))
        }
        _ => return Err(bad("unknown status")),
    })
}

/// Parses one `<host>:<port> <size> <sha256>` line of a `FOUND` reply.
pub fn parse_source(line: &str) -> Result<Source, ReplyError> {
    let bad = |reason| ReplyError {
        line: line.to_owned(),
        reason,
    };
    let mut parts = line.split(' ');
    let (Some(addr), Some(size), Some(sha256), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected <host>:<port> <size> <sha256>"));
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port = parse_decimal(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| bad("bad port"))?;
    let size = parse_decimal(size).ok_or_else(|| bad("bad size"))?;
    if host.is_empty() || !is_sha256_hex(sha256) {
        return Err(bad("bad host or sha256"));
    }
    Ok(Source {
        host: host.to_owned(),
        port,
        size,
        sha256: sha256.to_owned(),
    })
}

/// Parses one `<sources> <size> <sha256> <name>` line of a `RESULTS` reply.
pub fn parse_find_hit(line: &str) -> Result<FindHit, ReplyError> {
    let bad = |reason| ReplyError {
        line: line.to_owned(),
        reason,
    };
    let mut parts = line.splitn(4, ' ');
    let (Some(sources), Some(size), Some(sha256), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected <sources> <size> <sha256> <name>"));
    };
    let sources = parse_decimal(sources).ok_or_else(|| bad("bad source count"))?;
    let size = parse_decimal(size).ok_or_else(|| bad("bad size"))?;
    if !is_sha256_hex(sha256) {
        return Err(bad("bad sha256"));
    }
    Ok(FindHit {
        sources,
        size,
        sha256: sha256.to_owned(),
        name: name.to_owned(),
    })
}

/// Formats an IP address as a host field: IPv6 in brackets, IPv4-mapped IPv6
/// as plain IPv4 (a dual-stack listener reports IPv4 clients that way).
pub fn host_of(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_written_from_digests_are_the_replys_bytes() {
        let digest: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let cases = [
            ("10.0.0.1", 1, 0),
            ("[::1]", 65535, u64::MAX),
            ("192.168.100.200", 8080, 1_234_567_890),
        ];
        let sources: Vec<Source> = cases
            .iter()
            .map(|&(host, port, size)| Source {
                host: host.into(),
                port,
                size,
                sha256: crate::hex::to_hex(&digest),
            })
            .collect();
        let mut expected = Vec::new();
        Reply::Found(sources).write_to(&mut expected);
        let mut written = Vec::new();
        write_found_status(&mut written, cases.len());
        for &(host, port, size) in &cases {
            write_source_line(&mut written, host, port, size, &digest);
        }
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(expected.clone()).unwrap()
        );
        assert!(String::from_utf8(expected)
            .unwrap()
            .starts_with("FOUND 3\n10.0.0.1:1 0 0b30"));
    }

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code_of(line: &str) -> ErrorCode {
        parse_request(line).unwrap_err().code
    }

    #[test]
    fn parses_every_command_case_insensitively() {
        assert_eq!(
            parse_request(&format!("register 9000 0 {HASH} my file.txt")).unwrap(),
            Request::Register {
                port: 9000,
                size: 0,
                sha256: HASH,
                name: "my file.txt"
            }
        );
        assert_eq!(
            parse_request("UnRegister 1 a").unwrap(),
            Request::Unregister { port: 1, name: "a" }
        );
        assert_eq!(
            parse_request("SEARCH été .txt").unwrap(),
            Request::Search { name: "été .txt" }
        );
        assert_eq!(
            parse_request("find a  b").unwrap(),
            Request::Find {
                words: vec!["a", "b"]
            }
        );
        assert_eq!(
            parse_request("HEARTBEAT 65535").unwrap(),
            Request::Heartbeat { port: 65535 }
        );
        assert_eq!(parse_request("ping").unwrap(), Request::Ping);
        assert_eq!(parse_request("Quit").unwrap(), Request::Quit);
    }

    #[test]
    fn rejects_bad_fields_with_their_codes() {
        assert_eq!(code_of(""), ErrorCode::BadRequest);
        assert_eq!(code_of("HELLO"), ErrorCode::UnknownCommand);
        assert_eq!(code_of("REGISTER"), ErrorCode::BadRequest);
        assert_eq!(code_of("REGISTER 0 1 x n"), ErrorCode::BadRequest);
        assert_eq!(code_of("REGISTER 65536 1 x n"), ErrorCode::BadRequest);
        assert_eq!(
            code_of(&format!("REGISTER 1 -1 {HASH} n")),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(&format!("REGISTER 1 +1 {HASH} n")),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of("REGISTER 1 1 abc n"), ErrorCode::BadRequest);
        assert_eq!(
            code_of(&format!("REGISTER 1 {} {HASH} n", MAX_SIZE + 1)),
            ErrorCode::BadRequest
        );
        let upper = HASH.to_uppercase();
        assert_eq!(
            code_of(&format!("REGISTER 1 1 {upper} n")),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(&format!("REGISTER 1 1 {HASH}")),
            ErrorCode::BadRequest
        );
        assert_eq!(code_of("SEARCH"), ErrorCode::BadRequest);
        assert_eq!(code_of("PING extra"), ErrorCode::BadRequest);
        assert_eq!(code_of("HEARTBEAT"), ErrorCode::BadRequest);
        assert_eq!(code_of("FIND "), ErrorCode::BadRequest);
    }

    #[test]
    fn enforces_every_name_rule() {
        for bad in [
            "SEARCH ",
            "SEARCH .",
            "SEARCH ..",
            "SEARCH a/b",
            "SEARCH a\\b",
            "SEARCH  lead",
            "SEARCH trail ",
            "SEARCH nul\0byte",
            "SEARCH tab\there",
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadName, "{bad:?}");
        }
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(code_of(&format!("SEARCH {long}")), ErrorCode::BadName);
        let max = "é".repeat(MAX_NAME_BYTES / 2);
        assert!(parse_request(&format!("SEARCH {max}")).is_ok());
        assert!(parse_request("SEARCH ...").is_ok());
    }

    #[test]
    fn replies_round_trip_through_the_client_parser() {
        let source = Source {
            host: "[::1]".into(),
            port: 80,
            size: 5,
            sha256: HASH.into(),
        };
        let mut out = Vec::new();
        Reply::Found(vec![source.clone()]).write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            parse_status(lines.next().unwrap()).unwrap(),
            Status::Found(1)
        );
        assert_eq!(parse_source(lines.next().unwrap()).unwrap(), source);

        let hit = FindHit {
            sources: 3,
            size: 7,
            sha256: HASH.into(),
            name: "a b c".into(),
        };
        assert_eq!(parse_find_hit(&format!("3 7 {HASH} a b c")).unwrap(), hit);
        assert_eq!(
            parse_status("ERR busy too many connections").unwrap(),
            Status::Done(Reply::Err(ErrorCode::Busy, "too many connections".into()))
        );
        assert_eq!(
            parse_status("OK 12").unwrap(),
            Status::Done(Reply::Refreshed(12))
        );
        assert!(parse_status("WHAT").is_err());
    }

    #[test]
    fn name_key_is_sha256_of_the_utf8_name() {
        assert_eq!(name_key(""), HASH);
        assert_eq!(name_key("a").len(), 64);
    }

    #[test]
    fn request_lines_parse_back() {
        let requests = [
            Request::Register {
                port: 7,
                size: MAX_SIZE,
                sha256: HASH,
                name: "x y",
            },
            Request::Unregister { port: 2, name: "z" },
            Request::Search { name: "ü" },
            Request::Find {
                words: vec!["a", "bc"],
            },
            Request::Heartbeat { port: 9 },
            Request::Ping,
            Request::Quit,
        ];
        for request in requests {
            let mut line = String::new();
            request.write_line(&mut line);
            assert_eq!(parse_request(line.trim_end_matches('\n')).unwrap(), request);
        }
    }
}
