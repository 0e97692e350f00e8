//! Downloading one file by name: ask the registry for its sources, fetch it
//! from them over HTTP/1.1 into `<downloads>/<name>.part` (locked for the
//! whole download), fsync it, check the bytes on disk against the size and
//! SHA-256 the sources registered, then rename it, never replacing a file,
//! to `<downloads>/<name>`.
//!
//! # Layout
//! - this module: the entry points ([`download`], [`search`],
//!   [`download_from`], and [`download_pooled`] for a batch), [`Options`]
//!   and [`Outcome`]; it picks the path.
//! - `error`: [`DownloadError`] (the download fails) and [`SourceError`]
//!   (one source is left out).
//! - [`limits`]: every time limit and buffer size (and the test scale).
//! - [`text`]: control characters from the network escaped for printing.
//! - `choose`: usable sources (IP literals), which content to fetch when
//!   sources disagree (distinct hosts), `--sha256`.
//! - `part`: the `.part` file's life: name, open and lock, write it through
//!   its change guard (other writers are noticed), check the bytes on disk,
//!   publish without replacing; the file already under the final name.
//! - `behind`: the whole-file SHA-256 on a thread of its own, from the
//!   bytes read back from the `.part` a bounded distance behind the writer
//!   (both paths), so hashing overlaps receiving.
//! - `coordinator`: several sources at once, piece by piece, each piece
//!   checked against the `/pieces` list as it arrives; `swarm` is the state
//!   its workers share, `worker` one source's worker, [`scheduler`] decides
//!   who fetches what, [`resume`] the record of verified pieces that lets an
//!   interrupted download go on.
//! - `sequential`: one source after the other, the whole file per `GET`,
//!   resumed from a `.part` prefix (the original design; also the fallback);
//!   `hedge` asks the next source too when one is slow to answer.
//! - [`http`]: the client side of HTTP/1.1 (connections, heads with
//!   deadlines, bodies, chunked).
//! - [`pool`]: idle keep-alive connections kept between the files of a
//!   batch, per source, bounded; a reused connection the source closed
//!   meanwhile is replaced once (sequential path only).
//!
//! Imports go one way: (`limits`, `text`, `behind`) ← `error` ← `http` ←
//! `pool` ← (`part`, `swarm`, `choose`, `hedge`) ← `worker` ← `coordinator`,
//! `sequential` ← this module.
//!
//! # Which path
//! The multi-source path runs when `--max-sources` is at least 2, at least
//! two live sources registered the chosen content, and the file is larger
//! than one [`PIECE_SIZE`]. It falls back to the sequential path, without
//! the sources it found bad, when no source serves a piece list, when every
//! source failed, or when the finished file does not match the registered
//! SHA-256 (the piece list lied: it is discarded with its bytes).
//!
//! This module must not: let a name become a path before [`check_name`]
//! accepted it; trust a peer's `Content-Length` or `Content-Range` beyond the
//! registered size; ever let unverified bytes appear under the final name;
//! overwrite a file that is already in the downloads folder.

mod behind;
mod choose;
mod coordinator;
mod error;
mod hedge;
pub mod http;
pub mod limits;
mod part;
pub mod pool;
pub mod resume;
pub mod scheduler;
mod sequential;
mod swarm;
pub mod text;
mod worker;

#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use p2p_proto::client::Client;
use p2p_proto::protocol::{check_name, to_hex, Source};

use crate::pieces::PIECE_SIZE;
use crate::progress::Reporter;
use part::{check_existing, Part};
use sequential::Attempt;

pub use behind::{HASH_READ_BYTES, MAX_HASH_LAG_BYTES};
pub use choose::{alternatives, choose_content, is_ip_literal, parse_sha256, Alternative};
pub use coordinator::{LIST_TIMEOUT, SYNC_EVERY_BYTES};
pub use error::{DownloadError, SourceError};
pub use limits::{
    CONNECT_TIMEOUT, COPY_BUFFER_BYTES, MIN_BYTES_PER_WINDOW, READ_TIMEOUT, SLOW_WINDOW,
    WRITE_TIMEOUT,
};
pub use part::{part_name, MAX_FILE_NAME_BYTES, PART_SUFFIX};
pub use pool::{Pool, PoolStats};
pub use swarm::PROGRESS_TICK;
pub use text::printable;

/// Default for `--max-sources`: four connections fill a LAN link from
/// peers whose uplinks are each a fraction of it, without crowding them.
pub const DEFAULT_MAX_SOURCES: usize = 4;

/// Largest `--max-sources`: each source is a thread and holds one piece
/// ([`crate::pieces::PIECE_SIZE`], up to [`crate::pieces::MAX_PIECE_SIZE`])
/// in memory.
pub const MAX_SOURCES_LIMIT: usize = 16;

/// How a download may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Most sources fetched from at once (1: one after the other).
    pub max_sources: usize,
    /// Only the content with this SHA-256 (`peer get --sha256`; a menu or
    /// UI lets the person choose among the alternatives). `None`: the
    /// content the most distinct hosts registered.
    pub sha256: Option<[u8; 32]>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_sources: DEFAULT_MAX_SOURCES,
            sha256: None,
        }
    }
}

/// How long the registry may take to accept the connection, and then to
/// send each whole reply.
pub const REGISTRY_TIMEOUT: std::time::Duration = p2p_proto::client::DEFAULT_TIMEOUT;

/// Most sources one download tries, whatever the registry lists: a
/// hostile registry's hundreds of stalling sources cannot hold a download
/// for longer than this many first-byte deadlines.
pub const MAX_SOURCES_TRIED: usize = 20;

/// What a successful [`download`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file was fetched, verified and renamed into place.
    Downloaded {
        path: PathBuf,
        size: u64,
        sha256: String,
        /// `host:port` of the source that delivered it, or of every source
        /// that delivered pieces of it (comma-separated).
        from: String,
        /// Bytes that came from an existing `.part` rather than the network.
        resumed_at: u64,
    },
    /// The downloads folder already holds this content under this name.
    AlreadyPresent {
        path: PathBuf,
        /// Bytes of the file as it was hashed.
        size: u64,
        sha256: String,
    },
}

impl Outcome {
    /// Bytes of the file now in the downloads folder.
    pub fn size(&self) -> u64 {
        match self {
            Outcome::Downloaded { size, .. } | Outcome::AlreadyPresent { size, .. } => *size,
        }
    }
}

/// Looks `name` up in the registry at `registry` and downloads it into
/// `downloads` (created when missing).
pub fn download(
    registry: &str,
    name: &str,
    downloads: &Path,
    options: &Options,
    reporter: &Reporter,
) -> Result<Outcome, DownloadError> {
    let sources = search(registry, name)?;
    download_from(&sources, name, downloads, options, reporter)
}

/// The live sources of `name`, most recently seen first; never empty
/// (no source is [`DownloadError::NotFound`]).
pub fn search(registry: &str, name: &str) -> Result<Vec<Source>, DownloadError> {
    check_name(name).map_err(|reason| DownloadError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    // One deadline for connecting and one for each reply (the client's),
    // shortened with the other limits in tests.
    let sources = Client::connect_timeout(registry, limits::scaled(REGISTRY_TIMEOUT))
        .and_then(|mut client| client.search(name))
        .map_err(|source| DownloadError::Registry {
            name: name.to_owned(),
            source,
        })?;
    if sources.is_empty() {
        return Err(DownloadError::NotFound {
            name: name.to_owned(),
            registry: registry.to_owned(),
        });
    }
    Ok(sources)
}

/// Downloads `name` from `sources`: from several at once when it can (see
/// the module doc), else from the first that delivers it intact.
pub fn download_from(
    sources: &[Source],
    name: &str,
    downloads: &Path,
    options: &Options,
    reporter: &Reporter,
) -> Result<Outcome, DownloadError> {
    fetch_into(sources, name, downloads, options, reporter, None)
}

/// [`download_from`] for one file of a batch: the sequential path asks over
/// `pool`'s idle keep-alive connections and leaves clean ones there for the
/// next file (the multi-source path keeps its own connections).
pub fn download_pooled(
    sources: &[Source],
    name: &str,
    downloads: &Path,
    options: &Options,
    reporter: &Reporter,
    pool: &Pool,
) -> Result<Outcome, DownloadError> {
    fetch_into(sources, name, downloads, options, reporter, Some(pool))
}

fn fetch_into(
    sources: &[Source],
    name: &str,
    downloads: &Path,
    options: &Options,
    reporter: &Reporter,
    pool: Option<&Pool>,
) -> Result<Outcome, DownloadError> {
    let result = fetch_chosen(sources, name, downloads, options, reporter, pool);
    // The versions are listed once the file is there: a failed `peer get`
    // says why in one line on stderr, and that line is all it prints there.
    if result.is_ok() && options.sha256.is_none() {
        let usable = choose::usable(sources, &Reporter::quiet());
        choose::report_disagreement(&usable, name, reporter);
    }
    result
}

fn fetch_chosen(
    sources: &[Source],
    name: &str,
    downloads: &Path,
    options: &Options,
    reporter: &Reporter,
    pool: Option<&Pool>,
) -> Result<Outcome, DownloadError> {
    check_name(name).map_err(|reason| DownloadError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    fs::create_dir_all(downloads)
        .map_err(|e| match e.kind() {
            // What create_dir_all says of a file in the way: "File exists".
            io::ErrorKind::AlreadyExists => io::Error::other("it exists and is not a folder"),
            _ => e,
        })
        .map_err(DownloadError::io("create downloads folder", downloads))?;
    let target = downloads.join(name);

    let usable = choose::usable(sources, reporter);
    let mut content = match options.sha256 {
        Some(pin) => {
            let pin = to_hex(&pin);
            let content = choose::pinned(&usable, &pin);
            if content.is_empty() && !usable.is_empty() {
                return Err(DownloadError::NoSuchContent {
                    name: name.to_owned(),
                    sha256: pin,
                });
            }
            content
        }
        None => choose_content(&usable),
    };
    content.truncate(MAX_SOURCES_TRIED);
    // A file already there is checked against the content that may be
    // fetched (any registered one, unless a digest was pinned).
    let acceptable = if options.sha256.is_some() {
        &content
    } else {
        &usable
    };
    if fs::symlink_metadata(&target).is_ok() {
        if let Some(outcome) = check_existing(&target, acceptable, reporter)? {
            return Ok(outcome);
        }
    }
    let Some(chosen) = content.first().cloned() else {
        if !sources.is_empty() && usable.is_empty() {
            return Err(DownloadError::NoUsableSource {
                name: name.to_owned(),
                left_out: sources.len(),
            });
        }
        return Err(DownloadError::NotFound {
            name: name.to_owned(),
            registry: "(no sources given)".to_owned(),
        });
    };

    let mut part = Part::open(downloads, name, reporter)?;
    // Another download may have published the file while we waited.
    if fs::symlink_metadata(&target).is_ok() {
        let existing = check_existing(&target, acceptable, reporter);
        part.remove_if_empty()?;
        return existing?.ok_or_else(|| DownloadError::Appeared {
            path: target.clone(),
            part: downloads.join(part::part_name(name)),
        });
    }
    if let Err(e) = part::check_space(downloads, chosen.size.saturating_sub(part.len()?)) {
        part.remove_if_empty()?;
        return Err(e);
    }

    let mut failed: Vec<(String, SourceError)> = Vec::new();
    let shareable = chosen.size > PIECE_SIZE;
    if options.max_sources >= 2 && content.len() >= 2 && shareable {
        match coordinator::download(&content, name, &part, options.max_sources, reporter)? {
            coordinator::Ended::Done(done) => {
                part.publish(&target, downloads)?;
                return Ok(Outcome::Downloaded {
                    path: target,
                    size: chosen.size,
                    sha256: chosen.sha256.clone(),
                    from: done.from.join(", "),
                    resumed_at: done.reused_bytes,
                });
            }
            coordinator::Ended::Fallback(fallback) => {
                reporter.note(format_args!(
                    "{}; going on with one source at a time",
                    fallback.reason
                ));
                failed = fallback.failed;
            }
        }
    }
    part.prepare_sequential()?;

    // One source at a time, but asked hedged (see `hedge`): a stalling
    // source costs the next one a short delay, not its whole deadline.
    let mut last = None;
    let mut tried = 0;
    let mut remaining: Vec<&Source> = Vec::new();
    for source in &content {
        let addr = source.addr();
        match failed.iter().position(|(a, _)| *a == addr) {
            Some(index) => {
                tried += 1;
                last = Some(failed.swap_remove(index).1);
            }
            None => remaining.push(source),
        }
    }
    while let Some(&first) = remaining.first() {
        let have = sequential::existing_prefix(&part, first, reporter)?;
        let raced = hedge::race(&remaining, name, (have > 0).then_some(have), pool);
        let mut gone: Vec<usize> = Vec::new();
        // A failure is noted only when another source is tried after it:
        // the last one's is in the error the download ends with.
        let untried = remaining.len() - raced.failed.len();
        let failures = raced.failed.len();
        for (n, (index, error)) in raced.failed.into_iter().enumerate() {
            if untried > 0 || n + 1 < failures {
                reporter.note(format_args!("{error}; trying the next source"));
            }
            tried += 1;
            gone.push(index);
            last = Some(error);
        }
        if let Some((index, response)) = raced.winner {
            let source = remaining[index];
            tried += 1;
            gone.push(index);
            match sequential::fetch(source, name, &mut part, reporter, Some(response), pool) {
                Ok(fetched) => {
                    part.publish(&target, downloads)?;
                    return Ok(Outcome::Downloaded {
                        path: target,
                        size: source.size,
                        sha256: source.sha256.clone(),
                        from: source.addr(),
                        resumed_at: fetched.resumed_at,
                    });
                }
                Err(Attempt::Local(e)) => return Err(e),
                Err(Attempt::Source(e)) => {
                    if remaining.len() > gone.len() {
                        reporter.note(format_args!("{e}; trying the next source"));
                    }
                    last = Some(e);
                }
            }
        }
        if gone.is_empty() {
            break;
        }
        let mut index = 0;
        remaining.retain(|_| {
            index += 1;
            !gone.contains(&(index - 1))
        });
    }
    part.remove_if_empty()?;
    match last {
        Some(last) => Err(DownloadError::AllSourcesFailed {
            name: name.to_owned(),
            tried,
            last: Box::new(last),
        }),
        None => Err(DownloadError::NotFound {
            name: name.to_owned(),
            registry: "(no sources given)".to_owned(),
        }),
    }
}
