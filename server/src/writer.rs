//! The writer thread: the one owner of every write to the registry.
//!
//! Workers send [`Write`]s over a crossbeam channel and wait for the outcome.
//! The writer takes the first waiting write and every other one already
//! queued (up to [`MAX_BATCH`]), applies them all in one transaction, commits
//! (one fsync for the whole batch with `synchronous=FULL`) and only then
//! answers each. This is group commit: under load one fsync acknowledges many
//! registrations, and an `OK` is never sent for a change that is not on disk.
//!
//! Between batches the writer also deletes expired registrations, so the
//! sweep never races another write. It must not read for clients: SEARCH is
//! answered by the in-memory [`Index`], FIND by the read pool in
//! [`crate::store::Store`].
//!
//! The writer alone keeps the index in step with the database: it starts
//! loading it (on a thread of its own, from a snapshot taken before the
//! writer's first batch, which it keeps committing meanwhile: their changes
//! are applied to the loaded content before it answers; the server already
//! listens, and SEARCH is answered by SQLite until the index is ready),
//! applies a batch's changes to the index after the batch's `COMMIT` returned and
//! before it answers any of them (so an `OK` means on disk *and* visible to
//! SEARCH), the same for its expiry sweep, and every [`DATA_VERSION_POLL`]
//! it reads `PRAGMA data_version`, which changes only when another process
//! (`p2p-admin prune`) committed to the file: then it reloads the index.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, TransactionBehavior};
use smallvec::{smallvec, SmallVec};

use crate::index::{Change, Index, Key};
use crate::store::writes::{self, Stamp};
use crate::store::{self, OpenMode, StoreError, SyncMode};

/// Most writes committed in one transaction: bounds how long one commit
/// holds the write lock (and so how long `p2p-admin prune` may wait).
pub const MAX_BATCH: usize = 1024;

/// Jobs that may wait for the writer before senders block: absorbs bursts
/// without unbounded memory. A job is one write or a pipelined run of up to
/// [`crate::server::MAX_PIPELINED_WRITES`]; since a worker waits for its
/// job, at most one job per connection is queued, so what waits is bounded
/// by `--max-connections` × that run.
pub const QUEUE_CAPACITY: usize = 4096;

/// A change a client asked for. `host` is the address the server saw.
#[derive(Debug, Clone)]
pub enum Write {
    Register {
        host: String,
        port: u16,
        name: String,
        size: u64,
        sha256: String,
    },
    Unregister {
        host: String,
        port: u16,
        name: String,
    },
    Heartbeat {
        host: String,
        port: u16,
    },
}

/// What a committed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Registered,
    /// A new registration refused: its host already has this many (the
    /// `--max-per-host` limit). Refreshing an existing one is never refused.
    HostFull(u64),
    /// `false` when there was nothing to unregister.
    Unregistered(bool),
    /// How many registrations a heartbeat refreshed.
    Refreshed(u64),
}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The batch this write was part of could not be committed.
    #[error("commit failed: {reason}")]
    Commit {
        reason: String,
        /// The same in a few words, for the client.
        short: &'static str,
    },
    #[error("the writer thread has stopped")]
    Stopped,
}

impl WriteError {
    /// What a client is told (`ERR internal <reason>`): no paths.
    pub fn short_reason(&self) -> &'static str {
        match self {
            WriteError::Store(e) => e.short_reason(),
            WriteError::Commit { short, .. } => short,
            WriteError::Stopped => "the registry's writer has stopped",
        }
    }
}

/// The writes of one submission: one, or a pipelined run (inline when
/// one, so the common single write allocates nothing for the list).
pub type Writes = SmallVec<[Write; 1]>;

/// The outcomes of one submission, one per write, in order.
pub type Outcomes = SmallVec<[Result<Outcome, WriteError>; 1]>;

/// One submission: the writes of one worker, committed in one transaction
/// and answered with one wake-up.
struct Job {
    writes: Writes,
    /// Taken when the job is answered.
    done: Option<Arc<Ack>>,
}

impl Job {
    fn answer(mut self, outcomes: Outcomes) {
        if let Some(done) = self.done.take() {
            done.send(outcomes);
        }
    }
}

impl Drop for Job {
    /// A job dropped unanswered (the writer stopped or panicked) must not
    /// leave its worker waiting forever.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let failed = self
                .writes
                .iter()
                .map(|_| Err(WriteError::Stopped))
                .collect();
            done.send(failed);
        }
    }
}

/// Where the writer leaves one job's outcomes for the worker waiting on it.
///
/// A mutex and condvar, not a channel: the worker parks at once instead of
/// spinning and yielding first (crossbeam's receive backoff), which under
/// 64 waiting workers took CPU the writer itself needed. (A futex with a
/// tree of wake-ups spread over the workers was tried and measured slower
/// at 16 connections: BENCHMARKS.md, "Pipelined writes".)
#[derive(Default)]
struct Ack {
    outcomes: Mutex<Option<Outcomes>>,
    ready: Condvar,
}

impl Ack {
    fn send(&self, outcomes: Outcomes) {
        *self.outcomes.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcomes);
        self.ready.notify_one();
    }

    fn wait(&self) -> Outcomes {
        let mut slot = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcomes) = slot.take() {
                return outcomes;
            }
            slot = self
                .ready
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The senders' side: cheap to clone, one per worker. The writer stops
/// once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: Sender<Job>,
}

impl WriterHandle {
    /// Queues a write and blocks until it is committed (or failed).
    pub fn submit(&self, write: Write) -> Result<Outcome, WriteError> {
        self.submit_all(smallvec![write])
            .pop()
            .unwrap_or(Err(WriteError::Stopped))
    }

    /// Queues `writes` as one job and blocks until all are committed (or
    /// failed): one outcome per write, in order, after one wait. A job is
    /// never split between transactions: its writes are applied in order in
    /// one, so a failed commit fails all of them (and the other jobs of
    /// that batch). Callers keep jobs small (the server's
    /// [`crate::server::MAX_PIPELINED_WRITES`]): a batch holds up to
    /// [`MAX_BATCH`] writes, plus the rest of the job that crossed it.
    pub fn submit_all(&self, writes: Writes) -> Outcomes {
        let count = writes.len();
        if count == 0 {
            return Outcomes::new();
        }
        let done = Arc::new(Ack::default());
        let job = Job {
            writes,
            done: Some(Arc::clone(&done)),
        };
        if let Err(crossbeam_channel::SendError(mut job)) = self.jobs.send(job) {
            job.done = None;
            return (0..count).map(|_| Err(WriteError::Stopped)).collect();
        }
        let mut outcomes = done.wait();
        // A short answer cannot happen; never hand back fewer than asked.
        outcomes.resize_with(count, || Err(WriteError::Stopped));
        outcomes
    }
}

/// Settings of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Database path, for error messages.
    pub path: String,
    /// How long a registration lives without a heartbeat.
    pub ttl: Duration,
    /// How often expired registrations are deleted.
    pub sweep_every: Duration,
    /// Most registrations one host may hold (`--max-per-host`); 0: no limit.
    pub max_per_host: u64,
}

/// Default of [`WriterConfig::max_per_host`]: far above any real peer,
/// yet a bound on what one address can make the registry store (the
/// benchmarks load a million from loopback).
pub const DEFAULT_MAX_PER_HOST: u64 = 1_000_000;

/// How often the writer checks whether another process changed the file
/// (`PRAGMA data_version`): a prune is seen by SEARCH within this plus one
/// reload of the index (about 7 µs a registration, BENCHMARKS.md).
pub const DATA_VERSION_POLL: Duration = Duration::from_millis(250);

/// Exit status of the process when the writer thread dies (a panic): every
/// write would fail from then on, so the process ends and a supervisor can
/// restart it, rather than serve reads alone (70: EX_SOFTWARE).
pub const EXIT_WRITER_DIED: i32 = 70;

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot read the database's data_version: {0}")]
    Load(#[from] StoreError),
    #[error("cannot start the writer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts the writer thread on `conn` (a connection from
/// [`store::open_connection`] in [`store::OpenMode::CreateOrMigrate`]),
/// which loads `index` from the database and keeps it in step. It returns
/// at once: the server listens while the index loads, and SEARCH is
/// answered by SQLite until it is ready. Writes go on during the load: its
/// snapshot is taken before the first batch, and what the writer commits
/// meanwhile is applied to the loaded content before it answers, so index
/// and database stay in commit order. The thread closes the connection
/// when it stops.
pub fn spawn(
    conn: Connection,
    config: WriterConfig,
    index: Arc<Index>,
) -> Result<(WriterHandle, JoinHandle<()>), SpawnError> {
    // The version first: a commit by another process during the load makes
    // the first poll reload (harmless), never go unseen.
    let version = store::data_version(&conn).map_err(|source| StoreError::Sql {
        path: config.path.clone(),
        source,
    })?;
    if index.is_enabled() {
        // Not in step with the database until the load is in, and empty;
        // set before the server listens, so no scrape sees a gauge missing.
        crate::metrics::set_change_log_lag(1);
        crate::metrics::set_index_entries(index.len());
    }
    let (jobs, queue) = bounded(QUEUE_CAPACITY);
    let thread = thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let path = config.path.clone();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut state = IndexState {
                    version,
                    stale: false,
                    next_retry: Instant::now(),
                };
                // Before the first batch: the load's snapshot comes before
                // any commit of ours, each of which it then gets as a change.
                let loading =
                    start_load(&config, &index, &mut state, version, "index loaded", true);
                run(conn, queue, config, &index, state, loading)
            }));
            if outcome.is_err() {
                tracing::error!(%path, "the writer thread panicked; exiting");
                std::process::exit(EXIT_WRITER_DIED);
            }
        })?;
    Ok((WriterHandle { jobs }, thread))
}

/// Environment variable for tests: the writer waits until the file it
/// names exists before it loads the index at start-up (at most
/// [`LOAD_GATE_LIMIT`]), so a test can look at the server while the index
/// is still loading without a database big enough to make that last.
/// Not an option: nothing but a test has a use for it.
pub const LOAD_GATE_ENV: &str = "DHT_SERVER_INDEX_LOAD_GATE";

/// Longest wait for [`LOAD_GATE_ENV`]'s file.
pub const LOAD_GATE_LIMIT: Duration = Duration::from_secs(120);

fn wait_for_load_gate() {
    let Some(gate) = std::env::var_os(LOAD_GATE_ENV) else {
        return;
    };
    let gate = std::path::PathBuf::from(gate);
    tracing::info!(gate = %gate.display(), "waiting for the load gate before loading the index");
    let deadline = Instant::now() + LOAD_GATE_LIMIT;
    while !gate.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// How soon a failed load of the index is tried again when nothing else
/// changed (SEARCH is answered by SQLite meanwhile).
pub const LOAD_RETRY: Duration = Duration::from_secs(10);

/// Where the index stands against the database, for the writer.
struct IndexState {
    /// `data_version` the index was loaded at.
    version: i64,
    /// The last load failed (or none ran yet): load again, by `next_retry`.
    stale: bool,
    next_retry: Instant,
}

/// How often the writer looks whether a load running on its own thread
/// is done, while one runs.
const LOAD_CHECK: Duration = Duration::from_millis(5);

/// A load of the index running on a thread of its own (`index-load`), on a
/// read-only connection whose snapshot was taken before the writer's next
/// commit; the writer keeps committing and collects what it commits.
struct Loading {
    done: Receiver<Result<crate::index::Built, StoreError>>,
    thread: JoinHandle<()>,
    /// `data_version` read just before the snapshot.
    version: i64,
    /// Changes committed since the snapshot, in commit order: applied to
    /// the new content before it answers.
    later: Vec<Change>,
    started: Instant,
    what: &'static str,
}

/// Starts loading the index from the database at `version`: the index is
/// not ready (SEARCH goes to SQLite) from now until the load is in. `None`
/// when it cannot start (logged; `state` says to retry), or without the
/// index. `gate`: wait for [`LOAD_GATE_ENV`] first (the start-up load).
fn start_load(
    config: &WriterConfig,
    index: &Index,
    state: &mut IndexState,
    version: i64,
    what: &'static str,
    gate: bool,
) -> Option<Loading> {
    if !index.is_enabled() {
        return None;
    }
    index.begin_load();
    let opened = store::open_connection(&config.path, OpenMode::ExistingReadOnly, SyncMode::Normal)
        .and_then(|conn| {
            store::begin_snapshot(&conn).map_err(|source| StoreError::Sql {
                path: config.path.clone(),
                source,
            })?;
            Ok(conn)
        });
    let conn = match opened {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(path = %config.path, error = %e, "cannot start loading the index; SEARCH is answered by SQLite");
            state.stale = true;
            state.next_retry = Instant::now() + LOAD_RETRY;
            return None;
        }
    };
    let (report, done) = bounded(1);
    let path = config.path.clone();
    let spawned = thread::Builder::new()
        .name("index-load".into())
        .spawn(move || {
            if gate {
                wait_for_load_gate();
            }
            let built = store::build_index(&conn, &path);
            // Only a read transaction: ending it cannot lose anything.
            let _ = store::end_snapshot(&conn);
            drop(conn);
            let _ = report.send(built);
        });
    match spawned {
        Ok(thread) => Some(Loading {
            done,
            thread,
            version,
            later: Vec::new(),
            started: Instant::now(),
            what,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the index's load thread; SEARCH is answered by SQLite");
            state.stale = true;
            state.next_retry = Instant::now() + LOAD_RETRY;
            None
        }
    }
}

/// Puts in the load, if it is done, with the changes committed meanwhile.
/// After a failure the index stays not ready (SEARCH goes to SQLite) and
/// `state` says to retry after [`LOAD_RETRY`].
fn finish_load(loading: &mut Option<Loading>, index: &Index, state: &mut IndexState) {
    let Some(load) = loading.as_ref() else {
        return;
    };
    let outcome = match load.done.try_recv() {
        Ok(outcome) => outcome,
        Err(crossbeam_channel::TryRecvError::Empty) => return,
        Err(crossbeam_channel::TryRecvError::Disconnected) => Err(StoreError::Sql {
            path: String::new(),
            source: rusqlite::Error::InvalidQuery,
        }),
    };
    let Some(load) = loading.take() else {
        return;
    };
    let _ = load.thread.join();
    match outcome {
        Ok(built) => {
            let loaded = built.len();
            if index.install(built, &load.later) {
                state.version = load.version;
                state.stale = false;
                tracing::info!(
                    registrations = loaded,
                    changes_meanwhile = load.later.len(),
                    elapsed_ms = load.started.elapsed().as_millis() as u64,
                    "{}",
                    load.what
                );
                return;
            }
            // Logged by the index (rows out of order, ids exhausted).
        }
        Err(e) => {
            tracing::warn!(error = %e, "loading the index failed; SEARCH is answered by SQLite");
        }
    }
    state.stale = true;
    state.next_retry = Instant::now() + LOAD_RETRY;
}

fn run(
    mut conn: Connection,
    queue: Receiver<Job>,
    config: WriterConfig,
    index: &Index,
    mut state: IndexState,
    mut loading: Option<Loading>,
) {
    // Continue the sequence after the newest write on disk. Should that read
    // fail, microseconds since the epoch are above any sequence we handed out.
    let mut seq = writes::last_seq(&conn).unwrap_or_else(|e| {
        tracing::warn!(path = %config.path, error = %e, "cannot read the last write sequence");
        store::now_ms().saturating_mul(1000)
    });
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut changes = Vec::with_capacity(MAX_BATCH);
    let mut next_sweep = Instant::now() + config.sweep_every;
    let mut next_poll = Instant::now() + DATA_VERSION_POLL;
    loop {
        let mut wait = next_sweep
            .min(next_poll)
            .saturating_duration_since(Instant::now());
        if loading.is_some() {
            wait = wait.min(LOAD_CHECK);
        }
        let mut writes = 0;
        match queue.recv_timeout(wait) {
            Ok(job) => {
                writes += job.writes.len();
                batch.push(job);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !batch.is_empty() {
            while writes < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => {
                        writes += job.writes.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            commit_batch(
                &mut conn,
                &config,
                &mut batch,
                &mut seq,
                index,
                &mut changes,
                loading.as_mut().map(|l| &mut l.later),
            );
        }
        finish_load(&mut loading, index, &mut state);
        // Writes that never pause must starve neither the sweep nor the poll.
        let now = Instant::now();
        if now >= next_poll {
            poll_data_version(&conn, &config, index, &mut state, &mut loading);
            next_poll = Instant::now() + DATA_VERSION_POLL;
        }
        if now >= next_sweep {
            sweep(
                &mut conn,
                &config,
                index,
                loading.as_mut().map(|l| &mut l.later),
            );
            next_sweep = Instant::now() + config.sweep_every;
        }
    }
    // The load's read transaction must end before the close checkpoints.
    if let Some(load) = loading.take() {
        let _ = load.thread.join();
    }
    // Every handle is gone: the last batch is committed. Close explicitly to
    // see the error (a failed checkpoint) instead of losing it in Drop.
    if let Err((_, e)) = conn.close() {
        tracing::error!(path = %config.path, error = %e, "closing the database failed");
    } else {
        tracing::info!(path = %config.path, "database closed");
    }
}

/// Applies `batch` in one transaction, commits, then answers every job.
fn commit_batch(
    conn: &mut Connection,
    config: &WriterConfig,
    batch: &mut Vec<Job>,
    seq: &mut i64,
    index: &Index,
    changes: &mut Vec<Change>,
    later: Option<&mut Vec<Change>>,
) {
    crate::fault::before_writer_batch();
    changes.clear();
    let writes: usize = batch.iter().map(|job| job.writes.len()).sum();
    let _timer = crate::metrics::commit_started(writes);
    let sql_err = |source| StoreError::Sql {
        path: config.path.clone(),
        source,
    };
    let now = store::now_ms();
    let live_since = store::live_since(now, config.ttl);
    let result = (|| -> Result<Applied, StoreError> {
        let first_seq = *seq;
        let mut tx = begin(conn).map_err(sql_err)?;
        // Without a savepoint per write first: they cost 5-8 % of loading
        // (each copies the pages its write changes into the statement
        // journal), and a write almost never fails. One that failed may
        // have left part of itself (a name without its registration):
        // then the batch is done again from the start, each write in a
        // savepoint of its own, as the same writes on the same data. (The
        // write lock is let go between the two: should `p2p-admin prune`
        // then hold it past the busy timeout, the whole batch fails with
        // `ERR internal`, never a false `OK`.)
        let mut outcomes = apply_batch(&tx, batch, seq, now, live_since, config, changes, false);
        if !tx.is_autocommit() && outcomes.iter().flatten().any(Result::is_err) {
            drop(tx); // rolls the first attempt back
            *seq = first_seq;
            changes.clear();
            tx = begin(conn).map_err(sql_err)?;
            outcomes = apply_batch(&tx, batch, seq, now, live_since, config, changes, true);
        }
        // The batch's new names enter the full-text index in one statement
        // (one FTS segment per commit, not one per name).
        writes::index_new_names(&tx).map_err(sql_err)?;
        if let Some(e) = crate::fault::writer_commit_failure() {
            // Dropping `tx` rolls the batch back, as a failed COMMIT does.
            return Err(sql_err(e));
        }
        crate::metrics::time_fsync(|| tx.commit()).map_err(sql_err)?;
        Ok(outcomes)
    })();
    match result {
        Ok(mut outcomes) => {
            // Committed: visible to SEARCH before anyone hears `OK` (from
            // the index, or while it loads from SQLite, and then kept for
            // the load, whose snapshot is older).
            match later {
                Some(later) => later.append(changes),
                None => index.apply(changes),
            }
            // A batch cut short by a rolled-back transaction has fewer
            // outcomes than writes: the rest were never applied.
            outcomes.resize_with(batch.len(), SmallVec::new);
            for (job, outcomes) in batch.drain(..).zip(outcomes) {
                let mut outcomes: Outcomes = outcomes
                    .into_iter()
                    .map(|o| o.map_err(WriteError::from))
                    .collect();
                outcomes.resize_with(job.writes.len(), || {
                    Err(WriteError::Commit {
                        reason: "the transaction was rolled back by an earlier error".into(),
                        short: "commit failed",
                    })
                });
                job.answer(outcomes);
            }
        }
        Err(e) => {
            tracing::error!(path = %config.path, error = %e, writes, "commit failed");
            let reason = e.to_string();
            let short = e.short_reason();
            for job in batch.drain(..) {
                let failed = job
                    .writes
                    .iter()
                    .map(|_| {
                        Err(WriteError::Commit {
                            reason: reason.clone(),
                            short,
                        })
                    })
                    .collect();
                job.answer(failed);
            }
        }
    }
}

/// The outcomes of a batch's writes, job by job.
type Applied = Vec<SmallVec<[Result<Outcome, StoreError>; 1]>>;

/// Opens the batch's transaction. IMMEDIATE: the write lock is taken at
/// BEGIN, where the busy timeout applies. A deferred transaction would
/// first read, then meet another writer (`p2p-admin prune`) at its first
/// write, where SQLite returns SQLITE_BUSY at once to avoid a deadlock.
fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Applies every write of `batch` in `tx`, in order, each with the next
/// `seq`, and collects what they change in the index into `changes`;
/// `atomic`: each write in a savepoint ([`apply_atomically`]).
#[allow(clippy::too_many_arguments)]
fn apply_batch(
    tx: &Connection,
    batch: &[Job],
    seq: &mut i64,
    now: i64,
    live_since: i64,
    config: &WriterConfig,
    changes: &mut Vec<Change>,
    atomic: bool,
) -> Applied {
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let mut of_job = SmallVec::with_capacity(job.writes.len());
        for write in &job.writes {
            *seq += 1;
            let stamp = Stamp { ms: now, seq: *seq };
            let applied = if atomic {
                apply_atomically(tx, write, stamp, live_since, config.max_per_host)
            } else {
                apply(tx, write, stamp, live_since, config.max_per_host)
            }
            .map_err(|source| StoreError::Sql {
                path: config.path.clone(),
                source,
            });
            if let Ok((done, file_id)) = &applied {
                if let Some(change) = change_of(write, *done, *file_id, stamp, live_since) {
                    changes.push(change);
                }
            }
            let outcome = applied.map(|(done, _)| done);
            let failed = outcome.is_err();
            of_job.push(outcome);
            // Some errors (disk full, I/O) make SQLite roll the whole
            // transaction back; later statements would then each commit
            // on their own. Stop, and fail the batch at commit.
            if failed && tx.is_autocommit() {
                outcomes.push(of_job);
                return outcomes;
            }
        }
        outcomes.push(of_job);
    }
    outcomes
}

/// What a write that did `outcome` changes in the index, if anything.
/// `file_id` is the name's `files.id` after a REGISTER (see [`apply`]).
fn change_of(
    write: &Write,
    outcome: Outcome,
    file_id: Option<i64>,
    stamp: Stamp,
    live_since: i64,
) -> Option<Change> {
    match (write, outcome) {
        (
            Write::Register {
                host,
                port,
                name,
                size,
                sha256,
            },
            Outcome::Registered,
        ) => Some(Change::Register {
            key: Key::of_name(name),
            file_id: file_id?,
            name: name.clone(),
            host: host.clone(),
            port: *port,
            size: *size,
            sha256: sha256.clone(),
            ms: stamp.ms,
            seq: stamp.seq,
        }),
        (Write::Unregister { host, port, name }, Outcome::Unregistered(true)) => {
            Some(Change::Unregister {
                key: Key::of_name(name),
                host: host.clone(),
                port: *port,
            })
        }
        (Write::Heartbeat { host, port }, Outcome::Refreshed(n)) if n > 0 => {
            Some(Change::Heartbeat {
                host: host.clone(),
                port: *port,
                ms: stamp.ms,
                seq: stamp.seq,
                live_since,
            })
        }
        _ => None,
    }
}

/// Starts loading the index again when another process committed to the
/// file since the last load, or when the last load failed and its retry is
/// due (also when the index gave up following the database). Not while a
/// load runs: once it is in, the next poll compares the version again.
fn poll_data_version(
    conn: &Connection,
    config: &WriterConfig,
    index: &Index,
    state: &mut IndexState,
    loading: &mut Option<Loading>,
) {
    if !index.is_enabled() || loading.is_some() {
        return;
    }
    let now = match store::data_version(conn) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %config.path, error = %e, "cannot read data_version");
            return;
        }
    };
    if !state.stale && !index.is_ready() {
        state.stale = true; // the index gave up (an id ran out): load again
    }
    let changed = now != state.version;
    let retry_due = state.stale && Instant::now() >= state.next_retry;
    if !changed && !retry_due {
        return;
    }
    *loading = start_load(
        config,
        index,
        state,
        now,
        "database changed by another process; index reloaded",
        false,
    );
}

/// [`apply`] inside a savepoint, so a write is all or nothing within its
/// batch: a statement that fails after others of the same write succeeded
/// (SQLite undoes only that statement for some errors, a full disk among
/// them) takes those with it, instead of leaving, say, a name without its
/// registration to be committed with the rest of the batch. When SQLite
/// rolled the whole transaction back itself, there is no savepoint left to
/// undo; the caller then fails the batch.
fn apply_atomically(
    conn: &Connection,
    write: &Write,
    stamp: Stamp,
    live_since: i64,
    max_per_host: u64,
) -> rusqlite::Result<(Outcome, Option<i64>)> {
    conn.prepare_cached("SAVEPOINT one_write")?.execute([])?;
    let outcome = apply(conn, write, stamp, live_since, max_per_host);
    if conn.is_autocommit() {
        return outcome;
    }
    if outcome.is_err() {
        // The write's own error is the one to report; a failure to undo it
        // leaves the transaction in a state the commit will report.
        let _ = conn
            .prepare_cached("ROLLBACK TO one_write")
            .and_then(|mut undo| undo.execute([]));
    }
    let released = conn
        .prepare_cached("RELEASE one_write")
        .and_then(|mut release| release.execute([]));
    match (outcome, released) {
        (Ok(_), Err(e)) => Err(e),
        (outcome, _) => outcome,
    }
}

/// Performs `write` in the open transaction; with its outcome, the name's
/// `files.id` after a REGISTER (which the index needs for a name new to it).
fn apply(
    conn: &Connection,
    write: &Write,
    stamp: Stamp,
    live_since: i64,
    max_per_host: u64,
) -> rusqlite::Result<(Outcome, Option<i64>)> {
    match write {
        Write::Register {
            host,
            port,
            name,
            size,
            sha256,
        } => {
            let key = p2p_proto::protocol::name_key(name);
            if max_per_host > 0
                && writes::host_registrations(conn, host)? >= max_per_host
                && !writes::is_registered(conn, host, *port, &key)?
            {
                return Ok((Outcome::HostFull(max_per_host), None));
            }
            let file_id = writes::register(conn, host, *port, &key, name, *size, sha256, stamp)?;
            Ok((Outcome::Registered, Some(file_id)))
        }
        Write::Unregister { host, port, name } => {
            let key = p2p_proto::protocol::name_key(name);
            writes::unregister(conn, host, *port, &key).map(|b| (Outcome::Unregistered(b), None))
        }
        Write::Heartbeat { host, port } => writes::heartbeat(conn, host, *port, stamp, live_since)
            .map(|n| (Outcome::Refreshed(n), None)),
    }
}

fn sweep(
    conn: &mut Connection,
    config: &WriterConfig,
    index: &Index,
    later: Option<&mut Vec<Change>>,
) {
    let live_since = store::live_since(store::now_ms(), config.ttl);
    let result = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .and_then(|tx| {
            let removed = writes::sweep_expired(&tx, live_since)?;
            tx.commit()?;
            Ok(removed)
        });
    match result {
        Ok(0) => {}
        Ok(removed) => {
            match later {
                Some(later) => later.push(Change::Sweep { live_since }),
                None => index.sweep(live_since),
            }
            tracing::info!(removed, "expired registrations deleted");
        }
        Err(e) => tracing::warn!(path = %config.path, error = %e, "expiry sweep failed"),
    }
}

#[cfg(test)]
mod tests {
    //! The index against the database: random sequences of writes, expiry
    //! sweeps and admin prunes go through the writer's own code (`apply`,
    //! `change_of`, the sweep and the reload after another process's
    //! change), and after every step each SEARCH and FIND the index answers
    //! must be the one SQL gives (FIND: `Store::find_unnarrowed`, the plain
    //! FTS5 query), and the index must equal one rebuilt from disk.
    use super::*;

    use proptest::prelude::*;

    use crate::store::{
        admin, OpenMode, Store, SyncMode, FIND_NARROW_CANDIDATES, FIND_NARROW_PROBE,
    };

    const TTL_MS: i64 = 100;
    const HOSTS: [&str; 2] = ["10.0.0.1", "[::1]"];
    /// Names for the edge cases of FIND too: case, diacritics (precomposed
    /// and combining), punctuation (phrases), repeated words, scripts
    /// without spaces, a letter Rust and FTS5 fold apart (`İ`), final
    /// sigma, Deseret, private use, a combining vowel sign (alphanumeric
    /// to Rust, a separator to FTS5), digits.
    const NAMES: [&str; 14] = [
        "a",
        "b b",
        "Café.txt",
        "d",
        "Holiday Photos-2024.ZIP",
        "holiday-photos a-a a",
        "CAFÉ ÜBER cafe\u{301}",
        "İstanbul ΣΊΣΥΦΟΣ",
        "日本語テスト x\u{E000}y",
        "\u{10400}\u{10428}z",
        "क\u{93E}म 12-34",
        "ǅemal ß ﬁle",
        "b b-b.b",
        "photos 2024 holiday",
    ];
    /// FIND queries over [`NAMES`].
    const FINDS: [&[&str]; 30] = [
        &["a"],
        &["A"],
        &["b"],
        &["b", "b"],
        &["b-b"],
        &["b b"],
        &["b-b.b"],
        &["caf"],
        &["café"],
        &["cafe\u{301}"],
        &["CAFÉ", "über"],
        &["holiday", "photos"],
        &["holiday-photos"],
        &["photos-2024.zip"],
        &["photos-2"],
        &["a-a", "a"],
        &["İstanbul"],
        &["istanbul"],
        &["σίσυφος"],
        &["ΣΊΣΥΦΟΣ"],
        &["日本"],
        &["x\u{E000}"],
        &["\u{10400}"],
        &["\u{10428}z"],
        &["\u{93E}"],
        &["क"],
        &["12-3"],
        &["ǆemal", "ß"],
        &["-"],
        &["zzz", "a"],
    ];
    const HASHES: [&str; 2] = [
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7",
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Register(usize, u16, usize, u64, usize),
        Unregister(usize, u16, usize),
        Heartbeat(usize, u16),
        /// The clock moves on this many ms.
        Advance(i64),
        Sweep,
        /// `p2p-admin prune --stale` of rows older than this many ms.
        PruneStale(i64),
        PrunePeer(usize, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        let host = 0..HOSTS.len();
        let port = 1u16..4;
        prop_oneof![
            4 => (host.clone(), port.clone(), 0..NAMES.len(), 0u64..3, 0..HASHES.len())
                .prop_map(|(h, p, n, s, x)| Op::Register(h, p, n, s, x)),
            2 => (host.clone(), port.clone(), 0..NAMES.len())
                .prop_map(|(h, p, n)| Op::Unregister(h, p, n)),
            2 => (host.clone(), port.clone()).prop_map(|(h, p)| Op::Heartbeat(h, p)),
            2 => (0i64..80).prop_map(Op::Advance),
            1 => Just(Op::Sweep),
            1 => (0i64..150).prop_map(Op::PruneStale),
            1 => (host, port).prop_map(|(h, p)| Op::PrunePeer(h, p)),
        ]
    }

    fn check(index: &Index, store: &Store, conn: &Connection, path: &str, now: i64) {
        for since in [0, now - TTL_MS, now - TTL_MS / 2] {
            for name in NAMES {
                let sql = store
                    .search(&p2p_proto::protocol::name_key(name), since)
                    .unwrap();
                let mem = index
                    .search(&Key::of_name(name), since)
                    .expect("index ready");
                assert_eq!(mem, sql, "SEARCH {name:?} live since {since}");
            }
        }
        // `now + 1`: every source just written is expired by one ms.
        for since in [0, now - TTL_MS, now + 1] {
            for words in FINDS {
                assert_finds_alike(index, store, words, since);
            }
        }
        let fresh = Index::new();
        store::load_index(conn, path, &fresh).unwrap();
        assert_eq!(index.dump(), fresh.dump(), "index differs from disk");
        assert_eq!(index.len(), fresh.len());
        // The full-text index holds exactly the committed names (schema 4
        // feeds it per transaction): FTS5's own check against `files`.
        conn.execute(
            "INSERT INTO files_fts (files_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .expect("files_fts matches files");
    }

    /// FIND from memory against `Store::find_unnarrowed`. Hits of one name
    /// and hash that differ in size only are put in size order on both
    /// sides: SQL's `ORDER BY` leaves them in any order.
    fn assert_finds_alike(index: &Index, store: &Store, words: &[&str], since: i64) {
        let by_size = |mut hits: Vec<p2p_proto::protocol::FindHit>| {
            hits.sort_by(|a, b| {
                (b.sources, &a.name, &a.sha256, a.size)
                    .cmp(&(a.sources, &b.name, &b.sha256, b.size))
            });
            hits
        };
        let sql = store.find_unnarrowed(words, since).unwrap();
        let mem = match store::find_words(words).unwrap() {
            Some(distinct) => {
                let distinct: Vec<&str> = distinct.iter().map(String::as_str).collect();
                index.find(&distinct, since).expect("index ready")
            }
            None => Vec::new(),
        };
        assert_eq!(
            by_size(mem),
            by_size(sql),
            "FIND {words:?} live since {since}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn index_answers_as_the_database(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.db").to_string_lossy().into_owned();
            let mut conn = store::open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
            let store = Store::open_readers(&path, 1).unwrap();
            let index = Index::new();
            store::load_index(&conn, &path, &index).unwrap();
            let (mut now, mut seq) = (1_000i64, 0i64);
            for op in ops {
                let live_since = now - TTL_MS;
                let write = match op {
                    Op::Register(h, port, n, size, x) => Some(Write::Register {
                        host: HOSTS[h].into(), port, name: NAMES[n].into(), size, sha256: HASHES[x].into(),
                    }),
                    Op::Unregister(h, port, n) => Some(Write::Unregister {
                        host: HOSTS[h].into(), port, name: NAMES[n].into(),
                    }),
                    Op::Heartbeat(h, port) => Some(Write::Heartbeat { host: HOSTS[h].into(), port }),
                    Op::Advance(ms) => { now += ms; None }
                    Op::Sweep => {
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
                        let removed = writes::sweep_expired(&tx, live_since).unwrap();
                        tx.commit().unwrap();
                        if removed > 0 {
                            index.sweep(live_since);
                        }
                        None
                    }
                    Op::PruneStale(age) => {
                        admin::prune_stale(&mut conn, now - age, false).unwrap();
                        store::load_index(&conn, &path, &index).unwrap();
                        None
                    }
                    Op::PrunePeer(h, port) => {
                        let peer = admin::PeerAddr { host: HOSTS[h].into(), port };
                        admin::prune_peer(&mut conn, &peer, false).unwrap();
                        store::load_index(&conn, &path, &index).unwrap();
                        None
                    }
                };
                if let Some(write) = write {
                    seq += 1;
                    let stamp = Stamp { ms: now, seq };
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
                    // A small per-host cap, so refusals are exercised too.
                    let (outcome, file_id) = apply(&tx, &write, stamp, live_since, 5).unwrap();
                    writes::commit(tx).unwrap();
                    let change: Vec<Change> = change_of(&write, outcome, file_id, stamp, live_since).into_iter().collect();
                    index.apply(&change);
                }
                check(&index, &store, &conn, &path, now);
            }
        }
    }

    // ---- FIND: the narrowed query against the full one. ----

    /// Pieces of names: cases, diacritics, digits, scripts without spaces.
    const PIECES: [&str; 12] = [
        "Holiday", "holi", "photo", "Café", "CAFÉ", "über", "2024", "ab", "abc", "日本", "ß", "x",
    ];
    const SEPARATORS: [&str; 5] = [" ", "-", ".", "_", ""];
    /// Words of a FIND: prefixes, other cases, separators inside a word
    /// (a phrase for FTS5), a word with no letter, a missing one.
    const WORDS: [&str; 16] = [
        "holi",
        "HOLIDAY",
        "pho",
        "caf",
        "café",
        "2",
        "2024",
        "a",
        "abc",
        "b-c",
        "holiday.photo",
        "日",
        "-",
        "zzz",
        "cafe",
        "uber",
    ];

    fn name_of(parts: &[(usize, usize)]) -> String {
        parts
            .iter()
            .map(|&(p, s)| format!("{}{}", PIECES[p], SEPARATORS[s]))
            .collect::<String>()
            .trim()
            .to_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn find_answers_as_the_full_query(
            names in proptest::collection::vec(
                (proptest::collection::vec((0..PIECES.len(), 0..SEPARATORS.len()), 1..4), 1u16..4, 0i64..3),
                1..30,
            ),
            crowd in 0usize..2,
            finds in proptest::collection::vec(proptest::collection::vec(0..WORDS.len(), 1..4), 1..12),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.db").to_string_lossy().into_owned();
            let conn = store::open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
            let store = Store::open_readers(&path, 1).unwrap();
            let mut seq = 0;
            let mut register = |name: &str, port: u16, seen: i64| {
                if name.is_empty() {
                    return;
                }
                seq += 1;
                let key = p2p_proto::protocol::name_key(name);
                writes::register(&conn, "10.0.0.1", port, &key, name, 1, HASHES[0], Stamp { ms: seen, seq }).unwrap();
            };
            for (parts, port, seen) in &names {
                register(&name_of(parts), *port, *seen);
            }
            // Sometimes a word is in too many names to be tried first.
            for i in 0..crowd * (FIND_NARROW_PROBE + 5) {
                register(&format!("photo crowd {i}"), 1, 2);
            }
            let index = Index::new();
            store::load_index(&conn, &path, &index).unwrap();
            for words in finds {
                let words: Vec<&str> = words.iter().map(|&w| WORDS[w]).collect();
                for since in [0, 1, 2] {
                    let narrowed = store.find(&words, since).unwrap();
                    let full = store.find_unnarrowed(&words, since).unwrap();
                    prop_assert_eq!(&narrowed, &full, "FIND {:?} live since {}", words, since);
                    assert_finds_alike(&index, &store, &words, since);
                }
            }
        }
    }

    /// A write that fails half-way leaves nothing of itself in the batch.
    /// A disk filling up (`max_page_count` just above the file's size)
    /// makes a REGISTER of a new name fail at one of its statements, which
    /// SQLite undoes alone; the rest of the batch is committed (once there
    /// is room again), and no name may be left without its registration,
    /// no peer without one, and the full-text index must match the names.
    #[test]
    fn a_write_failing_half_way_leaves_nothing_of_itself() {
        let mut partial = 0;
        for spare in 1..=16 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.db").to_string_lossy().into_owned();
            let mut conn =
                store::open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |row| row.get(0))
                .unwrap();
            conn.pragma_update(None, "max_page_count", pages + spare)
                .unwrap();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            let mut failed_inside = false;
            for i in 0..10_000 {
                let write = Write::Register {
                    host: format!("10.0.{}.{}", i / 250, i % 250),
                    port: 1,
                    name: format!("filler {i} {}", "long name ".repeat(20)),
                    size: 1,
                    sha256: HASHES[0].into(),
                };
                let stamp = Stamp { ms: 10, seq: i };
                if apply_atomically(&tx, &write, stamp, 0, 0).is_err() {
                    failed_inside = !tx.is_autocommit();
                    break;
                }
            }
            if !failed_inside {
                continue; // SQLite rolled it all back: nothing to check here
            }
            partial += 1;
            tx.pragma_update(None, "max_page_count", 1_000_000).unwrap();
            writes::commit(tx).unwrap();
            let orphans: i64 = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM files
                             WHERE id NOT IN (SELECT file_id FROM registrations))
                          + (SELECT count(*) FROM peers
                             WHERE id NOT IN (SELECT peer_id FROM registrations))
                          + (SELECT count(*) FROM file_keys
                             WHERE file_id NOT IN (SELECT id FROM files))",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(
                orphans, 0,
                "rows left by the write that failed (spare {spare})"
            );
            conn.execute(
                "INSERT INTO files_fts (files_fts, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .expect("files_fts matches files");
        }
        assert!(
            partial > 0,
            "no write failed half-way: the test checked nothing"
        );
    }

    /// A batch is applied without a savepoint per write first; a write
    /// that fails half-way (here: its name and peer are inserted, then its
    /// size does not fit SQLite's INTEGER) makes the writer do the batch
    /// again with one, so it leaves nothing of itself and the writes beside
    /// it in the batch are committed all the same.
    #[test]
    fn a_write_failing_half_way_in_a_batch_is_undone_alone() {
        let (_dir, path, conn, _store) = fresh_registry();
        let index = Arc::new(Index::new());
        let config = WriterConfig {
            path: path.clone(),
            ttl: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(3600),
            max_per_host: 0,
        };
        let (writer, thread) = spawn(conn, config, Arc::clone(&index)).unwrap();
        let register = |name: &str, host: &str, size| Write::Register {
            host: host.into(),
            port: 1,
            name: name.into(),
            size,
            sha256: HASHES[0].into(),
        };
        let outcomes = writer.submit_all(smallvec![
            register("first", "10.0.0.1", 1),
            register("too big", "10.0.0.2", u64::MAX),
            register("third", "10.0.0.3", 3),
        ]);
        assert!(
            matches!(outcomes[0], Ok(Outcome::Registered)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[1], Err(WriteError::Store(_))),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(Outcome::Registered)),
            "{outcomes:?}"
        );
        drop(writer);
        thread.join().unwrap();
        let conn =
            store::open_connection(&path, OpenMode::ExistingReadOnly, SyncMode::Normal).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM registrations"), 2);
        assert_eq!(
            count("SELECT count(*) FROM files WHERE name = 'too big'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM peers WHERE host = '10.0.0.2'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM file_keys"), 2);
        assert_eq!(
            count("SELECT count(*) FROM files_fts WHERE files_fts MATCH 'big'"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM files_fts WHERE files_fts MATCH 'third'"),
            1
        );
    }

    /// A new database in a temporary directory: its path, the writer's
    /// connection and a reader pool of one.
    fn fresh_registry() -> (tempfile::TempDir, String, Connection, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db").to_string_lossy().into_owned();
        let conn =
            store::open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
        let store = Store::open_readers(&path, 1).unwrap();
        (dir, path, conn, store)
    }

    /// More names match than FIND examines: the index takes the same first
    /// `MAX_FIND_EXAMINED` (in `files.id` order, not the load's key order),
    /// expired and unregistered ones among them.
    #[test]
    fn find_from_memory_examines_the_same_names() {
        let (_dir, path, mut conn, store) = fresh_registry();
        let total = crate::store::MAX_FIND_EXAMINED + 300;
        let tx = conn.transaction().unwrap();
        for i in 0..total {
            let name = format!("many {i} m{}", i % 3);
            let key = p2p_proto::protocol::name_key(&name);
            // Every seventh expired at 10; a few with a second source.
            let stamp = Stamp::at(if i % 7 == 0 { 5 } else { 20 });
            writes::register(&tx, "10.0.0.1", 1, &key, &name, 1, HASHES[0], stamp).unwrap();
            if i % 5 == 0 {
                writes::register(&tx, "10.0.0.2", 1, &key, &name, 1, HASHES[i % 2], stamp).unwrap();
            }
            // The most shared names are around the end of what is
            // examined: which of them are shown depends on where it ends.
            if i >= crate::store::MAX_FIND_EXAMINED + 100 {
                for host in ["10.0.0.3", "10.0.0.4"] {
                    writes::register(&tx, host, 1, &key, &name, 1, HASHES[0], stamp).unwrap();
                }
            }
        }
        for i in (0..200).map(|i| i * 11) {
            let key = p2p_proto::protocol::name_key(&format!("many {i} m{}", i % 3));
            writes::unregister(&tx, "10.0.0.1", 1, &key).unwrap();
        }
        writes::commit(tx).unwrap();
        let index = Index::new();
        store::load_index(&conn, &path, &index).unwrap();
        for words in [&["many"][..], &["m"], &["m1", "many"], &["1"], &["many-1"]] {
            for since in [0, 10] {
                assert_finds_alike(&index, &store, words, since);
            }
        }
    }

    /// `p2p-admin prune`, then writes before the data_version poll
    /// reloads the index. Each write goes through the writer's `apply` and
    /// `change_of`; after each, the index must either be not ready (SQLite
    /// answers) or answer SEARCH and FIND as the database does, except for
    /// the rows the prune took (the documented window).
    #[test]
    fn writes_between_a_prune_and_the_reload() {
        let (_dir, path, mut conn, store) = fresh_registry();
        let index = Index::new();
        store::load_index(&conn, &path, &index).unwrap();
        let mut seq = 0;
        let mut write = |conn: &mut Connection, w: Write| {
            seq += 1;
            let stamp = Stamp { ms: 1_000, seq };
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            let (outcome, file_id) = apply(&tx, &w, stamp, 0, 0).unwrap();
            writes::commit(tx).unwrap();
            let change: Vec<Change> = change_of(&w, outcome, file_id, stamp, 0)
                .into_iter()
                .collect();
            index.apply(&change);
        };
        let reg = |host: &str, port, name: &str| Write::Register {
            host: host.into(),
            port,
            name: name.into(),
            size: 1,
            sha256: HASHES[0].into(),
        };
        write(&mut conn, reg("10.0.0.1", 1, "alpha one")); // files.id 1
        write(&mut conn, reg("10.0.0.1", 2, "beta two")); // files.id 2
        assert!(index.is_ready());
        // Case 1: the pruned name is not the newest file: re-registered, it
        // gets a new files.id, the writer sees it and gives the index up.
        admin::prune_peer(
            &mut conn,
            &admin::PeerAddr {
                host: "10.0.0.1".into(),
                port: 1,
            },
            false,
        )
        .unwrap();
        write(&mut conn, reg("10.0.0.2", 3, "alpha one")); // files.id 3
        assert!(!index.is_ready(), "files.id changed under the index");
        assert_eq!(index.search(&Key::of_name("alpha one"), 0), None);
        store::load_index(&conn, &path, &index).unwrap(); // the poll's reload
        let sql = store
            .search(&p2p_proto::protocol::name_key("alpha one"), 0)
            .unwrap();
        assert_eq!(index.search(&Key::of_name("alpha one"), 0).unwrap(), sql);
        // Case 2: the pruned name was the newest file: SQLite reuses its id
        // for the next new name. That name joins the word index after a
        // present record with the same id.
        admin::prune_peer(
            &mut conn,
            &admin::PeerAddr {
                host: "10.0.0.2".into(),
                port: 3,
            },
            false,
        )
        .unwrap();
        write(&mut conn, reg("10.0.0.3", 4, "gamma three")); // files.id 3 again
                                                             // The slot is new, so the index stays ready and SEARCH is right; the
                                                             // word index broke on the reused id, so FIND goes to SQLite.
        assert!(index.is_ready());
        let sql = store
            .search(&p2p_proto::protocol::name_key("gamma three"), 0)
            .unwrap();
        assert_eq!(index.search(&Key::of_name("gamma three"), 0).unwrap(), sql);
        assert_eq!(index.find(&["gamma"], 0), None, "FIND asks SQLite");
        store::load_index(&conn, &path, &index).unwrap();
        assert!(index.is_ready());
        assert_eq!(
            index.find(&["gamma"], 0).unwrap(),
            store.find_unnarrowed(&["gamma"], 0).unwrap()
        );
        assert_eq!(
            index.find(&["alpha"], 0).unwrap(),
            store.find_unnarrowed(&["alpha"], 0).unwrap()
        );
    }

    #[test]
    fn find_with_too_many_candidates_runs_the_full_query() {
        let (_dir, _path, mut conn, store) = fresh_registry();
        let tx = conn.transaction().unwrap();
        // "x"* is in every name, the exact term "x" in none: tried first,
        // and over the candidates' limit.
        for i in 0..FIND_NARROW_CANDIDATES + 5 {
            let name = format!("x{i} y{}", i % 7);
            let key = p2p_proto::protocol::name_key(&name);
            let stamp = Stamp {
                ms: 10,
                seq: i as i64,
            };
            writes::register(&tx, "10.0.0.1", 1, &key, &name, 1, HASHES[0], stamp).unwrap();
        }
        writes::commit(tx).unwrap();
        for words in [["x", "y"], ["x", "y3"], ["x1", "y"], ["x40", "y5"]] {
            let narrowed = store.find(&words, 0).unwrap();
            assert_eq!(
                narrowed,
                store.find_unnarrowed(&words, 0).unwrap(),
                "{words:?}"
            );
            assert!(!narrowed.is_empty(), "{words:?}");
        }
    }
}
