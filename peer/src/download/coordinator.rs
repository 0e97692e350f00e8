//! The coordinator of a multi-source download: several sources at once, one connection and
//! one worker thread each, piece by piece into the `.part` file.
//!
//! # How it runs
//! 1. Every worker connects to its source and, until some source has
//!    delivered one, asks it for the piece list (`GET /pieces/<name>`). The
//!    first list whose size and SHA-256 are the registered ones is taken.
//!    A source without a list (`404`: curl-like servers, older peers) still
//!    serves ranges. No list from any source means the sequential path.
//! 2. The coordinator (the calling thread) checks what an earlier run left
//!    in the `.part` ([`resume`]): every piece recorded as verified, or,
//!    without a record, every whole piece in the file, is read back and
//!    kept when it matches the list. Then the [`Scheduler`] hands out the
//!    rest.
//! 3. Workers fetch their piece with a `Range` request on their keep-alive
//!    connection into a piece buffer, hashing as the bytes come; a verified
//!    piece is written in place (`write_at`) by the first worker that has
//!    it and recorded. A corrupt piece excludes its source (named in the
//!    output); its piece goes back to the others.
//! 4. Meanwhile the coordinator fsyncs now and then and draws the progress
//!    (bytes and active sources). When the last piece is in, the whole-file
//!    SHA-256 of the bytes on disk decides: the registered one means done;
//!    another means the piece list was a lie (or another program wrote into
//!    the `.part`), so its bytes are dropped, the list's source is excluded
//!    and the caller falls back to the sequential path.
//!
//! Stopping (done, failed, or a local error) shuts every worker's socket
//! down so no thread stays blocked on a stalled source.
//!
//! This module must not: write a byte that is not part of a verified piece
//! into the `.part`; write after the download has finished; hold more than
//! one piece buffer per worker.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_proto::protocol::Source;

use super::behind::Behind;
use super::error::{DownloadError, SourceError};
use super::limits::{scaled, READ_TIMEOUT};
use super::part::{Checked, Part};
use super::resume::{self, Writer};
use super::scheduler::{Failure, Scheduler};
use super::swarm::{Swarm, PROGRESS_TICK};
use super::worker;
use crate::pieces::PieceList;
use crate::progress::{Progress, Reporter};

/// How long the sources together may take to deliver a piece list; a
/// source that trickles its list cannot hold the download longer (the
/// sequential path then takes over).
pub const LIST_TIMEOUT: Duration = READ_TIMEOUT;

/// The coordinator fsyncs the `.part` after hashing this many more bytes,
/// so the final fsync has little left to write and recorded pieces reach
/// the disk soon after they are recorded.
pub const SYNC_EVERY_BYTES: u64 = 64 * 1024 * 1024;

/// How a multi-source download ended, short of an error of this machine.
#[derive(Debug)]
pub enum Ended {
    /// The `.part` is complete, verified and fsynced.
    Done(Finished),
    /// Go on with the sequential path.
    Fallback(Fallback),
}

/// A verified multi-source download.
#[derive(Debug)]
pub struct Finished {
    /// `host:port` of each source that delivered pieces.
    pub from: Vec<String>,
    /// Bytes of pieces that were already in the `.part`.
    pub reused_bytes: u64,
}

/// Why the sequential path must take over, and which sources not to ask
/// again.
#[derive(Debug)]
pub struct Fallback {
    /// One line for the person watching.
    pub reason: String,
    /// `host:port` of each source that failed, with its error.
    pub failed: Vec<(String, SourceError)>,
}

/// Downloads `name` from `sources` (all registered with the same size and
/// SHA-256, most recently seen first) into `part`, with at most
/// `max_sources` sources at once.
pub fn download(
    sources: &[Source],
    name: &str,
    part: &Part,
    max_sources: usize,
    reporter: &Reporter,
) -> Result<Ended, DownloadError> {
    let part_path = part.path();
    let swarm = Swarm::new(sources, name, part, part_path);
    let workers = max_sources.clamp(1, sources.len().max(1));
    let ended = thread::scope(|scope| {
        for i in 0..workers {
            // Taken here, not in the thread, so the coordinator never sees
            // a moment where nobody is asking for the list yet.
            let first = swarm.first_source();
            let swarm = &swarm;
            let spawned = thread::Builder::new()
                .name(format!("source-{i}"))
                .spawn_scoped(scope, move || worker::work(swarm, first));
            if let Err(e) = spawned {
                swarm.stop();
                return Err(DownloadError::Thread(e));
            }
        }
        let ended = coordinate(&swarm, part, workers, reporter);
        swarm.stop();
        ended
    })?;
    match ended {
        Coordinated::Done(done) => Ok(Ended::Done(done)),
        Coordinated::Fallback { reason, keep } => {
            // The sequential path resumes a prefix: keep the verified
            // pieces that start the file, if the list deserves trust.
            if let Some(keep) = keep {
                part.truncate(keep)?;
                let record = resume::record_path(part_path);
                resume::remove(&record).map_err(DownloadError::io("delete", &record))?;
            }
            let failed = swarm
                .take_failures()
                .into_iter()
                .map(|(id, e)| (sources[id].addr(), e))
                .collect();
            Ok(Ended::Fallback(Fallback { reason, failed }))
        }
    }
}

/// What the coordinator decided.
enum Coordinated {
    Done(Finished),
    /// Fall back, keeping the first `keep` bytes of the `.part` (`None`:
    /// leave it and its record as they are).
    Fallback {
        reason: String,
        keep: Option<u64>,
    },
}

/// The coordinator: waits for the list, resumes, then follows the download
/// to its end (see the module doc).
fn coordinate(
    swarm: &Swarm<'_>,
    part: &Part,
    workers: usize,
    reporter: &Reporter,
) -> Result<Coordinated, DownloadError> {
    let name = swarm.name;
    let list_deadline = Instant::now() + scaled(LIST_TIMEOUT);
    let (list, list_from) = loop {
        let mut state = swarm.lock();
        if let Some(local) = state.local.take() {
            return Err(local);
        }
        if let (Some(list), Some(from)) = (&state.list, state.list_from) {
            break (Arc::clone(list), from);
        }
        let late = Instant::now() >= list_deadline;
        if state.listing == 0 || late {
            let notes = std::mem::take(&mut state.notes);
            drop(state);
            for note in notes {
                reporter.note(note);
            }
            let reason = if late {
                format!(
                    "no source of {name:?} delivered a piece list within {:.1}s",
                    scaled(LIST_TIMEOUT).as_secs_f32()
                )
            } else {
                format!("no source of {name:?} serves a piece list")
            };
            return Ok(Coordinated::Fallback { reason, keep: None });
        }
        drop(swarm.wait(state, PROGRESS_TICK));
    };

    let (done, reused_bytes) = check_existing_pieces(swarm, &list, reporter)?;
    swarm.part.truncate(list.size)?;
    // The whole-file digest follows the pieces that are written in file
    // order, read back from the `.part` on a thread of its own.
    part.watch()?;
    let behind = Behind::start(part.file(), 0)
        .map_err(DownloadError::io("start hashing", swarm.part_path))?;
    let record_path = resume::record_path(swarm.part_path);
    let record = match Writer::create(&record_path, &list, &done) {
        Ok(record) => Some(record),
        Err(e) => {
            reporter.note(format_args!(
                "cannot record verified pieces in {} ({e}); an interrupted download will check the whole .part",
                record_path.display()
            ));
            None
        }
    };
    {
        let mut state = swarm.lock();
        let lens = (0..list.len()).map(|i| list.piece_len(i));
        let mut scheduler = Scheduler::new(lens, &done, swarm.sources.len());
        for &id in &state.excluded_early {
            scheduler.failed(id, None, Failure::Fatal);
        }
        state.scheduler = Some(scheduler);
        state.record = record;
        swarm.bump(&mut state);
    }

    let total = swarm.sources.len();
    let what = if workers < total {
        format!("{name} from {workers} of its {total} sources")
    } else {
        format!("{name} from {total} sources")
    };
    let mut progress = reporter.transfer(what, list.size, reused_bytes);
    // Pieces done in file order so far (`hashed`), for the periodic fsync.
    let mut hashed = 0usize;
    let mut unsynced = 0u64;
    loop {
        let (finished, alive, position, active, notes, ready, seen) = {
            let mut state = swarm.lock();
            if let Some(local) = state.local.take() {
                return Err(local);
            }
            let notes = std::mem::take(&mut state.notes);
            let Some(scheduler) = &state.scheduler else {
                return Ok(Coordinated::Fallback {
                    reason: "the download lost its state".to_owned(),
                    keep: Some(0),
                });
            };
            let mut ready = hashed;
            while scheduler.is_done(ready) {
                ready += 1;
            }
            (
                scheduler.finished(),
                scheduler.alive(),
                scheduler.position(),
                scheduler.active(),
                notes,
                ready,
                state.generation,
            )
        };
        for note in notes {
            progress.note(note);
        }
        progress.set(position);
        progress.set_detail(format_args!("{active} of {workers} sources active"));
        if reporter.cancelled() {
            return Err(DownloadError::Cancelled {
                name: swarm.name.to_owned(),
            });
        }
        if ready > hashed {
            for index in hashed..ready {
                unsynced += list.piece_len(index);
            }
            hashed = ready;
            behind.wrote_to(list.range(hashed - 1).end);
            if unsynced >= SYNC_EVERY_BYTES {
                swarm
                    .part
                    .file()
                    .sync_data()
                    .map_err(DownloadError::io("sync", swarm.part_path))?;
                unsynced = 0;
            }
            continue;
        }
        if finished && hashed == list.len() {
            break;
        }
        if alive == 0 {
            let keep = list.range(hashed).start;
            return Ok(Coordinated::Fallback {
                reason: format!(
                    "every source of {name:?} failed (the first {} are verified)",
                    p2p_proto::units::human_size(keep)
                ),
                keep: Some(keep),
            });
        }
        let state = swarm.lock();
        if state.generation == seen {
            drop(swarm.wait(state, PROGRESS_TICK));
        }
    }
    swarm.stop();
    progress.finish();

    // The whole-file digest of the bytes read back from disk, checked once
    // they are all there and synced: what is checked is what will be
    // published (hashed again when another program changed the file).
    swarm
        .part
        .file()
        .sync_all()
        .map_err(DownloadError::io("sync", swarm.part_path))?;
    let expected = &swarm.sources[list_from].sha256;
    if part.accept(behind.finish(), list.size, expected, reporter)? != Checked::Verified {
        let error = SourceError::ListMismatch {
            addr: swarm.sources[list_from].addr(),
            name: name.to_owned(),
            expected: expected.clone(),
        };
        reporter.note(format_args!("{error}; dropping its pieces"));
        // Only the list's source is to blame: pieces that failed against a
        // lying list say nothing about their senders.
        let mut state = swarm.lock();
        state.failures.clear();
        state.failures.push((list_from, error));
        return Ok(Coordinated::Fallback {
            reason: format!("the piece list of {name:?} cannot be trusted"),
            keep: Some(0),
        });
    }
    let record_path = resume::record_path(swarm.part_path);
    resume::remove(&record_path).map_err(DownloadError::io("delete", &record_path))?;

    let state = swarm.lock();
    let delivered = state
        .scheduler
        .as_ref()
        .map(Scheduler::delivered)
        .unwrap_or_default();
    let fetched: usize = delivered.iter().sum();
    let by_source: Vec<String> = delivered
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(id, n)| format!("{} {n}", swarm.sources[id].addr()))
        .collect();
    let reused = list.len() - fetched;
    reporter.note(format_args!(
        "fetched {fetched} of {} pieces{} (pieces per source: {})",
        list.len(),
        if reused > 0 {
            format!(
                ", {reused} were already verified in {}",
                swarm.part_path.display()
            )
        } else {
            String::new()
        },
        if by_source.is_empty() {
            "none".to_owned()
        } else {
            by_source.join(", ")
        }
    ));
    let from = delivered
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(id, _)| swarm.sources[id].addr())
        .collect();
    Ok(Coordinated::Done(Finished { from, reused_bytes }))
}

/// The `.part`'s length now (kept as it is when no list was found).
fn current_len(swarm: &Swarm<'_>) -> Result<u64, DownloadError> {
    swarm
        .part
        .file()
        .metadata()
        .map(|m| m.len())
        .map_err(DownloadError::io("inspect", swarm.part_path))
}

/// Which pieces an earlier run left verified in the `.part`: the ones its
/// record lists, or every whole piece in the file when there is no
/// matching record; each is read back and checked. Returns the mask and
/// the bytes kept.
fn check_existing_pieces(
    swarm: &Swarm<'_>,
    list: &PieceList,
    reporter: &Reporter,
) -> Result<(Vec<bool>, u64), DownloadError> {
    let mut done = vec![false; list.len()];
    let len = current_len(swarm)?;
    if len == 0 {
        return Ok((done, 0));
    }
    let record_path = resume::record_path(swarm.part_path);
    let record = resume::read(&record_path).map_err(DownloadError::io("read", &record_path))?;
    let candidates: Vec<usize> = match record.filter(|r| r.matches(list)) {
        Some(record) => record
            .pieces
            .iter()
            .filter_map(|&i| usize::try_from(i).ok())
            .filter(|&i| i < list.len() && list.range(i).end <= len)
            .collect(),
        None => (0..list.len())
            .filter(|&i| list.range(i).end <= len)
            .collect(),
    };
    if candidates.is_empty() {
        return Ok((done, 0));
    }
    let check_bytes: u64 = candidates.iter().map(|&i| list.piece_len(i)).sum();
    let mut progress: Progress =
        reporter.hashing(swarm.part_path.display().to_string(), check_bytes);
    let mut piece = Vec::new();
    let mut checked = 0u64;
    let mut kept = 0u64;
    for index in candidates {
        let range = list.range(index);
        piece.resize((range.end - range.start) as usize, 0);
        swarm
            .part
            .file()
            .read_exact_at(&mut piece, range.start)
            .map_err(DownloadError::io("read", swarm.part_path))?;
        if list.verify(index, &piece) {
            done[index] = true;
            kept += piece.len() as u64;
        }
        checked += piece.len() as u64;
        progress.set(checked);
    }
    progress.finish();
    let verified = done.iter().filter(|&&d| d).count();
    if verified > 0 {
        reporter.note(format_args!(
            "{}: {verified} of {} pieces already verified",
            swarm.part_path.display(),
            list.len()
        ));
    }
    Ok((done, kept))
}
