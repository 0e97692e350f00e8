//! The SHA-256 of a download, computed on a thread of its own from the
//! bytes READ BACK from the `.part` (positioned reads, normally served from
//! the page cache), a bounded distance behind the writer.
//!
//! Why read back instead of hashing the stream: what is published must be
//! what is on disk (issue 11.2), so the digest has to be of the file's
//! bytes; why a thread: the hash then overlaps the receiving instead of
//! adding to it (issue 16.1). The writer tells how far the file is written
//! ([`Behind::wrote_to`]) and may wait until the hasher is at most
//! [`MAX_HASH_LAG_BYTES`] behind ([`Behind::keep_up`]), so the bytes to
//! read back are still in the page cache and the hash is done soon after
//! the last write. A write by another program into a region already hashed
//! is not seen here: the `.part`'s change guard (`part`) finds it.
//!
//! This module must not write to the file, nor read beyond what the writer
//! reported as written.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Most bytes the hasher may trail the writer by before the writer waits:
/// small enough that the bytes read back are still in the page cache on
/// any machine and the final digest follows the last write closely, large
/// enough that the writer rarely waits for a hasher briefly descheduled.
pub const MAX_HASH_LAG_BYTES: u64 = 64 * 1024 * 1024;

/// Size of one read of the hasher (its only buffer).
pub const HASH_READ_BYTES: usize = 256 * 1024;

/// What the finished hasher read: how many bytes, and their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digested {
    pub len: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of the file written so far, from offset 0 (the writer's report).
    written: u64,
    /// Bytes hashed so far.
    hashed: u64,
    /// No more writes: hash up to `written` and end.
    closed: bool,
    /// Stop now (the download was abandoned).
    abort: bool,
    /// The hasher ended (finished or failed): nobody waits for it any more.
    ended: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The hashing thread of one download.
#[derive(Debug)]
pub struct Behind {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<Digested>>>,
}

impl Behind {
    /// Starts hashing `file` from offset 0; the first `written` bytes are
    /// already there (a resumed `.part`).
    pub fn start(file: &File, written: u64) -> io::Result<Behind> {
        let file = file.try_clone()?;
        let shared = Arc::new(Shared::default());
        shared.lock().written = written;
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hash-behind".into())
            .spawn(move || {
                let result = hash(&file, &theirs);
                let mut state = theirs.lock();
                state.ended = true;
                theirs.changed.notify_all();
                drop(state);
                result
            })?;
        Ok(Behind {
            shared,
            thread: Some(thread),
        })
    }

    /// The file is written from offset 0 up to `end` (never goes back).
    pub fn wrote_to(&self, end: u64) {
        let mut state = self.shared.lock();
        if end > state.written {
            state.written = end;
            self.shared.changed.notify_all();
        }
    }

    /// Waits while the hasher is more than [`MAX_HASH_LAG_BYTES`] behind.
    pub fn keep_up(&self) {
        let mut state = self.shared.lock();
        while !state.ended && state.written.saturating_sub(state.hashed) > MAX_HASH_LAG_BYTES {
            state = self.shared.wait(state);
        }
    }

    /// Hashes what is left up to the last [`Behind::wrote_to`] and returns
    /// the digest of every byte read back.
    pub fn finish(mut self) -> io::Result<Digested> {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            self.shared.changed.notify_all();
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the hashing thread panicked")),
            None => Err(io::Error::other("the hashing thread is gone")),
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            {
                let mut state = self.shared.lock();
                state.abort = true;
                self.shared.changed.notify_all();
            }
            let _ = thread.join();
        }
    }
}

/// The hasher's loop: read back what is written, in order, until closed.
fn hash(file: &File, shared: &Shared) -> io::Result<Digested> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_READ_BYTES];
    let mut hashed = 0u64;
    loop {
        let written = {
            let mut state = shared.lock();
            while !state.abort && !state.closed && state.written <= hashed {
                state = shared.wait(state);
            }
            if state.abort {
                return Err(io::Error::other("hashing abandoned"));
            }
            if state.closed && state.written <= hashed {
                break;
            }
            state.written
        };
        let want = usize::try_from(written - hashed)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let n = match file.read_at(&mut buffer[..want], hashed) {
            // Shorter than written: someone truncated it.
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the file is shorter than what was written to it",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        hashed += n as u64;
        let mut state = shared.lock();
        state.hashed = hashed;
        shared.changed.notify_all();
    }
    Ok(Digested {
        len: hashed,
        sha256: hasher.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn hashes_what_was_written_in_steps() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&data[..1000]).unwrap();
        let behind = Behind::start(&file, 1000).unwrap();
        let mut at = 1000;
        for chunk in data[1000..].chunks(77_777) {
            file.write_all_at(chunk, at as u64).unwrap();
            at += chunk.len();
            behind.wrote_to(at as u64);
            behind.keep_up();
        }
        let digested = behind.finish().unwrap();
        assert_eq!(digested.len, data.len() as u64);
        assert_eq!(digested.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_digest() {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&[1u8; 5000], 0).unwrap();
        let behind = Behind::start(&file, 0).unwrap();
        file.set_len(100).unwrap();
        behind.wrote_to(5000);
        assert!(behind.finish().is_err());
    }

    #[test]
    fn dropping_it_stops_the_thread() {
        let file = tempfile::tempfile().unwrap();
        let behind = Behind::start(&file, 0).unwrap();
        behind.wrote_to(0);
        drop(behind);
    }
}
