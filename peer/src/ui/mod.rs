//! The control UI: a small web page and JSON API, served by the peer on its
//! own loopback listener (`--ui ADDR`, default [`DEFAULT_UI_ADDR`] or the
//! next free port above it), to search the whole registry, start downloads
//! inside this peer and watch their progress, and see the shared folder.
//!
//! # Layout
//! - this module: [`UiAddr`] (what `--ui` asked for), [`launch`] (bind, the
//!   start line, the warning), [`Ui`]: the acceptor thread, the bounded
//!   worker pool, shutdown.
//! - [`request`]: reading one request (head and a small body) off a connection.
//! - [`guard`]: the safety rules: `Host`, `Origin`, the per-process token.
//! - [`api`]: routing and the JSON API under `/api/`, the page, file views.
//! - [`jobs`]: the downloads the UI started, run by a bounded pool of
//!   download threads through [`crate::download`], observed for progress.
//! - [`assets`]: the page, its script and its style, embedded in the binary.
//!
//! # Safety
//! Anyone who can send this UI a request can make the peer download files,
//! so: it listens on loopback unless `--ui` names another address (then
//! [`launch`] warns); every request whose `Host` is not the UI's own address
//! is refused with `403` (DNS rebinding); every request other than
//! `GET`/`HEAD` is refused with `403` unless it carries the per-process
//! token (header [`guard::TOKEN_HEADER`]) and, when it has an `Origin`, that
//! origin is the UI's own (cross-site request forgery).
//!
//! This module must never let the UI stop the peer: a UI that cannot start
//! is a warning and the peer goes on sharing. It never builds a path from a
//! name itself ([`SharedDir::resolve`] does) and never puts a name into HTML
//! unescaped (the page renders names with `textContent`).

pub mod api;
pub mod assets;
pub mod guard;
pub mod jobs;
pub mod request;

use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, TrySendError};
use p2p_net::{accept_loop, Waker};

use crate::config::PeerConfig;
pub use crate::config::UiAddr;
use crate::files::SharedDir;
use crate::registration::Registrar;

/// Default address of the control UI (loopback: only this machine).
pub const DEFAULT_UI_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8390);

/// With the default address, how many ports from [`DEFAULT_UI_ADDR`]'s up
/// are tried before the UI gives up (several peers on one machine each get
/// their own).
pub const UI_PORT_TRIES: u16 = 100;

/// Threads serving UI requests; also the connections served at once.
pub const UI_WORKERS: usize = 16;

/// Accepted connections waiting for a worker; beyond this a connection gets
/// `503` at once, so a flood cannot queue without bound.
pub const UI_PENDING: usize = 32;

/// Longest wait for a whole request (head and body) from the moment it is
/// accepted; a browser's idle pre-connection holds a worker at most this long.
pub const UI_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a single write to a client may block.
pub const UI_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown may take connecting to its own listener to wake the
/// acceptor, where shutting the listening socket down does not (the fallback).
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the UI shows and acts on, from the peer that starts it.
#[derive(Clone)]
pub struct Context {
    /// Registry address, the downloads folder and the download options.
    pub config: PeerConfig,
    /// The shared folder and what this peer registered from it.
    pub registrar: Arc<Registrar>,
}

impl Context {
    /// The shared folder.
    pub fn shared(&self) -> &SharedDir {
        self.registrar.shared()
    }
}

/// Why the UI could not start (reported as a warning; the peer goes on).
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("ports {first} to {last} on {ip} are all in use; choose one with --ui IP:PORT")]
    NoFreePort { ip: IpAddr, first: u16, last: u16 },
    #[error("cannot read the random token from /dev/urandom: {0}")]
    Token(io::Error),
    #[error("cannot start a UI thread: {0}")]
    Thread(io::Error),
}

/// Starts the UI as `config.ui` asks, with `registrar`'s shared folder, and
/// says `ui on http://HOST:PORT/` through `say` once it accepts
/// connections. `None` when it is off or could not start (then a warning
/// went to stderr). Keep the returned [`Ui`] alive as long as the UI should run.
pub fn launch(
    config: &PeerConfig,
    registrar: &Arc<Registrar>,
    say: &mut dyn FnMut(&str),
) -> Option<Ui> {
    if config.ui == UiAddr::Off {
        return None;
    }
    let context = Context {
        config: config.clone(),
        registrar: Arc::clone(registrar),
    };
    match Ui::start(config.ui, context) {
        Ok(ui) => {
            let addr = ui.local_addr();
            if !addr.ip().is_loopback() {
                let _ = writeln!(
                    io::stderr(),
                    "warning: the control UI listens on {addr}, not on loopback: anyone who can \
                     reach it can make this peer download files"
                );
            }
            say(&format!("ui on http://{}/", guard::authority(addr)));
            Some(ui)
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "warning: no control UI: {e}");
            None
        }
    }
}

/// Binds the UI's listener as `wanted` says.
fn bind(wanted: UiAddr) -> Result<TcpListener, UiError> {
    match wanted {
        UiAddr::At(addr) => {
            TcpListener::bind(addr).map_err(|source| UiError::Bind { addr, source })
        }
        UiAddr::Off | UiAddr::Default => {
            bind_first_free(DEFAULT_UI_ADDR.ip(), DEFAULT_UI_ADDR.port(), UI_PORT_TRIES)
        }
    }
}

/// Binds the first free port of `tries` ports from `first` up on `ip`.
fn bind_first_free(ip: IpAddr, first: u16, tries: u16) -> Result<TcpListener, UiError> {
    let last = first.saturating_add(tries.saturating_sub(1));
    for port in first..=last {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(source) if source.kind() == ErrorKind::AddrInUse => {}
            Err(source) => return Err(UiError::Bind { addr, source }),
        }
    }
    Err(UiError::NoFreePort { ip, first, last })
}

/// A running control UI. Dropping it stops accepting and lets the workers
/// finish the requests they hold (without waiting for them); downloads
/// already running go on to their end.
pub struct Ui {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Gets the acceptor out of `accept` when the UI is dropped.
    waker: Waker,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    jobs: jobs::Jobs,
}

impl Ui {
    /// Binds and starts serving.
    pub fn start(wanted: UiAddr, context: Context) -> Result<Ui, UiError> {
        let listener = bind(wanted)?;
        let addr = listener.local_addr().map_err(|source| UiError::Bind {
            addr: DEFAULT_UI_ADDR,
            source,
        })?;
        let waker = Waker::new(&listener, WAKE_TIMEOUT).map_err(|source| UiError::Bind {
            addr: DEFAULT_UI_ADDR,
            source,
        })?;
        let token = guard::new_token().map_err(UiError::Token)?;
        let jobs = jobs::Jobs::start(&context).map_err(UiError::Thread)?;
        let site = Arc::new(api::Site {
            guard: guard::Guard::new(addr, token),
            context,
            jobs: jobs.clone(),
        });
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(UI_PENDING);
        let mut workers = Vec::with_capacity(UI_WORKERS);
        for i in 0..UI_WORKERS {
            let rx: Receiver<TcpStream> = rx.clone();
            let site = Arc::clone(&site);
            let worker = thread::Builder::new()
                .name(format!("ui-worker-{i}"))
                .spawn(move || {
                    for stream in rx {
                        api::serve_connection(stream, &site);
                    }
                })
                .map_err(UiError::Thread)?;
            workers.push(worker);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let acceptor = thread::Builder::new()
            .name("ui-acceptor".into())
            .spawn(move || {
                // A failing accept (out of descriptors) backs off there.
                accept_loop(
                    "ui",
                    &listener,
                    || stopping.load(Ordering::SeqCst),
                    |stream, _| match tx.try_send(stream) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(TrySendError::Full(stream)) => {
                            api::busy(stream);
                            ControlFlow::Continue(())
                        }
                        Err(TrySendError::Disconnected(_)) => ControlFlow::Break(()),
                    },
                )
            })
            .map_err(UiError::Thread)?;
        Ok(Ui {
            addr,
            stop,
            waker,
            acceptor: Some(acceptor),
            workers,
            jobs,
        })
    }

    /// Where the UI listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.jobs.shut_down();
        if let Some(acceptor) = self.acceptor.take() {
            if acceptor.is_finished() || self.waker.wake() {
                let _ = acceptor.join();
            } else {
                tracing::warn!(addr = %self.addr, "could not wake the UI acceptor; leaving it behind");
            }
        }
        // The acceptor held the only sender: the workers end after their
        // current request. They are not waited for: one may be streaming a
        // big file to a slow viewer, and the peer's shutdown must not wait.
        self.workers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_the_command_line_says() {
        assert_eq!("off".parse::<UiAddr>(), Ok(UiAddr::Off));
        assert_eq!("OFF".parse::<UiAddr>(), Ok(UiAddr::Off));
        assert_eq!(
            "[::1]:0".parse::<UiAddr>(),
            Ok(UiAddr::At("[::1]:0".parse().unwrap()))
        );
        assert!("localhost:8390".parse::<UiAddr>().is_err());
        assert!("8390".parse::<UiAddr>().is_err());
        assert!(DEFAULT_UI_ADDR.ip().is_loopback());
    }

    #[test]
    fn a_taken_port_moves_to_the_next_free_one_within_the_tries() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let taken = TcpListener::bind((ip, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        if port == u16::MAX {
            return; // no port above it to move to
        }
        match bind_first_free(ip, port, 3) {
            Ok(listener) => assert!(listener.local_addr().unwrap().port() > port),
            // Another process may hold the next ports: then the error names the range.
            Err(UiError::NoFreePort { first, .. }) => assert_eq!(first, port),
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            bind_first_free(ip, port, 1),
            Err(UiError::NoFreePort { .. })
        ));
    }
}
