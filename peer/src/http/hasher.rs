//! Hashing that a request finds missing, done once per file version.
//!
//! Every response carries the file's SHA-256 (`ETag`), and `/pieces/<name>`
//! its piece list, so a request for a version of a file nobody has hashed
//! yet (a file dropped into the folder a moment ago, before the watcher got
//! to it) must read the whole file first. For a small file (up to
//! [`INLINE_HASH_MAX`]) that takes milliseconds and is done on the worker, as
//! before. A big one is handed to one background thread, at most once at a
//! time, and the request waits for that one read: concurrent requests for
//! the file join it instead of each reading it again (64 `HEAD`s of a fresh
//! 10 GiB file used to read it 64 times on 64 workers). At most
//! [`MAX_WAITERS`] requests wait at once; the others, and any request when
//! the queue ([`QUEUE_MAX`] files) is full, are answered `503` with a
//! `Retry-After` estimate at once (curl `--retry` honours it), so waiting
//! never takes every worker.
//!
//! One thread is enough: hashing reads the disk, and parallel reads of
//! several big files would only share the same bandwidth.
//!
//! This module must not answer for other bytes than the file's: results go
//! into the same [`HashCache`] and [`PieceCache`], keyed by version (path,
//! size, modification time), and a file that changed while it was hashed is
//! never cached (see [`PieceCache::get`]).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::pieces::PieceCache;
use crate::files::{FilesError, HashCache, SharedFile};
use crate::pieces::PieceList;

/// Files up to this size are hashed on the worker that asked (at the
/// machine's ~1 GB/s of SHA-256, at most about 20 ms); bigger ones in the
/// background.
pub const INLINE_HASH_MAX: u64 = 16 * 1024 * 1024;

/// Files waiting for the background thread, at most.
pub const QUEUE_MAX: usize = 64;

/// Requests that may wait at once for a background hash; the next ones get
/// `503` at once, so waiting keeps most workers free.
pub const MAX_WAITERS: usize = 8;

/// How often a waiting request checks whether the server is stopping.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The rate assumed for a `Retry-After` estimate: a cold read from disk.
const ESTIMATE_BYTES_PER_SECOND: u64 = 200 * 1024 * 1024;

/// The longest `Retry-After` given, in seconds.
const RETRY_AFTER_MAX: u64 = 3600;

/// What a request gets: the answer now, or a time to come back.
#[derive(Debug)]
pub enum Ready<T> {
    Now(T),
    /// Being hashed in the background: retry after this many seconds.
    Later {
        retry_after: u64,
    },
}

/// The background hashing thread and its queue.
#[derive(Clone)]
pub struct Hasher {
    hashes: HashCache,
    pieces: PieceCache,
    queue: Sender<SharedFile>,
    shared: Arc<Shared>,
    /// The file server's stop flag: a waiting request gives up when it is set.
    stopping: Arc<AtomicBool>,
}

/// What the requests and the background thread share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled each time the background thread finishes a file.
    done: Condvar,
    /// Files read by the background thread (a test counts them).
    reads: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Paths queued or being hashed: a second request joins, never re-queues.
    pending: HashSet<PathBuf>,
    /// Requests waiting for one of them.
    waiters: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked between two statements
        // that each leave the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Hasher {
    /// Starts the thread. It ends when the last `Hasher` clone is dropped
    /// and its current file is done; nobody waits for it (a file being hashed
    /// at shutdown is simply not cached).
    pub fn start(
        hashes: HashCache,
        pieces: PieceCache,
        stopping: Arc<AtomicBool>,
    ) -> std::io::Result<Hasher> {
        let (queue, jobs) = crossbeam_channel::bounded(QUEUE_MAX);
        let shared = Arc::new(Shared::default());
        let worker = Background {
            hashes: hashes.clone(),
            pieces: pieces.clone(),
            shared: Arc::clone(&shared),
        };
        thread::Builder::new()
            .name("http-hasher".into())
            .spawn(move || worker.run(jobs))?;
        Ok(Hasher {
            hashes,
            pieces,
            queue,
            shared,
            stopping,
        })
    }

    /// The SHA-256 of `file`: cached, hashed here for a small file, or
    /// awaited from the background thread for a big one.
    pub fn digest(&self, file: &SharedFile) -> Result<Ready<String>, FilesError> {
        self.get(
            file,
            || self.hashes.cached(file),
            || self.hashes.digest(file),
        )
    }

    /// The piece list of `file` (open as `opened`, whose offset the caller
    /// no longer needs): cached, computed here for a small file, or
    /// awaited from the background thread for a big one.
    pub fn pieces(
        &self,
        file: &SharedFile,
        opened: &File,
    ) -> Result<Ready<Arc<PieceList>>, FilesError> {
        self.get(
            file,
            || self.pieces.cached(file),
            || {
                self.pieces
                    .get(file, Some(opened), &self.hashes, &mut |_| {})
            },
        )
    }

    /// What both answers share: `cached`, else `inline` for a small file,
    /// else the background read (after which the cache has it, unless the
    /// file changed meanwhile: then `503` for a second).
    fn get<T>(
        &self,
        file: &SharedFile,
        cached: impl Fn() -> Option<T>,
        inline: impl FnOnce() -> Result<T, FilesError>,
    ) -> Result<Ready<T>, FilesError> {
        if let Some(found) = cached() {
            return Ok(Ready::Now(found));
        }
        if file.size <= INLINE_HASH_MAX {
            return inline().map(Ready::Now);
        }
        Ok(match self.await_background(file) {
            Some(later) => later,
            None => cached().map_or(Ready::Later { retry_after: 1 }, Ready::Now),
        })
    }

    /// Queues `file` for the background thread (unless it is already
    /// queued) and waits for it to be done: `None` when it is (the caches
    /// then hold the result, unless the file changed meanwhile), or the
    /// `503` answer when this request may not wait.
    fn await_background<T>(&self, file: &SharedFile) -> Option<Ready<T>> {
        let later = Ready::Later {
            retry_after: retry_after(file.size),
        };
        let mut state = self.shared.lock();
        if !state.pending.contains(&file.path) {
            match self.queue.try_send(file.clone()) {
                Ok(()) => {
                    state.pending.insert(file.path.clone());
                    tracing::info!(path = %file.path.display(), size = file.size, "hashing in the background");
                }
                // Full: schedule nothing, a later request finds room.
                // Disconnected cannot happen while we hold the sender.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Some(later),
            }
        }
        if state.waiters >= MAX_WAITERS {
            return Some(later);
        }
        state.waiters += 1;
        while state.pending.contains(&file.path) && !self.stopping.load(Ordering::Relaxed) {
            state = match self.shared.done.wait_timeout(state, STOP_CHECK) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        state.waiters -= 1;
        if state.pending.contains(&file.path) {
            return Some(later);
        }
        None
    }

    /// Files the background thread has read so far.
    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }
}

/// Seconds a client should wait for a file of `size` bytes to be hashed.
fn retry_after(size: u64) -> u64 {
    size.div_ceil(ESTIMATE_BYTES_PER_SECOND)
        .clamp(1, RETRY_AFTER_MAX)
}

struct Background {
    hashes: HashCache,
    pieces: PieceCache,
    shared: Arc<Shared>,
}

impl Background {
    fn run(self, jobs: Receiver<SharedFile>) {
        for file in jobs {
            // One read gives both the piece list and the whole-file digest.
            self.shared.reads.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.pieces.get(&file, None, &self.hashes, &mut |_| {}) {
                tracing::warn!("hashing in the background: {e}");
            }
            self.shared.lock().pending.remove(&file.path);
            self.shared.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::SharedDir;
    use sha2::{Digest, Sha256};

    fn shared_with(size: usize) -> (tempfile::TempDir, SharedDir, SharedFile, Vec<u8>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f.bin"), &bytes).expect("write");
        let shared = SharedDir::open(dir.path()).expect("shared dir");
        let file = shared.resolve("f.bin").expect("lookup");
        (dir, shared, file, bytes)
    }

    fn start(hashes: HashCache) -> Hasher {
        Hasher::start(hashes, PieceCache::new(), Arc::new(AtomicBool::new(false))).expect("start")
    }

    #[test]
    fn a_small_file_is_hashed_at_once() {
        let (_dir, _shared, file, bytes) = shared_with(1000);
        let hasher = start(HashCache::new());
        match hasher.digest(&file).expect("digest") {
            Ready::Now(sha) => assert_eq!(sha, p2p_proto::hex::to_hex(&Sha256::digest(&bytes))),
            Ready::Later { .. } => panic!("a small file must not wait"),
        }
        assert_eq!(hasher.reads(), 0);
    }

    #[test]
    fn concurrent_requests_for_a_big_file_share_one_read() {
        let size = 4 * INLINE_HASH_MAX as usize;
        let (_dir, _shared, file, bytes) = shared_with(size);
        let expected = p2p_proto::hex::to_hex(&Sha256::digest(&bytes));
        let hashes = HashCache::new();
        let hasher = start(hashes.clone());
        let answers: Vec<Ready<String>> = std::thread::scope(|scope| {
            let asks: Vec<_> = (0..3 * MAX_WAITERS)
                .map(|_| scope.spawn(|| hasher.digest(&file).expect("digest")))
                .collect();
            asks.into_iter().map(|a| a.join().expect("join")).collect()
        });
        for answer in &answers {
            match answer {
                Ready::Now(sha) => assert_eq!(sha, &expected),
                Ready::Later { retry_after } => assert!(*retry_after >= 1),
            }
        }
        assert!(answers.iter().any(|a| matches!(a, Ready::Now(_))));
        assert_eq!(hasher.reads(), 1, "the file was read more than once");
        assert_eq!(hashes.cached(&file), Some(expected));
        assert!(matches!(hasher.digest(&file), Ok(Ready::Now(_))));
        assert_eq!(hasher.reads(), 1);
        let state = hasher.shared.lock();
        assert!(state.pending.is_empty() && state.waiters == 0);
    }

    #[test]
    fn a_stopping_server_stops_the_wait() {
        let (_dir, _shared, file, _bytes) = shared_with(INLINE_HASH_MAX as usize + 1);
        let hasher = Hasher::start(
            HashCache::new(),
            PieceCache::new(),
            Arc::new(AtomicBool::new(true)),
        )
        .expect("start");
        assert!(matches!(hasher.digest(&file), Ok(Ready::Later { .. })));
    }

    #[test]
    fn estimates_are_bounded() {
        assert_eq!(retry_after(0), 1);
        assert_eq!(retry_after(ESTIMATE_BYTES_PER_SECOND + 1), 2);
        assert_eq!(retry_after(u64::MAX), RETRY_AFTER_MAX);
    }
}
