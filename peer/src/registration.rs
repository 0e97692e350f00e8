//! This peer's registrations with the registry: announcing shared files
//! (size and SHA-256 computed by streaming them), keeping them alive with
//! heartbeats from a background thread, registering them again when the
//! registry lost them, and withdrawing them on exit.
//!
//! Every exchange opens a fresh connection, so a registry that restarts
//! between two of them is simply reconnected to. This module must not decide
//! what to share (the caller names the files) and must not print to stdout
//! on its own except through the [`Reporter`] it is given; the heartbeat
//! thread logs only changes of the registry's state, never one line per beat.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use p2p_proto::client::{Client, ClientError};

use crate::background::Background;
use crate::files::{hash_file, FilesError, HashCache, SharedDir, SharedFile};
use crate::progress::Reporter;

/// First pause before trying an unreachable registry again.
pub const RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest pause between two tries of an unreachable registry: a registry
/// that comes back is noticed within this time.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Default time between two heartbeats: a third of the registry's default
/// TTL (150 s), so a registration survives two lost beats while the peer
/// runs, and a killed peer leaves SEARCH within 3 minutes. At 10,000 peers
/// this is 10,000 / 45 s ≈ 222 HEARTBEAT/s, one statement each.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(45);

/// Shortest interval the heartbeat shortens itself to (see
/// [`Heartbeat::start`]): a registry whose TTL is below it cannot be kept up
/// with by heartbeats at a sane rate.
pub const MIN_ADAPTED_HEARTBEAT: Duration = Duration::from_secs(1);

/// How many hex digits of a SHA-256 are shown to people.
pub const SHORT_SHA_LEN: usize = 12;

/// What was announced for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub size: u64,
    pub sha256: String,
}

impl Registration {
    /// The first [`SHORT_SHA_LEN`] hex digits of the digest.
    pub fn short_sha(&self) -> &str {
        short_sha(&self.sha256)
    }
}

/// The first [`SHORT_SHA_LEN`] hex digits of a digest.
pub fn short_sha(sha256: &str) -> &str {
    sha256.get(..SHORT_SHA_LEN).unwrap_or(sha256)
}

/// Why a registration did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The file is not in the shared folder, or cannot be read.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The registry could not be reached, or refused the request.
    #[error(transparent)]
    Registry(#[from] ClientError),
}

impl RegisterError {
    /// Whether the registry could not be talked to at all (as opposed to a
    /// problem with this one file).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RegisterError::Registry(e) if is_unreachable(e))
    }
}

/// Whether a client error means the registry is down or unreachable.
pub fn is_unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Resolve { .. }
            | ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
    )
}

/// What [`Registrar::register_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files now registered.
    pub registered: usize,
    /// Files that could not be (one line each: which and why).
    pub skipped: Vec<String>,
}

/// What one heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Registrations the registry refreshed.
    pub refreshed: u64,
    /// Registrations sent again because the registry had lost them.
    pub renewed: Option<usize>,
}

/// The registrations of one peer (one announced port) with one registry.
#[derive(Debug)]
pub struct Registrar {
    /// `host:port` of the registry.
    server: String,
    /// The port this peer's file server listens on, as announced.
    port: u16,
    shared: SharedDir,
    /// Shared with the file server, so a file is hashed once for both.
    hashes: HashCache,
    /// The local address registry connections come from (`--bind`), so the
    /// registry records the address the file server listens on; `None`
    /// lets the system choose.
    local: Option<IpAddr>,
    /// What this process registered, by name. Behind a lock because the menu
    /// thread registers while the heartbeat thread may register everything
    /// again after a registry restart; it is never held across I/O.
    registered: Mutex<BTreeMap<String, Registration>>,
}

impl Registrar {
    pub fn new(server: &str, port: u16, shared: SharedDir, hashes: HashCache) -> Registrar {
        Registrar {
            server: server.to_owned(),
            port,
            shared,
            hashes,
            local: None,
            registered: Mutex::new(BTreeMap::new()),
        }
    }

    /// Connects to the registry from `bind` when it is a specific address
    /// (not `0.0.0.0` or `::`).
    pub fn with_bind(self, bind: IpAddr) -> Registrar {
        Registrar {
            local: (!bind.is_unspecified()).then_some(bind),
            ..self
        }
    }

    /// The registry's address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The announced port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared folder.
    pub fn shared(&self) -> &SharedDir {
        &self.shared
    }

    /// What is registered now, by name.
    pub fn registered(&self) -> BTreeMap<String, Registration> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Registration>> {
        // A poisoned lock only means another thread panicked between two
        // statements that each leave the map consistent.
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn connect(&self) -> Result<Client, ClientError> {
        match self.local {
            Some(local) => Client::connect_from(&self.server, local),
            None => Client::connect(&self.server),
        }
    }

    /// A new connection to the registry (from `--bind` when given).
    pub fn open(&self) -> Result<Client, ClientError> {
        self.connect()
    }

    /// The shared file cache of digests.
    pub fn hashes(&self) -> &HashCache {
        &self.hashes
    }

    /// Registers `file` with the digest its caller computed of its present
    /// content, over `client`, and records it.
    pub fn announce(
        &self,
        client: &mut Client,
        file: &SharedFile,
        sha256: &str,
    ) -> Result<Registration, ClientError> {
        client.register(self.port, file.size, sha256, &file.name)?;
        let registration = Registration {
            size: file.size,
            sha256: sha256.to_owned(),
        };
        self.lock().insert(file.name.clone(), registration.clone());
        Ok(registration)
    }

    /// Withdraws the registration of `name` over `client` and forgets it;
    /// `false` when the registry did not have it. On an error it is kept,
    /// so the caller can try again.
    pub fn withdraw(&self, client: &mut Client, name: &str) -> Result<bool, ClientError> {
        let removed = client.unregister(self.port, name)?;
        self.lock().remove(name);
        Ok(removed)
    }

    /// Size and digest of a shared file, hashing it (with a bar when it is
    /// large and stderr is a terminal) unless the cache knows it.
    pub fn digest(&self, file: &SharedFile, reporter: &Reporter) -> Result<String, FilesError> {
        if let Some(sha256) = self.hashes.cached(file) {
            return Ok(sha256);
        }
        let mut progress = reporter.hashing(&file.name, file.size);
        let (size, sha256) = hash_file(&file.path, &mut |n| progress.set(n))?;
        progress.finish();
        if size != file.size {
            return Err(FilesError::Changed {
                path: file.path.clone(),
                expected: file.size,
                actual: size,
            });
        }
        self.hashes.insert(file, sha256.clone());
        Ok(sha256)
    }

    /// Registers the shared file `name`.
    pub fn register(&self, name: &str, reporter: &Reporter) -> Result<Registration, RegisterError> {
        let file = self.shared.resolve(name)?;
        let registration = Registration {
            size: file.size,
            sha256: self.digest(&file, reporter)?,
        };
        self.connect()?
            .register(self.port, registration.size, &registration.sha256, name)?;
        self.lock().insert(name.to_owned(), registration.clone());
        Ok(registration)
    }

    /// Registers every file of the shared folder over one connection. A file
    /// that cannot be read or that the registry refuses is skipped; an
    /// unreachable registry stops the whole and is returned as an error.
    /// Files are taken as found, a file being written included: `peer
    /// serve` prints `listening on` once they are registered, and a script
    /// that wrote its files before starting the peer searches right after;
    /// the watcher registers a changed file again once it is quiet.
    pub fn register_all(&self, reporter: &Reporter) -> Result<Summary, RegisterError> {
        let files = self.shared.list()?;
        let mut summary = Summary::default();
        let mut client = None;
        for file in files {
            let sha256 = match self.digest(&file, reporter) {
                Ok(sha256) => sha256,
                Err(e) => {
                    summary.skipped.push(format!("not registered: {e}"));
                    continue;
                }
            };
            let client = match &mut client {
                Some(client) => client,
                None => client.insert(self.connect()?),
            };
            match client.register(self.port, file.size, &sha256, &file.name) {
                Ok(()) => {
                    reporter.note(format_args!(
                        "registered {} ({}, sha256 {})",
                        file.name,
                        p2p_proto::units::human_size(file.size),
                        short_sha(&sha256)
                    ));
                    self.lock().insert(
                        file.name.clone(),
                        Registration {
                            size: file.size,
                            sha256,
                        },
                    );
                    summary.registered += 1;
                }
                Err(e) if is_unreachable(&e) => return Err(e.into()),
                Err(e) => summary
                    .skipped
                    .push(format!("not registered: {:?}: {e}", file.name)),
            }
        }
        Ok(summary)
    }

    /// Sends every registration again (after the registry lost them), as
    /// recorded, for the files still in the version that was registered
    /// (same size, and the digest cache knows the same size and
    /// modification time under that digest). A file gone is forgotten; a
    /// file that changed is forgotten too and left to the watcher, which
    /// registers it once it is closed and quiet: read here, it could be
    /// half-written. Returns how many were registered.
    pub fn renew(&self) -> Result<usize, ClientError> {
        let held: Vec<(String, Registration)> = self
            .lock()
            .iter()
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        let mut client = self.connect()?;
        let mut renewed = 0;
        for (name, recorded) in held {
            let unchanged = self.shared.resolve(&name).map(|file| {
                file.size == recorded.size
                    && self.hashes.cached(&file).as_deref() == Some(recorded.sha256.as_str())
            });
            let (size, sha256) = match unchanged {
                Ok(true) => (recorded.size, recorded.sha256),
                Ok(false) => {
                    tracing::debug!("{name:?} changed; the watcher registers it once quiet");
                    self.lock().remove(&name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("no longer registering {name:?}: {e}");
                    self.lock().remove(&name);
                    continue;
                }
            };
            match client.register(self.port, size, &sha256, &name) {
                Ok(()) => {
                    self.lock().insert(name, Registration { size, sha256 });
                    renewed += 1;
                }
                Err(e) if is_unreachable(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!("no longer registering {name:?}: {e}");
                    self.lock().remove(&name);
                }
            }
        }
        Ok(renewed)
    }

    /// One heartbeat; when the registry refreshed fewer registrations than
    /// this peer holds (it restarted, or they expired), registers them again.
    pub fn heartbeat(&self) -> Result<Beat, ClientError> {
        let mut client = self.connect()?;
        // Counted before asking: a registration the watcher adds while the
        // beat is in flight must not look lapsed.
        let held = self.lock().len() as u64;
        let refreshed = client.heartbeat(self.port)?;
        let renewed = if refreshed < held {
            Some(self.renew()?)
        } else {
            None
        };
        Ok(Beat { refreshed, renewed })
    }

    /// Withdraws every registration; returns how many the registry removed.
    /// The record is cleared even when the registry is unreachable: the
    /// registrations then lapse at its TTL.
    pub fn unregister_all(&self) -> Result<usize, ClientError> {
        let names: Vec<String> = std::mem::take(&mut *self.lock()).into_keys().collect();
        if names.is_empty() {
            return Ok(0);
        }
        let mut client = self.connect()?;
        let mut removed = 0;
        for name in names {
            if client.unregister(self.port, &name)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Registers one shared file for `port` and returns what was announced
/// (`peer register NAME --port N [--bind IP]`). The registry records the
/// address the connection comes from, so it leaves from `bind` when that is
/// a specific address, as the file server's registrations do.
pub fn register_one(
    server: &str,
    shared: SharedDir,
    port: u16,
    bind: IpAddr,
    name: &str,
    reporter: &Reporter,
) -> Result<Registration, RegisterError> {
    Registrar::new(server, port, shared, HashCache::new())
        .with_bind(bind)
        .register(name, reporter)
}

/// The background thread that sends heartbeats. Stopping it (or dropping
/// it) wakes the thread at once and joins it.
#[derive(Debug)]
pub struct Heartbeat {
    thread: Background,
}

impl Heartbeat {
    /// Starts beating every `interval`; while the registry is unreachable it
    /// tries again after [`RETRY_MIN`], doubling up to [`RETRY_MAX`] (never
    /// longer than `interval`). When a beat finds that the registry lost
    /// registrations, the files are registered again. When the beat before
    /// found a lapse too (it got through, and what it registered has lapsed
    /// again: the registry's `--ttl` is shorter than the interval), the
    /// interval is halved, down to [`MIN_ADAPTED_HEARTBEAT`]: the protocol
    /// does not tell a peer the registry's TTL, so the peer learns it is
    /// too slow, as a BitTorrent client follows its tracker's interval. A
    /// single lapse (an operator's `p2p-admin prune`, a registry restarted
    /// on another file) changes no interval.
    pub fn start(registrar: Arc<Registrar>, interval: Duration) -> std::io::Result<Heartbeat> {
        let thread = Background::spawn("heartbeat", move |stopped| {
            beat_until_stopped(&registrar, interval, &stopped)
        })?;
        Ok(Heartbeat { thread })
    }

    /// Stops the thread and waits for it (at most one exchange in flight).
    pub fn stop(self) {
        self.thread.stop();
    }
}

fn beat_until_stopped(registrar: &Registrar, interval: Duration, stopped: &Receiver<()>) {
    let mut interval = interval;
    let mut wait = interval;
    let mut retry = RETRY_MIN;
    let mut down = false;
    // Whether the last beat that got through found registrations lapsed.
    let mut lapsed = false;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match registrar.heartbeat() {
            Ok(beat) => {
                if down {
                    tracing::warn!("the registry at {} answers again", registrar.server());
                }
                if let Some(renewed) = beat.renewed {
                    // Only a second lapse in a row, each since a beat that
                    // got through, says the interval is too long for the
                    // registry's TTL: after an outage the registrations may
                    // simply have expired, and one lapse may be a prune.
                    let shorter = if down || !lapsed {
                        interval
                    } else {
                        adapted(interval)
                    };
                    if shorter < interval {
                        tracing::warn!(
                            "the registry at {} lost this peer's files again; registered {renewed} again, \
                             and heartbeating every {} from now on (its --ttl is shorter than {})",
                            registrar.server(),
                            seconds(shorter),
                            seconds(interval)
                        );
                        interval = shorter;
                    } else {
                        tracing::warn!(
                            "the registry at {} had lost this peer's files (expired, or removed by \
                             its operator); registered {renewed} again",
                            registrar.server()
                        );
                    }
                }
                lapsed = beat.renewed.is_some();
                down = false;
                wait = interval;
                retry = RETRY_MIN;
            }
            Err(e) => {
                if !down {
                    tracing::warn!("heartbeat failed: {e}; retrying");
                }
                down = true;
                wait = retry.min(interval);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// A heartbeat interval for a person: `4s`, `22.5s`.
fn seconds(interval: Duration) -> String {
    let ms = interval.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", interval.as_secs_f64())
    }
}

/// The interval after a beat that found registrations lapsed: half, not
/// below [`MIN_ADAPTED_HEARTBEAT`] (nor above `interval`, when it was
/// already shorter: `--heartbeat` may be).
fn adapted(interval: Duration) -> Duration {
    (interval / 2).max(MIN_ADAPTED_HEARTBEAT).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapse_halves_the_heartbeat_down_to_a_second() {
        assert_eq!(
            adapted(Duration::from_secs(45)),
            Duration::from_millis(22_500)
        );
        assert_eq!(adapted(Duration::from_millis(1_500)), MIN_ADAPTED_HEARTBEAT);
        assert_eq!(adapted(MIN_ADAPTED_HEARTBEAT), MIN_ADAPTED_HEARTBEAT);
        // A --heartbeat already below the floor stays as given.
        assert_eq!(
            adapted(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn intervals_read_in_seconds() {
        assert_eq!(seconds(Duration::from_secs(4)), "4s");
        assert_eq!(seconds(Duration::from_millis(22_500)), "22.5s");
        assert_eq!(seconds(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn short_sha_never_panics() {
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha(&"a".repeat(64)), "a".repeat(SHORT_SHA_LEN));
        assert_eq!(short_sha("é".repeat(10).as_str()), "éééééé");
    }

    #[test]
    fn an_unreachable_registry_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let shared = SharedDir::open(dir.path()).unwrap();
        // A port nobody listens on: bind, note it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let registrar = Registrar::new(&addr, 4000, shared, HashCache::new());
        let err = registrar.register("f", &Reporter::quiet()).unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
        let err = registrar
            .register("missing", &Reporter::quiet())
            .unwrap_err();
        assert!(!err.is_unreachable());
        assert!(registrar.registered().is_empty());
        assert_eq!(registrar.unregister_all().unwrap(), 0);
    }

    #[test]
    fn heartbeat_thread_stops_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedDir::open(dir.path()).unwrap();
        let registrar = Arc::new(Registrar::new(
            "127.0.0.1:1",
            4000,
            shared,
            HashCache::new(),
        ));
        let beat = Heartbeat::start(registrar, Duration::from_secs(3600)).unwrap();
        let started = std::time::Instant::now();
        beat.stop();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
