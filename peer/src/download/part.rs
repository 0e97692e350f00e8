//! The life of the `.part` file a download is written to: check what is
//! there (a symlink is removed, a non-file refused), prepare it for the
//! sequential path, and publish it under its final name once verified; and
//! the file already under the final name (the same content is done, other
//! content is never overwritten). This module must not fetch anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::path::Path;

use p2p_proto::protocol::{to_hex, Source};
use sha2::{Digest, Sha256};

use super::error::DownloadError;
use super::limits::COPY_BUFFER_BYTES;
use super::resume;
use super::Outcome;
use crate::progress::Reporter;

/// Suffix of the file a download is written to until it is verified.
pub const PART_SUFFIX: &str = ".part";

/// A `.part` left by a multi-source download has verified pieces with gaps
/// between them; the sequential path resumes a prefix. Keeps the recorded
/// pieces that start the file without a gap (the sequential path verifies
/// them with the rest) and drops the record.
pub(super) fn prepare_sequential(part: &Path) -> Result<(), DownloadError> {
    let record_path = resume::record_path(part);
    let record = match resume::read(&record_path) {
        Ok(Some(record)) => record,
        Ok(None) => {
            return resume::remove(&record_path).map_err(DownloadError::io("delete", &record_path))
        }
        Err(e) => return Err(DownloadError::io("read", &record_path)(e)),
    };
    match fs::metadata(part) {
        Ok(meta) if meta.len() > record.prefix_len() => {
            OpenOptions::new()
                .write(true)
                .open(part)
                .and_then(|file| file.set_len(record.prefix_len()))
                .map_err(DownloadError::io("truncate", part))?;
        }
        _ => {}
    }
    resume::remove(&record_path).map_err(DownloadError::io("delete", &record_path))
}

/// The `.part` must be ours to write: a symlink there (which would send the
/// bytes wherever it points) is removed, anything else but a regular file
/// is refused.
pub(super) fn check_part(part: &Path, reporter: &Reporter) -> Result<(), DownloadError> {
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

/// A `.part` that never received a byte is only clutter.
pub(super) fn remove_if_empty(part: &Path) -> Result<(), DownloadError> {
    match fs::metadata(part) {
        Ok(meta) if meta.len() == 0 => {
            fs::remove_file(part).map_err(DownloadError::io("delete", part))
        }
        _ => Ok(()),
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

/// Feeds everything `reader` yields into `hasher`; returns the byte count.
pub(super) fn hash_into(
    reader: &mut dyn Read,
    hasher: &mut Sha256,
    on_progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
        on_progress(total);
    }
}

/// Gives the verified (and fsynced) `.part` its final name, then fsyncs the
/// folder so the new name survives a crash.
pub(super) fn publish(part: &Path, target: &Path, downloads: &Path) -> Result<(), DownloadError> {
    fs::rename(part, target)
        .map_err(DownloadError::io("rename the verified download to", target))?;
    File::open(downloads)
        .and_then(|dir| dir.sync_all())
        .map_err(DownloadError::io("sync the downloads folder", downloads))
}
