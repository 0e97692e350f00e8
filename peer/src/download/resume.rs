//! The record of verified pieces next to a multi-source `.part`:
//! `<name>.part.pieces`, so an interrupted download fetches only the
//! pieces it is missing.
//!
//! Format (text, one item a line):
//!
//! ```text
//! p2p-part-pieces 1
//! sha256 <64 hex digits of the whole file>
//! size <bytes>
//! piece-size <bytes>
//! <index of a verified piece>
//! ...
//! ```
//!
//! An index is appended once its piece is verified and written. The record
//! is a hint, never trusted alone: on resume every piece it lists is read
//! back and checked against the piece list, so a torn line, a crash
//! between writing a piece and recording it (or the other way round), or a
//! record from another version of the file costs time, never correctness.
//! This module must not write anywhere but the record's own path.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::pieces::PieceList;

/// Appended to the `.part` path to name the record.
pub const RECORD_SUFFIX: &str = ".pieces";

/// First line of a record: format name and version.
pub const RECORD_MAGIC: &str = "p2p-part-pieces 1";

/// Largest record read back: a header and an index line for each of
/// [`crate::pieces::MAX_PIECES`] pieces.
const MAX_RECORD_BYTES: u64 = 1024 + crate::pieces::MAX_PIECES * 9;

/// The record's path for a `.part` path.
pub fn record_path(part: &Path) -> PathBuf {
    let mut path = part.as_os_str().to_owned();
    path.push(RECORD_SUFFIX);
    PathBuf::from(path)
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sha256: String,
    pub size: u64,
    pub piece_size: u64,
    /// Indexes of the pieces recorded as verified (may include nonsense:
    /// check them).
    pub pieces: BTreeSet<u64>,
}

impl Record {
    /// Whether this record is about the file `list` describes.
    pub fn matches(&self, list: &PieceList) -> bool {
        self.sha256 == list.sha256 && self.size == list.size && self.piece_size == list.piece_size
    }

    /// Bytes at the start of the file covered by recorded pieces without a
    /// gap: what the sequential path may resume from (it verifies them).
    pub fn prefix_len(&self) -> u64 {
        let mut count = 0u64;
        while self.pieces.contains(&count) {
            count += 1;
        }
        count.saturating_mul(self.piece_size).min(self.size)
    }
}

/// Reads the record at `path`; `None` when there is none or it is not a
/// record (a malformed index line ends the list, as a torn last line does).
pub fn read(path: &Path) -> io::Result<Option<Record>> {
    // Not followed through a symlink: the record is ours or nothing.
    let bytes = match fs::symlink_metadata(path) {
        Ok(meta) if meta.len() > MAX_RECORD_BYTES || !meta.is_file() => return Ok(None),
        Ok(_) => fs::read(path)?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.split('\n');
    if lines.next() != Some(RECORD_MAGIC) {
        return Ok(None);
    }
    let mut field = |key: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(key))
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_owned)
    };
    let (Some(sha256), Some(size), Some(piece_size)) =
        (field("sha256"), field("size"), field("piece-size"))
    else {
        return Ok(None);
    };
    let (Ok(size), Ok(piece_size)) = (size.parse(), piece_size.parse()) else {
        return Ok(None);
    };
    let mut pieces = BTreeSet::new();
    for line in lines {
        match line.parse() {
            Ok(index) => {
                pieces.insert(index);
            }
            Err(_) => break,
        }
    }
    Ok(Some(Record {
        sha256,
        size,
        piece_size,
        pieces,
    }))
}

/// An open record being appended to.
#[derive(Debug)]
pub struct Writer {
    file: File,
}

impl Writer {
    /// Writes a new record for `list` at `path` listing `done`, replacing
    /// any old one.
    pub fn create(path: &Path, list: &PieceList, done: &[bool]) -> io::Result<Writer> {
        let mut text = format!(
            "{RECORD_MAGIC}\nsha256 {}\nsize {}\npiece-size {}\n",
            list.sha256, list.size, list.piece_size
        );
        for (index, _) in done.iter().enumerate().filter(|(_, &d)| d) {
            text.push_str(&format!("{index}\n"));
        }
        // A fresh file, never an existing one (nor what a symlink there
        // points to).
        remove(path)?;
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(text.as_bytes())?;
        Ok(Writer { file })
    }

    /// Records piece `index` as verified and written.
    pub fn append(&mut self, index: usize) -> io::Result<()> {
        // One write per line: a crash leaves at worst a torn last line.
        self.file.write_all(format!("{index}\n").as_bytes())
    }
}

/// Deletes the record at `path`, if there is one.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> PieceList {
        PieceList::hash(&mut &[3u8; 100][..], 16, &mut |_| {}).unwrap()
    }

    #[test]
    fn records_round_trip_and_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(&dir.path().join("f.part"));
        assert_eq!(path, dir.path().join("f.part.pieces"));
        assert_eq!(read(&path).unwrap(), None);
        let list = list();
        let mut writer = Writer::create(&path, &list, &[true, false, true]).unwrap();
        writer.append(1).unwrap();
        writer.append(5).unwrap();
        let record = read(&path).unwrap().unwrap();
        assert!(record.matches(&list));
        assert_eq!(record.pieces, BTreeSet::from([0, 1, 2, 5]));
        assert_eq!(record.prefix_len(), 48);

        // A torn last line ends the list.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("6\n1x");
        fs::write(&path, &text).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().pieces.len(), 5);

        // Another version does not match; garbage is no record.
        let other = PieceList::hash(&mut &[4u8; 100][..], 16, &mut |_| {}).unwrap();
        assert!(!record.matches(&other));
        fs::write(&path, "something else\n").unwrap();
        assert_eq!(read(&path).unwrap(), None);
        remove(&path).unwrap();
        remove(&path).unwrap();

        // A symlink in its place is replaced, its target left alone.
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        Writer::create(&path, &list, &[]).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert!(read(&path).unwrap().is_some());
    }

    #[test]
    fn prefix_stops_at_the_file_size() {
        let record = Record {
            sha256: String::new(),
            size: 40,
            piece_size: 16,
            pieces: BTreeSet::from([0, 1, 2]),
        };
        assert_eq!(record.prefix_len(), 40);
    }
}
