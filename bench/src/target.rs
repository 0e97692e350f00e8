//! One connection to the system under test, and how it carries one request.
//!
//! Every target receives the same [`Request`] values from the load threads:
//! - [`Target::Dht`]: the registry, spoken to through `p2p_proto::client`,
//!   whose reply parsing is exactly what a peer runs;
//! - [`Target::Echo`]: a line-echo server gets the request line the registry
//!   would get, and one line back (the floor of one-line request/reply);
//! - [`Target::Redis`]: `SEARCH` becomes `SMEMBERS name` and `REGISTER`
//!   becomes `SADD name member`, as inline commands with RESP replies.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use p2p_proto::client::{Client, ClientError, Reply};
use p2p_proto::protocol::{Request, MAX_LINE_BYTES};

use crate::resp;
use crate::workload::Op;

/// Which kind of server the load generator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The registry (`dht-server`).
    Dht,
    /// A line-echo server (`echo-server`).
    Echo,
    /// A Redis server (inline commands, RESP replies).
    Redis,
}

impl Target {
    pub fn word(self) -> &'static str {
        match self {
            Target::Dht => "dht",
            Target::Echo => "echo",
            Target::Redis => "redis",
        }
    }

    /// Whether this target can carry `op` meaningfully.
    pub fn supports(self, op: Op) -> bool {
        match self {
            Target::Dht | Target::Echo => true,
            Target::Redis => matches!(op, Op::Search | Op::Register | Op::Ping),
        }
    }
}

/// What a completed request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request did what it asked (found sources, registered, ...).
    Hit,
    /// A well-formed negative answer: `NOT_FOUND`, `RESULTS 0`, an empty set.
    Miss,
}

/// Why a request failed. Each one is counted, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{0}")]
    Io(String),
    /// The server answered with an error (`ERR ...`, `-ERR ...`): the connection is still good.
    #[error("refused: {0}")]
    Refused(String),
    /// A reply that does not belong to the request: the stream may be out of step.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl OpError {
    /// Whether the connection can carry the next request.
    pub fn keeps_connection(&self) -> bool {
        matches!(self, OpError::Refused(_))
    }
}

/// An open connection to one target.
pub enum Conn {
    Dht(Client),
    Echo(LineConn),
    Redis(LineConn),
}

impl Conn {
    /// Connects to `addr` with `timeout` for the connect and every read and write.
    pub fn connect(target: Target, addr: &str, timeout: Duration) -> Result<Conn, OpError> {
        match target {
            Target::Dht => Client::connect_timeout(addr, timeout)
                .map(Conn::Dht)
                .map_err(|e| match e {
                    ClientError::Resolve { source, .. } | ClientError::Connect { source, .. } => {
                        OpError::Connect {
                            addr: addr.to_owned(),
                            source,
                        }
                    }
                    other => OpError::Io(other.to_string()),
                }),
            Target::Echo => LineConn::connect(addr, timeout).map(Conn::Echo),
            Target::Redis => LineConn::connect(addr, timeout).map(Conn::Redis),
        }
    }

    /// Sends `request` and reads its whole reply.
    pub fn call(&mut self, request: &Request<'_>) -> Result<Outcome, OpError> {
        match self {
            Conn::Dht(client) => dht_call(client, request),
            Conn::Echo(conn) => conn.echo(request),
            Conn::Redis(conn) => conn.redis(request),
        }
    }
}

fn dht_call(client: &mut Client, request: &Request<'_>) -> Result<Outcome, OpError> {
    let reply = client
        .request(request)
        .map_err(|e| OpError::Io(e.to_string()))?;
    match (request, reply) {
        (_, Reply::Err(code, message)) => Err(OpError::Refused(format!("{code} {message}"))),
        (Request::Search { .. }, Reply::Found(_))
        | (Request::Register { .. }, Reply::Ok)
        | (Request::Unregister { .. }, Reply::Ok)
        | (Request::Heartbeat { .. }, Reply::Refreshed(_))
        | (Request::Ping, Reply::Pong)
        | (Request::Quit, Reply::Bye) => Ok(Outcome::Hit),
        (Request::Find { .. }, Reply::Results(hits)) => Ok(if hits.is_empty() {
            Outcome::Miss
        } else {
            Outcome::Hit
        }),
        (Request::Search { .. } | Request::Unregister { .. }, Reply::NotFound) => Ok(Outcome::Miss),
        (request, reply) => Err(OpError::Unexpected(format!(
            "{reply:?} to {}",
            request.command_word()
        ))),
    }
}

/// A plain socket for the echo server and Redis, set up like the registry
/// client's (timeouts, `TCP_NODELAY`, separate read and write handles) so
/// that the baselines pay the same per-connection costs.
pub struct LineConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: String,
    line: Vec<u8>,
}

impl LineConn {
    fn connect(addr: &str, timeout: Duration) -> Result<LineConn, OpError> {
        let connect_err = |source| OpError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        for sa in addrs {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(stream) => return LineConn::from_stream(stream, timeout).map_err(connect_err),
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    fn from_stream(stream: TcpStream, timeout: Duration) -> io::Result<LineConn> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(LineConn {
            reader: BufReader::new(stream),
            writer,
            out: String::with_capacity(512),
            line: Vec::with_capacity(512),
        })
    }

    fn send(&mut self) -> Result<(), OpError> {
        self.writer
            .write_all(self.out.as_bytes())
            .map_err(|e| OpError::Io(e.to_string()))
    }

    /// Sends the registry's request line; the echo comes back as one line.
    fn echo(&mut self, request: &Request<'_>) -> Result<Outcome, OpError> {
        self.out.clear();
        request.write_line(&mut self.out);
        self.send()?;
        self.line.clear();
        let n = io::Read::take(&mut self.reader, (2 * MAX_LINE_BYTES) as u64)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| OpError::Io(e.to_string()))?;
        if n == 0 {
            return Err(OpError::Io("the echo server closed the connection".into()));
        }
        if self.line != self.out.as_bytes() {
            return Err(OpError::Unexpected(
                "the echo differs from the request".into(),
            ));
        }
        Ok(Outcome::Hit)
    }

    /// Sends the Redis equivalent of `request` and reads its RESP reply.
    fn redis(&mut self, request: &Request<'_>) -> Result<Outcome, OpError> {
        use std::fmt::Write as _;
        self.out.clear();
        // Writing to a String cannot fail.
        let _ = match request {
            Request::Search { name } => write!(self.out, "SMEMBERS {name}\r\n"),
            Request::Register {
                port,
                size,
                sha256,
                name,
            } => write!(self.out, "SADD {name} 127.0.0.1:{port}|{size}|{sha256}\r\n"),
            Request::Ping => self.out.write_str("PING\r\n"),
            other => {
                return Err(OpError::Unexpected(format!(
                    "{} has no Redis equivalent",
                    other.command_word()
                )))
            }
        };
        self.send()?;
        let summary = resp::read_reply(&mut self.reader, &mut self.line)
            .map_err(|e| OpError::Io(e.to_string()))?;
        if summary.error {
            return Err(OpError::Refused("Redis answered an error".into()));
        }
        Ok(match request {
            Request::Search { .. } if summary.items == 0 => Outcome::Miss,
            _ => Outcome::Hit,
        })
    }

    /// Sends raw bytes (a pipelined window of commands).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one RESP reply (after [`LineConn::send_raw`]).
    pub fn read_resp(&mut self) -> io::Result<resp::Summary> {
        resp::read_reply(&mut self.reader, &mut self.line)
    }

    /// Connects for a pipelined preload.
    pub fn connect_plain(addr: &str, timeout: Duration) -> Result<LineConn, OpError> {
        LineConn::connect(addr, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_supports_only_what_it_can_map() {
        assert!(Target::Redis.supports(Op::Search));
        assert!(Target::Redis.supports(Op::Register));
        assert!(!Target::Redis.supports(Op::Find));
        assert!(!Target::Redis.supports(Op::Heartbeat));
        assert!(Target::Echo.supports(Op::Find));
    }
}
