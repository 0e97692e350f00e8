//! Fault injection, for the tests of what the process does when one of its
//! parts fails in a way no input can cause: a writer thread that panics
//! (the process must end with [`crate::writer::EXIT_WRITER_DIED`] so a
//! supervisor restarts it, rather than serve reads alone), and a commit
//! that fails (every write of that batch must be answered with an error,
//! none with `OK`, and the server must go on).
//!
//! A test arms a fault through the environment variable [`ENV`] of the real
//! `dht-server` it starts:
//! - `P2P_FAULT=writer-panic-after:1`: the writer panics at its second
//!   batch, before committing it (the first batch was committed and
//!   acknowledged);
//! - `P2P_FAULT=writer-commit-fail-after:1`: every batch after the first is
//!   rolled back instead of committed, as when `COMMIT` fails (disk full).
//!
//! Only debug builds read it (the tests run those); in a release build
//! every hook is an empty function.
//!
//! This module must not change anything when no fault is armed.

/// The environment variable that arms a fault (debug builds only).
pub const ENV: &str = "P2P_FAULT";

/// The `N` of `P2P_FAULT=<prefix>N`, if that fault is armed.
#[cfg(debug_assertions)]
fn armed(prefix: &str) -> Option<u64> {
    std::env::var(ENV).ok()?.strip_prefix(prefix)?.parse().ok()
}

/// Called by the writer before each batch it commits: panics when a
/// `writer-panic-after:N` fault is armed and N batches have gone before.
#[cfg(debug_assertions)]
pub fn before_writer_batch() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<u64>> = OnceLock::new();
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    if let Some(after) = *ARMED.get_or_init(|| armed("writer-panic-after:")) {
        if BATCHES.fetch_add(1, Ordering::Relaxed) >= after {
            panic!("{ENV}: writer-panic-after:{after}: injected writer panic");
        }
    }
}

/// Called by the writer just before it commits a batch: an error to fail
/// the commit with when a `writer-commit-fail-after:N` fault is armed and N
/// batches have been committed before.
#[cfg(debug_assertions)]
pub fn writer_commit_failure() -> Option<rusqlite::Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<u64>> = OnceLock::new();
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let after = (*ARMED.get_or_init(|| armed("writer-commit-fail-after:")))?;
    if COMMITS.fetch_add(1, Ordering::Relaxed) < after {
        return None;
    }
    Some(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(format!(
            "{ENV}: writer-commit-fail-after:{after}: injected commit failure"
        )),
    ))
}

/// Release builds: no fault can be armed.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn before_writer_batch() {}

/// Release builds: no fault can be armed.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn writer_commit_failure() -> Option<rusqlite::Error> {
    None
}
