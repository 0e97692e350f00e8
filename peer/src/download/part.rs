//! The life of the `.part` file a download is written to: name it (every
//! valid name gets one that fits the file system), open and lock it for the
//! whole download, check that it is ours (no symlink, no hard link), check
//! the room left, verify what is on disk, and publish it under its final
//! name without ever replacing a file; and the file already under the final
//! name (the same content is done, other content is never overwritten).
//!
//! Why a lock and a check of the file itself: two downloads of one name
//! into one folder, or another program writing into the `.part`, must never
//! lead to unverified bytes under the final name. The lock (`flock`, held
//! as long as the [`Part`] lives) keeps a second download out; the digest
//! is computed from the file on disk after the last byte is written; the
//! rename refuses to replace (`RENAME_NOREPLACE`) and happens only while the
//! path still names the verified file (same device and inode, one link).
//!
//! The digest is computed *while* the download runs, from the bytes read
//! back behind the writer (`behind`), so a write by another program into a
//! region already hashed must be noticed another way: the **change guard**.
//! Every write and truncate of ours goes through [`Part::write_at`] /
//! [`Part::truncate`], which compare the file's [`Stamp`] (size, mtime,
//! ctime, inode, links from `fstat`) before the write with the one taken
//! after our previous write. Any other writer changes the ctime in between
//! (Linux gives a file whose ctime was just looked at a fresh fine-grained
//! ctime at its next change), so the download is marked disturbed and its
//! digest is computed again from the whole file on disk before anything is
//! published. [`Part::publish`] also compares the stamp with the one taken
//! when the digest was accepted, and hashes again when they differ.
//! This module must not fetch anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use p2p_proto::protocol::{to_hex, Source};
use rustix::fs::{FlockOperation, OFlags, RenameFlags};
use sha2::{Digest, Sha256};

use super::behind::Digested;
use super::error::DownloadError;
use super::limits::COPY_BUFFER_BYTES;
use super::resume;
use super::Outcome;
use crate::files::hash_into;
use crate::progress::Reporter;

/// Suffix of the file a download is written to until it is verified.
pub const PART_SUFFIX: &str = ".part";

/// Longest file name the downloads folder takes, in bytes (`NAME_MAX` of
/// Linux file systems); the longest valid shared name is as long.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Bytes of the name's SHA-256 (in hex digits) that tell shortened partial
/// names apart.
pub const SHORT_HASH_HEX: usize = 16;

/// How often opening the `.part` is tried again when its path changed
/// between the open and the lock (another download just published it).
const OPEN_ATTEMPTS: usize = 4;

/// The partial file's name for `name`: `<name>.part` whenever it and its
/// record (`<name>.part.pieces`) fit in [`MAX_FILE_NAME_BYTES`]; for longer
/// names, a prefix of the name, `~`, and [`SHORT_HASH_HEX`] hex digits of
/// the name's SHA-256, then `.part`, so every valid name can be downloaded
/// (and resumed: the same name always gives the same partial name).
pub fn part_name(name: &str) -> String {
    let suffixes = PART_SUFFIX.len() + resume::RECORD_SUFFIX.len();
    if name.len() + suffixes <= MAX_FILE_NAME_BYTES {
        return format!("{name}{PART_SUFFIX}");
    }
    let mut cut = MAX_FILE_NAME_BYTES - suffixes - 1 - SHORT_HASH_HEX;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = to_hex(&Sha256::digest(name.as_bytes()));
    format!(
        "{}~{}{PART_SUFFIX}",
        &name[..cut],
        &digest[..SHORT_HASH_HEX]
    )
}

/// The open, locked `.part` of one download. Dropping it releases the lock.
#[derive(Debug)]
pub struct Part {
    file: File,
    path: PathBuf,
    /// The change guard (see the module doc).
    guard: Mutex<Guard>,
    /// Set when a digest of the bytes on disk was accepted: what the file
    /// looked like then, and what it was checked against.
    sealed: Mutex<Option<Seal>>,
}

/// What `fstat` says of the `.part` that any write or truncate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
    nlink: u64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
        }
    }
}

/// The change guard's state.
#[derive(Debug)]
struct Guard {
    /// The stamp after our last write (or when watching started).
    last: Option<Stamp>,
    /// Someone else changed the file since watching started.
    disturbed: bool,
}

/// An accepted digest: the file's stamp when it was accepted, and the
/// registered size and SHA-256 it matched.
#[derive(Debug, Clone)]
struct Seal {
    stamp: Stamp,
    size: u64,
    sha256: String,
}

/// What a check of the bytes on disk found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// The registered size and SHA-256.
    Verified,
    /// Other bytes: their length and digest.
    Mismatch { len: u64, sha256: String },
}

impl Part {
    /// Opens (creating it when missing) and locks the `.part` of `name` in
    /// `downloads`. A symlink or a hard link in its place is removed (its
    /// target is left alone); anything else but a regular file is refused;
    /// a `.part` locked by another download is [`DownloadError::Busy`].
    pub fn open(downloads: &Path, name: &str, reporter: &Reporter) -> Result<Part, DownloadError> {
        let path = downloads.join(part_name(name));
        for _ in 0..OPEN_ATTEMPTS {
            check_part(&path, reporter)?;
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
            {
                Ok(file) => file,
                // A symlink appeared since the check: check again.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                    continue
                }
                Err(e) => return Err(DownloadError::io("open", &path)(e)),
            };
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(DownloadError::Busy {
                        name: name.to_owned(),
                        path,
                    })
                }
                // A file system without locks (some network ones): going
                // on unlocked beats not downloading at all.
                Err(e) if e == rustix::io::Errno::NOLCK || e == rustix::io::Errno::OPNOTSUPP => {
                    reporter.note(format_args!(
                        "cannot lock {} ({e}); another download of it at the same time would not be noticed",
                        path.display()
                    ));
                }
                Err(e) => return Err(DownloadError::io("lock", &path)(e.into())),
            }
            let part = Part {
                file,
                path: path.clone(),
                guard: Mutex::new(Guard {
                    last: None,
                    disturbed: false,
                }),
                sealed: Mutex::new(None),
            };
            let ours = part.meta()?;
            if !part.path_names(&ours)? {
                // Published or removed between our open and our lock.
                continue;
            }
            if ours.nlink() != 1 {
                fs::remove_file(&part.path)
                    .map_err(DownloadError::io("remove the hard link", &part.path))?;
                reporter.note(format_args!(
                    "removed {}: it was a hard link to another file, not a download in progress",
                    part.path.display()
                ));
                continue;
            }
            return Ok(part);
        }
        Err(DownloadError::io("open", &path)(io::Error::other(
            "it keeps being replaced by another program",
        )))
    }

    /// The path of the `.part`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (reads and writes go through it, never the path).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn guard(&self) -> MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stamp(&self) -> Result<Stamp, DownloadError> {
        Ok(Stamp::of(&self.meta()?))
    }

    /// Starts the change guard afresh: what the file is now is what a
    /// digest started now will read.
    pub fn watch(&self) -> Result<(), DownloadError> {
        let stamp = self.stamp()?;
        let mut guard = self.guard();
        guard.last = Some(stamp);
        guard.disturbed = false;
        Ok(())
    }

    /// Runs one change of ours (`change`) under the guard: a stamp that is
    /// not the one our previous change left marks the file disturbed.
    fn guarded(
        &self,
        action: &'static str,
        change: impl FnOnce(&File) -> io::Result<()>,
    ) -> Result<(), DownloadError> {
        let mut guard = self.guard();
        let before = self.stamp()?;
        if guard.last.is_some_and(|last| last != before) {
            guard.disturbed = true;
        }
        change(&self.file).map_err(DownloadError::io(action, &self.path))?;
        guard.last = Some(self.stamp()?);
        Ok(())
    }

    /// Writes `bytes` at `offset` (the only way a download writes).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<(), DownloadError> {
        self.guarded("write", |file| file.write_all_at(bytes, offset))
    }

    /// Whether nobody but us changed the file since [`Part::watch`].
    fn undisturbed(&self) -> Result<bool, DownloadError> {
        let now = self.stamp()?;
        let guard = self.guard();
        Ok(!guard.disturbed && guard.last == Some(now))
    }

    fn seal(&self, stamp: Stamp, size: u64, sha256: &str) {
        *self.sealed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Seal {
            stamp,
            size,
            sha256: sha256.to_owned(),
        });
    }

    /// Decides on the digest the hashing thread read back (`digested`, or
    /// the error that stopped it): accepted when it is the registered one
    /// and nobody else changed the file meanwhile; otherwise the whole file
    /// on disk is hashed again ([`Part::check`]) and that decides.
    pub fn accept(
        &self,
        digested: io::Result<Digested>,
        size: u64,
        sha256: &str,
        reporter: &Reporter,
    ) -> Result<Checked, DownloadError> {
        let stamp = self.stamp()?;
        let clean = self.undisturbed()?;
        match digested {
            Ok(d) if clean && d.len == size && stamp.len == size => {
                let actual = to_hex(&d.sha256);
                if actual == sha256 {
                    self.seal(stamp, size, sha256);
                    return Ok(Checked::Verified);
                }
                Ok(Checked::Mismatch {
                    len: d.len,
                    sha256: actual,
                })
            }
            _ => {
                if !clean {
                    reporter.note(format_args!(
                        "{} was changed by another program during the download; checking it again",
                        self.path.display()
                    ));
                }
                self.check(size, sha256, reporter)
            }
        }
    }

    /// Bytes in the `.part` now.
    pub fn len(&self) -> Result<u64, DownloadError> {
        Ok(self.meta()?.len())
    }

    fn meta(&self) -> Result<fs::Metadata, DownloadError> {
        self.file
            .metadata()
            .map_err(DownloadError::io("inspect", &self.path))
    }

    /// Whether the path still names the open file.
    fn path_names(&self, ours: &fs::Metadata) -> Result<bool, DownloadError> {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) => Ok(meta.dev() == ours.dev() && meta.ino() == ours.ino()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(DownloadError::io("inspect", &self.path)(e)),
        }
    }

    /// Cuts (or extends) the `.part` to `len` bytes.
    pub fn truncate(&self, len: u64) -> Result<(), DownloadError> {
        self.guarded("truncate", |file| file.set_len(len))
    }

    /// Hashes the bytes on disk (not the ones that came over the network:
    /// another program may have written into the file) and compares them
    /// with the registered `size` and `sha256`. A file that changed while
    /// it was read is a mismatch.
    pub fn check(
        &self,
        size: u64,
        sha256: &str,
        reporter: &Reporter,
    ) -> Result<Checked, DownloadError> {
        let before = self.stamp()?;
        let len = before.len;
        let mut hasher = Sha256::new();
        let mut progress = reporter.hashing(self.path.display().to_string(), len);
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
        let mut offset = 0u64;
        while offset < len {
            let want = usize::try_from(len - offset)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let n = match self.file.read_at(&mut buffer[..want], offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(DownloadError::io("read", &self.path)(e)),
            };
            hasher.update(&buffer[..n]);
            offset += n as u64;
            progress.set(offset);
        }
        progress.finish();
        let actual = to_hex(&hasher.finalize());
        let after = self.stamp()?;
        if offset == size && len == size && actual == sha256 && after == before {
            self.seal(after, size, sha256);
            Ok(Checked::Verified)
        } else {
            Ok(Checked::Mismatch {
                len: offset,
                sha256: actual,
            })
        }
    }

    /// Gives the verified (and fsynced) `.part` its final name `target`,
    /// never replacing a file there, and only while the path still names the
    /// file that was verified with a single link; then fsyncs the folder so
    /// the new name survives a crash.
    ///
    /// The file must still be as it was when its digest was accepted
    /// ([`Part::accept`], [`Part::check`]); when its stamp differs, it is
    /// hashed once more and published only if that digest is still right.
    pub fn publish(self, target: &Path, downloads: &Path) -> Result<(), DownloadError> {
        let refuse = |why: &str| {
            DownloadError::io("publish", &self.path)(io::Error::other(format!(
                "{why}; nothing was renamed"
            )))
        };
        let sealed = self
            .sealed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(seal) = sealed else {
            return Err(refuse("its bytes were not verified"));
        };
        if self.stamp()? != seal.stamp {
            let quiet = Reporter::quiet();
            if self.check(seal.size, &seal.sha256, &quiet)? != Checked::Verified {
                return Err(refuse("another program changed it after it was verified"));
            }
        }
        let ours = self.meta()?;
        if !self.path_names(&ours)? || ours.nlink() != 1 {
            return Err(refuse(
                "another program replaced or linked it during the download",
            ));
        }
        let renamed = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.path,
            rustix::fs::CWD,
            target,
            RenameFlags::NOREPLACE,
        );
        match renamed {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {
                return Err(DownloadError::Appeared {
                    path: target.to_owned(),
                    part: self.path.clone(),
                })
            }
            // A file system without RENAME_NOREPLACE: a hard link fails
            // when the target exists, just as well.
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                match fs::hard_link(&self.path, target) {
                    Ok(()) => fs::remove_file(&self.path)
                        .map_err(DownloadError::io("delete", &self.path))?,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(DownloadError::Appeared {
                            path: target.to_owned(),
                            part: self.path.clone(),
                        })
                    }
                    // No hard links either (FAT, some FUSE): a plain
                    // rename, after one more look at the target.
                    Err(_) if fs::symlink_metadata(target).is_err() => {
                        fs::rename(&self.path, target)
                            .map_err(DownloadError::io("rename the verified download to", target))?
                    }
                    Err(e) => {
                        return Err(DownloadError::io("rename the verified download to", target)(e))
                    }
                }
            }
            Err(e) => {
                return Err(DownloadError::io("rename the verified download to", target)(e.into()))
            }
        }
        File::open(downloads)
            .and_then(|dir| dir.sync_all())
            .map_err(DownloadError::io("sync the downloads folder", downloads))
    }

    /// Deletes the `.part` (while the path still names it) and its record.
    pub fn remove(self) -> Result<(), DownloadError> {
        let ours = self.meta()?;
        if self.path_names(&ours)? {
            fs::remove_file(&self.path).map_err(DownloadError::io("delete", &self.path))?;
        }
        let record = resume::record_path(&self.path);
        resume::remove(&record).map_err(DownloadError::io("delete", &record))
    }

    /// A `.part` that holds no byte is only clutter: deleted.
    pub fn remove_if_empty(self) -> Result<(), DownloadError> {
        if self.len()? == 0 {
            self.remove()
        } else {
            Ok(())
        }
    }

    /// A `.part` left by a multi-source download has verified pieces with
    /// gaps between them; the sequential path resumes a prefix. Keeps the
    /// recorded pieces that start the file without a gap (the sequential
    /// path verifies them with the rest) and drops the record.
    pub fn prepare_sequential(&self) -> Result<(), DownloadError> {
        let record_path = resume::record_path(&self.path);
        let record = match resume::read(&record_path) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return resume::remove(&record_path)
                    .map_err(DownloadError::io("delete", &record_path))
            }
            Err(e) => return Err(DownloadError::io("read", &record_path)(e)),
        };
        if self.len()? > record.prefix_len() {
            self.truncate(record.prefix_len())?;
        }
        resume::remove(&record_path).map_err(DownloadError::io("delete", &record_path))
    }
}

/// Fails with [`DownloadError::NoSpace`] unless the file system of
/// `downloads` has room for `needed` more bytes.
pub fn check_space(downloads: &Path, needed: u64) -> Result<(), DownloadError> {
    let stats = rustix::fs::statvfs(downloads)
        .map_err(|e| DownloadError::io("inspect", downloads)(e.into()))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if needed > free {
        return Err(DownloadError::NoSpace {
            path: downloads.to_owned(),
            needed,
            free,
        });
    }
    Ok(())
}

/// The `.part` must be ours to write: a symlink there (which would send the
/// bytes wherever it points) is removed, anything else but a regular file
/// is refused.
fn check_part(part: &Path, reporter: &Reporter) -> Result<(), DownloadError> {
    match fs::symlink_metadata(part) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::remove_file(part).map_err(DownloadError::io("remove the symlink", part))?;
            reporter.note(format_args!(
                "removed {}: it was a symlink, not a download in progress",
                part.display()
            ));
            Ok(())
        }
        Ok(meta) if !meta.is_file() => Err(DownloadError::NotAFile {
            path: part.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DownloadError::io("inspect", part)(e)),
    }
}

/// A file already under the final name: the same content as a source means
/// done; other content is never overwritten.
pub(super) fn check_existing(
    target: &Path,
    sources: &[Source],
    reporter: &Reporter,
) -> Result<Option<Outcome>, DownloadError> {
    let meta = match fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DownloadError::io("inspect", target)(e)),
    };
    if !meta.is_file() {
        return Err(DownloadError::NotAFile {
            path: target.to_owned(),
        });
    }
    let mut file = File::open(target).map_err(DownloadError::io("open", target))?;
    let mut hasher = Sha256::new();
    let mut progress = reporter.hashing(target.display().to_string(), meta.len());
    hash_into(&mut file, &mut hasher, &mut |n| progress.set(n))
        .map_err(DownloadError::io("read", target))?;
    progress.finish();
    let actual = to_hex(&hasher.finalize());
    if sources.iter().any(|s| s.sha256 == actual) {
        return Ok(Some(Outcome::AlreadyPresent {
            path: target.to_owned(),
            size: meta.len(),
            sha256: actual,
        }));
    }
    Err(DownloadError::Conflict {
        path: target.to_owned(),
        actual,
        expected: sources
            .first()
            .map(|s| s.sha256.clone())
            .unwrap_or_default(),
    })
}
