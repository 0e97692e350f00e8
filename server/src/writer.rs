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
//! sweep never races another write. It must not read for clients: SEARCH and
//! FIND go through the read pool in [`crate::store::Store`].

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, TransactionBehavior};

use crate::store::writes::{self, Stamp};
use crate::store::{self, StoreError};

/// Most writes committed in one transaction: bounds how long one commit
/// holds the write lock (and so how long `p2p-admin prune` may wait).
pub const MAX_BATCH: usize = 1024;

/// Writes that may wait for the writer before senders block: absorbs bursts
/// without unbounded memory.
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

struct Job {
    write: Write,
    /// Taken when the job is answered.
    done: Option<Arc<Reply>>,
}

impl Job {
    fn answer(mut self, outcome: Result<Outcome, WriteError>) {
        if let Some(done) = self.done.take() {
            done.send(outcome);
        }
    }
}

/// Where the writer leaves one job's outcome for the worker waiting on it.
///
/// A mutex and condvar, not a channel: the worker parks at once instead of
/// spinning and yielding first (crossbeam's receive backoff), which under
/// 64 waiting workers took CPU the writer itself needed.
#[derive(Default)]
struct Reply {
    outcome: Mutex<Option<Result<Outcome, WriteError>>>,
    ready: Condvar,
}

impl Reply {
    fn send(&self, outcome: Result<Outcome, WriteError>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.ready.notify_one();
    }

    fn wait(&self) -> Result<Outcome, WriteError> {
        let mut slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = slot.take() {
                return outcome;
            }
            slot = self
                .ready
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Job {
    /// A job dropped unanswered (the writer stopped or panicked) must not
    /// leave its worker waiting forever.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.send(Err(WriteError::Stopped));
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
        let done = Arc::new(Reply::default());
        self.jobs
            .send(Job {
                write,
                done: Some(Arc::clone(&done)),
            })
            .map_err(|_| WriteError::Stopped)?;
        done.wait()
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

/// Exit status of the process when the writer thread dies (a panic): every
/// write would fail from then on, so the process ends and a supervisor can
/// restart it, rather than serve reads alone (70: EX_SOFTWARE).
pub const EXIT_WRITER_DIED: i32 = 70;

/// Starts the writer thread on `conn` (a connection from
/// [`store::open_connection`] in [`store::OpenMode::CreateOrMigrate`]).
/// The thread closes the connection when it stops.
pub fn spawn(
    conn: Connection,
    config: WriterConfig,
) -> std::io::Result<(WriterHandle, JoinHandle<()>)> {
    let (jobs, queue) = bounded(QUEUE_CAPACITY);
    let thread = thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let path = config.path.clone();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(conn, queue, config)));
            if outcome.is_err() {
                tracing::error!(%path, "the writer thread panicked; exiting");
                std::process::exit(EXIT_WRITER_DIED);
            }
        })?;
    Ok((WriterHandle { jobs }, thread))
}

fn run(mut conn: Connection, queue: Receiver<Job>, config: WriterConfig) {
    // Continue the sequence after the newest write on disk. Should that read
    // fail, microseconds since the epoch are above any sequence we handed out.
    let mut seq = writes::last_seq(&conn).unwrap_or_else(|e| {
        tracing::warn!(path = %config.path, error = %e, "cannot read the last write sequence");
        store::now_ms().saturating_mul(1000)
    });
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut next_sweep = Instant::now() + config.sweep_every;
    loop {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match queue.recv_timeout(wait) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => {
                sweep(&mut conn, &config);
                next_sweep = Instant::now() + config.sweep_every;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &config, &mut batch, &mut seq);
        // Writes that never pause must not starve the sweep.
        if Instant::now() >= next_sweep {
            sweep(&mut conn, &config);
            next_sweep = Instant::now() + config.sweep_every;
        }
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
fn commit_batch(conn: &mut Connection, config: &WriterConfig, batch: &mut Vec<Job>, seq: &mut i64) {
    let _timer = crate::metrics::commit_started(batch.len());
    let sql_err = |source| StoreError::Sql {
        path: config.path.clone(),
        source,
    };
    let now = store::now_ms();
    let live_since = store::live_since(now, config.ttl);
    let result = (|| -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        // IMMEDIATE: the write lock is taken at BEGIN, where the busy
        // timeout applies. A deferred transaction would first read, then
        // meet another writer (`p2p-admin prune`) at its first write, where
        // SQLite returns SQLITE_BUSY at once to avoid a deadlock.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch.iter() {
            *seq += 1;
            let stamp = Stamp { ms: now, seq: *seq };
            let outcome =
                apply(&tx, &job.write, stamp, live_since, config.max_per_host).map_err(sql_err);
            let failed = outcome.is_err();
            outcomes.push(outcome);
            // Some errors (disk full, I/O) make SQLite roll the whole
            // transaction back; later statements would then each commit on
            // their own. Stop, and fail the batch at commit below.
            if failed && tx.is_autocommit() {
                break;
            }
        }
        crate::metrics::time_fsync(|| tx.commit()).map_err(sql_err)?;
        Ok(outcomes)
    })();
    match result {
        Ok(outcomes) => {
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                job.answer(outcome.map_err(WriteError::from));
            }
        }
        Err(e) => {
            tracing::error!(path = %config.path, error = %e, writes = batch.len(), "commit failed");
            let reason = e.to_string();
            let short = e.short_reason();
            for job in batch.drain(..) {
                job.answer(Err(WriteError::Commit {
                    reason: reason.clone(),
                    short,
                }));
            }
        }
    }
}

fn apply(
    conn: &Connection,
    write: &Write,
    stamp: Stamp,
    live_since: i64,
    max_per_host: u64,
) -> rusqlite::Result<Outcome> {
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
                return Ok(Outcome::HostFull(max_per_host));
            }
            writes::register(conn, host, *port, &key, name, *size, sha256, stamp)?;
            Ok(Outcome::Registered)
        }
        Write::Unregister { host, port, name } => {
            let key = p2p_proto::protocol::name_key(name);
            writes::unregister(conn, host, *port, &key).map(Outcome::Unregistered)
        }
        Write::Heartbeat { host, port } => {
            writes::heartbeat(conn, host, *port, stamp, live_since).map(Outcome::Refreshed)
        }
    }
}

fn sweep(conn: &mut Connection, config: &WriterConfig) {
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
        Ok(removed) => tracing::info!(removed, "expired registrations deleted"),
        Err(e) => tracing::warn!(path = %config.path, error = %e, "expiry sweep failed"),
    }
}
