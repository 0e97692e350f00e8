//! One client socket: reading request lines with the length limit and the
//! timeouts, and writing replies.
//!
//! This is the only place that sees raw bytes from a client. It hands whole
//! lines of valid UTF-8 up to the worker and knows nothing of what they mean;
//! replies come down as [`Reply`] values. Output is buffered and flushed only
//! when no further complete request is already waiting, so a client that
//! pipelines many requests gets its replies in few writes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use p2p_proto::protocol::{Reply, MAX_LINE_BYTES};

/// Limits that protect a worker from one client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a connection may sit between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long a client may take to finish a line once it has started it
    /// (a client trickling bytes cannot pin a worker for longer).
    pub line_timeout: Duration,
    /// How long a reply may take to be accepted by a client that does not read.
    pub write_timeout: Duration,
}

/// Default of [`Limits::idle_timeout`]: generous for a peer that keeps its
/// connection between heartbeats, short enough to reclaim abandoned ones.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default of [`Limits::line_timeout`].
pub const DEFAULT_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`Limits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            line_timeout: DEFAULT_LINE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// How long [`Connection::close_gracefully`] keeps reading a misbehaving
/// client's input so that its error reply is not lost to a reset.
pub const LINGER_TIME: Duration = Duration::from_secs(1);
/// Most bytes discarded that way before the connection is dropped anyway.
pub const LINGER_BYTES: usize = 4 << 20;

/// Room for one maximal line plus what a pipelining client sent after it.
const READ_BUFFER: usize = 2 * MAX_LINE_BYTES;

/// Why no further line can be read. After any of these the connection ends.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the client closed the connection")]
    Closed,
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    #[error("no request for {0:?}")]
    IdleTimeout(Duration),
    #[error("line not finished within {0:?}")]
    LineTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A client connection with its read buffer and pending output.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    buf: Box<[u8]>,
    /// `buf[start..end]` holds bytes received and not yet consumed.
    start: usize,
    end: usize,
    out: Vec<u8>,
    /// The read timeout currently set on the socket, to skip redundant syscalls.
    read_timeout: Option<Duration>,
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr, limits: Limits) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(limits.write_timeout))?;
        Ok(Connection {
            stream,
            peer,
            limits,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
            read_timeout: None,
        })
    }

    /// The client's address as the server sees it.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Reads the next request line, without its LF or CRLF. Pending replies
    /// are flushed before the connection waits for the client.
    pub fn read_line(&mut self) -> Result<&str, FrameError> {
        let mut line_started: Option<Instant> = None;
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                if pos + 1 > MAX_LINE_BYTES {
                    return Err(FrameError::TooLong);
                }
                let line_start = self.start;
                self.start += pos + 1;
                let mut line = &self.buf[line_start..line_start + pos];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                return std::str::from_utf8(line).map_err(|_| FrameError::InvalidUtf8);
            }
            if pending.len() >= MAX_LINE_BYTES {
                return Err(FrameError::TooLong);
            }
            // Nothing complete is waiting: the client is waiting for us.
            self.flush()?;
            self.compact();
            let timeout = if self.start == self.end {
                self.limits.idle_timeout
            } else {
                let started = *line_started.get_or_insert_with(Instant::now);
                let left = self.limits.line_timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(FrameError::LineTimeout(self.limits.line_timeout));
                }
                left
            };
            self.set_read_timeout(timeout)?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => {
                    if self.start == self.end {
                        line_started = Some(Instant::now());
                    }
                    self.end += n;
                }
                Err(e) if is_timeout(&e) => {
                    return Err(if self.start == self.end {
                        FrameError::IdleTimeout(self.limits.idle_timeout)
                    } else {
                        FrameError::LineTimeout(self.limits.line_timeout)
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Moves unconsumed bytes to the front so a whole line always fits.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(Some(timeout))?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn write_reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Sends every queued reply.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let result = self.stream.write_all(&self.out);
            self.out.clear();
            result?;
        }
        Ok(())
    }

    /// Sends what is queued and closes both directions; errors are moot by then.
    pub fn close(mut self) {
        let _ = self.flush();
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Closes when the client may still be sending (after QUIT, or an
    /// over-long line): sends the queued reply and our FIN, then reads and
    /// discards what the client sends for a moment. Closing with unread
    /// input would make the kernel answer with a reset, and the client could
    /// lose the last reply it was owed. A polite client closes at once on
    /// our FIN, so this costs it nothing.
    pub fn close_gracefully(mut self) {
        let _ = self.flush();
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Read);
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
