//! The sequential path: one source at a time, the whole file in one
//! `GET`, appended to the `.part`, resumed with `Range: bytes=<len>-`
//! guarded by `If-Range: "<sha256>"`. While the body is received and
//! written, a second thread (`behind`) hashes the `.part`'s bytes read back
//! from the file, at most [`MAX_HASH_LAG_BYTES`] behind the writer; once
//! complete, the `.part` is synced and that digest of the bytes on disk is
//! checked against the registered size and SHA-256 ([`Part::accept`],
//! which hashes the whole file again if anyone else changed it meanwhile).
//! The first answer may come from `hedge`, which asked several sources at
//! once. In a batch, requests go through the batch's `pool` and a
//! connection whose whole body arrived cleanly goes back to it for the next
//! file, before the file is verified (the digest, not the connection,
//! vouches for the bytes).
//!
//! Used when there is a single source, when `--max-sources 1`, when the
//! file is too small to share out, and as the fallback of a multi-source
//! download whose sources do not serve piece lists. This module must not
//! trust a peer's `Content-Length` or `Content-Range` beyond the registered
//! size, and must leave a `.part` only with bytes that may be resumed.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::Path;
use std::time::Instant;

use p2p_proto::protocol::Source;

#[cfg(doc)]
use super::behind::MAX_HASH_LAG_BYTES;
use super::behind::{Behind, Digested};
use super::error::{DownloadError, SourceError};
use super::http::{check_etag, parse_content_range, request_file, Response};
use super::limits::{scaled, COPY_BUFFER_BYTES, MIN_BYTES_PER_WINDOW, SLOW_WINDOW};
use super::part::{Checked, Part};
use super::pool::Pool;
use crate::progress::Reporter;

/// How one attempt failed: because of the source (try the next) or because
/// of this machine (stop).
#[derive(Debug)]
pub(super) enum Attempt {
    Source(SourceError),
    Local(DownloadError),
}

impl From<SourceError> for Attempt {
    fn from(e: SourceError) -> Attempt {
        Attempt::Source(e)
    }
}

impl From<DownloadError> for Attempt {
    fn from(e: DownloadError) -> Attempt {
        Attempt::Local(e)
    }
}

/// A verified, fsynced `.part`, ready to be renamed.
#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) resumed_at: u64,
}

/// Fetches `name` from one source into `part`, resuming what is there,
/// and checks the bytes on disk against the registered size and SHA-256.
///
/// When a resumed transfer does not verify, the old bytes may be the
/// culprit (they may come from another version of the file), so the source
/// gets one more try from scratch before it is blamed. Bytes that fail the
/// check are removed (the `.part` is emptied) so no later source resumes
/// them. With a `pool`, requests reuse its connections and give them back.
pub(super) fn fetch(
    source: &Source,
    name: &str,
    part: &mut Part,
    reporter: &Reporter,
    mut first: Option<Response>,
    pool: Option<&Pool>,
) -> Result<Fetched, Attempt> {
    let mut allow_resume = true;
    loop {
        let have = if allow_resume {
            existing_prefix(part, source, reporter)?
        } else {
            part.truncate(0)?;
            0
        };
        // The answer to a request already sent (for the bytes after
        // `have`) is used for the first transfer only.
        let asked = (have, source, name);
        let result = transfer(part, asked, reporter, first.take(), pool);
        match result {
            Ok(resumed_at) => return Ok(Fetched { resumed_at }),
            Err(Transfer::Mismatch(e, resumed)) => {
                if resumed && allow_resume {
                    reporter.note(format_args!(
                        "the resumed {} does not verify; starting it over from {}",
                        part.path().display(),
                        source.addr()
                    ));
                    allow_resume = false;
                    continue;
                }
                // Bad bytes from this source: they must not be resumed by the next.
                part.truncate(0)?;
                reporter.note(format_args!(
                    "emptied {}: the bytes from {} are not the registered ones",
                    part.path().display(),
                    source.addr()
                ));
                return Err(Attempt::Source(e));
            }
            Err(Transfer::RestartWithoutRange) if allow_resume => {
                allow_resume = false;
                continue;
            }
            Err(Transfer::RestartWithoutRange) => {
                return Err(Attempt::Source(SourceError::BadResponse {
                    addr: source.addr(),
                    reason: "416 to a request without Range".to_owned(),
                }))
            }
            // A broken transfer keeps its bytes: the next source resumes them.
            Err(Transfer::Failed(e)) => return Err(e),
        }
    }
}

/// How a transfer from one source ended short of a verified file.
#[derive(Debug)]
enum Transfer {
    /// The bytes are complete but wrong (size or digest); `true` when part of
    /// them came from an earlier `.part`.
    Mismatch(SourceError, bool),
    /// The source answered `416` to our `Range`: its copy is not longer than ours.
    RestartWithoutRange,
    /// Anything else; the `.part` keeps what arrived.
    Failed(Attempt),
}

impl From<SourceError> for Transfer {
    fn from(e: SourceError) -> Transfer {
        Transfer::Failed(Attempt::Source(e))
    }
}

impl From<DownloadError> for Transfer {
    fn from(e: DownloadError) -> Transfer {
        Transfer::Failed(Attempt::Local(e))
    }
}

/// How much of the `.part` can be resumed: all of it, unless it is longer
/// than the source's file (then it cannot belong to it and is emptied).
/// Its bytes are checked with the rest once the transfer is complete.
pub(super) fn existing_prefix(
    part: &Part,
    source: &Source,
    reporter: &Reporter,
) -> Result<u64, DownloadError> {
    let len = part.len()?;
    if len > source.size {
        reporter.note(format_args!(
            "{} is longer than the {} bytes registered at {}; starting over",
            part.path().display(),
            source.size,
            source.addr()
        ));
        part.truncate(0)?;
        return Ok(0);
    }
    Ok(len)
}

/// One HTTP exchange: asks for the bytes after `have`, appends them to the
/// `.part`, and checks the whole against the source's size and digest.
/// Returns how many bytes of the verified file came from the old `.part`.
fn transfer(
    part: &mut Part,
    (mut have, source, name): (u64, &Source, &str),
    reporter: &Reporter,
    answered: Option<Response>,
    pool: Option<&Pool>,
) -> Result<u64, Transfer> {
    let addr = source.addr();
    let size = source.size;
    if have < size {
        let range = (have > 0).then_some(have);
        let mut response = match answered {
            Some(response) => response,
            None => match pool {
                Some(pool) => pool.request_file(source, name, range)?,
                None => request_file(source, name, range)?,
            },
        };
        if matches!(response.status, 200 | 206) {
            check_etag(&response, source, name)?;
        }
        match response.status {
            206 if range.is_some() => check_content_range(&response, source, name, have)?,
            206 => {
                return Err(SourceError::BadResponse {
                    addr,
                    reason: "206 to a request without Range".to_owned(),
                }
                .into())
            }
            200 => {
                check_length(&response, source, name)?;
                if have > 0 {
                    // The source ignored the range, or its If-Range check
                    // failed: the whole file follows, so start over.
                    part.truncate(0)?;
                    have = 0;
                }
            }
            416 if range.is_some() => return Err(Transfer::RestartWithoutRange),
            status => {
                return Err(SourceError::Status {
                    addr,
                    status,
                    reason: response.reason.clone(),
                    name: name.to_owned(),
                }
                .into())
            }
        }
        let what = format!("{name} from {addr}");
        let mut progress = reporter.transfer(what, size, have);
        let start = have;
        // The digest starts from offset 0 (a resumed prefix included) and
        // follows the writer; the guard watches for other writers from now.
        part.watch()?;
        let behind = Behind::start(part.file(), have)
            .map_err(DownloadError::io("start hashing", part.path()))?;
        let body = (start, size - have);
        let copied = copy_body(&mut response, part, &behind, name, body, &mut |n| {
            progress.set(start + n);
            !reporter.cancelled()
        });
        let copied = match copied {
            Ok(n) => n,
            Err(e) => {
                // Keep what arrived for a resume; the failure is reported by the caller.
                let _ = part.file().sync_data();
                return Err(e);
            }
        };
        let file = part.file();
        have += copied;
        if have < size {
            let _ = file.sync_data();
            return Err(SourceError::TooShort {
                addr,
                name: name.to_owned(),
                received: have,
                expected: size,
            }
            .into());
        }
        if response.content_length.is_none() && response.conn.has_more()? {
            return Err(Transfer::Mismatch(
                SourceError::TooLong {
                    addr,
                    name: name.to_owned(),
                    expected: size,
                },
                start > 0,
            ));
        }
        progress.finish();
        if let Some(pool) = pool {
            // Kept only if the exchange was complete and clean.
            pool.put(response.conn);
        }
        return verify(part, source, name, reporter, start, Some(behind));
    }
    // The .part is already complete: it only needs checking.
    verify(part, source, name, reporter, have, None)
}

/// Syncs the complete `.part` and checks the bytes on disk (the digest
/// `behind` read back, or a pass over the whole file without one);
/// `resumed_at` bytes of it came from an earlier run.
fn verify(
    part: &Part,
    source: &Source,
    name: &str,
    reporter: &Reporter,
    resumed_at: u64,
    behind: Option<Behind>,
) -> Result<u64, Transfer> {
    part.file()
        .sync_all()
        .map_err(DownloadError::io("sync", part.path()))?;
    let checked = match behind {
        Some(behind) => {
            let digested: io::Result<Digested> = behind.finish();
            part.accept(digested, source.size, &source.sha256, reporter)?
        }
        None => part.check(source.size, &source.sha256, reporter)?,
    };
    match checked {
        Checked::Verified => Ok(resumed_at),
        Checked::Mismatch { sha256, .. } => Err(Transfer::Mismatch(
            SourceError::WrongHash {
                addr: source.addr(),
                name: name.to_owned(),
                actual: sha256,
                expected: source.sha256.clone(),
            },
            resumed_at > 0,
        )),
    }
}

/// Streams at most `limit` body bytes into `part` from offset `start`,
/// telling `behind` how far the file is written and waiting when it lags
/// too far. A source that falls below [`MIN_BYTES_PER_WINDOW`] per
/// [`SLOW_WINDOW`] is dropped. `on_progress` gets the bytes copied so far
/// and answers whether to go on (`false`: the person cancelled).
fn copy_body(
    response: &mut Response,
    part: &Part,
    behind: &Behind,
    name: &str,
    (start, limit): (u64, u64),
    on_progress: &mut dyn FnMut(u64) -> bool,
) -> Result<u64, Transfer> {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut copied = 0u64;
    let mut writeback = WriteBack::start(part.file(), part.path())?;
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    while copied < limit {
        let want = usize::try_from(limit - copied)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let n = match response.conn.read_body(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SourceError::Network {
                    addr: response.conn.addr().to_owned(),
                    source,
                }
                .into())
            }
        };
        part.write_at(&buffer[..n], start + copied)?;
        copied += n as u64;
        behind.wrote_to(start + copied);
        behind.keep_up();
        if !on_progress(copied) {
            return Err(DownloadError::Cancelled {
                name: name.to_owned(),
            }
            .into());
        }
        writeback.wrote(n as u64);
        window_bytes += n as u64;
        if window_start.elapsed() >= scaled(SLOW_WINDOW) {
            if window_bytes < MIN_BYTES_PER_WINDOW {
                return Err(SourceError::TooSlow {
                    addr: response.conn.addr().to_owned(),
                    bytes: window_bytes,
                }
                .into());
            }
            window_start = Instant::now();
            window_bytes = 0;
        }
    }
    writeback.finish();
    Ok(copied)
}

/// Flushes the `.part` to disk in the background while the transfer goes on.
///
/// The file must be on disk before it is renamed; one fsync of a whole large
/// file at the end would add seconds after the last byte arrived (a 1 GiB
/// download waited 3 s for it). Instead, every [`WRITEBACK_EVERY_BYTES`] a
/// helper thread calls `fdatasync` on a second handle of the file, so the
/// write-back overlaps the transfer and the final sync only has the tail.
/// The helper starts with the first flush: a file smaller than that (most
/// files of a batch) costs no thread.
struct WriteBack {
    /// The second handle, until the helper takes it.
    handle: Option<File>,
    requests: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    unsynced: u64,
}

/// How much is written between two background flushes.
pub const WRITEBACK_EVERY_BYTES: u64 = 32 * 1024 * 1024;

impl WriteBack {
    fn start(file: &File, part: &Path) -> Result<WriteBack, Transfer> {
        let handle = file
            .try_clone()
            .map_err(DownloadError::io("duplicate the handle of", part))?;
        Ok(WriteBack {
            handle: Some(handle),
            requests: None,
            thread: None,
            unsynced: 0,
        })
    }

    /// Starts the helper thread; without one (no thread to be had) the
    /// final sync does all the work, as it would anyway.
    fn spawn(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        // At most one flush waits while another runs: more would only queue
        // the same work.
        let (requests, pending) = crossbeam_channel::bounded::<()>(1);
        self.thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for () in pending.iter() {
                    // A failure here is not final: the sync before the
                    // rename reports it.
                    let _ = handle.sync_data();
                }
            })
            .ok();
        self.requests = self.thread.as_ref().map(|_| requests);
    }

    fn wrote(&mut self, n: u64) {
        self.unsynced += n;
        if self.unsynced >= WRITEBACK_EVERY_BYTES {
            self.spawn();
            if let Some(requests) = &self.requests {
                let _ = requests.try_send(());
            }
            self.unsynced = 0;
        }
    }

    /// Waits for the flush in progress, if any.
    fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `200` must announce exactly the registered size (or nothing, and then
/// the body is cut at that size).
fn check_length(response: &Response, source: &Source, name: &str) -> Result<(), SourceError> {
    match response.content_length {
        Some(len) if len != source.size => Err(SourceError::WrongLength {
            addr: source.addr(),
            name: name.to_owned(),
            announced: len,
            expected: source.size,
        }),
        _ => Ok(()),
    }
}

/// A `206` must cover exactly the bytes after `have` of a file of the
/// registered size.
fn check_content_range(
    response: &Response,
    source: &Source,
    name: &str,
    have: u64,
) -> Result<(), SourceError> {
    let bad = |reason: String| SourceError::BadResponse {
        addr: source.addr(),
        reason,
    };
    let Some(value) = response.content_range.as_deref() else {
        return Err(bad("206 without Content-Range".to_owned()));
    };
    let (first, last, total) =
        parse_content_range(value).ok_or_else(|| bad(format!("bad Content-Range {value:?}")))?;
    if total != source.size {
        return Err(SourceError::WrongLength {
            addr: source.addr(),
            name: name.to_owned(),
            announced: total,
            expected: source.size,
        });
    }
    if first != have || last + 1 != total {
        return Err(bad(format!(
            "Content-Range {value:?} is not the requested bytes {have}-"
        )));
    }
    if let Some(len) = response.content_length {
        if len != total - first {
            return Err(bad(format!(
                "Content-Length {len} does not match Content-Range {value:?}"
            )));
        }
    }
    Ok(())
}
