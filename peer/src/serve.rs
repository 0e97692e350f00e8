//! `peer serve`: register every regular file of the shared folder, serve
//! them, keep the registrations alive with heartbeats, and on SIGINT/SIGTERM
//! unregister them, stop the file server and return (exit 0).
//!
//! Before registering, each file is read once for both its SHA-256 and its
//! piece list (`/pieces/<name>`), so downloaders find the list ready.
//!
//! Also the start-up steps the menu shares: opening the shared folder and
//! binding the file server. This module must not print `listening on` before
//! the file server accepts connections and (for `serve`) the files are
//! registered: scripts and tests wait for that line.

use std::io::{self, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::PeerConfig;
use crate::files::{FilesError, HashCache, SharedDir};
use crate::http::pieces::PieceCache;
use crate::http::{FileServer, HttpError};
use crate::progress::Reporter;
use crate::registration::{Heartbeat, Registrar, RETRY_MAX, RETRY_MIN};

/// Why the peer could not start or stop serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve needs --port N (the port to serve on; 0 picks a free one)")]
    NoPort,
    #[error("cannot create shared folder {}: {source}", path.display())]
    CreateShared { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("port {port} is in use; choose another one (0 picks a free one)")]
    PortInUse { port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot handle SIGINT/SIGTERM: {0}")]
    Signal(#[from] ctrlc::Error),
    #[error("cannot start the heartbeat thread: {0}")]
    Thread(io::Error),
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
}

/// Opens the shared folder, creating it (and saying so) when it is missing.
pub fn open_shared(path: &Path, reporter: &Reporter) -> Result<SharedDir, ServeError> {
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(|source| ServeError::CreateShared {
            path: path.to_owned(),
            source,
        })?;
        reporter.note(format_args!(
            "created the empty shared folder {}",
            path.display()
        ));
    }
    Ok(SharedDir::open(path)?)
}

/// Binds `--bind`:`port` and starts the file server on it, with the limits
/// of `common` (`--max-upload-rate`).
pub fn start_file_server(
    common: &PeerConfig,
    port: u16,
    shared: &SharedDir,
    hashes: &HashCache,
) -> Result<FileServer, ServeError> {
    start_file_server_with(common, port, shared, hashes, &PieceCache::new())
}

/// Like [`start_file_server`], serving piece lists from `pieces`.
pub fn start_file_server_with(
    common: &PeerConfig,
    port: u16,
    shared: &SharedDir,
    hashes: &HashCache,
    pieces: &PieceCache,
) -> Result<FileServer, ServeError> {
    let addr = SocketAddr::new(common.bind, port);
    let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
        ErrorKind::AddrInUse => ServeError::PortInUse { port },
        _ => ServeError::Bind { addr, source },
    })?;
    Ok(FileServer::start_with_pieces(
        listener,
        shared.clone(),
        hashes.clone(),
        pieces.clone(),
        common.file_server.clone(),
    )?)
}

/// Reads every shared file once for its piece list and SHA-256 (with a bar
/// for big files), so registration and `/pieces` need no further pass.
/// A file that cannot be read is left to registration to report.
pub fn prepare_pieces(
    shared: &SharedDir,
    hashes: &HashCache,
    pieces: &PieceCache,
    reporter: &Reporter,
) {
    let files = match shared.list() {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    for file in files {
        let mut progress = reporter.hashing(&file.name, file.size);
        match pieces.get(&file, None, hashes, &mut |n| progress.set(n)) {
            Ok(_) => progress.finish(),
            Err(e) => tracing::debug!("no piece list yet: {e}"),
        }
    }
}

/// Prints the machine-readable start line and flushes it.
pub fn announce(addr: SocketAddr) -> Result<(), ServeError> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .map_err(ServeError::Stdout)
}

/// Runs `peer serve` until SIGINT or SIGTERM.
pub fn run(common: &PeerConfig, reporter: &Reporter) -> Result<(), ServeError> {
    let port = common.port.ok_or(ServeError::NoPort)?;
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        // A second signal while the first is handled finds the channel full.
        let _ = stop_tx.try_send(());
    })?;

    let shared = open_shared(&common.shared, reporter)?;
    let hashes = HashCache::new();
    let pieces = PieceCache::new();
    let server = start_file_server_with(common, port, &shared, &hashes, &pieces)?;
    let addr = server.local_addr();
    prepare_pieces(&shared, &hashes, &pieces, reporter);
    let registrar = Arc::new(Registrar::new(&common.server, addr.port(), shared, hashes));

    if register_until_done(&registrar, reporter, &stop) {
        announce(addr)?;
        let heartbeat = Heartbeat::start(Arc::clone(&registrar), common.heartbeat)
            .map_err(ServeError::Thread)?;
        // Either a signal or every sender gone; both mean stop.
        let _ = stop.recv();
        heartbeat.stop();
    }

    match registrar.unregister_all() {
        Ok(n) => reporter.note(format_args!("unregistered {n} files")),
        Err(e) => tracing::warn!(
            "could not unregister (the registrations lapse at the registry's TTL): {e}"
        ),
    }
    server.shutdown();
    Ok(())
}

/// Registers the shared folder, retrying with back-off while the registry
/// is unreachable. Returns `false` when a signal arrived first.
fn register_until_done(registrar: &Registrar, reporter: &Reporter, stop: &Receiver<()>) -> bool {
    let mut retry = RETRY_MIN;
    loop {
        match registrar.register_all(reporter) {
            Ok(summary) => {
                for line in &summary.skipped {
                    tracing::warn!("{line}");
                }
                return true;
            }
            Err(e) => {
                tracing::warn!("{e}; trying again in {}", humantime::format_duration(retry));
            }
        }
        if stopped_within(stop, retry) {
            return false;
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Waits `pause` unless a stop arrives first; `true` when stopped.
fn stopped_within(stop: &Receiver<()>, pause: Duration) -> bool {
    !matches!(stop.recv_timeout(pause), Err(RecvTimeoutError::Timeout))
}
