//! The downloads the UI started: a queue, a bounded pool of download
//! threads that run each through [`crate::download`] (the same verified,
//! multi-source, resumable path as `peer get`), and their progress, which
//! an [`Observer`] on the download's [`Reporter`] records.
//!
//! Cancel: a queued download is taken off the queue and never starts; a
//! running one is marked cancelled at once, and the download path, which
//! asks its observer ([`Observer::cancelled`]) between chunks, stops within
//! a chunk (a piece-tick for several sources), keeping its `.part` for a
//! later retry. Until the thread has ended, the same name cannot be started
//! again, so two transfers never write one `.part`.
//!
//! The table is behind one lock, never held across I/O; a transfer's
//! position is an atomic, updated for every chunk without the lock.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Instant;

use p2p_proto::units::human_size;
use serde::Serialize;

use crate::config::PeerConfig;
use crate::download::{self, DownloadError, Outcome};
use crate::progress::{Observer, Reporter};
use crate::registration::short_sha;

/// Downloads the UI runs at once; the others wait in the queue.
pub const MAX_ACTIVE_DOWNLOADS: usize = 3;

/// Downloads waiting to start at most; more are refused (`429`).
pub const MAX_QUEUED_DOWNLOADS: usize = 64;

/// Downloads remembered (finished ones are forgotten oldest first), so the
/// list a page polls stays small.
pub const MAX_REMEMBERED_DOWNLOADS: usize = 200;

/// Notes kept per download (source failures and the like), newest last.
pub const MAX_NOTES_PER_DOWNLOAD: usize = 8;

/// The rate shown is measured over about this long, so that it follows
/// the transfer now, not its first burst.
pub const RATE_WINDOW_MS: u64 = 3000;

/// Position samples for the rate are taken at most this often.
const RATE_SAMPLE_MS: u64 = 250;

/// Where a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for a free download thread.
    Queued,
    /// Asking the registry for sources, or fetching.
    Running,
    /// Fetched (or already there) and verified against size and SHA-256.
    Verified,
    Failed,
    Cancelled,
}

impl State {
    fn is_over(self) -> bool {
        matches!(self, State::Verified | State::Failed | State::Cancelled)
    }
}

/// Why a download could not be started, retried or cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("no download {0}")]
    Unknown(u64),
    #[error("{0:?} is already being downloaded")]
    Busy(String),
    #[error("{MAX_QUEUED_DOWNLOADS} downloads are waiting already; try again later")]
    QueueFull,
    #[error("download {0} has already ended")]
    Ended(u64),
    #[error("download {0} has not ended; cancel it first")]
    NotEnded(u64),
    #[error("bad file name {0:?}: {1}")]
    BadName(String, String),
}

/// The position of one transfer, shared with its observer.
#[derive(Debug, Default)]
struct Live {
    total: AtomicU64,
    done: AtomicU64,
    /// Milliseconds since [`Job::created`] when the transfer started; 0: not yet.
    started_ms: AtomicU64,
    /// (milliseconds since [`Job::created`], bytes done), oldest first,
    /// spanning about [`RATE_WINDOW_MS`]. Its own lock, taken at most every
    /// [`RATE_SAMPLE_MS`] by the transfer and briefly by a page's poll.
    samples: Mutex<VecDeque<(u64, u64)>>,
    /// When the newest sample was taken, for the cheap "not yet" check.
    last_sample_ms: AtomicU64,
}

impl Live {
    fn sample(&self, now_ms: u64, done: u64) {
        if now_ms < self.last_sample_ms.load(Ordering::Relaxed) + RATE_SAMPLE_MS {
            return;
        }
        self.last_sample_ms.store(now_ms, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((now_ms, done));
        while samples.len() > 2 && samples[1].0 + RATE_WINDOW_MS < now_ms {
            samples.pop_front();
        }
    }

    /// Bytes per second over the window, at `now_ms` with `done` bytes.
    fn rate(&self, now_ms: u64, done: u64) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(&(then_ms, then_done)) = samples.front() else {
            return 0;
        };
        done.saturating_sub(then_done)
            .saturating_mul(1000)
            .checked_div(now_ms.saturating_sub(then_ms))
            .unwrap_or(0)
    }
}

/// One download, as the page shows it.
#[derive(Debug)]
struct Job {
    id: u64,
    name: String,
    /// The content asked for (the result the person clicked), when given.
    sha256: Option<String>,
    state: State,
    /// A download thread is still working on it (also after a cancel).
    running: bool,
    cancel: Arc<AtomicBool>,
    live: Arc<Live>,
    created: Instant,
    /// What is being fetched from where, e.g. `x from 127.0.0.1:4000`.
    what: String,
    /// The latest detail, e.g. `2 of 4 sources active`.
    detail: String,
    notes: VecDeque<String>,
    /// The failure, or what a success did.
    message: String,
    /// Where the verified file is.
    path: Option<PathBuf>,
}

/// A download as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: u64,
    pub name: String,
    pub sha256: Option<String>,
    pub state: State,
    /// Total bytes, once known.
    pub total: u64,
    /// Bytes done (verified pieces, or received bytes).
    pub done: u64,
    /// Bytes per second over the last [`RATE_WINDOW_MS`] or so.
    pub rate: u64,
    /// Seconds still to go at that rate, when it can be told.
    pub eta_seconds: Option<u64>,
    /// Which sources it is fetching from: "x from HOST:PORT", "2 of 4 sources active".
    pub sources: String,
    pub notes: Vec<String>,
    /// The failure reason, or what a finished download did.
    pub message: String,
    /// Whether a download thread still works on it (a cancelled one may).
    pub running: bool,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    jobs: BTreeMap<u64, Job>,
    queue: VecDeque<u64>,
    shutting_down: bool,
}

struct Shared {
    table: Mutex<Table>,
    /// Signalled when a job is queued or shutdown begins.
    wake: Condvar,
    config: PeerConfig,
}

/// The UI's downloads. Clones share the same table.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
}

impl Jobs {
    /// Starts the [`MAX_ACTIVE_DOWNLOADS`] download threads.
    pub fn start(context: &super::Context) -> io::Result<Jobs> {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                next_id: 1,
                ..Table::default()
            }),
            wake: Condvar::new(),
            config: context.config.clone(),
        });
        for i in 0..MAX_ACTIVE_DOWNLOADS {
            let shared = Arc::clone(&shared);
            // Detached: a download in flight at shutdown ends with the process.
            thread::Builder::new()
                .name(format!("ui-download-{i}"))
                .spawn(move || download_loop(&shared))?;
        }
        Ok(Jobs { shared })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.shared.lock()
    }

    /// Queues a download of `name` (of the content `sha256`, when given).
    pub fn start_download(&self, name: &str, sha256: Option<&str>) -> Result<JobView, JobError> {
        p2p_proto::protocol::check_name(name)
            .map_err(|e| JobError::BadName(name.to_owned(), e.to_string()))?;
        let mut table = self.lock();
        if table
            .jobs
            .values()
            .any(|j| j.name == name && (j.running || !j.state.is_over()))
        {
            return Err(JobError::Busy(name.to_owned()));
        }
        if table.queue.len() >= MAX_QUEUED_DOWNLOADS {
            return Err(JobError::QueueFull);
        }
        let id = table.next_id;
        table.next_id += 1;
        let job = Job {
            id,
            name: name.to_owned(),
            sha256: sha256.map(str::to_owned),
            state: State::Queued,
            running: false,
            cancel: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Live::default()),
            created: Instant::now(),
            what: String::new(),
            detail: String::new(),
            notes: VecDeque::new(),
            message: String::new(),
            path: None,
        };
        let view = job.view();
        table.jobs.insert(id, job);
        table.queue.push_back(id);
        forget_old(&mut table);
        drop(table);
        self.shared.wake.notify_one();
        Ok(view)
    }

    /// Queues a failed or cancelled download again (it resumes its `.part`).
    pub fn retry(&self, id: u64) -> Result<JobView, JobError> {
        let mut table = self.lock();
        let job = table.jobs.get(&id).ok_or(JobError::Unknown(id))?;
        if !job.state.is_over() || job.running {
            return Err(JobError::NotEnded(id));
        }
        let name = job.name.clone();
        if table
            .jobs
            .values()
            .any(|j| j.id != id && j.name == name && (j.running || !j.state.is_over()))
        {
            return Err(JobError::Busy(name));
        }
        if table.queue.len() >= MAX_QUEUED_DOWNLOADS {
            return Err(JobError::QueueFull);
        }
        let Some(job) = table.jobs.get_mut(&id) else {
            return Err(JobError::Unknown(id));
        };
        job.state = State::Queued;
        job.cancel = Arc::new(AtomicBool::new(false));
        job.live = Arc::new(Live::default());
        job.created = Instant::now();
        job.what.clear();
        job.detail.clear();
        job.notes.clear();
        job.message.clear();
        job.path = None;
        let view = job.view();
        table.queue.push_back(id);
        drop(table);
        self.shared.wake.notify_one();
        Ok(view)
    }

    /// Cancels a download (see the module doc for what that means for a running one).
    pub fn cancel(&self, id: u64) -> Result<JobView, JobError> {
        let mut table = self.lock();
        let job = table.jobs.get_mut(&id).ok_or(JobError::Unknown(id))?;
        if job.state.is_over() {
            return Err(JobError::Ended(id));
        }
        job.cancel.store(true, Ordering::SeqCst);
        job.state = State::Cancelled;
        job.message = if job.running {
            "cancelled; stopping the transfer (its .part stays for a retry)".into()
        } else {
            "cancelled before it started".into()
        };
        let view = job.view();
        table.queue.retain(|&q| q != id);
        Ok(view)
    }

    /// Every remembered download, newest first.
    pub fn list(&self) -> Vec<JobView> {
        self.lock().jobs.values().rev().map(Job::view).collect()
    }

    /// One download.
    pub fn get(&self, id: u64) -> Option<JobView> {
        self.lock().jobs.get(&id).map(Job::view)
    }

    /// Stops the download threads once their current download ends; queued ones never start.
    pub fn shut_down(&self) {
        self.lock().shutting_down = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each change to the table is complete before the lock is released,
        // so a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Forgets the oldest finished downloads beyond [`MAX_REMEMBERED_DOWNLOADS`].
fn forget_old(table: &mut Table) {
    while table.jobs.len() > MAX_REMEMBERED_DOWNLOADS {
        let oldest = table
            .jobs
            .values()
            .find(|j| j.state.is_over() && !j.running)
            .map(|j| j.id);
        match oldest {
            Some(id) => {
                table.jobs.remove(&id);
            }
            None => break,
        }
    }
}

impl Job {
    fn view(&self) -> JobView {
        let total = self.live.total.load(Ordering::Relaxed);
        let done = self.live.done.load(Ordering::Relaxed);
        let started_ms = self.live.started_ms.load(Ordering::Relaxed);
        let (mut rate, mut eta) = (0, None);
        if started_ms > 0 && self.state == State::Running {
            rate = self
                .live
                .rate(self.created.elapsed().as_millis() as u64, done);
            if rate > 0 {
                eta = Some(total.saturating_sub(done).div_ceil(rate));
            }
        }
        // "NAME from 127.0.0.1:4000" → "from 127.0.0.1:4000": the page shows the name already.
        let from = self
            .what
            .strip_prefix(self.name.as_str())
            .unwrap_or(&self.what)
            .trim();
        let sources = match (from.is_empty(), self.detail.is_empty()) {
            (true, true) => String::new(),
            (false, true) => from.to_owned(),
            (true, false) => self.detail.clone(),
            (false, false) => format!("{from}, {}", self.detail),
        };
        JobView {
            id: self.id,
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            state: self.state,
            total,
            done,
            rate,
            eta_seconds: eta,
            sources,
            notes: self.notes.iter().cloned().collect(),
            message: self.message.clone(),
            running: self.running,
        }
    }
}

/// Records one job's transfer; told by the download path's [`Reporter`].
struct JobObserver {
    shared: Arc<Shared>,
    id: u64,
    live: Arc<Live>,
    created: Instant,
    /// Set by a cancel; the download path asks [`Observer::cancelled`].
    cancel: Arc<AtomicBool>,
}

impl Observer for JobObserver {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn started(&self, what: &str, total: u64, already: u64) {
        self.live.total.store(total, Ordering::Relaxed);
        self.live.done.store(already, Ordering::Relaxed);
        let ms = (self.created.elapsed().as_millis() as u64).max(1);
        self.live.started_ms.store(ms, Ordering::Relaxed);
        self.live.sample(ms, already);
        if let Some(job) = self.shared.lock().jobs.get_mut(&self.id) {
            job.what = what.to_owned();
            job.detail.clear();
        }
    }

    fn position(&self, done: u64) {
        self.live.done.store(done, Ordering::Relaxed);
        self.live
            .sample(self.created.elapsed().as_millis() as u64, done);
    }

    fn detail(&self, detail: &str) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&self.id) {
            if job.detail != detail {
                job.detail = detail.to_owned();
            }
        }
    }

    fn note(&self, line: &str) {
        if let Some(job) = self.shared.lock().jobs.get_mut(&self.id) {
            if job.notes.len() == MAX_NOTES_PER_DOWNLOAD {
                job.notes.pop_front();
            }
            job.notes.push_back(line.to_owned());
        }
    }
}

/// One download thread: takes queued jobs until shutdown.
fn download_loop(shared: &Arc<Shared>) {
    loop {
        let (id, name, sha256, live, created, cancel) = {
            let mut table = shared.lock();
            let id = loop {
                if table.shutting_down {
                    return;
                }
                if let Some(id) = table.queue.pop_front() {
                    break id;
                }
                table = shared
                    .wake
                    .wait(table)
                    .unwrap_or_else(PoisonError::into_inner);
            };
            let Some(job) = table.jobs.get_mut(&id) else {
                continue;
            };
            job.state = State::Running;
            job.running = true;
            (
                id,
                job.name.clone(),
                job.sha256.clone(),
                Arc::clone(&job.live),
                job.created,
                Arc::clone(&job.cancel),
            )
        };
        let observer = Arc::new(JobObserver {
            shared: Arc::clone(shared),
            id,
            live,
            created,
            cancel,
        });
        let (reporter, guard) = Reporter::quiet().observed(observer);
        let result = run_one(&shared.config, &name, sha256.as_deref(), &reporter);
        drop(guard);
        let mut table = shared.lock();
        let Some(job) = table.jobs.get_mut(&id) else {
            continue;
        };
        job.running = false;
        let cancelled = job.cancel.load(Ordering::SeqCst);
        match result {
            Ok(outcome) => {
                let (path, text) = describe(&outcome);
                job.path = Some(path);
                if cancelled {
                    job.message = format!("cancelled, but it finished in the background: {text}");
                } else {
                    job.state = State::Verified;
                    job.message = text;
                    // A file found already there was never started: the
                    // outcome has its size, so the row shows it too.
                    let size = outcome.size();
                    job.live.total.store(size, Ordering::Relaxed);
                    job.live.done.store(size, Ordering::Relaxed);
                }
            }
            Err(DownloadError::Cancelled { .. }) => {
                job.message = "cancelled; its .part stays for a retry".into();
            }
            Err(e) if cancelled => {
                job.message = format!("cancelled; the transfer had ended: {e}");
            }
            Err(e) => {
                job.state = State::Failed;
                job.message = e.to_string();
            }
        }
    }
}

/// Searches and downloads one file, keeping to the content asked for.
fn run_one(
    config: &PeerConfig,
    name: &str,
    sha256: Option<&str>,
    reporter: &Reporter,
) -> Result<Outcome, DownloadError> {
    let mut sources = download::search(&config.server, name)?;
    if let Some(sha256) = sha256 {
        sources.retain(|s| s.sha256 == sha256);
        if sources.is_empty() {
            return Err(DownloadError::NotFound {
                name: name.to_owned(),
                registry: config.server.clone(),
            });
        }
    }
    download::download_from(
        &sources,
        name,
        &config.downloads,
        &config.download,
        reporter,
    )
}

fn describe(outcome: &Outcome) -> (PathBuf, String) {
    match outcome {
        Outcome::Downloaded {
            path,
            size,
            sha256,
            from,
            resumed_at,
        } => {
            let resumed = if *resumed_at > 0 {
                format!(", resumed at {}", human_size(*resumed_at))
            } else {
                String::new()
            };
            (
                path.clone(),
                format!(
                    "verified: {}, sha256 {} from {from}{resumed}",
                    human_size(*size),
                    short_sha(sha256)
                ),
            )
        }
        Outcome::AlreadyPresent { path, sha256, .. } => (
            path.clone(),
            format!(
                "verified: already in the downloads folder (sha256 {})",
                short_sha(sha256)
            ),
        ),
    }
}
