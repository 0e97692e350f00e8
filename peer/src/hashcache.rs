//! The persistent hash cache: the SHA-256 (and piece list) of every shared
//! file, kept in a small file in the peer's state folder so that a restart
//! does not read again a file whose size, modification time and inode are
//! unchanged since it was hashed.
//!
//! # Format (version 1)
//! A UTF-8 text file:
//! ```text
//! p2p-peer hash cache 1
//! <inode> <size> <mtime-secs> <mtime-nanos> <sha256> <piece-size> <piece-hashes-hex|-> <path-hex>
//! ...
//! checksum <sha256 hex of every byte above this line>
//! ```
//! The path (canonical, absolute) is hex-encoded bytes, so any name fits on
//! one line. The file is written to a temporary name in the same folder,
//! fsynced, then renamed over the old one, so a crash leaves the old or the
//! new cache, never half of one.
//!
//! A cache that cannot be read, has another header, a bad checksum or a bad
//! line is discarded whole (the caller warns), never trusted in part; an
//! entry is used only when a `stat` of its path now gives the same inode,
//! size and modification time. Entries for files no longer shared are
//! dropped at the next save.
//!
//! This module must not hash files itself and must not live inside the
//! shared folder (where it would be served): [`default_state_dir`] is beside it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_proto::hex::from_hex;
use p2p_proto::protocol::{is_sha256_hex, to_hex};
use sha2::{Digest, Sha256};

use crate::files::{HashCache, SharedFile};
use crate::http::pieces::PieceCache;
use crate::pieces::{piece_count, PieceList, DIGEST_BYTES, MAX_PIECE_SIZE, MIN_PIECE_SIZE};

/// First line of a cache file: the format and its version.
pub const CACHE_MAGIC: &str = "p2p-peer hash cache 1";

/// Name of the default state folder, created beside the shared folder.
pub const STATE_DIR_NAME: &str = ".p2p-peer-state";

/// Largest cache file read: far above 100,000 files with piece lists of
/// large files; a bigger file is not ours and is discarded.
pub const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// Why the cache file could not be used or written.
#[derive(Debug, thiserror::Error)]
pub enum HashCacheError {
    #[error("cannot read the hash cache {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the hash cache {} is not usable ({reason})", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the hash cache {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// What the cache knows about one version of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Canonical path of the file.
    pub path: PathBuf,
    pub inode: u64,
    pub size: u64,
    pub modified: SystemTime,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Piece size and piece digests, when the piece list was computed.
    pub pieces: Option<(u64, Vec<[u8; DIGEST_BYTES]>)>,
}

/// The default state folder for a shared folder: a hidden folder beside it
/// (`<parent>/.p2p-peer-state`), never inside it.
pub fn default_state_dir(shared_root: &Path) -> PathBuf {
    shared_root
        .parent()
        .unwrap_or(shared_root)
        .join(STATE_DIR_NAME)
}

/// The cache file for one shared folder inside the state folder: named by
/// a digest of the folder's canonical path, so peers sharing different
/// folders can use one state folder.
pub fn cache_file(state_dir: &Path, shared_root: &Path) -> PathBuf {
    let digest = to_hex(&Sha256::digest(shared_root.as_os_str().as_bytes()));
    state_dir.join(format!("hashes-{}.cache", &digest[..16]))
}

/// Reads the cache at `path`; a missing file is an empty cache.
pub fn load(path: &Path) -> Result<Vec<Entry>, HashCacheError> {
    let read_err = |source| HashCacheError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(e)),
    };
    if meta.len() > MAX_CACHE_BYTES {
        return Err(HashCacheError::Corrupt {
            path: path.to_owned(),
            reason: format!("{} bytes, more than {MAX_CACHE_BYTES}", meta.len()),
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    parse(&bytes).map_err(|reason| HashCacheError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// Writes `entries` to `path` atomically (temporary file, fsync, rename),
/// creating the state folder when missing.
pub fn save(path: &Path, entries: &[Entry]) -> Result<(), HashCacheError> {
    let write_err = |source| HashCacheError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(write_err)?;
    let text = format(entries);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(())
}

/// The file's text for `entries`.
pub fn format(entries: &[Entry]) -> String {
    let mut text = format!("{CACHE_MAGIC}\n");
    for e in entries {
        let Ok(since) = e.modified.duration_since(UNIX_EPOCH) else {
            continue; // A time before 1970 cannot be written; hash it again.
        };
        let (piece_size, hashes) = match &e.pieces {
            Some((size, hashes)) => (
                *size,
                if hashes.is_empty() {
                    "0".to_owned() // An empty file has no pieces.
                } else {
                    to_hex(hashes.concat().as_slice())
                },
            ),
            None => (0, "-".to_owned()),
        };
        text.push_str(&format!(
            "{} {} {} {} {} {piece_size} {hashes} {}\n",
            e.inode,
            e.size,
            since.as_secs(),
            since.subsec_nanos(),
            e.sha256,
            to_hex(e.path.as_os_str().as_bytes()),
        ));
    }
    let checksum = to_hex(&Sha256::digest(text.as_bytes()));
    text.push_str(&format!("checksum {checksum}\n"));
    text
}

/// Parses a whole cache file; any flaw rejects all of it.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("no checksum line")?;
    let (body, last) = text.split_at(body_end);
    let checksum = last
        .trim_end_matches('\n')
        .strip_prefix("checksum ")
        .ok_or("no checksum line")?;
    if checksum != to_hex(&Sha256::digest(body.as_bytes())) {
        return Err("checksum mismatch".to_owned());
    }
    let mut lines = body.lines();
    if lines.next() != Some(CACHE_MAGIC) {
        return Err(format!("not a {CACHE_MAGIC:?} file"));
    }
    lines
        .enumerate()
        .map(|(i, line)| parse_entry(line).ok_or_else(|| format!("bad entry on line {}", i + 2)))
        .collect()
}

fn parse_entry(line: &str) -> Option<Entry> {
    let mut fields = line.split(' ');
    let inode = fields.next()?.parse().ok()?;
    let size: u64 = fields.next()?.parse().ok()?;
    let secs = fields.next()?.parse().ok()?;
    let nanos: u32 = fields.next()?.parse().ok()?;
    if nanos >= 1_000_000_000 {
        return None;
    }
    let modified = UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
    let sha256 = fields.next()?;
    if !is_sha256_hex(sha256) {
        return None;
    }
    let piece_size: u64 = fields.next()?.parse().ok()?;
    let hashes = fields.next()?;
    let pieces = match hashes {
        "-" => None,
        _ => {
            if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size) {
                return None;
            }
            let raw = if hashes == "0" {
                Vec::new()
            } else {
                from_hex(hashes)?
            };
            if raw.len() as u64 != piece_count(size, piece_size) * DIGEST_BYTES as u64 {
                return None;
            }
            let digests = raw
                .chunks_exact(DIGEST_BYTES)
                .map(|c| c.try_into().ok())
                .collect::<Option<Vec<[u8; DIGEST_BYTES]>>>()?;
            Some((piece_size, digests))
        }
    };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&from_hex(fields.next()?)?));
    if fields.next().is_some() || !path.is_absolute() {
        return None;
    }
    Some(Entry {
        path,
        inode,
        size,
        modified,
        sha256: sha256.to_owned(),
        pieces,
    })
}

/// Puts into `hashes` (and `pieces`) every entry whose file still has its
/// inode, size and modification time; returns how many.
pub fn restore(entries: Vec<Entry>, hashes: &HashCache, pieces: &PieceCache) -> usize {
    let mut restored = 0;
    for entry in entries {
        let Ok(meta) = fs::metadata(&entry.path) else {
            continue; // Gone: dropped at the next save.
        };
        let same = meta.is_file()
            && meta.ino() == entry.inode
            && meta.len() == entry.size
            && meta.modified().ok() == Some(entry.modified);
        if !same {
            continue;
        }
        let file = SharedFile {
            name: String::new(),
            path: entry.path,
            size: entry.size,
            modified: entry.modified,
        };
        if let Some((piece_size, digests)) = entry.pieces {
            let list = PieceList {
                piece_size,
                size: entry.size,
                sha256: entry.sha256.clone(),
                hashes: digests,
            };
            pieces.insert(&file, Arc::new(list));
        }
        hashes.insert(&file, entry.sha256);
        restored += 1;
    }
    restored
}

/// The entries to save: each of `files` whose present version (a fresh
/// `stat`) has a cached digest. Files not listed are thereby dropped.
pub fn collect(files: &[SharedFile], hashes: &HashCache, pieces: &PieceCache) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        let Ok(meta) = fs::metadata(&file.path) else {
            continue;
        };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        let now = SharedFile {
            size: meta.len(),
            modified,
            ..file.clone()
        };
        let Some(sha256) = hashes.cached(&now) else {
            continue;
        };
        let pieces = pieces
            .cached(&now)
            .filter(|list| list.sha256 == sha256)
            .map(|list| (list.piece_size, list.hashes.clone()));
        entries.push(Entry {
            path: now.path,
            inode: meta.ino(),
            size: now.size,
            modified,
            sha256,
            pieces,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    entries
}

/// One shared folder's cache file, remembering what it last wrote so an
/// unchanged cache is not written again.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    last: Option<Vec<Entry>>,
}

impl Store {
    /// The store at `path`; nothing is read yet.
    pub fn new(path: PathBuf) -> Store {
        Store { path, last: None }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the cache into `hashes` and `pieces`; returns how many entries
    /// were usable. An unreadable cache is discarded with a warning.
    pub fn load_into(&mut self, hashes: &HashCache, pieces: &PieceCache) -> usize {
        match load(&self.path) {
            Ok(entries) => restore(entries, hashes, pieces),
            Err(e) => {
                tracing::warn!("{e}; discarding it, the shared files are hashed again");
                0
            }
        }
    }

    /// Saves the digests of `files` when they differ from what was last
    /// saved; a failure is a warning (the next start hashes again).
    pub fn save(&mut self, files: &[SharedFile], hashes: &HashCache, pieces: &PieceCache) {
        let entries = collect(files, hashes, pieces);
        if self.last.as_ref() == Some(&entries) {
            return;
        }
        match save(&self.path, &entries) {
            Ok(()) => self.last = Some(entries),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::SharedDir;

    fn entry(path: &str) -> Entry {
        Entry {
            path: PathBuf::from(path),
            inode: 42,
            size: 20_000,
            modified: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            sha256: "ab".repeat(32),
            pieces: Some((MIN_PIECE_SIZE, vec![[7u8; 32], [9u8; 32]])),
        }
    }

    #[test]
    fn round_trips_and_rejects_any_flaw() {
        let mut e2 = entry("/x/a b\nc");
        e2.pieces = None;
        let mut e3 = entry("/x/empty");
        e3.size = 0;
        e3.pieces = Some((MIN_PIECE_SIZE, Vec::new()));
        let entries = vec![entry("/x/f"), e2, e3];
        let text = format(&entries);
        assert_eq!(parse(text.as_bytes()).unwrap(), entries);

        let flipped = text.replacen("\n42 ", "\n43 ", 1);
        assert_ne!(flipped, text);
        assert!(parse(flipped.as_bytes()).unwrap_err().contains("checksum"));
        assert!(parse(b"").is_err());
        assert!(parse(b"garbage\n").is_err());
        assert!(parse(&text.as_bytes()[..text.len() / 2]).is_err());
        let other = format(&[]).replace("cache 1", "cache 2");
        assert!(parse(other.as_bytes()).is_err());
    }

    #[test]
    fn save_is_atomic_and_load_of_missing_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state").join("c.cache");
        assert!(load(&path).unwrap().is_empty());
        save(&path, &[entry("/x/f")]).unwrap();
        assert_eq!(load(&path).unwrap(), vec![entry("/x/f")]);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        fs::write(&path, b"p2p-peer hash cache 1\nchecksum 00\n").unwrap();
        assert!(matches!(load(&path), Err(HashCacheError::Corrupt { .. })));
    }

    #[test]
    fn restores_only_unchanged_files_and_drops_gone_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SharedDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("a"), b"aaa").unwrap();
        fs::write(tmp.path().join("b"), b"bbb").unwrap();
        let (hashes, pieces) = (HashCache::new(), PieceCache::new());
        let files = dir.list().unwrap();
        for f in &files {
            pieces.get(f, None, &hashes, &mut |_| {}).unwrap();
        }
        let entries = collect(&files, &hashes, &pieces);
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|e| e.pieces.is_some()));

        fs::remove_file(tmp.path().join("b")).unwrap();
        let (h2, p2) = (HashCache::new(), PieceCache::new());
        assert_eq!(restore(entries.clone(), &h2, &p2), 1);
        let a = dir.resolve("a").unwrap();
        assert_eq!(h2.cached(&a), hashes.cached(&a));
        assert!(p2.cached(&a).is_some());

        let mut wrong_inode = entries[0].clone();
        wrong_inode.inode ^= 1;
        assert_eq!(restore(vec![wrong_inode], &HashCache::new(), &p2), 0);
        let current = dir.list().unwrap();
        assert_eq!(collect(&current, &h2, &p2).len(), 1);
    }
}
