//! The piece lists this peer serves at `GET /pieces/<name>`, computed once
//! per version of a file and cached.
//!
//! A version is the file's canonical path, size and modification time, as
//! for [`HashCache`]; computing a list also yields the whole-file SHA-256,
//! which is handed to the [`HashCache`] so the file is read once for both
//! (`peer serve` computes the lists of the whole shared folder before it
//! registers it, see [`crate::serve`]).
//!
//! This module must not serve a list for other bytes than the file's: a
//! file whose size changes while it is hashed is refused
//! ([`FilesError::Changed`]), never cached.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::files::{FilesError, HashCache, SharedFile};
use crate::pieces::{PieceList, PIECE_SIZE};

/// One cached list and the version of the file it describes.
#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    modified: SystemTime,
    list: Arc<PieceList>,
}

/// Piece lists of shared files, keyed by path and valid while the file
/// keeps its size and modification time.
///
/// Cloning shares the cache. Shared state behind a lock for the same reason
/// as [`HashCache`] (HTTP workers and `peer serve` both fill it); the lock
/// is never held while a file is read, so two threads may hash one file at
/// once, which costs time but never gives a wrong list.
#[derive(Debug, Clone, Default)]
pub struct PieceCache {
    entries: Arc<Mutex<HashMap<PathBuf, Entry>>>,
}

impl PieceCache {
    pub fn new() -> PieceCache {
        PieceCache::default()
    }

    /// The list of this version of `file`, if it has been computed.
    pub fn cached(&self, file: &SharedFile) -> Option<Arc<PieceList>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&file.path)
            .filter(|e| e.size == file.size && e.modified == file.modified)
            .map(|e| Arc::clone(&e.list))
    }

    /// Forgets the lists of every path `keep` refuses (files no longer shared).
    pub fn retain(&self, keep: impl Fn(&std::path::Path) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|path, _| keep(path));
    }

    /// Records `list` as the piece list of this version of `file` (for a
    /// list restored from the persistent cache, [`crate::hashcache`]).
    pub fn insert(&self, file: &SharedFile, list: Arc<PieceList>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            file.path.clone(),
            Entry {
                size: file.size,
                modified: file.modified,
                list,
            },
        );
    }

    /// The list of `file`, from the cache or by reading it (through
    /// `opened` when the caller has the file open already, so the list
    /// describes the very bytes it serves). The whole-file digest goes
    /// into `hashes` too. `on_progress` gets the bytes read so far.
    pub fn get(
        &self,
        file: &SharedFile,
        opened: Option<&File>,
        hashes: &HashCache,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<Arc<PieceList>, FilesError> {
        if let Some(list) = self.cached(file) {
            return Ok(list);
        }
        let io_err = |source| FilesError::Io {
            path: file.path.clone(),
            source,
        };
        // A clone shares the file offset with `opened`: callers pass a file
        // whose offset they no longer need.
        let mut reader = match opened {
            Some(opened) => opened.try_clone(),
            None => File::open(&file.path),
        }
        .map_err(io_err)?;
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let list = PieceList::hash(&mut reader, PIECE_SIZE, on_progress).map_err(io_err)?;
        if list.size != file.size {
            return Err(FilesError::Changed {
                path: file.path.clone(),
                expected: file.size,
                actual: list.size,
            });
        }
        hashes.insert(file, list.sha256.clone());
        let list = Arc::new(list);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            file.path.clone(),
            Entry {
                size: file.size,
                modified: file.modified,
                list: Arc::clone(&list),
            },
        );
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::SharedDir;
    use p2p_proto::protocol::to_hex;
    use sha2::{Digest, Sha256};

    #[test]
    fn computes_once_per_version_and_feeds_the_hash_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SharedDir::open(tmp.path()).unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, vec![5u8; 1000]).unwrap();
        let (pieces, hashes) = (PieceCache::new(), HashCache::new());
        let file = dir.resolve("f").unwrap();
        let mut reads = 0;
        let list = pieces
            .get(&file, None, &hashes, &mut |_| reads += 1)
            .unwrap();
        assert_eq!(list.size, 1000);
        assert_eq!(list.piece_size, PIECE_SIZE);
        assert_eq!(list.sha256, to_hex(&Sha256::digest(vec![5u8; 1000])));
        assert_eq!(hashes.cached(&file), Some(list.sha256.clone()));
        assert!(reads > 0);
        let again = pieces
            .get(&file, None, &hashes, &mut |_| panic!("read again"))
            .unwrap();
        assert!(Arc::ptr_eq(&list, &again));

        std::fs::write(&path, vec![6u8; 2000]).unwrap();
        let changed = dir.resolve("f").unwrap();
        assert!(pieces.cached(&changed).is_none());
        let opened = File::open(&path).unwrap();
        let list = pieces
            .get(&changed, Some(&opened), &hashes, &mut |_| {})
            .unwrap();
        assert_eq!(list.size, 2000);
        // A stale version whose size no longer matches the disk is refused.
        let stale = PieceCache::new().get(&file, None, &hashes, &mut |_| {});
        assert!(matches!(stale, Err(FilesError::Changed { .. })));
    }
}
