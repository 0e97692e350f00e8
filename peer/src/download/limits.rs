//! Every time limit and buffer size of a download, in one place, so the
//! errors, the HTTP client and both paths agree on them. This module must
//! not do anything but name limits.

use std::time::Duration;

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
