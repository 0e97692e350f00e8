//! One worker of a multi-source download: it takes a source, asks it for
//! the piece list if none is known yet, then fetches the pieces the
//! scheduler gives it over one keep-alive connection, verifies each and
//! writes the verified ones in place. When its source is excluded it takes
//! the next unused one, until there is none.
//!
//! Every answer is checked before its bytes count: a `206` with exactly the
//! asked `Content-Range` of a file of the registered size, an `ETag` (when
//! sent) naming the registered SHA-256, no more bytes than announced, and
//! the piece's SHA-256 from the list. This module must not write a piece
//! that failed its check, nor one the scheduler did not give it to write.

use std::io::ErrorKind;

use p2p_proto::protocol::Source;
use sha2::{Digest, Sha256};

use super::error::SourceError;
use super::http::{
    check_etag, file_path, get_request, parse_content_range, pieces_path, Connection,
};
use super::limits::READ_TIMEOUT;
use super::scheduler::{Failure, SourceId, Verdict};
use super::swarm::{Next, Swarm};
use crate::pieces::{max_document_bytes, PieceList};

/// Bytes read between two progress reports (and two looks at whether the
/// piece is still wanted).
pub const READ_SLICE_BYTES: usize = 256 * 1024;

/// A worker thread's life: sources one after the other, starting with
/// `first` (from [`Swarm::first_source`]), until none is left or the
/// download stops.
pub fn work(swarm: &Swarm<'_>, first: Option<(SourceId, bool)>) {
    let mut buffer = Vec::new();
    let mut next = first;
    while let Some((id, ask_list)) = next {
        let ending = serve(swarm, id, ask_list, &mut buffer);
        swarm.close_socket(id);
        next = match ending {
            Ending::Excluded { error, was_listing } => swarm.replace(id, error, was_listing),
            Ending::Over => None,
        };
    }
}

/// Why a worker stopped working with a source.
enum Ending {
    /// The source is out: `error` says why when that is not reported yet;
    /// `was_listing` when it was still counted as asking for the list.
    Excluded {
        error: Option<SourceError>,
        was_listing: bool,
    },
    /// The download is over (done, failed, or stopped).
    Over,
}

/// Works with source `id` until it is excluded or the download is over.
fn serve(swarm: &Swarm<'_>, id: SourceId, ask_list: bool, buffer: &mut Vec<u8>) -> Ending {
    let source = &swarm.sources[id];
    let mut conn = None;
    if ask_list {
        match fetch_list(swarm, id, source, &mut conn) {
            Ok(Some(list)) => swarm.offer_list(id, list),
            Ok(None) => swarm.no_list(),
            Err(error) => {
                return Ending::Excluded {
                    error: Some(error),
                    was_listing: true,
                }
            }
        }
    }
    loop {
        let (index, list) = match swarm.next(id) {
            Next::Piece(index, list) => (index, list),
            Next::Excluded => {
                return Ending::Excluded {
                    error: None,
                    was_listing: false,
                }
            }
            Next::Stop => return Ending::Over,
        };
        let result = match connection(swarm, id, source, &mut conn) {
            Ok(c) => fetch_piece(swarm, id, source, c, &list, index, buffer),
            Err(error) => Err((error, Failure::Network)),
        };
        match result {
            Ok(Fetched::Verified { keep_connection }) => {
                if !keep_connection {
                    hang_up(swarm, id, &mut conn);
                }
                if swarm.verified(id, index) {
                    let start = list.range(index).start;
                    if let Err(e) = swarm.part.write_at(buffer, start) {
                        swarm.local_error(e);
                        return Ending::Over;
                    }
                    swarm.written(id, index);
                }
            }
            Ok(Fetched::Dropped) => {
                // Another copy won (or the download stopped) in the middle
                // of the body: the connection cannot be reused.
                hang_up(swarm, id, &mut conn);
                swarm.release(id, index);
            }
            Err((error, failure)) => {
                hang_up(swarm, id, &mut conn);
                if swarm.stopping() {
                    swarm.release(id, index);
                    return Ending::Over;
                }
                if swarm.failed(id, index, failure, error) == Verdict::Excluded {
                    return Ending::Excluded {
                        error: None,
                        was_listing: false,
                    };
                }
            }
        }
    }
}

/// Closes the connection to source `id`, if one is open.
fn hang_up(swarm: &Swarm<'_>, id: SourceId, conn: &mut Option<Connection>) {
    if conn.take().is_some() {
        swarm.close_socket(id);
    }
}

/// The open connection to `source`, opening one when there is none.
fn connection<'c>(
    swarm: &Swarm<'_>,
    id: SourceId,
    source: &Source,
    conn: &'c mut Option<Connection>,
) -> Result<&'c mut Connection, SourceError> {
    if conn.is_none() {
        let opened = Connection::open(&source.addr())?;
        swarm.register_socket(id, opened.socket());
        *conn = Some(opened);
    }
    conn.as_mut().ok_or_else(|| SourceError::BadResponse {
        addr: source.addr(),
        reason: "no connection".to_owned(),
    })
}

/// Asks `source` for the piece list: `Some` when it has a usable one for
/// the registered content, `None` when it has none (it may still serve
/// ranges), an error when it fails or lies.
fn fetch_list(
    swarm: &Swarm<'_>,
    id: SourceId,
    source: &Source,
    conn: &mut Option<Connection>,
) -> Result<Option<PieceList>, SourceError> {
    let name = swarm.name;
    let addr = source.addr();
    let c = connection(swarm, id, source, conn)?;
    c.send(&get_request(&addr, &pieces_path(name), false, ""))?;
    // A peer may hash the file for its list before it answers: the list
    // gets the read timeout, not the short first-byte deadline.
    let head = c
        .read_head_within(READ_TIMEOUT, READ_TIMEOUT)
        .map_err(|e| stalled(e, &addr))?;
    let bad = |reason: String| SourceError::BadPieceList {
        addr: addr.clone(),
        name: name.to_owned(),
        reason,
    };
    if head.status != 200 {
        // No list here (404 from a server without the extension, or 400,
        // 503 ...); whatever it says, its ranges are checked piece by piece.
        hang_up(swarm, id, conn);
        return Ok(None);
    }
    let limit = max_document_bytes(source.size);
    let len = match head.content_length {
        Some(len) if len <= limit => len,
        Some(len) => return Err(bad(format!("{len} bytes is more than a list can need"))),
        None => return Err(bad("no Content-Length".to_owned())),
    };
    let mut document = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut filled = 0;
    c.read_body_exact(&mut document, &mut filled)
        .map_err(|e| read_error(e, &addr, name, filled as u64, len))?;
    if head.close || c.has_stray_bytes() {
        hang_up(swarm, id, conn);
    }
    let list = PieceList::parse(&document).map_err(|e| bad(e.to_string()))?;
    if list.size != source.size || list.sha256 != source.sha256 {
        return Err(bad(format!(
            "it describes {} bytes with sha256 {}, not the registered {} bytes with sha256 {}",
            list.size, list.sha256, source.size, source.sha256
        )));
    }
    Ok(Some(list))
}

/// How fetching one piece went, when the source did nothing wrong.
enum Fetched {
    /// The piece is in the buffer and matches the list.
    Verified { keep_connection: bool },
    /// The piece is no longer wanted; the rest of its body was not read.
    Dropped,
}

/// Fetches piece `index` into `buffer` and checks it.
fn fetch_piece(
    swarm: &Swarm<'_>,
    id: SourceId,
    source: &Source,
    conn: &mut Connection,
    list: &PieceList,
    index: usize,
    buffer: &mut Vec<u8>,
) -> Result<Fetched, (SourceError, Failure)> {
    let name = swarm.name;
    let addr = source.addr();
    let fatal = |e: SourceError| (e, Failure::Fatal);
    let range = list.range(index);
    let len = range.end - range.start;
    let last = range.end.saturating_sub(1);
    let ask = format!("Range: bytes={}-{last}\r\n", range.start);
    conn.send(&get_request(&addr, &file_path(name), false, &ask))
        .map_err(|e| (e, Failure::Network))?;
    let head = conn.read_head().map_err(|e| classify(stalled(e, &addr)))?;
    if head.status != 206 {
        return Err(fatal(SourceError::Status {
            addr,
            status: head.status,
            reason: format!(
                "{} (to a request for bytes {}-{last})",
                head.reason, range.start
            ),
            name: name.to_owned(),
        }));
    }
    check_etag(&head, source, name).map_err(fatal)?;
    let Some(value) = head.content_range.as_deref() else {
        return Err(fatal(SourceError::BadResponse {
            addr,
            reason: "206 without Content-Range".to_owned(),
        }));
    };
    match parse_content_range(value) {
        Some((_, _, total)) if total != source.size => {
            return Err(fatal(SourceError::WrongLength {
                addr,
                name: name.to_owned(),
                announced: total,
                expected: source.size,
            }))
        }
        Some((first, end, _)) if first == range.start && end == last => {}
        _ => {
            return Err(fatal(SourceError::BadResponse {
                addr,
                reason: format!(
                    "Content-Range {value:?} is not the requested bytes {}-{last}",
                    range.start
                ),
            }))
        }
    }
    if head.content_length.is_some_and(|l| l != len) {
        return Err(fatal(SourceError::BadResponse {
            addr,
            reason: format!("Content-Length does not match Content-Range {value:?}"),
        }));
    }

    buffer.resize(usize::try_from(len).unwrap_or(0), 0);
    let mut hasher = Sha256::new();
    let mut filled = 0usize;
    while filled < buffer.len() {
        let upto = (filled + READ_SLICE_BYTES).min(buffer.len());
        let n = match conn.read_body(&mut buffer[filled..upto]) {
            Ok(0) => {
                return Err((
                    SourceError::TooShort {
                        addr,
                        name: name.to_owned(),
                        received: filled as u64,
                        expected: len,
                    },
                    Failure::Network,
                ))
            }
            Ok(n) => n,
            Err(e) => return Err(classify(read_error(e, &addr, name, filled as u64, len))),
        };
        hasher.update(&buffer[filled..filled + n]);
        filled += n;
        if !swarm.progress(id, index, filled as u64) {
            return Ok(Fetched::Dropped);
        }
    }
    let ended = conn
        .body_ended()
        .map_err(|e| classify(read_error(e, &addr, name, filled as u64, len)))?;
    if !ended || conn.has_stray_bytes() {
        return Err(fatal(SourceError::TooLong {
            addr,
            name: name.to_owned(),
            expected: len,
        }));
    }
    if list.hashes.get(index).map(|h| h.as_slice()) != Some(hasher.finalize().as_slice()) {
        return Err((
            SourceError::BadPiece {
                addr,
                name: name.to_owned(),
                index,
            },
            Failure::Corrupt,
        ));
    }
    Ok(Fetched::Verified {
        keep_connection: !head.close && head.content_length.is_some(),
    })
}

/// A read that timed out means the source stalled.
fn stalled(error: SourceError, addr: &str) -> SourceError {
    match error {
        SourceError::Network { source, .. }
            if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            SourceError::Stalled {
                addr: addr.to_owned(),
            }
        }
        other => other,
    }
}

/// A failed body read: a stall, a connection closed early, or another
/// network error.
fn read_error(
    error: std::io::Error,
    addr: &str,
    name: &str,
    received: u64,
    expected: u64,
) -> SourceError {
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => SourceError::Stalled {
            addr: addr.to_owned(),
        },
        ErrorKind::UnexpectedEof => SourceError::TooShort {
            addr: addr.to_owned(),
            name: name.to_owned(),
            received,
            expected,
        },
        _ => SourceError::Network {
            addr: addr.to_owned(),
            source: error,
        },
    }
}

/// How much a failure weighs: a stall or a malformed answer excludes the
/// source at once, a broken connection may be retried.
fn classify(error: SourceError) -> (SourceError, Failure) {
    let failure = match error {
        SourceError::Connect { .. }
        | SourceError::Network { .. }
        | SourceError::TooShort { .. } => Failure::Network,
        _ => Failure::Fatal,
    };
    (error, failure)
}
