//! Every time limit and buffer size of a download, in one place, so the
//! errors, the HTTP client and both paths agree on them. This module must
//! not do anything but name limits.
//!
//! Tests shorten the time limits with the environment variable
//! [`TIME_SCALE_ENV`] (a factor from 0.001 to 1; never documented in
//! `--help`): every limit is used through [`scaled`], so a stall test waits
//! a fraction of a second instead of half a minute.

use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable with a factor (e.g. `0.05`) applied to every time
/// limit of a download; for tests. Values outside 0.001..=1 are clamped, so
/// it can only shorten limits; anything unparsable means 1.
pub const TIME_SCALE_ENV: &str = "P2P_TEST_TIMEOUT_SCALE";

/// `limit` scaled by [`TIME_SCALE_ENV`] (read once per process).
pub fn scaled(limit: Duration) -> Duration {
    static SCALE: OnceLock<f64> = OnceLock::new();
    let scale = *SCALE.get_or_init(|| {
        std::env::var(TIME_SCALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map_or(1.0, |v| v.clamp(0.001, 1.0))
    });
    limit.mul_f64(scale)
}

/// How long a source may take, once asked, to send the first byte of its
/// answer. Short: a source that accepts and then says nothing (hostile or
/// hung) must cost seconds, not the [`READ_TIMEOUT`] of a working transfer.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole response head may take once asked: a source sending
/// one header byte at a time must not hold the download.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How many sources the sequential path asks at once (with `HEAD`) before
/// it fetches, so stalling sources are found out together, not one by one.
pub const PROBE_PARALLEL: usize = 8;

/// How long to wait for a peer to accept the connection: a dead source must
/// not hold up the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one read from a peer may block (the response head or any chunk
/// of the body); a stalled transfer is abandoned and resumed from another source.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long sending the request may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the one buffer a sequential transfer streams through.
pub const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// A body must bring at least [`MIN_BYTES_PER_WINDOW`] bytes in every
/// window of this length, or its source is dropped as too slow. A source
/// that trickles a byte at a time never trips [`READ_TIMEOUT`], yet must not
/// hold a download for hours while a good source waits.
pub const SLOW_WINDOW: Duration = READ_TIMEOUT;

/// See [`SLOW_WINDOW`]: about 2 KiB/s, far below any working LAN link.
pub const MIN_BYTES_PER_WINDOW: u64 = 64 * 1024;
