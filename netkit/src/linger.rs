//! Closing a connection gracefully.
//!
//! A server that closes while the client's request bytes sit unread in its
//! receive buffer makes the kernel send a reset, which can destroy the
//! answer before the client reads it. So: end our side, then read and
//! discard what the client still sends, bounded in time and bytes.

use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Ends our side of `stream`, then discards what the client still sends
/// until it closes, for at most `timeout` in all and `max_bytes`.
pub fn linger_close(stream: &TcpStream, timeout: Duration, max_bytes: u64) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + timeout;
    let mut scratch = [0u8; 4096];
    let mut discarded: u64 = 0;
    while discarded < max_bytes {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match (&*stream).read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => discarded += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
