//! Fault injection, for the tests of what the process does when one of its
//! parts fails in a way no input can cause: today, a writer thread that
//! panics (the process must end with [`crate::writer::EXIT_WRITER_DIED`] so
//! a supervisor restarts it, rather than serve reads alone).
//!
//! A test arms a fault through the environment variable [`ENV`] of the real
//! `dht-server` it starts, e.g. `P2P_FAULT=writer-panic-after:1` (the writer
//! panics at its second batch, before committing it: the first batch was
//! committed and acknowledged). Only debug builds read it (the tests run
//! those); in a release build every hook is an empty function.
//!
//! This module must not change anything when no fault is armed.

/// The environment variable that arms a fault (debug builds only).
pub const ENV: &str = "P2P_FAULT";

/// Called by the writer before each batch it commits: panics when a
/// `writer-panic-after:N` fault is armed and N batches have gone before.
#[cfg(debug_assertions)]
pub fn before_writer_batch() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<u64>> = OnceLock::new();
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        std::env::var(ENV)
            .ok()?
            .strip_prefix("writer-panic-after:")?
            .parse()
            .ok()
    });
    if let Some(after) = *armed {
        if BATCHES.fetch_add(1, Ordering::Relaxed) >= after {
            panic!("{ENV}: writer-panic-after:{after}: injected writer panic");
        }
    }
}

/// Release builds: no fault can be armed.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn before_writer_batch() {}
