//! The registry's counters, gauges and histograms, for `GET /metrics` on
//! `dht-server --http ADDR` (rendered by [`crate::web`] in the Prometheus
//! text format 0.0.4).
//!
//! One process-wide [`Metrics`] of plain atomics, reached with [`global`].
//! A static rather than a handle threaded through the server: the hooks in
//! the request path (`server`, `command`, `writer`) stay one-liners that need
//! no new fields or arguments, recording costs one relaxed atomic add, and a
//! process serves one registry (several servers in one test process would
//! share the counts; only the binary renders them). This module only counts:
//! it must not lock, allocate or block in any hook.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use p2p_proto::protocol::{ErrorCode, Reply, Request};

/// Command labels of `p2p_registry_requests_total`, in [`command_index`] order.
pub const COMMANDS: [&str; 7] = [
    "register",
    "unregister",
    "search",
    "find",
    "heartbeat",
    "ping",
    "quit",
];

/// Error-code labels of `p2p_registry_errors_total`, in [`code_index`] order.
pub const CODES: [ErrorCode; 6] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownCommand,
    ErrorCode::BadName,
    ErrorCode::TooLong,
    ErrorCode::Busy,
    ErrorCode::Internal,
];

/// Upper bounds of the commit batch size buckets (writes per commit; the
/// writer's batch is at most 1,024).
pub const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Upper bounds of the latency buckets, in microseconds (100 µs to 5 s).
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000, 5_000_000,
];

/// A histogram of fixed buckets: a count per bucket (not cumulative here;
/// the renderer accumulates), an overflow count, and the sum.
pub struct Histogram<const N: usize> {
    bounds: [u64; N],
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [u64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` (in the histogram's unit).
    pub fn observe(&self, value: u64) {
        match self.bounds.iter().position(|&b| value <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum.fetch_add(value, Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket, then the total count
    /// and the sum, read without a lock (a concurrent observation may be
    /// half-visible; counts stay monotonic).
    pub fn snapshot(&self) -> (Vec<(u64, u64)>, u64, u64) {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(N);
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            running += bucket.load(Relaxed);
            cumulative.push((*bound, running));
        }
        let count = running + self.overflow.load(Relaxed);
        (cumulative, count, self.sum.load(Relaxed))
    }
}

/// Everything the registry counts.
pub struct Metrics {
    /// Requests parsed, by command ([`COMMANDS`]).
    pub requests: [AtomicU64; COMMANDS.len()],
    /// `ERR` replies sent, by code ([`CODES`]).
    pub errors: [AtomicU64; CODES.len()],
    /// Connections accepted and handed to a worker.
    pub connections: AtomicU64,
    /// Connections being served now.
    pub open_connections: AtomicU64,
    /// Connections refused with `ERR busy` at the connection limit.
    pub busy_refusals: AtomicU64,
    /// Writes per commit.
    pub batch_size: Histogram<{ BATCH_BUCKETS.len() }>,
    /// One batch: its first statement until its writes are answered (µs).
    pub commit_us: Histogram<{ LATENCY_BUCKETS_US.len() }>,
    /// The `COMMIT` itself: WAL write and, with `--sync full`, the fsync (µs).
    pub fsync_us: Histogram<{ LATENCY_BUCKETS_US.len() }>,
    /// Entries of an in-memory index of live registrations, if the engine
    /// keeps one ([`UNSET`] until it reports).
    pub index_entries: AtomicU64,
    /// How far the in-memory index is behind the database ([`UNSET`]
    /// without one): there is no change log, the index is reloaded whole,
    /// so 1 while a load is due or running (or failed), 0 in step.
    pub change_log_lag: AtomicU64,
}

/// The value of a gauge nobody has reported yet: it is left out of `/metrics`.
pub const UNSET: u64 = u64::MAX;

static METRICS: Metrics = Metrics {
    requests: [const { AtomicU64::new(0) }; COMMANDS.len()],
    errors: [const { AtomicU64::new(0) }; CODES.len()],
    connections: AtomicU64::new(0),
    open_connections: AtomicU64::new(0),
    busy_refusals: AtomicU64::new(0),
    batch_size: Histogram::new(BATCH_BUCKETS),
    commit_us: Histogram::new(LATENCY_BUCKETS_US),
    fsync_us: Histogram::new(LATENCY_BUCKETS_US),
    index_entries: AtomicU64::new(UNSET),
    change_log_lag: AtomicU64::new(UNSET),
};

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Index of a request's command in [`COMMANDS`].
pub fn command_index(request: &Request<'_>) -> usize {
    match request {
        Request::Register { .. } => 0,
        Request::Unregister { .. } => 1,
        Request::Search { .. } => 2,
        Request::Find { .. } => 3,
        Request::Heartbeat { .. } => 4,
        Request::Ping => 5,
        Request::Quit => 6,
    }
}

/// Index of an error code in [`CODES`].
pub fn code_index(code: ErrorCode) -> usize {
    CODES.iter().position(|c| *c == code).unwrap_or(0)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ---- The hooks: one call each in the request path. ----

/// A request was parsed (hook: `server`).
pub fn count_request(request: &Request<'_>) {
    METRICS.requests[command_index(request)].fetch_add(1, Relaxed);
}

/// A reply is about to be sent; counts it when it is an error (hook: `server`).
pub fn count_reply(reply: &Reply) {
    if let Reply::Err(code, _) = reply {
        count_error(*code);
    }
}

/// An `ERR <code>` was sent outside the normal reply path (hook: `server`).
pub fn count_error(code: ErrorCode) {
    METRICS.errors[code_index(code)].fetch_add(1, Relaxed);
}

/// A connection was refused at the connection limit (hook: `server`).
pub fn count_busy_refusal() {
    METRICS.busy_refusals.fetch_add(1, Relaxed);
    count_error(ErrorCode::Busy);
}

/// Marks a connection open until the guard is dropped (hook: `server`).
pub fn connection_opened() -> OpenConnection {
    METRICS.connections.fetch_add(1, Relaxed);
    METRICS.open_connections.fetch_add(1, Relaxed);
    OpenConnection(())
}

/// Counts an open connection; dropping it (also on a panic) closes it.
pub struct OpenConnection(());

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.open_connections.fetch_sub(1, Relaxed);
    }
}

/// Times one commit batch of `writes` writes until the guard is dropped (hook: `writer`).
pub fn commit_started(writes: usize) -> CommitTimer {
    METRICS
        .batch_size
        .observe(u64::try_from(writes).unwrap_or(u64::MAX));
    CommitTimer(Instant::now())
}

/// Records the batch's duration in `p2p_registry_commit_seconds` when dropped.
pub struct CommitTimer(Instant);

impl Drop for CommitTimer {
    fn drop(&mut self) {
        METRICS.commit_us.observe(micros(self.0.elapsed()));
    }
}

/// The in-memory index now holds `entries` registrations (hook: the index's owner).
pub fn set_index_entries(entries: usize) {
    let n = u64::try_from(entries).unwrap_or(UNSET - 1).min(UNSET - 1);
    METRICS.index_entries.store(n, Relaxed);
}

/// The index is `changes` behind the database: 1 while a load of it is
/// due or running, 0 in step (hook: the index and the writer).
pub fn set_change_log_lag(changes: u64) {
    METRICS
        .change_log_lag
        .store(changes.min(UNSET - 1), Relaxed);
}

/// Runs `commit` (the `COMMIT` of a batch) and records how long it took (hook: `writer`).
pub fn time_fsync<T>(commit: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = commit();
    METRICS.fsync_us.observe(micros(started.elapsed()));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_an_overflow() {
        let h = Histogram::new([1, 10, 100]);
        for v in [0, 1, 5, 10, 50, 1000] {
            h.observe(v);
        }
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(buckets, vec![(1, 2), (10, 4), (100, 5)]);
        assert_eq!(count, 6);
        assert_eq!(sum, 1066);
    }

    #[test]
    fn every_command_and_code_has_a_label() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(code_index(*code), i);
        }
        assert_eq!(command_index(&Request::Quit), COMMANDS.len() - 1);
    }
}
