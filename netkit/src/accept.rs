//! The accept loop and its wake-up.
//!
//! [`accept_loop`] accepts until told to stop; a failing `accept` (out of
//! descriptors or memory) pauses it, doubling from [`ACCEPT_BACKOFF_START`]
//! up to [`ACCEPT_BACKOFF_MAX`], so a persistent error never spins a core.
//! [`Waker::wake`] gets a thread blocked in `accept` out of it. This module
//! must not decide anything about a connection: the caller's handler does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// First pause after `accept` fails; doubled on each consecutive failure.
pub const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(5);

/// Longest pause between failing `accept` calls.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and hands each to `handle`, until
/// `stopping()` is true after an `accept` returns (so a [`Waker`] ends it)
/// or `handle` breaks. `name` names the server in the logs.
pub fn accept_loop(
    name: &str,
    listener: &TcpListener,
    stopping: impl Fn() -> bool,
    mut handle: impl FnMut(TcpStream, SocketAddr) -> ControlFlow<()>,
) {
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = listener.accept();
        if stopping() {
            return;
        }
        match accepted {
            Ok((stream, client)) => {
                backoff = ACCEPT_BACKOFF_START;
                if handle(stream, client).is_break() {
                    return;
                }
            }
            // The client gave up before we took it: nothing is wrong here.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                tracing::warn!(server = name, error = %e, "accept failed; backing off {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Gets the acceptor out of a blocked `accept`; cheap to clone, usable
/// from any thread (a signal handler's too), more than once.
#[derive(Clone)]
pub struct Waker {
    /// A second handle on the listening socket.
    listener: Arc<TcpListener>,
    /// Where to connect when shutting the socket down is not enough.
    addr: SocketAddr,
    /// How long that fallback connection may take.
    connect_timeout: Duration,
}

impl Waker {
    /// A waker for `listener` (a second handle on it is kept, one more
    /// descriptor); `connect_timeout` bounds the fallback connection.
    pub fn new(listener: &TcpListener, connect_timeout: Duration) -> io::Result<Waker> {
        let addr = listener.local_addr()?;
        Ok(Waker {
            listener: Arc::new(listener.try_clone()?),
            addr: wake_address(addr),
            connect_timeout,
        })
    }

    /// Wakes the acceptor. Shutting the listening socket down makes a
    /// blocked `accept` fail at once (Linux), also when its address has
    /// gone away (an interface removed); a connection to it is the fallback
    /// for systems that do not. `false` when neither worked.
    pub fn wake(&self) -> bool {
        if rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read).is_ok() {
            return true;
        }
        TcpStream::connect_timeout(&self.addr, self.connect_timeout).is_ok()
    }
}

/// Where to connect to reach our own listener (an unspecified address
/// cannot be connected to).
pub fn wake_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_waker_ends_a_blocked_accept_loop_on_an_unspecified_address() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let waker = Waker::new(&listener, Duration::from_secs(1)).unwrap();
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let acceptor = thread::spawn(move || {
            accept_loop(
                "test",
                &listener,
                || flag.load(Ordering::SeqCst),
                |_, _| ControlFlow::Continue(()),
            )
        });
        stopping.store(true, Ordering::SeqCst);
        assert!(waker.wake());
        acceptor.join().unwrap();
    }
}
