//! The peer on the BitTorrent Mainline DHT (`--dht`): announcing the shared
//! folder, and finding sources there, each confirmed by a `HEAD` before it is
//! used.
//!
//! # Announcing
//! [`DhtAnnouncer`] owns one thread. It announces every shared file under two
//! keys ([`p2p_dht::name_key`] of its name, [`p2p_dht::content_key`] of its
//! SHA-256) with `announce_peer` and the file server's port, then:
//! - every [`SCAN_INTERVAL`] lists the shared folder and announces files it
//!   has not announced yet (or whose content changed), so a file that
//!   appears while `peer serve` runs (live sharing) is found on the DHT too;
//!   only once quiet, as the watcher registers it ([`Folder::is_quiet`]: not
//!   open for writing, unmodified for the settle time), so a file being
//!   written is never announced under the digest of a part;
//!   [`DhtAnnouncer::announce_file`] announces one at once;
//! - every [`DEFAULT_ANNOUNCE_INTERVAL`] (15 min) announces everything again:
//!   BEP 5 nodes forget an announcement after about 30 minutes in common
//!   implementations (libtorrent, Transmission), so half of that keeps every
//!   file findable with one lost round to spare.
//!
//! # Looking up
//! [`find_sources`] asks the DHT for the peers of the name's key, sends each
//! address (at most [`MAX_CANDIDATES`]; the DHT only gives IP literals) a
//! `HEAD /files/<name>` with short timeouts, and keeps those that answer
//! `200` with a `Content-Length` and an `ETag: "<sha256>"`: those are the
//! size and SHA-256 the download checks. A lookup ends with the DHT query,
//! [`SETTLE_AFTER_FIRST`] after the first confirmed source, or at
//! [`LOOKUP_TIMEOUT`], whichever comes first. [`merge`] joins them with the
//! registry's sources without duplicates; [`group_by_content`] puts sources
//! of the same bytes together (the download takes one group only).
//! [`combine`] applies the rules of `--dht` to one name (which side alone
//! when the other cannot be asked, what "not found" is) for every caller:
//! `peer search`/`get` and the menu through [`search`], each name of a
//! batch ([`crate::batch`], one node for the whole batch) through
//! [`look_up`]. It prints nothing: what fell back is returned
//! ([`Fallback`]), and a failure says it in its one line.
//!
//! This module must not: use an address the DHT gave before its `HEAD`
//! confirmed it; follow redirects or resolve names; read more than
//! [`MAX_HEAD_BYTES`] from a candidate.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use p2p_dht::{content_key, name_key, DhtError, DhtNode, NodeConfig};
use p2p_proto::protocol::{check_name, Source};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::download::DownloadError;
use crate::files::{HashCache, SharedDir, SharedFile};
use crate::writing::Writing;

/// Time between two announcements of the whole shared folder (see the module doc).
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Time between two looks at the shared folder for files not announced yet.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

/// How long a lookup waits for the DHT's answers.
pub const LOOKUP_TIMEOUT: Duration = p2p_dht::DEFAULT_LOOKUP_TIMEOUT;

/// Connect, write and read timeout of one confirming `HEAD`: a peer that
/// serves files answers a `HEAD` at once; a dead address must not hold the
/// lookup.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Most DHT addresses one lookup confirms: a key can carry announcements
/// from anyone, so the work a lookup does for it is bounded.
pub const MAX_CANDIDATES: usize = 32;

/// Most bytes of a `HEAD` response read (its status line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Announcements in flight at once: each waits for the closest nodes of its
/// key (up to the DHT's request timeout), so they go in parallel.
pub const ANNOUNCE_PARALLELISM: usize = 8;

/// Characters of a name left as they are in a URL path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How a peer uses the DHT (`--dht`, `--bootstrap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// `HOST:PORT` nodes to join through.
    pub bootstrap: Vec<String>,
    /// Time between two announcements of everything shared.
    pub announce_interval: Duration,
    /// The node's request timeout; `None`: mainline's default (2 s). A
    /// query ends only when each request it sent was answered or timed out,
    /// so on a loopback testnet a short one (tests: `300ms`) makes lookups
    /// and announcements end sooner.
    pub request_timeout: Option<Duration>,
}

impl DhtConfig {
    /// Joins through `bootstrap`, with the default intervals.
    pub fn new(bootstrap: Vec<String>) -> DhtConfig {
        DhtConfig {
            bootstrap,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            request_timeout: None,
        }
    }

    /// Starts this peer's DHT node (a client: it asks, it does not store).
    pub fn start_node(&self) -> Result<DhtNode, DhtError> {
        DhtNode::start(&NodeConfig {
            request_timeout: self.request_timeout,
            ..NodeConfig::client(self.bootstrap.clone())
        })
    }
}

/// Files waiting to be announced at once (from [`DhtAnnouncer::announce_file`]).
type Pending = Arc<Mutex<Vec<(String, String)>>>;

/// Announces the shared folder on the DHT until stopped (see the module doc).
#[derive(Debug)]
pub struct DhtAnnouncer {
    pending: Pending,
    wake: Sender<()>,
    stop: Sender<()>,
    /// Set on stop, so a long round ends after the announcements in flight.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DhtAnnouncer {
    /// Starts announcing every file of `shared` for the file server on `port`.
    pub fn start(
        node: DhtNode,
        port: u16,
        folder: Folder,
        interval: Duration,
    ) -> io::Result<DhtAnnouncer> {
        let pending: Pending = Arc::default();
        let (wake, woken) = crossbeam_channel::bounded(1);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let queue = Arc::clone(&pending);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name("dht-announce".into())
            .spawn(move || {
                let mut round = Round {
                    node,
                    port,
                    announced: HashMap::new(),
                    last_full: None,
                    interval,
                    stopping: stop_flag,
                };
                loop {
                    let queued =
                        std::mem::take(&mut *queue.lock().unwrap_or_else(PoisonError::into_inner));
                    round.run(&folder, queued);
                    crossbeam_channel::select! {
                        recv(stopped) -> _ => return,
                        recv(woken) -> _ => {}
                        default(SCAN_INTERVAL) => {}
                    }
                }
            })?;
        Ok(DhtAnnouncer {
            pending,
            wake,
            stop,
            stopping,
            thread: Some(thread),
        })
    }

    /// Announces `name` (content `sha256`) now, without waiting for the next
    /// look at the shared folder.
    pub fn announce_file(&self, name: &str, sha256: &str) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), sha256.to_owned()));
        // Full: a wake-up is already due, which will see this file too.
        let _ = self.wake.try_send(());
    }

    /// Stops the thread (after the announcements in flight, if any: at most
    /// two DHT queries, a few seconds).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DhtAnnouncer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the announcer looks at: the shared folder, its digests, and what
/// tells a file still being written.
#[derive(Debug, Clone)]
pub struct Folder {
    pub shared: SharedDir,
    pub hashes: HashCache,
    /// Files open for writing, from the watcher's notifications.
    pub writing: Writing,
    /// How long a file must be unmodified (the watcher's settle time).
    pub settle: Duration,
}

impl Folder {
    /// Whether `file` may be announced now: not open for writing, and not
    /// modified within the settle time (a write the notifications did not
    /// see: before the watcher started, or without a watcher). A
    /// modification time in the future (a clock set back) does not hold it.
    fn is_quiet(&self, file: &SharedFile) -> bool {
        !self.writing.is_open(&file.path, Instant::now())
            && SystemTime::now()
                .duration_since(file.modified)
                .map_or(true, |age| age >= self.settle)
    }
}

/// The announcer thread's state.
struct Round {
    node: DhtNode,
    port: u16,
    /// Name → the SHA-256 it was last announced with.
    announced: HashMap<String, String>,
    /// When everything was last announced.
    last_full: Option<Instant>,
    interval: Duration,
    stopping: Arc<AtomicBool>,
}

impl Round {
    fn run(&mut self, folder: &Folder, queued: Vec<(String, String)>) {
        let full = self
            .last_full
            .is_none_or(|at| at.elapsed() >= self.interval);
        let mut due: Vec<(String, String)> = queued;
        match folder.shared.list() {
            Ok(files) => {
                for file in files {
                    if !folder.is_quiet(&file) {
                        // Still being written: its digest would be of a
                        // part. Not in `announced`, so the first scan that
                        // finds it quiet announces it.
                        continue;
                    }
                    let sha256 = match folder.hashes.digest(&file) {
                        Ok(sha256) => sha256,
                        Err(e) => {
                            tracing::debug!("not announced on the DHT: {e}");
                            continue;
                        }
                    };
                    // Rewritten while it was read (same size, a new time):
                    // the digest may mix two versions; the next scan retries.
                    let still = folder.shared.resolve(&file.name).is_ok_and(|again| {
                        again.size == file.size
                            && again.modified == file.modified
                            && again.path == file.path
                    });
                    if !still {
                        continue;
                    }
                    if full || self.announced.get(&file.name) != Some(&sha256) {
                        due.push((file.name, sha256));
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the shared folder to announce it: {e}"),
        }
        due.sort();
        due.dedup();
        let failed = self.announce(&due);
        if full && failed == 0 {
            self.last_full = Some(Instant::now());
        }
    }

    /// Announces `files` under both keys, [`ANNOUNCE_PARALLELISM`] at once;
    /// returns how many failed (they are tried again at the next scan).
    fn announce(&mut self, files: &[(String, String)]) -> usize {
        let mut failed = 0;
        let mut last_error = None;
        for chunk in files.chunks(ANNOUNCE_PARALLELISM) {
            if self.stopping.load(Ordering::Relaxed) {
                return failed.max(1);
            }
            let results: Vec<Result<(), DhtError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(name, sha256)| {
                        let node = &self.node;
                        let port = self.port;
                        scope.spawn(move || {
                            node.announce(&name_key(name), port)?;
                            node.announce(&content_key(sha256)?, port)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| match h.join() {
                        Ok(result) => result,
                        Err(_) => Err(DhtError::Announce {
                            key: String::new(),
                            reason: "the announcing thread panicked".into(),
                        }),
                    })
                    .collect()
            });
            for ((name, sha256), result) in chunk.iter().zip(results) {
                match result {
                    Ok(()) => {
                        self.announced.insert(name.clone(), sha256.clone());
                    }
                    Err(e) => {
                        failed += 1;
                        self.announced.remove(name);
                        last_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = last_error {
            tracing::warn!(
                "could not announce {failed} of {} files on the DHT (trying again in {}s): {e}",
                files.len(),
                SCAN_INTERVAL.as_secs()
            );
        }
        failed
    }
}

/// Why a DHT source is not used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("cannot reach {addr}: {source}")]
    Io {
        addr: SocketAddrV4,
        source: io::Error,
    },
    #[error("{addr} answered {status} to HEAD")]
    Status { addr: SocketAddrV4, status: u16 },
    #[error("{addr} sent a bad HEAD response: {reason}")]
    Bad { addr: SocketAddrV4, reason: String },
}

/// Confirms that `addr` serves `name`: a `HEAD /files/<name>` answered `200`
/// with a `Content-Length` and an `ETag` holding a SHA-256. Returns the
/// source with that size and digest.
pub fn confirm(addr: SocketAddrV4, name: &str) -> Result<Source, HeadError> {
    let io = |source| HeadError::Io { addr, source };
    let bad = |reason: &str| HeadError::Bad {
        addr,
        reason: reason.to_owned(),
    };
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), HEAD_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(HEAD_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(HEAD_TIMEOUT)).map_err(io)?;
    let request = format!(
        "HEAD /files/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        utf8_percent_encode(name, PATH_SEGMENT)
    );
    stream.write_all(request.as_bytes()).map_err(io)?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + HEAD_TIMEOUT;
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(bad("headers too long"));
        }
        if Instant::now() >= deadline {
            return Err(bad("headers too slow"));
        }
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(bad("closed before the end of the headers"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete headers")),
        Err(e) => return Err(bad(&e.to_string())),
    }
    let status = response.code.unwrap_or(0);
    if status != 200 {
        return Err(HeadError::Status { addr, status });
    }
    let header = |wanted: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(wanted))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let size = header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| bad("no valid Content-Length"))?;
    let sha256 = header("etag")
        .and_then(|v| v.strip_prefix('"')?.strip_suffix('"'))
        .filter(|v| v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| bad("no ETag with a SHA-256"))?;
    Ok(Source {
        host: addr.ip().to_string(),
        port: addr.port(),
        size,
        sha256: sha256.to_owned(),
    })
}

/// What [`find_sources`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Confirmed sources, in the order they were confirmed.
    pub sources: Vec<Source>,
    /// Addresses the DHT gave (at most [`MAX_CANDIDATES`] were asked).
    pub candidates: usize,
    /// Time from the start of the lookup to the first confirmed source.
    pub first_after: Option<Duration>,
}

/// How long [`find_sources`] goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until the first confirmed source (the lookup benchmark's measure).
    First,
    /// Until the query ends, or this long after the first confirmed source,
    /// whichever comes first: a BEP 5 query ends only when its slowest
    /// request was answered or timed out, while the answers that matter
    /// come together.
    Settle(Duration),
    /// Until the query ends.
    All,
}

/// How long a `--dht` search waits for more sources once one is confirmed
/// (see [`Wait::Settle`]).
pub const SETTLE_AFTER_FIRST: Duration = Duration::from_secs(1);

/// Looks `name` up on the DHT and confirms every address with a `HEAD` (in
/// parallel, as the addresses arrive), waiting for the DHT until `deadline`
/// at the latest, and as `wait` says.
pub fn find_sources(
    node: &DhtNode,
    name: &str,
    deadline: Instant,
    wait: Wait,
) -> Result<Found, DhtError> {
    let started = Instant::now();
    let mut deadline = deadline;
    let addrs = node.get_peers(&name_key(name), deadline)?;
    let (confirmed_tx, confirmed) = crossbeam_channel::unbounded::<Option<Source>>();
    let mut found = Found::default();
    let mut asked = 0usize;
    let mut answered = 0usize;
    let mut dht_done = false;
    loop {
        if dht_done && answered == asked {
            break;
        }
        if wait == Wait::First && !found.sources.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        crossbeam_channel::select! {
            recv(addrs) -> addr => match addr {
                Ok(addr) => {
                    found.candidates += 1;
                    if asked < MAX_CANDIDATES {
                        asked += 1;
                        let tx = confirmed_tx.clone();
                        let name = name.to_owned();
                        // Detached: each ends within a few HEAD_TIMEOUTs.
                        let spawned = std::thread::Builder::new()
                            .name("dht-head".into())
                            .spawn(move || {
                                let result = confirm(addr, &name);
                                if let Err(e) = &result {
                                    tracing::debug!("DHT source not used: {e}");
                                }
                                let _ = tx.send(result.ok());
                            });
                        if spawned.is_err() {
                            answered += 1;
                        }
                    }
                }
                Err(_) => dht_done = true,
            },
            recv(confirmed) -> source => {
                answered += 1;
                if let Ok(Some(source)) = source {
                    if found.first_after.is_none() {
                        found.first_after = Some(started.elapsed());
                        if let Wait::Settle(more) = wait {
                            deadline = deadline.min(Instant::now() + more);
                        }
                    }
                    found.sources.push(source);
                }
            }
            default(left) => break,
        }
    }
    Ok(found)
}

/// Registry sources first, then DHT sources not already among them (same
/// address, size and SHA-256).
pub fn merge(registry: Vec<Source>, dht: Vec<Source>) -> Vec<Source> {
    let mut seen: HashSet<(String, u64, String)> = HashSet::new();
    let mut merged = Vec::with_capacity(registry.len() + dht.len());
    for source in registry.into_iter().chain(dht) {
        if seen.insert((source.addr(), source.size, source.sha256.clone())) {
            merged.push(source);
        }
    }
    merged
}

/// Sources of the same bytes (size and SHA-256) together, the most common
/// content first; the order inside a group is kept.
pub fn group_by_content(sources: Vec<Source>) -> Vec<Source> {
    let mut groups: Vec<Vec<Source>> = Vec::new();
    for source in sources {
        match groups
            .iter_mut()
            .find(|g| g[0].size == source.size && g[0].sha256 == source.sha256)
        {
            Some(group) => group.push(source),
            None => groups.push(vec![source]),
        }
    }
    // Stable: between equally common contents, the first seen stays first.
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    groups.into_iter().flatten().collect()
}

/// Why the sources of a name come from one side only: the caller says so
/// where its output allows (a note before a download, a warning beside
/// `search`'s lines); when nothing is found, the failure's one line says it
/// instead (see [`SearchError`]).
/// The messages leave the name out: a batch says each once for all its names.
#[derive(Debug, thiserror::Error)]
pub enum Fallback {
    #[error("the registry cannot be asked ({}); using the DHT only", registry_reason(.0))]
    RegistryUnreachable(DownloadError),
    #[error("cannot use the DHT ({0}); using the registry only")]
    DhtUnusable(Arc<DhtError>),
}

/// The sources of one name from the registry and the DHT.
#[derive(Debug)]
pub struct Looked {
    /// Merged and grouped by content ([`merge`], [`group_by_content`]); never empty.
    pub sources: Vec<Source>,
    /// Set when one of the two could not be asked.
    pub fallback: Option<Fallback>,
}

/// Why a search found no source to use. Every message is one line and says
/// why each place that was asked gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Without `--dht`: the registry's own answer.
    #[error(transparent)]
    Registry(DownloadError),
    #[error("bad file name {name:?}: {reason}")]
    BadName {
        name: String,
        reason: p2p_proto::protocol::NameError,
    },
    #[error("no peer shares {name:?} (neither the registry at {registry} nor the DHT knows a live source)")]
    NotFound { name: String, registry: String },
    #[error(
        "no peer shares {name:?} on the DHT, and the registry cannot be asked: {}",
        registry_reason(registry)
    )]
    NotOnDht {
        name: String,
        registry: DownloadError,
    },
    #[error("no peer shares {name:?} (the registry at {registry} knows no live source, and the DHT cannot be used: {dht})")]
    NotInRegistry {
        name: String,
        registry: String,
        dht: Arc<DhtError>,
    },
    #[error("{registry}; and the DHT cannot be used either: {dht}")]
    Neither {
        registry: DownloadError,
        dht: Arc<DhtError>,
    },
}

impl SearchError {
    /// Whether the name simply has no source (as opposed to a failure): one
    /// of the two places answered, or could have, and knew none.
    pub fn is_not_found(&self) -> bool {
        match self {
            SearchError::Registry(e) => e.is_not_found(),
            SearchError::BadName { .. } | SearchError::Neither { .. } => false,
            SearchError::NotFound { .. }
            | SearchError::NotOnDht { .. }
            | SearchError::NotInRegistry { .. } => true,
        }
    }
}

/// The registry's failure without the name, which the line holding it
/// already gives.
fn registry_reason(error: &DownloadError) -> String {
    match error {
        DownloadError::Registry { source, .. } => {
            crate::download::printable(&source.to_string()).into_owned()
        }
        other => other.to_string(),
    }
}

/// Joins what the registry at `registry` answered for `name` with what the
/// DHT found, by the rules of `--dht`: both merged; a registry that cannot
/// be asked leaves the DHT alone, a DHT that cannot be used leaves the
/// registry alone (said in [`Looked::fallback`]); an error only when
/// neither could be asked, "not found" when neither knows a source. The
/// single `peer get`/`search` and a batch's every name all go through here.
/// (The DHT's error is shared: a batch whose node could not start gives
/// that one error to every name.)
pub fn combine(
    registry: &str,
    name: &str,
    from_registry: Result<Vec<Source>, DownloadError>,
    from_dht: Result<Found, Arc<DhtError>>,
) -> Result<Looked, SearchError> {
    let (listed, unreachable) = match from_registry {
        Ok(sources) => (sources, None),
        Err(e) if e.is_not_found() => (Vec::new(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let (found, dht_error) = match from_dht {
        Ok(found) => (found.sources, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let sources = group_by_content(merge(listed, found));
    let name = name.to_owned();
    match (unreachable, dht_error) {
        (Some(registry), Some(dht)) => Err(SearchError::Neither { registry, dht }),
        (Some(registry), None) if sources.is_empty() => {
            Err(SearchError::NotOnDht { name, registry })
        }
        (None, Some(dht)) if sources.is_empty() => Err(SearchError::NotInRegistry {
            name,
            registry: registry.to_owned(),
            dht,
        }),
        (None, None) if sources.is_empty() => Err(SearchError::NotFound {
            name,
            registry: registry.to_owned(),
        }),
        (unreachable, dht_error) => Ok(Looked {
            sources,
            fallback: unreachable
                .map(Fallback::RegistryUnreachable)
                .or(dht_error.map(Fallback::DhtUnusable)),
        }),
    }
}

/// `name` checked as a file name, for the lookups that go out to the network.
pub fn checked(name: &str) -> Result<(), SearchError> {
    check_name(name).map_err(|reason| SearchError::BadName {
        name: name.to_owned(),
        reason,
    })
}

/// Looks `name` up on the DHT through `node` for a `--dht` search: until
/// the query ends, [`SETTLE_AFTER_FIRST`] after the first confirmed
/// source, or [`LOOKUP_TIMEOUT`].
pub fn look_up(node: &DhtNode, name: &str) -> Result<Found, DhtError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    find_sources(node, name, deadline, Wait::Settle(SETTLE_AFTER_FIRST))
}

/// The sources of `name` from the registry at `registry` and from the DHT
/// (a node of its own), asked at once and [`combine`]d.
pub fn search_with_dht(
    registry: &str,
    config: &DhtConfig,
    name: &str,
) -> Result<Looked, SearchError> {
    checked(name)?;
    // The registry is asked while the DHT node starts and its query runs.
    let (from_registry, from_dht) = std::thread::scope(|scope| {
        let asked = scope.spawn(|| crate::download::search(registry, name));
        let from_dht = config
            .start_node()
            .and_then(|node| look_up(&node, name))
            .map_err(Arc::new);
        let from_registry = asked.join().unwrap_or_else(|_| {
            Err(DownloadError::Thread(io::Error::other(
                "the registry lookup thread panicked",
            )))
        });
        (from_registry, from_dht)
    });
    combine(registry, name, from_registry, from_dht)
}

/// The sources of `name` from the registry at `server`, and from the DHT
/// when `dht` is on (`--dht`): the registry's only
/// ([`crate::download::search`]) without it, [`search_with_dht`] with it.
/// (The menu's download uses it.)
pub fn search(server: &str, dht: Option<&DhtConfig>, name: &str) -> Result<Looked, SearchError> {
    match dht {
        None => crate::download::search(server, name)
            .map(|sources| Looked {
                sources,
                fallback: None,
            })
            .map_err(SearchError::Registry),
        Some(config) => search_with_dht(server, config, name),
    }
}

/// Starts announcing for `peer serve` / the menu when `--dht` is on: the
/// node, then the announcer thread. `None` without `--dht`.
/// A file is announced only once quiet: not open for writing (`writing`)
/// and last modified at least `settle` ago, as the watcher registers it.
pub fn start_announcing(
    config: Option<&DhtConfig>,
    port: u16,
    shared: &SharedDir,
    hashes: &HashCache,
    writing: &Writing,
    settle: Duration,
) -> Result<Option<DhtAnnouncer>, StartError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let node = config.start_node()?;
    let announcer = DhtAnnouncer::start(
        node,
        port,
        Folder {
            shared: shared.clone(),
            hashes: hashes.clone(),
            writing: writing.clone(),
            settle,
        },
        config.announce_interval,
    )
    .map_err(StartError::Thread)?;
    Ok(Some(announcer))
}

/// [`start_announcing`] for the callers that go on without the DHT when it
/// cannot start (a warning): `peer serve` and the menu.
pub fn announce_or_warn(
    config: Option<&DhtConfig>,
    port: u16,
    shared: &SharedDir,
    hashes: &HashCache,
    writing: &Writing,
    settle: Duration,
) -> Option<DhtAnnouncer> {
    match start_announcing(config, port, shared, hashes, writing, settle) {
        Ok(announcer) => announcer,
        Err(e) => {
            tracing::warn!("not announcing on the DHT: {e}");
            None
        }
    }
}

/// Why announcing could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dht(#[from] DhtError),
    #[error("cannot start the DHT announcing thread: {0}")]
    Thread(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> DownloadError {
        DownloadError::Registry {
            name: "f".into(),
            source: p2p_proto::client::ClientError::Connect {
                addr: "127.0.0.1:1".into(),
                source: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
        }
    }

    fn not_listed() -> DownloadError {
        DownloadError::NotFound {
            name: "f".into(),
            registry: "127.0.0.1:9000".into(),
        }
    }

    fn dht_down() -> Arc<DhtError> {
        Arc::new(DhtError::NoBootstrap { list: "x:1".into() })
    }

    fn found(sources: Vec<Source>) -> Result<Found, Arc<DhtError>> {
        Ok(Found {
            sources,
            candidates: 0,
            first_after: None,
        })
    }

    /// The rules of `--dht` for one name: which outcome is "not found"
    /// (exit 1), which is a failure, which a fallback.
    #[test]
    fn combine_follows_the_dht_rules() {
        let reg = "127.0.0.1:9000";
        let a = source("10.0.0.1:1", 5, 'a');
        let b = source("10.0.0.2:2", 5, 'a');
        // Both answered: merged, no fallback.
        let both = combine(reg, "f", Ok(vec![a.clone()]), found(vec![b.clone()])).unwrap();
        assert_eq!(both.sources.len(), 2);
        assert!(both.fallback.is_none());
        // The registry unreachable: the DHT alone, said as a fallback.
        let dht_only = combine(reg, "f", Err(unreachable()), found(vec![b.clone()])).unwrap();
        assert_eq!(dht_only.sources, vec![b.clone()]);
        assert!(matches!(
            dht_only.fallback,
            Some(Fallback::RegistryUnreachable(_))
        ));
        // The DHT unusable: the registry alone.
        let reg_only = combine(reg, "f", Ok(vec![a.clone()]), Err(dht_down())).unwrap();
        assert_eq!(reg_only.sources, vec![a]);
        assert!(matches!(reg_only.fallback, Some(Fallback::DhtUnusable(_))));
        // Nobody knows a source: not found, whichever side could not answer.
        for (registry, dht) in [
            (Err(not_listed()), found(vec![])),
            (Err(unreachable()), found(vec![])),
            (Err(not_listed()), Err(dht_down())),
        ] {
            let e = combine(reg, "f", registry, dht).unwrap_err();
            assert!(e.is_not_found(), "{e}");
        }
        // Neither could be asked: a failure, not "not found".
        let e = combine(reg, "f", Err(unreachable()), Err(dht_down())).unwrap_err();
        assert!(
            matches!(e, SearchError::Neither { .. }) && !e.is_not_found(),
            "{e}"
        );
    }

    fn source(addr: &str, size: u64, sha: char) -> Source {
        let (host, port) = addr.rsplit_once(':').unwrap();
        Source {
            host: host.into(),
            port: port.parse().unwrap(),
            size,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn merge_drops_duplicates_and_keeps_the_registry_order() {
        let registry = vec![source("10.0.0.1:1", 5, 'a'), source("10.0.0.2:1", 5, 'a')];
        let dht = vec![
            source("10.0.0.2:1", 5, 'a'),
            source("10.0.0.3:1", 5, 'a'),
            source("10.0.0.1:1", 6, 'b'),
        ];
        let merged = merge(registry, dht);
        let addrs: Vec<_> = merged.iter().map(|s| (s.addr(), s.size)).collect();
        assert_eq!(
            addrs,
            [
                ("10.0.0.1:1".into(), 5),
                ("10.0.0.2:1".into(), 5),
                ("10.0.0.3:1".into(), 5),
                ("10.0.0.1:1".into(), 6)
            ]
        );
    }

    #[test]
    fn groups_by_content_most_common_first() {
        let grouped = group_by_content(vec![
            source("h:1", 5, 'b'),
            source("h:2", 5, 'a'),
            source("h:3", 5, 'b'),
            source("h:4", 5, 'a'),
            source("h:5", 5, 'a'),
        ]);
        let addrs: Vec<_> = grouped.iter().map(Source::addr).collect();
        assert_eq!(addrs, ["h:2", "h:4", "h:5", "h:1", "h:3"]);
    }

    #[test]
    fn confirm_reads_size_and_etag_and_refuses_the_rest() {
        use std::net::Ipv4Addr;
        // The suites' scripted fake source: one reply, then close.
        let serve = |reply: &'static str| {
            let fake = p2p_tests::FakeSource::start(move |_, stream| {
                let _ = stream.write_all(reply.as_bytes());
                false
            });
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, fake.addr.port())
        };
        let sha = "ab".repeat(32);
        let good = Box::leak(
            format!("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nETag: \"{sha}\"\r\n\r\n")
                .into_boxed_str(),
        );
        let found = confirm(serve(good), "a b.txt").unwrap();
        assert_eq!((found.size, found.sha256.as_str()), (42, sha.as_str()));
        for bad in [
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
            "HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 4\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\n",
        ] {
            assert!(confirm(serve(bad), "a").is_err(), "{bad:?}");
        }
    }
}
