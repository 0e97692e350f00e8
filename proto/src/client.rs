//! A blocking client of the registry protocol over one TCP connection.
//!
//! Shared by the peer, the admin tool, the tests and the load generator. It
//! sends [`Request`]s and reads typed [`Reply`]s; it knows nothing of what
//! the caller does with them. One `Client` keeps its connection open for any
//! number of requests.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use crate::protocol::Reply;
use crate::protocol::{
    self, ErrorCode, FindHit, ReplyError, Request, Source, Status, MAX_LINE_BYTES,
};

/// How long the client waits to connect, and then for each reply, before it
/// gives up: a registry that does not answer must not hang a peer's menu.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reply line the client reads: a source line or a find line with a
/// maximal name fits well inside.
const MAX_REPLY_LINE: usize = 2 * MAX_LINE_BYTES;

/// How far the socket's read timeout may be from the time a reply has left
/// before it is set again (at most a sixteenth of the client's timeout):
/// how late past its deadline a reply may be judged late.
pub const TIMEOUT_SLACK: Duration = Duration::from_millis(10);

/// Why [`Client::read_bytes`] stopped short of a line.
enum ReadFailure {
    Late,
    Closed,
    Failed(io::Error),
}

/// Most source lines accepted after `FOUND`: the registry answers a SEARCH
/// with at most this many (the most recently seen). More is a broken or
/// hostile registry, refused before a line of it is buffered.
pub const MAX_SEARCH_SOURCES: usize = crate::protocol::MAX_SEARCH_SOURCES;

/// Most lines accepted after `RESULTS`: the registry's own cap on FIND.
pub const MAX_FIND_HITS: usize = crate::protocol::MAX_FIND_RESULTS;

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve registry address {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("cannot connect to the registry at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection to the registry at {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
    #[error("the registry at {addr} closed the connection")]
    Closed { addr: String },
    #[error("the registry at {addr} sent a bad reply: {source}")]
    BadReply { addr: String, source: ReplyError },
    /// The registry answered `ERR <code> <message>`.
    #[error("the registry at {addr} refused the request: {code} {message}")]
    Refused {
        addr: String,
        code: ErrorCode,
        message: String,
    },
    #[error("the registry at {addr} answered {reply:?} to {request}")]
    Unexpected {
        addr: String,
        request: &'static str,
        reply: Reply,
    },
}

/// One open connection to the registry.
pub struct Client {
    addr: String,
    /// How long a whole reply may take (status line and items), however
    /// the registry paces its bytes.
    timeout: Duration,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// The read timeout the socket has now (see [`Client::read_line`]).
    read_timeout: Duration,
    /// The line being read, as bytes, and as text once whole.
    bytes: Vec<u8>,
    line: String,
    out: String,
}

impl Client {
    /// Connects with [`DEFAULT_TIMEOUT`].
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::connect_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// Connects to the first address `addr` resolves to that accepts, and
    /// uses `timeout` for connecting and for every read and write after.
    pub fn connect_timeout(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for sa in addrs {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(stream) => return Client::from_stream(addr, stream, timeout),
                Err(e) => last = e,
            }
        }
        Err(ClientError::Connect {
            addr: addr.to_owned(),
            source: last,
        })
    }

    /// Connects from the local address `local` (port chosen by the system),
    /// so the registry sees that address: a peer whose file server listens
    /// on `--bind IP` registers from `IP`. Only addresses of `local`'s
    /// family are tried; [`DEFAULT_TIMEOUT`] as for [`Client::connect`].
    pub fn connect_from(addr: &str, local: IpAddr) -> Result<Client, ClientError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve {
                addr: addr.to_owned(),
                source,
            })?
            .filter(|sa| sa.is_ipv4() == local.is_ipv4())
            .collect();
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address of the family of {local}"),
        );
        for sa in addrs {
            let connected = (|| {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(sa),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::new(local, 0).into())?;
                socket.connect_timeout(&sa.into(), DEFAULT_TIMEOUT)?;
                Ok::<TcpStream, io::Error>(socket.into())
            })();
            match connected {
                Ok(stream) => return Client::from_stream(addr, stream, DEFAULT_TIMEOUT),
                Err(e) => last = e,
            }
        }
        Err(ClientError::Connect {
            addr: addr.to_owned(),
            source: last,
        })
    }

    /// Wraps a connected stream (for callers that bind the local end themselves).
    pub fn from_stream(
        addr: &str,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let io_err = |source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        // Requests are small and a reply is awaited after each: Nagle only adds latency.
        stream.set_nodelay(true).map_err(io_err)?;
        let write_half = stream.try_clone().map_err(io_err)?;
        Ok(Client {
            addr: addr.to_owned(),
            timeout,
            reader: BufReader::new(stream),
            writer: BufWriter::new(write_half),
            read_timeout: timeout,
            bytes: Vec::new(),
            line: String::new(),
            out: String::new(),
        })
    }

    /// The address this client was asked to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and reads its whole reply. `ERR` is returned as
    /// `Ok(Reply::Err(..))`; the typed helpers below turn it into an error.
    pub fn request(&mut self, request: &Request<'_>) -> Result<Reply, ClientError> {
        // The line buffer is reused across requests: taken out for the
        // write (which borrows self), then put back.
        let mut line = std::mem::take(&mut self.out);
        line.clear();
        request.write_line(&mut line);
        let sent = self.send_raw(&line);
        self.out = line;
        sent?;
        self.read_reply()
    }

    /// Sends bytes as they are (tests use this to send malformed input).
    pub fn send_raw(&mut self, bytes: &str) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    /// Reads one whole reply: its status line and any item lines, all
    /// within the client's timeout (one deadline for the whole reply), and
    /// no more items than the registry may send ([`MAX_SEARCH_SOURCES`],
    /// [`MAX_FIND_HITS`]).
    pub fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let status = protocol::parse_status(self.read_line(deadline)?).map_err(|source| {
            ClientError::BadReply {
                addr: self.addr.clone(),
                source,
            }
        })?;
        match status {
            Status::Done(reply) => Ok(reply),
            Status::Found(n) => {
                self.check_count(n, MAX_SEARCH_SOURCES, "FOUND")?;
                let mut sources = Vec::with_capacity(n);
                for _ in 0..n {
                    let source = protocol::parse_source(self.read_line(deadline)?);
                    sources.push(source.map_err(|source| self.bad_reply(source))?);
                }
                Ok(Reply::Found(sources))
            }
            Status::Results(n) => {
                self.check_count(n, MAX_FIND_HITS, "RESULTS")?;
                let mut hits = Vec::with_capacity(n);
                for _ in 0..n {
                    let hit = protocol::parse_find_hit(self.read_line(deadline)?);
                    hits.push(hit.map_err(|source| self.bad_reply(source))?);
                }
                Ok(Reply::Results(hits))
            }
        }
    }

    fn check_count(&self, n: usize, cap: usize, what: &'static str) -> Result<(), ClientError> {
        if n > cap {
            return Err(self.bad_reply(ReplyError {
                line: format!("{what} {n}"),
                reason: "more items than a registry sends",
            }));
        }
        Ok(())
    }

    fn bad_reply(&self, source: ReplyError) -> ClientError {
        ClientError::BadReply {
            addr: self.addr.clone(),
            source,
        }
    }

    /// One line without its ending, by `deadline`; an over-long line is a
    /// bad reply.
    fn read_line(&mut self, deadline: Instant) -> Result<&str, ClientError> {
        let io_err = |addr: &str, source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        };
        let late = |addr: &str, timeout: Duration| {
            io_err(
                addr,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no whole reply within {:.1}s", timeout.as_secs_f32()),
                ),
            )
        };
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let read = self.read_bytes(&mut bytes, deadline);
        self.line.clear();
        // No allocation when the bytes are UTF-8 (a registry's always are).
        self.line.push_str(&String::from_utf8_lossy(&bytes));
        let long = bytes.len() > MAX_REPLY_LINE;
        self.bytes = bytes;
        match read {
            Ok(()) => {}
            Err(ReadFailure::Late) => return Err(late(&self.addr, self.timeout)),
            Err(ReadFailure::Failed(e)) => return Err(io_err(&self.addr, e)),
            Err(ReadFailure::Closed) => {
                return Err(ClientError::Closed {
                    addr: self.addr.clone(),
                })
            }
        }
        if !self.line.ends_with('\n') || long {
            return Err(self.bad_reply(ReplyError {
                line: self.line.chars().take(80).collect(),
                reason: "line too long or cut short",
            }));
        }
        Ok(self.line.trim_end_matches('\n').trim_end_matches('\r'))
    }

    /// Reads into `bytes` up to and with a line's `\n`, or `MAX_REPLY_LINE`
    /// + 1 bytes, or the end of input, by `deadline`.
    ///
    /// The socket's read timeout is set only before a read that will wait
    /// (nothing buffered), and only when it is off the time left by more
    /// than [`TIMEOUT_SLACK`]: a `setsockopt` for every line was a quarter
    /// of the client's CPU per SEARCH (BENCHMARKS.md, "Issue 15 at stop
    /// 24"). So a reply may be judged late up to the slack after its
    /// deadline, and a read that times out before the deadline (the socket
    /// kept a shorter timeout) is tried again.
    fn read_bytes(&mut self, bytes: &mut Vec<u8>, deadline: Instant) -> Result<(), ReadFailure> {
        let slack = TIMEOUT_SLACK.min(self.timeout / 16);
        loop {
            if self.reader.buffer().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ReadFailure::Late);
                }
                if left.abs_diff(self.read_timeout) > slack {
                    self.reader
                        .get_ref()
                        .set_read_timeout(Some(left))
                        .map_err(ReadFailure::Failed)?;
                    self.read_timeout = left;
                }
            }
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue; // late or not: the top of the loop says
                }
                Err(e) => return Err(ReadFailure::Failed(e)),
            };
            if available.is_empty() {
                return if bytes.is_empty() {
                    Err(ReadFailure::Closed)
                } else {
                    Ok(())
                };
            }
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            let room = MAX_REPLY_LINE + 1 - bytes.len();
            bytes.extend_from_slice(&available[..take.min(room)]);
            self.reader.consume(take.min(room));
            if done || bytes.len() > MAX_REPLY_LINE {
                return Ok(());
            }
        }
    }

    fn expect_ok(&mut self, request: &Request<'_>) -> Result<Reply, ClientError> {
        match self.request(request)? {
            Reply::Err(code, message) => Err(ClientError::Refused {
                addr: self.addr.clone(),
                code,
                message,
            }),
            reply => Ok(reply),
        }
    }

    fn unexpected(&self, request: &Request<'_>, reply: Reply) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr.clone(),
            request: request.command_word(),
            reply,
        }
    }

    /// `REGISTER`: announces that this host serves `name` on `port`.
    pub fn register(
        &mut self,
        port: u16,
        size: u64,
        sha256: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let request = Request::Register {
            port,
            size,
            sha256,
            name,
        };
        match self.expect_ok(&request)? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// `UNREGISTER`: `Ok(true)` when removed, `Ok(false)` when it was not registered.
    pub fn unregister(&mut self, port: u16, name: &str) -> Result<bool, ClientError> {
        let request = Request::Unregister { port, name };
        match self.expect_ok(&request)? {
            Reply::Ok => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// `SEARCH`: the live sources of `name`, most recently seen first (empty when none).
    pub fn search(&mut self, name: &str) -> Result<Vec<Source>, ClientError> {
        let request = Request::Search { name };
        match self.expect_ok(&request)? {
            Reply::Found(sources) => Ok(sources),
            Reply::NotFound => Ok(Vec::new()),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// `FIND`: names matching every word.
    pub fn find(&mut self, words: &[&str]) -> Result<Vec<FindHit>, ClientError> {
        let request = Request::Find {
            words: words.to_vec(),
        };
        match self.expect_ok(&request)? {
            Reply::Results(hits) => Ok(hits),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// `HEARTBEAT`: how many registrations of this host and port were refreshed.
    pub fn heartbeat(&mut self, port: u16) -> Result<u64, ClientError> {
        let request = Request::Heartbeat { port };
        match self.expect_ok(&request)? {
            Reply::Refreshed(n) => Ok(n),
            other => Err(self.unexpected(&request, other)),
        }
    }

    /// `PING`.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.expect_ok(&Request::Ping)? {
            Reply::Pong => Ok(()),
            other => Err(self.unexpected(&Request::Ping, other)),
        }
    }

    /// `QUIT`: ends the conversation politely.
    pub fn quit(mut self) -> Result<(), ClientError> {
        match self.expect_ok(&Request::Quit)? {
            Reply::Bye => Ok(()),
            other => Err(self.unexpected(&Request::Quit, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server on loopback that calls `answer` with the
    /// number of each request line it reads (0, 1, ...) and the socket.
    fn server(answer: impl Fn(usize, &mut TcpStream) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            let mut lines = BufReader::new(read_half).lines();
            let mut n = 0;
            while let Some(Ok(_)) = lines.next() {
                answer(n, &mut stream);
                n += 1;
            }
        });
        addr
    }

    fn client(addr: &str, timeout: Duration) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        Client::from_stream(addr, stream, timeout).expect("client")
    }

    const SEARCH: Request<'static> = Request::Search { name: "x" };

    #[test]
    fn a_reply_in_pieces_within_the_deadline_is_read_and_so_are_the_next() {
        let source = format!("127.0.0.1:9 10 {}\n", "a".repeat(64));
        let addr = server(move |n, stream| {
            let reply = format!("FOUND 1\n{source}");
            if n == 0 {
                // Paced, past the slack: the client lowers its socket's
                // timeout for the rest of this reply and must raise it again.
                let (first, rest) = reply.split_at(20);
                let _ = stream.write_all(first.as_bytes());
                thread::sleep(Duration::from_millis(150));
                let _ = stream.write_all(rest.as_bytes());
            } else {
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        let mut client = client(&addr, Duration::from_secs(5));
        for _ in 0..3 {
            match client.request(&SEARCH) {
                Ok(Reply::Found(sources)) => assert_eq!(sources.len(), 1),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_reply_not_whole_by_the_deadline_is_late() {
        let addr = server(|_, stream| {
            let _ = stream.write_all(b"FOUND 1\n127.0.0.1:9 ");
        });
        let mut client = client(&addr, Duration::from_millis(300));
        match client.request(&SEARCH) {
            Err(ClientError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut);
                assert!(source.to_string().contains("no whole reply"), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Generous: far past the slack, far below a wait that ignores the
    /// deadline (the trickle below takes 20 s to send). Not a timing test.
    const HANG: Duration = Duration::from_secs(8);

    /// One byte every 0.25 s: each read returns in time, but the reply is
    /// judged against its whole deadline, never earlier.
    #[test]
    fn a_trickling_reply_is_late_at_its_deadline_not_before() {
        let addr = server(|_, stream| {
            let reply = format!("FOUND 1\n127.0.0.1:9 10 {}\n", "a".repeat(64));
            for b in reply.as_bytes() {
                if stream.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(250));
            }
        });
        let timeout = Duration::from_millis(1200);
        let mut client = client(&addr, timeout);
        let start = Instant::now();
        let got = client.request(&SEARCH);
        let took = start.elapsed();
        assert!(
            matches!(&got, Err(ClientError::Io { source, .. }) if source.kind() == io::ErrorKind::TimedOut),
            "{got:?}"
        );
        assert!(took >= timeout, "judged late before its deadline: {took:?}");
        assert!(took < HANG, "the deadline did not hold: {took:?}");
    }

    /// Silence: late, never before the deadline, on a first and a later
    /// request (the socket keeps the timeout the first one set).
    #[test]
    fn silence_is_late_never_before_the_deadline() {
        for ms in [20u64, 100, 400] {
            let addr = server(|_, _| {});
            let timeout = Duration::from_millis(ms);
            let mut client = client(&addr, timeout);
            for _ in 0..2 {
                let start = Instant::now();
                assert!(client.request(&SEARCH).is_err());
                let took = start.elapsed();
                assert!(took >= timeout, "{ms} ms: late too early: {took:?}");
                assert!(took < HANG, "{ms} ms: {took:?}");
            }
        }
    }

    /// A reply that ends close to its deadline leaves the socket with a
    /// short timeout; a next reply slower than that is still read.
    #[test]
    fn a_short_socket_timeout_left_by_one_reply_does_not_cut_the_next() {
        let addr = server(|n, stream| {
            let reply = format!("FOUND 1\n127.0.0.1:9 10 {}\n", "a".repeat(64));
            if n == 0 {
                let (a, rest) = reply.split_at(10);
                let (b, c) = rest.split_at(10);
                let _ = stream.write_all(a.as_bytes());
                thread::sleep(Duration::from_millis(900));
                let _ = stream.write_all(b.as_bytes());
                thread::sleep(Duration::from_millis(50));
                let _ = stream.write_all(c.as_bytes());
            } else {
                thread::sleep(Duration::from_millis(300));
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        let mut client = client(&addr, Duration::from_secs(3));
        for i in 0..3 {
            match client.request(&SEARCH) {
                Ok(Reply::Found(sources)) => assert_eq!(sources.len(), 1),
                other => panic!("reply {i}: {other:?}"),
            }
        }
    }

    /// Bad lines are bad replies, and nothing of them shows in the next
    /// reply (the line buffers are reused).
    #[test]
    fn bad_lines_do_not_leak_into_the_next_reply() {
        let addr = server(|n, stream| {
            let _ = match n {
                0 => stream.write_all(b"PO\xffNG\n"),
                1 => stream.write_all(b"PONG\n"),
                2 => stream
                    .write_all(format!("FOUND 1\n127.0.0.1:9 10 {}\n", "a".repeat(64)).as_bytes()),
                _ => stream.write_all(b"ERR"),
            };
            if n == 3 {
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        });
        let mut client = client(&addr, Duration::from_secs(5));
        assert!(matches!(
            client.request(&Request::Ping),
            Err(ClientError::BadReply { .. })
        ));
        assert!(matches!(client.request(&Request::Ping), Ok(Reply::Pong)));
        match client.request(&SEARCH) {
            Ok(Reply::Found(sources)) => assert_eq!(sources[0].port, 9),
            other => panic!("{other:?}"),
        }
        match client.request(&Request::Ping) {
            Err(ClientError::BadReply { source, .. }) => assert_eq!(source.line, "ERR"),
            other => panic!("{other:?}"),
        }
    }
}
