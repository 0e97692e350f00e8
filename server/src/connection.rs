//! One client socket: reading request lines with the length limit and the
//! timeouts, and writing replies.
//!
//! This is the only place that sees raw bytes from a client. It hands whole
//! lines of valid UTF-8 up to the worker and knows nothing of what they mean;
//! replies come down as [`Reply`] values. Output is buffered and flushed only
//! when no further complete request is already waiting, so a client that
//! pipelines many requests gets its replies in few writes; but no more than
//! [`MAX_PENDING_OUTPUT`] bytes are ever held for one client: past that the
//! replies are written (and the client must read them) before another
//! request is taken, so pipelining cannot make the server buffer unbounded
//! output. A reply must be taken by the client within the write timeout,
//! counted once for the whole flush, however it is split into writes.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
pub const LINGER_BYTES: u64 = 4 << 20;

/// Most reply bytes held for one connection before they are written out and
/// no further request is read: bounds the memory a pipelining client can
/// make the server hold to this plus one reply (a SEARCH reply is at most
/// [`crate::store::MAX_SEARCH_SOURCES`] lines).
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;

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
    #[error("reply not taken by the client within {0:?}")]
    WriteTimeout(Duration),
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
    /// The socket's write timeout as last set, for the same reason: a
    /// reply that goes out in one `write` (nearly all) costs no `setsockopt`.
    write_timeout: Option<Duration>,
    /// Set while the connection waits for a new request with nothing
    /// buffered: such a connection can be closed to free its slot without
    /// losing a request (see `server`'s fair slot sharing).
    idle: Arc<AtomicBool>,
}

impl Connection {
    /// `idle` is raised while the connection waits for a request with
    /// nothing pending, and lowered as soon as a byte arrives.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        limits: Limits,
        idle: Arc<AtomicBool>,
    ) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            peer,
            limits,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
            read_timeout: None,
            write_timeout: None,
            idle,
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
        if self.out.len() >= MAX_PENDING_OUTPUT {
            // The client must take what it is owed before it may ask more.
            self.flush()?;
        }
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
            // Marked idle before the reply goes out, so that a client that
            // has its reply sees a connection already counted as idle.
            let waiting = self.start == self.end;
            if waiting {
                self.idle.store(true, Ordering::Relaxed);
            }
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
            let read = self.stream.read(&mut self.buf[self.end..]);
            if waiting {
                self.idle.store(false, Ordering::Relaxed);
            }
            match read {
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

    /// Takes the next request line if it is already complete in the buffer
    /// and `take` accepts it (returns `Some`); otherwise leaves it for
    /// [`Connection::read_line`]. Never reads from the socket, never
    /// flushes: this is how the worker gathers a run of pipelined writes to
    /// submit together. A line that is too long or not UTF-8 is left alone
    /// (the next `read_line` reports it, after the run is answered).
    pub fn take_buffered_line<T>(&mut self, take: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        let pending = &self.buf[self.start..self.end];
        let pos = pending.iter().position(|&b| b == b'\n')?;
        if pos + 1 > MAX_LINE_BYTES {
            return None;
        }
        let mut line = &pending[..pos];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let taken = take(std::str::from_utf8(line).ok()?)?;
        self.start += pos + 1;
        Some(taken)
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

    /// Where replies are queued, for a reply written without a [`Reply`]
    /// (SEARCH from the index: `Registry::search_into`); sent at the next flush.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Sends every queued reply within one write timeout in all: a client
    /// that takes a few bytes now and then cannot restart the clock.
    pub fn flush(&mut self) -> Result<(), FrameError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = write_all_by(
            &mut self.stream,
            &mut self.write_timeout,
            &self.out,
            self.limits.write_timeout,
        );
        self.out.clear();
        if self.out.capacity() > MAX_PENDING_OUTPUT {
            // One big reply must not keep its buffer for the connection's life.
            self.out.shrink_to(MAX_PENDING_OUTPUT);
        }
        result
    }

    /// Drops what is queued and closes: for a client that does not read.
    pub fn abort(mut self) {
        self.out.clear();
        let _ = self.stream.shutdown(Shutdown::Both);
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
        p2p_net::linger_close(&self.stream, LINGER_TIME, LINGER_BYTES);
        let _ = self.stream.shutdown(Shutdown::Read);
    }
}

/// Writes all of `bytes` before `timeout` has passed since the call, or
/// fails. `set` is the socket's write timeout as last set: the first
/// `write` may block for all of `timeout`, a later one (after a partial
/// write) only for what is left, and the socket is told only on a change.
fn write_all_by(
    stream: &mut TcpStream,
    set: &mut Option<Duration>,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), FrameError> {
    let deadline = Instant::now() + timeout;
    let mut rest = bytes;
    let mut first = true;
    while !rest.is_empty() {
        let left = if first {
            timeout
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        first = false;
        if left.is_zero() {
            return Err(FrameError::WriteTimeout(timeout));
        }
        if *set != Some(left) {
            stream.set_write_timeout(Some(left))?;
            *set = Some(left);
        }
        match stream.write(rest) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if is_timeout(&e) => return Err(FrameError::WriteTimeout(timeout)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
