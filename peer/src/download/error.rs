//! Why a download, or one source of it, failed. [`DownloadError`] ends the
//! download (this machine, the registry, or every source failed);
//! [`SourceError`] only leaves one source out. Every message names the file,
//! path or address involved and fits on one line. This module must not do
//! I/O.

use std::io;
use std::path::{Path, PathBuf};

use p2p_proto::client::ClientError;
use p2p_proto::protocol::NameError;

use super::limits::{scaled, SLOW_WINDOW};
use super::text::printable;

/// Why a download did not happen. Every message names the file, path or
/// address involved and fits on one line.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad file name {name:?}: {reason}")]
    BadName { name: String, reason: NameError },
    #[error("cannot search the registry for {name:?}: {}", printable(&source.to_string()))]
    Registry { name: String, source: ClientError },
    #[error("no peer shares {name:?} (the registry at {registry} knows no live source)")]
    NotFound { name: String, registry: String },
    #[error(
        "{} already exists with other content (sha256 {actual}, the sources have {expected}); \
         move or delete it and run the download again",
        path.display()
    )]
    Conflict {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{} already exists and is not a regular file; move it away and run the download again", path.display())]
    NotAFile { path: PathBuf },
    #[error("every source of {name:?} failed ({tried} tried); the last one: {last}")]
    AllSourcesFailed {
        name: String,
        tried: usize,
        last: Box<SourceError>,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("another download of {name:?} is in progress ({} is locked); wait for it to end", path.display())]
    Busy { name: String, path: PathBuf },
    #[error(
        "not enough room in {} for the download: {needed} bytes needed, {free} free",
        path.display()
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error(
        "{} appeared during the download and is kept; the verified download stays in {}",
        path.display(),
        part.display()
    )]
    Appeared { path: PathBuf, part: PathBuf },
    #[error("no source of {name:?} has the content with sha256 {sha256} (asked with --sha256)")]
    NoSuchContent { name: String, sha256: String },
    #[error("no usable source of {name:?}: the {left_out} sources the registry gave are not IP addresses")]
    NoUsableSource { name: String, left_out: usize },
    #[error("cannot start a download thread: {0}")]
    Thread(io::Error),
    /// The person cancelled it (web UI); the `.part` stays for a resume.
    #[error("the download of {name:?} was cancelled")]
    Cancelled { name: String },
}

impl DownloadError {
    /// Whether the name simply has no source (as opposed to a failure).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            DownloadError::NotFound { .. } | DownloadError::NoUsableSource { .. }
        )
    }

    pub(super) fn io<'a>(
        action: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(io::Error) -> DownloadError + 'a {
        move |source| DownloadError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Why one source could not deliver the file (or a piece of it); the
/// download goes on with the other sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("transfer from {addr} failed: {source}")]
    Network { addr: String, source: io::Error },
    #[error("{addr} sent nothing within the time limit (stalled); left out")]
    Stalled { addr: String },
    #[error("{addr} sent only {bytes} bytes in {:.1}s: too slow, dropped", scaled(SLOW_WINDOW).as_secs_f32())]
    TooSlow { addr: String, bytes: u64 },
    #[error("{addr} sent a malformed HTTP response: {}", printable(reason))]
    BadResponse { addr: String, reason: String },
    #[error("{addr} answered {status} {} for {name:?}", printable(reason))]
    Status {
        addr: String,
        status: u16,
        reason: String,
        name: String,
    },
    #[error(
        "{addr} no longer has the registered version of {name:?} (its ETag is {})",
        printable(etag)
    )]
    Changed {
        addr: String,
        name: String,
        etag: String,
    },
    #[error("{addr} announced {announced} bytes of {name:?} where {expected} are registered")]
    WrongLength {
        addr: String,
        name: String,
        announced: u64,
        expected: u64,
    },
    #[error("{addr} sent more than the registered {expected} bytes of {name:?}")]
    TooLong {
        addr: String,
        name: String,
        expected: u64,
    },
    #[error(
        "{addr} sent {received} of the {expected} bytes of {name:?}, then closed the connection"
    )]
    TooShort {
        addr: String,
        name: String,
        received: u64,
        expected: u64,
    },
    #[error("{addr} sent bytes of {name:?} with sha256 {actual}, not the registered {expected}")]
    WrongHash {
        addr: String,
        name: String,
        actual: String,
        expected: String,
    },
    #[error("{addr} sent a corrupt piece {index} of {name:?} (its sha256 is not the one in the piece list)")]
    BadPiece {
        addr: String,
        name: String,
        index: usize,
    },
    #[error(
        "{addr} sent an unusable piece list for {name:?}: {}",
        printable(reason)
    )]
    BadPieceList {
        addr: String,
        name: String,
        reason: String,
    },
    #[error("the piece list of {name:?} from {addr} does not add up to the registered sha256 {expected}")]
    ListMismatch {
        addr: String,
        name: String,
        expected: String,
    },
}
