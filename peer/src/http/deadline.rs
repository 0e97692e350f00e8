//! Body writes with a real write deadline: a connection on which the client
//! accepts no byte for the socket's write timeout (`SO_SNDTIMEO`, set from
//! [`super::FileServerConfig::write_timeout`]) fails with `TimedOut`, and
//! its worker is free again.
//!
//! A blocking `sendfile(2)` or `write(2)` that makes some progress and then
//! blocks returns only after the full timeout with a partial count, and the
//! next call waits the whole timeout again: one client that never reads held
//! a worker for 160 s under a 60 s timeout. Here each call runs on a
//! non-blocking socket and waits in `poll(2)` for writability until the
//! deadline, which restarts only when bytes were actually accepted. This
//! module only moves bytes; it never decides what to send.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// The deadline used when the socket has no write timeout (never, in the
/// file server: it always sets one).
const FALLBACK_TIMEOUT: Duration = super::DEFAULT_WRITE_TIMEOUT;

/// Restores blocking mode when dropped, so the rest of the connection (head
/// reads with their own timeouts) is unchanged.
struct NonBlocking<'a>(&'a TcpStream);

impl<'a> NonBlocking<'a> {
    fn on(stream: &'a TcpStream) -> io::Result<NonBlocking<'a>> {
        stream.set_nonblocking(true)?;
        Ok(NonBlocking(stream))
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_nonblocking(false);
    }
}

fn timeout_of(stream: &TcpStream) -> Duration {
    stream
        .write_timeout()
        .ok()
        .flatten()
        .unwrap_or(FALLBACK_TIMEOUT)
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client accepted no data for {}",
            humantime::format_duration(timeout)
        ),
    )
}

/// Waits until `stream` can take more bytes or `deadline` passes.
fn wait_writable(stream: &TcpStream, deadline: Instant, timeout: Duration) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(timeout));
        }
        let spec = Timespec::try_from(left).map_err(|_| timed_out(timeout))?;
        let mut fds = [PollFd::new(stream, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, Some(&spec)) {
            // Writable, or an error/hang-up that the next write reports.
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) => return Err(timed_out(timeout)),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `sendfile(2)` of at most `chunk` bytes of `file` from `offset`
/// (advanced by what was sent), waiting at most the socket's write timeout
/// for the client to take the first byte. Errors are the kernel's (`INVAL`
/// and `NOSYS` mean "no sendfile here"), or `TimedOut`.
pub fn sendfile(
    stream: &TcpStream,
    file: &File,
    offset: &mut u64,
    chunk: usize,
) -> Result<usize, Errno> {
    let timeout = timeout_of(stream);
    let deadline = Instant::now() + timeout;
    let _mode =
        NonBlocking::on(stream).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    loop {
        match rustix::fs::sendfile(stream, file, Some(offset), chunk) {
            Err(Errno::AGAIN) => {
                if wait_writable(stream, deadline, timeout).is_err() {
                    return Err(Errno::TIMEDOUT);
                }
            }
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// `write_all` with the same deadline: each stretch without progress may
/// last at most the socket's write timeout.
pub fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let timeout = timeout_of(stream);
    let _mode = NonBlocking::on(stream)?;
    let mut deadline = Instant::now() + timeout;
    let mut writer = stream;
    while !bytes.is_empty() {
        match writer.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                deadline = Instant::now() + timeout;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(stream, deadline, timeout)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A pair of connected sockets; the client end never reads.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn a_client_that_never_reads_times_out() {
        let (server, _client) = pair();
        server
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let big = vec![0u8; 64 * 1024 * 1024];
        let err = write_all(&server, &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // Blocking mode is back for the rest of the connection.
        let mut probe = [0u8; 1];
        server
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let kind = (&server).read(&mut probe).unwrap_err().kind();
        assert!(matches!(
            kind,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn sendfile_times_out_too_and_sends_everything_to_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![5u8; 32 * 1024 * 1024]).unwrap();
        let file = File::open(&path).unwrap();

        let (server, _client) = pair();
        server
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut offset = 0;
        let result = loop {
            match sendfile(&server, &file, &mut offset, 8 * 1024 * 1024) {
                Ok(_) if offset >= 32 * 1024 * 1024 => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        assert_eq!(result, Err(Errno::TIMEDOUT));

        let (server, mut client) = pair();
        server
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            client.read_to_end(&mut all).unwrap();
            all.len()
        });
        let mut offset = 0;
        while offset < 32 * 1024 * 1024 {
            sendfile(&server, &file, &mut offset, 8 * 1024 * 1024).unwrap();
        }
        let mut server = server;
        server.flush().unwrap();
        drop(server);
        assert_eq!(reader.join().unwrap(), 32 * 1024 * 1024);
    }
}
