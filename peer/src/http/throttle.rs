//! The upload limit (`--max-upload-rate`): one token bucket shared by every
//! connection of the file server, so a slow uplink can be reproduced on one
//! machine and a peer can keep some of its bandwidth for itself.
//!
//! File bodies are written in chunks of [`RateLimiter::chunk_bytes`]; before
//! each chunk the writer takes that many tokens. Tokens may go negative (a
//! debt): a writer reserves its chunk at once and then sleeps until the
//! bucket has paid it back, so writers are served in the order they asked
//! and the long-run rate is exact however many connections share it.
//!
//! This module must not be on the path of an unlimited server (the handler
//! keeps its plain copy loop then) and must not let a sleeping writer hold
//! up shutdown: sleeps are cut into [`SLEEP_SLICE`]s and end at
//! [`RateLimiter::close`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Smallest limit accepted: below this a single chunk would take seconds.
pub const MIN_RATE: u64 = 1024;

/// Largest chunk written at once under a limit (also the body buffer of an
/// unlimited transfer, `handler::BODY_BUFFER_BYTES`).
pub const MAX_CHUNK_BYTES: u64 = 64 * 1024;

/// Smallest chunk written at once under a limit.
pub const MIN_CHUNK_BYTES: u64 = 1024;

/// A chunk is about this share of a second's budget, so a limited transfer
/// flows smoothly instead of in bursts.
const CHUNKS_PER_SECOND: u64 = 100;

/// The bucket holds at most this much time's worth of tokens: an idle
/// server may then send that much at full speed, no more.
pub const BURST: Duration = Duration::from_millis(50);

/// Longest single sleep; between slices a writer checks whether the server
/// is shutting down.
pub const SLEEP_SLICE: Duration = Duration::from_millis(100);

/// Why a rate was refused on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{0:?} is not a rate: expected a number and a unit, e.g. 500K, 20MiB, 1.5G (bytes per second)")]
    Syntax(String),
    #[error(
        "{0:?}: unknown unit (use B, K, M, G, KB, MB, GB, KiB, MiB or GiB, optionally with /s)"
    )]
    Unit(String),
    #[error("{0:?} is less than the smallest limit, {MIN_RATE} bytes per second")]
    TooSmall(String),
}

/// Parses a rate in bytes per second: a number (decimals allowed) and a
/// unit: none or `B` (bytes), `K`/`KB` (1000), `M`/`MB` (1000²), `G`/`GB`
/// (1000³), `KiB`, `MiB`, `GiB` (powers of 1024), case-insensitive,
/// optionally followed by `/s`. `20MiB` is 20 971 520 bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let trimmed = text.trim();
    let without_per_second = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("/S"))
        .unwrap_or(trimmed);
    let split = without_per_second
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(without_per_second.len());
    let (number, unit) = without_per_second.split_at(split);
    let syntax = || RateError::Syntax(text.to_owned());
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return Err(syntax());
    }
    let value: f64 = number.parse().map_err(|_| syntax())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(RateError::Unit(text.to_owned())),
    };
    let rate = value * multiplier;
    if !rate.is_finite() || rate < MIN_RATE as f64 {
        return Err(RateError::TooSmall(text.to_owned()));
    }
    // Saturates for absurd values, which then mean "no practical limit".
    Ok(rate as u64)
}

/// A token bucket in bytes, shared by all connections of one file server.
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second.
    rate: u64,
    /// Most tokens the bucket holds.
    capacity: f64,
    bucket: Mutex<Bucket>,
    /// Set at shutdown: every wait ends at once with an error.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available now; negative when writers have reserved ahead.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

impl RateLimiter {
    /// A limiter for `rate` bytes per second (at least [`MIN_RATE`]).
    pub fn new(rate: u64) -> RateLimiter {
        let rate = rate.max(MIN_RATE);
        let capacity = (rate as f64 * BURST.as_secs_f64()).max(MAX_CHUNK_BYTES as f64);
        RateLimiter {
            rate,
            capacity,
            bucket: Mutex::new(Bucket {
                tokens: capacity,
                updated: Instant::now(),
            }),
            closed: AtomicBool::new(false),
        }
    }

    /// The limit in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// How many bytes a writer sends between two waits.
    pub fn chunk_bytes(&self) -> usize {
        let chunk = (self.rate / CHUNKS_PER_SECOND).clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES);
        usize::try_from(chunk).unwrap_or(MAX_CHUNK_BYTES as usize)
    }

    /// Takes `bytes` tokens, sleeping until the bucket can afford them.
    /// Fails once the limiter is closed (the server is shutting down).
    pub fn acquire(&self, bytes: usize) -> io::Result<()> {
        let wait = self.reserve(bytes as f64, Instant::now());
        let until = Instant::now() + wait;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(io::Error::other("the file server is shutting down"));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            thread::sleep(left.min(SLEEP_SLICE));
        }
    }

    /// Books `bytes` at `now` and returns how long the caller must wait
    /// before sending them.
    fn reserve(&self, bytes: f64, now: Instant) -> Duration {
        // A poisoned lock only means a panic between two statements that
        // each leave the bucket usable.
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate as f64).min(self.capacity);
        bucket.updated = now;
        bucket.tokens -= bytes;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.rate as f64)
        }
    }

    /// Ends every wait, now and later (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("20MiB"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_rate("20MiB/s"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_rate("20mib"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_rate("500K"), Ok(500_000));
        assert_eq!(parse_rate("500KB"), Ok(500_000));
        assert_eq!(parse_rate("64KiB"), Ok(65_536));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_rate("1M"), Ok(1_000_000));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert_eq!(parse_rate("4096B"), Ok(4096));
        assert_eq!(parse_rate(" 3 MiB "), Ok(3 * 1024 * 1024));
        assert_eq!(parse_rate("1e9"), Err(RateError::Unit("1e9".into())));
        for bad in ["", "MiB", "fast", ".5M", "1.2.3M", "-1M", "/s"] {
            assert!(
                matches!(parse_rate(bad), Err(RateError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_rate("20 parsecs"), Err(RateError::Unit(_))));
        assert!(matches!(parse_rate("100"), Err(RateError::TooSmall(_))));
        assert!(matches!(parse_rate("0MiB"), Err(RateError::TooSmall(_))));
        assert_eq!(parse_rate("99999999999G"), Ok(u64::MAX));
    }

    #[test]
    fn chunks_follow_the_rate() {
        assert_eq!(
            RateLimiter::new(MIN_RATE).chunk_bytes(),
            MIN_CHUNK_BYTES as usize
        );
        assert_eq!(RateLimiter::new(1_000_000).chunk_bytes(), 10_000);
        assert_eq!(
            RateLimiter::new(u64::MAX).chunk_bytes(),
            MAX_CHUNK_BYTES as usize
        );
        assert_eq!(RateLimiter::new(1).rate(), MIN_RATE);
    }

    #[test]
    fn reservations_add_up_to_the_rate() {
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        // The burst is free, then every byte costs a microsecond.
        assert_eq!(limiter.reserve(limiter.capacity, start), Duration::ZERO);
        let wait = limiter.reserve(500_000.0, start);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // A second writer queues behind the first.
        let wait = limiter.reserve(250_000.0, start);
        assert!((wait.as_secs_f64() - 0.75).abs() < 1e-6, "{wait:?}");
        // Time pays the debt back.
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.reserve(1000.0, later), Duration::ZERO);
    }

    #[test]
    fn a_limited_copy_takes_about_its_time_and_close_ends_waits() {
        let limiter = RateLimiter::new(2_000_000);
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < 400_000 {
            limiter.acquire(limiter.chunk_bytes()).unwrap();
            sent += limiter.chunk_bytes();
        }
        let elapsed = start.elapsed();
        // 400 kB at 2 MB/s, minus the 100 kB burst: 150 ms.
        assert!(elapsed >= Duration::from_millis(140), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

        let slow = std::sync::Arc::new(RateLimiter::new(MIN_RATE));
        slow.acquire(MAX_CHUNK_BYTES as usize).unwrap();
        let waiter = {
            let slow = std::sync::Arc::clone(&slow);
            thread::spawn(move || slow.acquire(MAX_CHUNK_BYTES as usize))
        };
        let start = Instant::now();
        slow.close();
        assert!(waiter.join().unwrap().is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
