//! `peer serve`: register every regular file of the shared folder, serve
//! them, keep the registrations alive with heartbeats, and on SIGINT/SIGTERM
//! unregister them, stop the file server and return (exit 0).
//!
//! Before registering, each file is read once for both its SHA-256 and its
//! piece list (`/pieces/<name>`), so downloaders find the list ready;
//! files the persistent hash cache ([`crate::hashcache`]) knows unchanged
//! are not read at all (stderr says `hashed N files, M from cache`). Once
//! registered, the watcher thread ([`crate::watch`]) keeps the registrations
//! in step with the folder.
//!
//! Also the start-up steps the menu shares: opening the shared folder and
//! binding the file server. This module must not print `listening on` before
//! the file server accepts connections and (for `serve`) the files are
//! registered: scripts and tests wait for that line.

use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use p2p_proto::units::plural;

use crate::config::PeerConfig;
use crate::files::{FilesError, HashCache, SharedDir, SharedFile};
use crate::hashcache;
use crate::http::pieces::PieceCache;
use crate::http::{FileServer, HttpError};
use crate::progress::Reporter;
use crate::registration::{Heartbeat, Registrar, RETRY_MAX, RETRY_MIN};
use crate::watch::{OnSynced, Scope, WatchConfig, Watcher};
use crate::writing::Writing;

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

/// Opens the set of folders this peer shares: the shared folder and, with
/// `--share-downloads`, the downloads folder (both created when missing).
pub fn open_shared_for(common: &PeerConfig, reporter: &Reporter) -> Result<SharedDir, ServeError> {
    let shared = open_shared(&common.shared, reporter)?;
    if !common.share_downloads {
        return Ok(shared);
    }
    std::fs::create_dir_all(&common.downloads).map_err(|source| ServeError::CreateShared {
        path: common.downloads.clone(),
        source,
    })?;
    Ok(shared.with_downloads(&common.downloads)?)
}

/// The hash cache file of `shared`, in `--state` or the default state folder.
pub fn cache_store(common: &PeerConfig, shared: &SharedDir) -> hashcache::Store {
    let default = hashcache::default_state_dir(shared.path());
    let mut state = common.state.clone().unwrap_or_else(|| default.clone());
    // The cache must not be a shared file: it would be served, and every
    // save would be a change to register.
    if let Ok(canonical) = std::fs::canonicalize(&state) {
        if shared.roots().contains(&canonical.as_path()) {
            tracing::warn!(
                "--state {} is a shared folder; keeping the hash cache in {} instead",
                state.display(),
                default.display()
            );
            state = default;
        }
    }
    hashcache::Store::new(hashcache::cache_file(&state, shared.path()))
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

/// What [`prepare_pieces`] found.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The files listed.
    pub files: Vec<SharedFile>,
    /// How many of them needed no reading (digest and piece list cached).
    pub from_cache: usize,
}

/// Reads every shared file once for its piece list and SHA-256 (with a bar
/// for big files), so registration and `/pieces` need no further pass;
/// files whose digest and piece list are cached are not read.
/// A file that cannot be read is left to registration to report.
pub fn prepare_pieces(
    shared: &SharedDir,
    hashes: &HashCache,
    pieces: &PieceCache,
    reporter: &Reporter,
) -> Prepared {
    let files = match shared.list() {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!("{e}");
            return Prepared::default();
        }
    };
    let mut from_cache = 0;
    for file in &files {
        if hashes.cached(file).is_some() && pieces.cached(file).is_some() {
            from_cache += 1;
            continue;
        }
        let mut progress = reporter.hashing(&file.name, file.size);
        match pieces.get(file, None, hashes, &mut |n| progress.set(n)) {
            Ok(_) => progress.finish(),
            Err(e) => tracing::debug!("no piece list yet: {e}"),
        }
    }
    Prepared { files, from_cache }
}

/// Prints the machine-readable start line and flushes it.
pub fn announce(addr: SocketAddr) -> Result<(), ServeError> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {addr}")
        .and_then(|()| out.flush())
        .map_err(ServeError::Stdout)
}

/// The second start line when the file server listens on every address
/// (`0.0.0.0` or `::`): `reachable at IP:PORT[, IP:PORT...]`, the machine's
/// non-loopback addresses (the loopback one when it has no other).
pub fn reachable_line(addr: SocketAddr) -> Option<String> {
    if !addr.ip().is_unspecified() {
        return None;
    }
    let v4_only = addr.is_ipv4();
    let mut ips: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!("cannot list this machine's addresses: {e}");
            Vec::new()
        }
    };
    ips.retain(|ip| {
        !ip.is_loopback()
            && (ip.is_ipv4() || !v4_only)
            // A link-local IPv6 address needs a zone others cannot guess.
            && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    });
    ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    ips.dedup();
    if ips.is_empty() {
        ips.push(if v4_only {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    let list: Vec<String> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, addr.port()).to_string())
        .collect();
    Some(format!("reachable at {}", list.join(", ")))
}

/// Runs `peer serve` until SIGINT or SIGTERM.
pub fn run(common: &PeerConfig, reporter: &Reporter) -> Result<(), ServeError> {
    let port = common.port.ok_or(ServeError::NoPort)?;
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        // A second signal while the first is handled finds the channel full.
        let _ = stop_tx.try_send(());
    })?;

    let shared = open_shared_for(common, reporter)?;
    let hashes = HashCache::new();
    let pieces = PieceCache::new();
    let mut store = cache_store(common, &shared);
    store.load_into(&hashes, &pieces);
    let server = start_file_server_with(common, port, &shared, &hashes, &pieces)?;
    let addr = server.local_addr();
    let prepared = prepare_pieces(&shared, &hashes, &pieces, reporter);
    // On stderr: stdout is for the start lines scripts read.
    let _ = writeln!(
        io::stderr(),
        "hashed {} file{}, {} from cache",
        prepared.files.len(),
        plural(prepared.files.len()),
        prepared.from_cache
    );
    store.save(&prepared.files, &hashes, &pieces);
    // Filled by the watcher's notifications once it runs; the DHT announcer
    // asks it too, so neither announces a file still being written.
    let writing = Writing::default();
    let dht = crate::dht::announce_or_warn(
        common.dht.as_ref(),
        addr.port(),
        &shared,
        &hashes,
        &writing,
        common.watch.settle,
    );
    let registrar = Arc::new(
        Registrar::new(&common.server, addr.port(), shared, hashes.clone()).with_bind(common.bind),
    );
    let store = Arc::new(Mutex::new(store));

    if register_until_done(&registrar, reporter, &stop, dht.is_some()) {
        // The folder is watched before `listening on`: a file a script
        // writes once it reads that line is seen open for writing.
        let on_synced: OnSynced = {
            let (store, hashes, pieces) = (Arc::clone(&store), hashes.clone(), pieces.clone());
            Box::new(move |files| lock(&store).save(files, &hashes, &pieces))
        };
        let watch = WatchConfig {
            scope: Scope::Everything,
            ..common.watch
        };
        let watcher = Watcher::start(
            Arc::clone(&registrar),
            pieces.clone(),
            watch,
            writing,
            *reporter,
            on_synced,
        )
        .map_err(ServeError::Thread)?;
        announce(addr)?;
        if let Some(line) = reachable_line(addr) {
            say(&line)?;
        }
        let _ui = crate::ui::launch(common, &registrar, &mut |line| crate::progress::say(line));
        let heartbeat = Heartbeat::start(Arc::clone(&registrar), common.heartbeat)
            .map_err(ServeError::Thread)?;
        // Either a signal or every sender gone; both mean stop.
        let _ = stop.recv();
        watcher.stop();
        heartbeat.stop();
    }

    match registrar.shared().list() {
        Ok(files) => lock(&store).save(&files, &hashes, &pieces),
        Err(e) => tracing::warn!("hash cache not saved: {e}"),
    }
    match registrar.unregister_all() {
        Ok(n) => reporter.note(format_args!("unregistered {n} file{}", plural(n))),
        Err(e) => tracing::warn!(
            "could not unregister (the registrations lapse at the registry's TTL): {e}"
        ),
    }
    server.shutdown();
    Ok(())
}

/// The store's lock; a poisoned one only means a save panicked halfway,
/// which leaves the store usable (it rewrites the whole file).
fn lock(store: &Mutex<hashcache::Store>) -> MutexGuard<'_, hashcache::Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prints one line on stdout and flushes it.
fn say(line: &str) -> Result<(), ServeError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(ServeError::Stdout)
}

/// Registers the shared folder, retrying with back-off while the registry
/// is unreachable (with `dht_only_ok`, when the files are announced on the
/// DHT, one try is enough: the peer then shares over the DHT only). Returns
/// `false` when a signal arrived first.
fn register_until_done(
    registrar: &Registrar,
    reporter: &Reporter,
    stop: &Receiver<()>,
    dht_only_ok: bool,
) -> bool {
    let mut retry = RETRY_MIN;
    loop {
        match registrar.register_all(reporter) {
            Ok(summary) => {
                for line in &summary.skipped {
                    tracing::warn!("{line}");
                }
                return true;
            }
            Err(e) if dht_only_ok => {
                tracing::warn!("{e}; sharing on the DHT only");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_at_only_for_the_unspecified_address() {
        assert_eq!(reachable_line("127.0.0.1:4000".parse().unwrap()), None);
        assert_eq!(reachable_line("10.1.2.3:4000".parse().unwrap()), None);
        let line = reachable_line("0.0.0.0:4000".parse().unwrap()).unwrap();
        let list = line.strip_prefix("reachable at ").unwrap();
        for addr in list.split(", ") {
            let addr: SocketAddr = addr.parse().unwrap();
            assert!(addr.is_ipv4() && addr.port() == 4000, "{line}");
            assert!(!addr.ip().is_unspecified(), "{line}");
        }
    }
}
