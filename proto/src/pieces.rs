//! Pieces: a file cut into fixed-size pieces, each with its SHA-256, and
//! the `/pieces` document that carries the list between peers (see
//! `docs/protocol.md`, "Peer extensions").
//!
//! The list is what lets a multi-source download check every piece as it
//! arrives, so one dishonest source is caught after one piece instead of
//! after the whole file. Both sides use this module: the file server
//! formats the document ([`PieceList::to_document`]), the downloader parses
//! it ([`PieceList::parse`]) and checks it against what the registry says.
//!
//! It lives in the wire vocabulary (`p2p_proto`) because the document is
//! a wire format; the peer re-exports it as `p2p_peer::pieces`.
//!
//! This module knows no sockets and no paths: hashing reads from any
//! `Read`, parsing takes bytes. It must not accept a document whose numbers
//! disagree with each other (size, piece size, piece count), nor let a
//! document make it allocate more than [`MAX_PIECES`] hashes.

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read};
use std::ops::Range;

use crate::decimal::parse_decimal as decimal;
use crate::hex::{from_hex_array, to_hex};
use sha2::{Digest, Sha256};

/// Piece size this peer's file server announces: big enough that the
/// per-piece request and hash bookkeeping cost nothing next to the bytes
/// (a 256 MiB file is 64 pieces), small enough that four sources share even
/// a 20 MiB file and a lost piece costs little to fetch again.
pub const PIECE_SIZE: u64 = 4 * 1024 * 1024;

/// Smallest piece size a downloader accepts from a document: smaller pieces
/// would only multiply requests.
pub const MIN_PIECE_SIZE: u64 = 16 * 1024;

/// Largest piece size a downloader accepts: a piece is held in memory
/// until it is verified, once per source, so this bounds what a source's
/// list can make a download allocate (16 sources × 16 MiB at most).
pub const MAX_PIECE_SIZE: u64 = 16 * 1024 * 1024;

/// Most pieces a list may have (16 TiB at [`PIECE_SIZE`]): bounds the memory
/// a document can make a downloader allocate (32 bytes a piece).
pub const MAX_PIECES: u64 = 4 * 1024 * 1024;

/// First line of a `/pieces` document: format name and version.
pub const DOCUMENT_MAGIC: &str = "p2p-pieces 1";

/// Length of one SHA-256 digest.
pub const DIGEST_BYTES: usize = 32;

/// Room for the header lines of a `/pieces` document.
const MAX_HEADER_BYTES: u64 = 512;

/// Largest `/pieces` document that can describe a file of `size` bytes (at
/// the smallest piece size accepted): a downloader reads no more, so a
/// source cannot make it buffer more than the list it needs.
pub fn max_document_bytes(size: u64) -> u64 {
    let lines = piece_count(size, MIN_PIECE_SIZE).min(MAX_PIECES);
    MAX_HEADER_BYTES + lines * (2 * DIGEST_BYTES as u64 + 1)
}

/// Most hashes reserved up front while parsing, whatever a document claims.
const INITIAL_CAPACITY: u64 = 4096;

/// Size of the read buffer while hashing a file into pieces.
pub const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// Why a `/pieces` document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiecesError {
    #[error("not a piece list (the first line is not {DOCUMENT_MAGIC:?})")]
    NotAList,
    #[error("line {line} of the piece list: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("piece size {0} is outside {MIN_PIECE_SIZE}..={MAX_PIECE_SIZE}")]
    PieceSize(u64),
    #[error("a file of {size} bytes in pieces of {piece_size} has {expected} pieces, the list has {actual}")]
    Count {
        size: u64,
        piece_size: u64,
        expected: u64,
        actual: u64,
    },
    #[error("{0} pieces is more than the {MAX_PIECES} accepted")]
    TooMany(u64),
}

/// The pieces of one version of a file: its size, whole-file SHA-256, the
/// piece size and one SHA-256 per piece (the last piece may be shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceList {
    /// Bytes in each piece but the last.
    pub piece_size: u64,
    /// Bytes in the file.
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// SHA-256 of each piece, in order.
    pub hashes: Vec<[u8; DIGEST_BYTES]>,
}

/// How many pieces of `piece_size` a file of `size` bytes has (an empty
/// file has none). `piece_size` must not be zero.
pub fn piece_count(size: u64, piece_size: u64) -> u64 {
    size.div_ceil(piece_size.max(1))
}

impl PieceList {
    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the file is empty (and so has no piece).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The byte range of piece `index` in the file.
    pub fn range(&self, index: usize) -> Range<u64> {
        let start = (index as u64)
            .saturating_mul(self.piece_size)
            .min(self.size);
        let end = start.saturating_add(self.piece_size).min(self.size);
        start..end
    }

    /// Length of piece `index` in bytes.
    pub fn piece_len(&self, index: usize) -> u64 {
        let range = self.range(index);
        range.end - range.start
    }

    /// Whether `bytes` are piece `index`.
    pub fn verify(&self, index: usize, bytes: &[u8]) -> bool {
        self.hashes
            .get(index)
            .is_some_and(|expected| Sha256::digest(bytes).as_slice() == expected)
    }

    /// The document served at `GET /pieces/<name>`.
    pub fn to_document(&self) -> String {
        let mut out = String::with_capacity(128 + self.hashes.len() * (2 * DIGEST_BYTES + 1));
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{DOCUMENT_MAGIC}\npiece-size {}\nsize {}\nsha256 {}\npieces {}\n",
            self.piece_size,
            self.size,
            self.sha256,
            self.hashes.len()
        );
        for hash in &self.hashes {
            out.push_str(&to_hex(hash));
            out.push('\n');
        }
        out
    }

    /// Parses a `/pieces` document, checking that its numbers agree.
    pub fn parse(document: &[u8]) -> Result<PieceList, PiecesError> {
        let text = std::str::from_utf8(document).map_err(|_| PiecesError::Malformed {
            line: 1,
            reason: "not UTF-8".to_owned(),
        })?;
        let mut lines = text
            .split_terminator('\n')
            .enumerate()
            .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)));
        match lines.next() {
            Some((_, line)) if line == DOCUMENT_MAGIC => {}
            _ => return Err(PiecesError::NotAList),
        }
        let mut field = |key: &str| -> Result<(usize, &str), PiecesError> {
            let (line, text) = lines.next().ok_or_else(|| PiecesError::Malformed {
                line: 0,
                reason: format!("{key:?} is missing"),
            })?;
            let value = text
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or_else(|| PiecesError::Malformed {
                    line,
                    reason: format!("expected {key:?}"),
                })?;
            Ok((line, value))
        };
        let number = |key: &str, (line, value): (usize, &str)| -> Result<u64, PiecesError> {
            decimal(value).ok_or_else(|| PiecesError::Malformed {
                line,
                reason: format!("{key} {value:?} is not a number"),
            })
        };
        let piece_size = number("piece-size", field("piece-size")?)?;
        let size = number("size", field("size")?)?;
        let (line, sha256) = field("sha256")?;
        if !is_hex_digest(sha256) {
            return Err(PiecesError::Malformed {
                line,
                reason: "sha256 is not 64 lowercase hex digits".to_owned(),
            });
        }
        let sha256 = sha256.to_owned();
        let count = number("pieces", field("pieces")?)?;
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size) {
            return Err(PiecesError::PieceSize(piece_size));
        }
        let expected = piece_count(size, piece_size);
        if count != expected {
            return Err(PiecesError::Count {
                size,
                piece_size,
                expected,
                actual: count,
            });
        }
        if count > MAX_PIECES {
            return Err(PiecesError::TooMany(count));
        }
        // The lines, not the claimed count, decide how much is allocated.
        let mut hashes = Vec::with_capacity(count.min(INITIAL_CAPACITY) as usize);
        for (line, text) in lines.by_ref() {
            let hash = parse_digest(text).ok_or_else(|| PiecesError::Malformed {
                line,
                reason: "expected a piece's 64 lowercase hex digits".to_owned(),
            })?;
            if hashes.len() as u64 == count {
                return Err(PiecesError::Count {
                    size,
                    piece_size,
                    expected,
                    actual: count + 1,
                });
            }
            hashes.push(hash);
        }
        if hashes.len() as u64 != count {
            return Err(PiecesError::Count {
                size,
                piece_size,
                expected,
                actual: hashes.len() as u64,
            });
        }
        Ok(PieceList {
            piece_size,
            size,
            sha256,
            hashes,
        })
    }

    /// Reads everything from `reader` and cuts it into pieces of
    /// `piece_size`, computing the piece hashes and the whole-file SHA-256
    /// in one pass. `on_progress` gets the bytes read so far.
    pub fn hash(
        reader: &mut dyn Read,
        piece_size: u64,
        on_progress: &mut dyn FnMut(u64),
    ) -> io::Result<PieceList> {
        let piece_size = piece_size.max(1);
        let mut whole = Sha256::new();
        let mut piece = Sha256::new();
        let mut in_piece = 0u64;
        let mut hashes = Vec::new();
        let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut chunk = &buffer[..n];
            whole.update(chunk);
            while !chunk.is_empty() {
                let room = usize::try_from(piece_size - in_piece).unwrap_or(usize::MAX);
                let take = room.min(chunk.len());
                piece.update(&chunk[..take]);
                in_piece += take as u64;
                chunk = &chunk[take..];
                if in_piece == piece_size {
                    hashes.push(piece.finalize_reset().into());
                    in_piece = 0;
                }
            }
            size += n as u64;
            on_progress(size);
        }
        if in_piece > 0 {
            hashes.push(piece.finalize().into());
        }
        Ok(PieceList {
            piece_size,
            size,
            sha256: to_hex(&whole.finalize()),
            hashes,
        })
    }
}

/// Whether `text` is 64 lowercase hex digits (the registry's digest form).
pub fn is_hex_digest(text: &str) -> bool {
    text.len() == 2 * DIGEST_BYTES && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 64 lowercase hex digits to a digest.
fn parse_digest(text: &str) -> Option<[u8; DIGEST_BYTES]> {
    from_hex_array(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_of(data: &[u8], piece_size: u64) -> PieceList {
        PieceList::hash(&mut &data[..], piece_size, &mut |_| {}).unwrap()
    }

    #[test]
    fn piece_math() {
        assert_eq!(piece_count(0, 4), 0);
        assert_eq!(piece_count(1, 4), 1);
        assert_eq!(piece_count(4, 4), 1);
        assert_eq!(piece_count(5, 4), 2);
        assert_eq!(piece_count(u64::MAX, PIECE_SIZE), u64::MAX / PIECE_SIZE + 1);
        let list = list_of(&[7u8; 10], 4);
        assert_eq!(list.len(), 3);
        assert_eq!(list.range(0), 0..4);
        assert_eq!(list.range(2), 8..10);
        assert_eq!(list.piece_len(2), 2);
        assert_eq!(list.range(3), 10..10);
        assert_eq!(list.range(usize::MAX), 10..10);
        let doc = list_of(&vec![0u8; 1 << 20], MIN_PIECE_SIZE).to_document();
        assert!(doc.len() as u64 <= max_document_bytes(1 << 20));
        assert!(max_document_bytes(u64::MAX) < 300 * 1024 * 1024);
    }

    #[test]
    fn hashing_matches_pieces_and_whole() {
        let data: Vec<u8> = (0..(3 * HASH_BUFFER_BYTES + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for piece_size in [
            1000,
            HASH_BUFFER_BYTES as u64,
            3 * HASH_BUFFER_BYTES as u64 + 123,
            1 << 30,
        ] {
            let list = list_of(&data, piece_size);
            assert_eq!(list.size, data.len() as u64);
            assert_eq!(list.sha256, to_hex(&Sha256::digest(&data)));
            assert_eq!(list.len() as u64, piece_count(list.size, piece_size));
            for i in 0..list.len() {
                let r = list.range(i);
                let bytes = &data[r.start as usize..r.end as usize];
                assert!(list.verify(i, bytes), "piece {i} of {piece_size}");
                assert!(!list.verify(i, &bytes[1..]));
            }
            assert!(!list.verify(list.len(), b""));
        }
        let empty = list_of(b"", PIECE_SIZE);
        assert!(empty.is_empty());
        assert_eq!(PieceList::parse(empty.to_document().as_bytes()), Ok(empty));
    }

    #[test]
    fn documents_round_trip() {
        let data = vec![1u8; 100_000];
        let list = list_of(&data, MIN_PIECE_SIZE);
        let doc = list.to_document();
        assert!(doc.starts_with(&format!(
            "p2p-pieces 1\npiece-size 16384\nsize 100000\nsha256 {}\npieces 7\n",
            list.sha256
        )));
        assert_eq!(doc.lines().count(), 5 + 7);
        assert_eq!(PieceList::parse(doc.as_bytes()), Ok(list.clone()));
        let crlf = doc.replace('\n', "\r\n");
        assert_eq!(PieceList::parse(crlf.as_bytes()), Ok(list));
    }

    #[test]
    fn documents_that_disagree_with_themselves_are_refused() {
        let list = list_of(&[9u8; 50_000], MIN_PIECE_SIZE);
        let doc = list.to_document();
        let edit = |from: &str, to: &str| PieceList::parse(doc.replacen(from, to, 1).as_bytes());
        assert_eq!(
            edit("p2p-pieces 1", "p2p-pieces 2"),
            Err(PiecesError::NotAList)
        );
        assert!(matches!(
            edit("size 50000", "size 70000"),
            Err(PiecesError::Count { .. })
        ));
        assert!(matches!(
            edit("pieces 4", "pieces 5"),
            Err(PiecesError::Count { .. })
        ));
        assert!(matches!(
            edit("piece-size 16384", "piece-size 1"),
            Err(PiecesError::PieceSize(1))
        ));
        assert!(matches!(
            edit("piece-size 16384", "piece-size x"),
            Err(PiecesError::Malformed { .. })
        ));
        assert!(matches!(
            edit("sha256 ", "sha256 A"),
            Err(PiecesError::Malformed { .. })
        ));
        let first = to_hex(&list.hashes[0]);
        assert!(matches!(
            edit(&first, &first.to_uppercase()),
            Err(PiecesError::Malformed { .. })
        ));
        let extra = format!("{doc}{first}\n");
        assert!(matches!(
            PieceList::parse(extra.as_bytes()),
            Err(PiecesError::Count { .. })
        ));
        let short: String = doc.lines().take(7).map(|l| format!("{l}\n")).collect();
        assert!(matches!(
            PieceList::parse(short.as_bytes()),
            Err(PiecesError::Count { .. })
        ));
        assert_eq!(PieceList::parse(b""), Err(PiecesError::NotAList));
        assert!(PieceList::parse(b"p2p-pieces 1\n\xff").is_err());
        // A huge claimed size is refused before anything is allocated for it.
        let huge = format!(
            "p2p-pieces 1\npiece-size {MIN_PIECE_SIZE}\nsize {}\nsha256 {}\npieces {}\n",
            u64::MAX,
            list.sha256,
            piece_count(u64::MAX, MIN_PIECE_SIZE)
        );
        assert!(matches!(
            PieceList::parse(huge.as_bytes()),
            Err(PiecesError::TooMany(_))
        ));
    }
}
