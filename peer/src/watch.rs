//! The live shared folder: a background thread that keeps this peer's
//! registrations in step with the files of the shared folder (and of the
//! downloads folder with `--share-downloads`) while the peer runs.
//!
//! The thread watches the folders with `notify` (inotify on Linux). An event
//! only says "look again": after a short debounce the thread lists the
//! folders and reconciles them with what is registered. It also lists them
//! every [`WatchConfig::rescan`] as a safety net (an overflowed event queue,
//! a file system without notifications), every [`FALLBACK_RESCAN`] at most
//! when watching is unavailable.
//!
//! Reconciling, for each file in scope:
//! - registered with its present size and digest: nothing to do;
//! - otherwise the file must first be *quiet*: the same size and
//!   modification time for [`WatchConfig::settle`] (a file first seen with a
//!   modification time older than that counts as quiet at once, e.g. one
//!   renamed in). Then it is hashed (its piece list with it), looked at
//!   again, and registered only if its size and modification time did not
//!   move while it was read; otherwise it waits for the next quiet spell.
//!   So a file being written is not announced half-written, and a digest is
//!   always the digest of the bytes the file had.
//! - a file the notifications show *open for writing* (created or written
//!   to, and not closed since: [`Writing`]) is not quiet however long its
//!   writer pauses; its close wakes the thread. Past the wait's limit
//!   (`writing::OPEN_FOR_WRITING_LIMIT` after the last write, a shorter one
//!   for a file created and never written) the settle time alone decides,
//!   as it does for what the events cannot show (see [`Writing`]). Files
//!   present at start are registered as found (`Registrar::register_all`),
//!   before the watcher runs.
//! - a registered name no longer listed (removed, renamed away) is
//!   unregistered.
//!
//! In scope is every file ([`Scope::Everything`], `peer serve`) or only the
//! files this process registered ([`Scope::Registered`], the menu, where
//! the person chooses what to share).
//!
//! This module must not print to stdout except through the [`Reporter`] it
//! is given, and must not hold the registrar's lock across I/O (it uses the
//! registrar's methods only).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{select, Receiver, Sender};
use notify::{RecursiveMode, Watcher as _};
use p2p_proto::client::{Client, ClientError};

use crate::background::Background;
use crate::files::{FilesError, SharedFile};
use crate::http::pieces::PieceCache;
use crate::progress::Reporter;
use crate::registration::{is_unreachable, short_sha, Registrar, RETRY_MIN};
use crate::writing::Writing;

/// How long a file must keep its size and modification time before it is
/// hashed and registered: long enough for a copy in progress to show
/// progress, short enough that a finished file is announced within 5 s.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);

/// Default time between two full listings when notifications work: a
/// safety net only, cheap (one `stat` per file).
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(30);

/// Longest time between two listings when the folder cannot be watched,
/// so that changes are still seen within 5 s.
pub const FALLBACK_RESCAN: Duration = Duration::from_secs(2);

/// Quiet time after an event before the folder is listed: one listing for a
/// burst of events.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Longest a steady stream of events (a file being written) delays a
/// listing.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Shortest pause between two listings while files wait to become quiet.
const MIN_POLL: Duration = Duration::from_millis(50);

/// Which files the thread keeps registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every file of the folders (`peer serve`).
    Everything,
    /// Only the files this process registered (the menu).
    Registered,
}

/// How the thread watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// See [`DEFAULT_SETTLE`].
    pub settle: Duration,
    /// See [`DEFAULT_RESCAN`].
    pub rescan: Duration,
    pub scope: Scope,
    /// Use change notifications (`false`: `--no-watch`, listings only, every
    /// [`FALLBACK_RESCAN`] at most; for file systems that send no events,
    /// such as a network share changed from another machine).
    pub notify: bool,
}

impl Default for WatchConfig {
    fn default() -> WatchConfig {
        WatchConfig {
            settle: DEFAULT_SETTLE,
            rescan: DEFAULT_RESCAN,
            scope: Scope::Everything,
            notify: true,
        }
    }
}

/// Called after a pass that changed registrations, with the files listed
/// (`peer serve` saves its hash cache there).
pub type OnSynced = Box<dyn FnMut(&[SharedFile]) + Send>;

/// The watcher thread. Stopping (or dropping) it wakes the thread and joins it.
pub struct Watcher {
    thread: Background,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts the thread; it reconciles once at once, then on events and
    /// every `config.rescan`. The folders are watched before this returns:
    /// a file created or written from then on is seen open for writing
    /// (`peer serve` starts the watcher before it prints `listening on`).
    /// `writing` is filled from this watcher's notifications (the DHT
    /// announcer may hold a clone of it).
    pub fn start(
        registrar: Arc<Registrar>,
        pieces: PieceCache,
        config: WatchConfig,
        writing: Writing,
        reporter: Reporter,
        on_synced: OnSynced,
    ) -> io::Result<Watcher> {
        // One pending wake-up is enough: events only say "list again".
        let (events_tx, events) = crossbeam_channel::bounded(1);
        let notifier = if config.notify {
            start_notify(&registrar, writing.clone(), events_tx)
        } else {
            None
        };
        let thread = Background::spawn("watch", move |stopped| {
            let mut sync = Sync {
                registrar,
                pieces,
                config,
                reporter,
                seen: HashMap::new(),
                writing,
                down: false,
            };
            watch_until_stopped(&mut sync, notifier, &events, on_synced, &stopped);
        })?;
        Ok(Watcher { thread })
    }

    /// Stops the thread and waits for it (at most one pass in flight).
    pub fn stop(self) {
        self.thread.stop();
    }
}

/// Starts watching every folder of the registrar's shared set; `None`
/// (after a warning) when any of them cannot be watched.
fn start_notify(
    registrar: &Registrar,
    writing: Writing,
    events: Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Before the wake-up, so the pass it starts sees a close.
        if let Ok(event) = &event {
            writing.note(event);
        }
        // Any event, an error included, only means "list again"; except
        // reads: the file server opening and reading shared files must not
        // make the folder be listed again for every file it serves (many
        // small files: a listing per request). A close after writing does.
        if let Ok(event) = &event {
            if let notify::EventKind::Access(kind) = event.kind {
                if kind != notify::event::AccessKind::Close(notify::event::AccessMode::Write) {
                    return;
                }
            }
        }
        let _ = events.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::warn!(
                "cannot watch the shared folder ({e}); looking for changes every {}",
                humantime::format_duration(FALLBACK_RESCAN)
            );
            return None;
        }
    };
    for root in registrar.shared().roots() {
        if let Err(e) = watcher.watch(root, RecursiveMode::NonRecursive) {
            tracing::warn!(
                "cannot watch {} ({e}); looking for changes every {}",
                root.display(),
                humantime::format_duration(FALLBACK_RESCAN)
            );
            return None;
        }
    }
    Some(watcher)
}

/// The thread's loop. `notifier` (kept alive here) sends to `events`.
fn watch_until_stopped(
    sync: &mut Sync,
    notifier: Option<notify::RecommendedWatcher>,
    events: &Receiver<()>,
    mut on_synced: OnSynced,
    stopped: &Receiver<()>,
) {
    let rescan = match notifier {
        Some(_) => sync.config.rescan,
        None => sync.config.rescan.min(FALLBACK_RESCAN),
    };
    loop {
        let pass = sync.pass();
        if pass.changed {
            on_synced(&pass.files);
        }
        let wait = if sync.down {
            RETRY_MIN.min(rescan)
        } else if pass.waiting {
            (sync.config.settle / 4).clamp(MIN_POLL, rescan)
        } else {
            rescan
        };
        let wait = pass.wake_at.map_or(wait, |at| {
            wait.min(at.saturating_duration_since(Instant::now()).max(MIN_POLL))
        });
        select! {
            recv(stopped) -> _ => return,
            recv(events) -> _ => {
                if debounce(events, stopped) {
                    return;
                }
            }
            default(wait) => {}
        }
    }
}

/// Waits until no event came for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`]);
/// `true` when a stop came first.
fn debounce(events: &Receiver<()>, stopped: &Receiver<()>) -> bool {
    let until = Instant::now() + DEBOUNCE_MAX;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        select! {
            recv(stopped) -> _ => return true,
            recv(events) -> _ => continue,
            default(DEBOUNCE.min(left)) => return false,
        }
    }
}

/// One version of a file as first seen by a listing.
#[derive(Debug, Clone, Copy)]
struct Seen {
    size: u64,
    modified: SystemTime,
    /// When a listing first saw this size and modification time.
    since: Instant,
    /// Its modification time was already older than the settle time then.
    old: bool,
    /// This version cannot be registered (unreadable, or refused by the
    /// registry): not tried again until it changes.
    refused: bool,
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    /// The files listed.
    files: Vec<SharedFile>,
    /// A registration was added, changed or withdrawn.
    changed: bool,
    /// Some file waits to become quiet.
    waiting: bool,
    /// When the wait of a file open for writing runs out (the earliest).
    wake_at: Option<Instant>,
}

/// The reconciling state, owned by the watcher thread.
struct Sync {
    registrar: Arc<Registrar>,
    pieces: PieceCache,
    config: WatchConfig,
    reporter: Reporter,
    /// Files not (yet) registered in their present version, by name.
    seen: HashMap<String, Seen>,
    /// Files open for writing, from the notifications.
    writing: Writing,
    /// The registry was unreachable at the last try.
    down: bool,
}

impl Sync {
    fn pass(&mut self) -> Pass {
        let mut pass = Pass::default();
        pass.files = match self.registrar.shared().list() {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!("cannot list the shared folder: {e}");
                return pass;
            }
        };
        // Digests and piece lists of files no longer shared are forgotten.
        let paths: HashSet<&Path> = pass.files.iter().map(|f| f.path.as_path()).collect();
        self.registrar.hashes().retain(|p| paths.contains(p));
        self.pieces.retain(|p| paths.contains(p));
        drop(paths);
        let mut client = None;
        let result = self.reconcile(&mut pass, &mut client);
        match result {
            Ok(()) => {
                if self.down {
                    tracing::warn!("the registry at {} answers again", self.registrar.server());
                }
                self.down = false;
            }
            Err(e) => {
                if !self.down {
                    tracing::warn!("cannot bring the registry up to date: {e}; retrying");
                }
                self.down = true;
            }
        }
        pass
    }

    /// Withdraws what is gone, registers what is new or changed and quiet.
    /// Stops at the first sign of an unreachable registry.
    fn reconcile(
        &mut self,
        pass: &mut Pass,
        client: &mut Option<Client>,
    ) -> Result<(), ClientError> {
        let listed: HashSet<&str> = pass.files.iter().map(|f| f.name.as_str()).collect();
        let registered = self.registrar.registered();
        self.seen.retain(|name, _| listed.contains(name.as_str()));

        for name in registered.keys().filter(|n| !listed.contains(n.as_str())) {
            let client = connected(&self.registrar, client)?;
            match self.registrar.withdraw(client, name) {
                Ok(_) => {
                    pass.changed = true;
                    self.reporter.note(format_args!(
                        "unregistered {name} (gone from the shared folder)"
                    ));
                }
                Err(e) if is_unreachable(&e) => return Err(e),
                Err(e) => tracing::warn!("cannot unregister {name:?}: {e}"),
            }
        }

        let now = Instant::now();
        let wall = SystemTime::now();
        for file in &pass.files {
            let current = registered.get(&file.name);
            if self.config.scope == Scope::Registered && current.is_none() {
                continue;
            }
            let hashes = self.registrar.hashes();
            if let Some(r) = current {
                if r.size == file.size && hashes.cached(file).as_deref() == Some(r.sha256.as_str())
                {
                    self.seen.remove(&file.name);
                    continue;
                }
            }
            let seen = self.seen.entry(file.name.clone()).or_insert_with(|| Seen {
                size: file.size,
                modified: file.modified,
                since: now,
                old: wall
                    .duration_since(file.modified)
                    .is_ok_and(|age| age >= self.config.settle),
                refused: false,
            });
            if seen.size != file.size || seen.modified != file.modified {
                *seen = Seen {
                    size: file.size,
                    modified: file.modified,
                    since: now,
                    old: false,
                    refused: false,
                };
            }
            if seen.refused {
                continue;
            }
            if let Some(until) = self.writing.open_until(&file.path, now) {
                // Not quiet, however long the writer pauses. No polling
                // meanwhile: its close is an event, which wakes the thread;
                // otherwise the pass comes back when the wait runs out.
                pass.wake_at = Some(pass.wake_at.map_or(until, |at| at.min(until)));
                continue;
            }
            if !seen.old && now.duration_since(seen.since) < self.config.settle {
                pass.waiting = true;
                continue;
            }
            match self.hash_if_still(file) {
                Ok(Some(sha256)) => {
                    let client = connected(&self.registrar, client)?;
                    match self.registrar.announce(client, file, &sha256) {
                        Ok(r) => {
                            pass.changed = true;
                            self.seen.remove(&file.name);
                            let again = if current.is_some() { " again" } else { "" };
                            self.reporter.note(format_args!(
                                "registered {}{again} ({}, sha256 {})",
                                file.name,
                                p2p_proto::units::human_size(r.size),
                                short_sha(&r.sha256)
                            ));
                        }
                        Err(e) if is_unreachable(&e) => return Err(e),
                        Err(e) => {
                            tracing::warn!("not registered: {:?}: {e}", file.name);
                            // Refused for good (e.g. a name the registry rejects):
                            // not asked again until the file changes.
                            if let Some(seen) = self.seen.get_mut(&file.name) {
                                seen.refused = true;
                            }
                        }
                    }
                }
                Ok(None) => {
                    // It moved while being read: wait for the next quiet spell.
                    self.seen.remove(&file.name);
                    pass.waiting = true;
                }
                Err(e) => {
                    // Unreadable (e.g. no permission): tried again when it
                    // changes, or at the next start.
                    if file.path.exists() {
                        tracing::warn!("not registered: {e}");
                    } else {
                        tracing::debug!("gone while being hashed: {e}");
                    }
                    if let Some(seen) = self.seen.get_mut(&file.name) {
                        seen.refused = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Hashes `file` (piece list and digest in one read) and returns the
    /// digest if the file still has the size and modification time it had
    /// before; `None` if it changed meanwhile.
    fn hash_if_still(&self, file: &SharedFile) -> Result<Option<String>, FilesError> {
        let hashes = self.registrar.hashes();
        let sha256 = match self.pieces.get(file, None, hashes, &mut |_| {}) {
            Ok(list) => list.sha256.clone(),
            Err(FilesError::Changed { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let again = self.registrar.shared().resolve(&file.name)?;
        if again.size != file.size || again.modified != file.modified || again.path != file.path {
            return Ok(None);
        }
        Ok(Some(sha256))
    }
}

/// The pass's connection, opened on first use.
fn connected<'c>(
    registrar: &Registrar,
    client: &'c mut Option<Client>,
) -> Result<&'c mut Client, ClientError> {
    match client {
        Some(client) => Ok(client),
        None => Ok(client.insert(registrar.open()?)),
    }
}
