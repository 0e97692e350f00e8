//! Downloading one file by name: ask the registry for its sources, fetch it
//! from them over HTTP/1.1 into `<downloads>/<name>.part`, check size and
//! SHA-256 against what the sources registered, then fsync and rename it
//! atomically to `<downloads>/<name>`.
//!
//! # Layout
//! - this module: the entry points, the errors, choosing the content (the
//!   size and SHA-256 most sources registered) and the path to fetch it by.
//! - [`multi`]: several sources at once, piece by piece, each piece checked
//!   against the `/pieces` list as it arrives; [`scheduler`] decides who
//!   fetches what, [`source`] is one source's worker, [`resume`] the record
//!   of verified pieces that lets an interrupted download go on.
//! - [`single`]: one source after the other, the whole file per `GET`,
//!   resumed from a `.part` prefix (the original design; also the fallback).
//! - [`http`]: the client side of HTTP/1.1 (connections, heads, bodies).
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

pub mod http;
pub mod multi;
pub mod resume;
pub mod scheduler;
pub mod single;
pub mod source;

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_proto::client::{Client, ClientError};
use p2p_proto::protocol::{check_name, to_hex, NameError, Source};
use sha2::{Digest, Sha256};

use crate::pieces::PIECE_SIZE;
use crate::progress::Reporter;
use http::ResponseHead;
use single::Attempt;

pub use http::{CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT};

/// Size of the one buffer a sequential transfer streams through.
pub const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Suffix of the file a download is written to until it is verified.
pub const PART_SUFFIX: &str = ".part";

/// A body must bring at least [`MIN_BYTES_PER_WINDOW`] bytes in every
/// window of this length, or its source is dropped as too slow. A source
/// that trickles a byte at a time never trips [`READ_TIMEOUT`], yet must not
/// hold a download for hours while a good source waits.
pub const SLOW_WINDOW: Duration = READ_TIMEOUT;

/// See [`SLOW_WINDOW`]: about 2 KiB/s, far below any working LAN link.
pub const MIN_BYTES_PER_WINDOW: u64 = 64 * 1024;

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_sources: DEFAULT_MAX_SOURCES,
        }
    }
}

/// Why a download did not happen. Every message names the file, path or
/// address involved and fits on one line.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bad file name {name:?}: {reason}")]
    BadName { name: String, reason: NameError },
    #[error("cannot search the registry for {name:?}: {source}")]
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
    #[error("cannot start a download thread: {0}")]
    Thread(io::Error),
}

impl DownloadError {
    /// Whether the name simply has no source (as opposed to a failure).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DownloadError::NotFound { .. })
    }

    fn io<'a>(
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
    #[error("{addr} sent nothing for {}s", READ_TIMEOUT.as_secs())]
    Stalled { addr: String },
    #[error("{addr} sent only {bytes} bytes in {}s: too slow, dropped", SLOW_WINDOW.as_secs())]
    TooSlow { addr: String, bytes: u64 },
    #[error("{addr} sent a malformed HTTP response: {reason}")]
    BadResponse { addr: String, reason: String },
    #[error("{addr} answered {status} {reason} for {name:?}")]
    Status {
        addr: String,
        status: u16,
        reason: String,
        name: String,
    },
    #[error("{addr} no longer has the registered version of {name:?} (its ETag is {etag})")]
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
    #[error("{addr} sent an unusable piece list for {name:?}: {reason}")]
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
    AlreadyPresent { path: PathBuf, sha256: String },
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
    let sources = Client::connect(registry)
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

/// The sources of the content most of them registered (same size and
/// SHA-256); between equally common versions, the one seen most recently.
/// Keeps the registry's order.
pub fn choose_content(sources: &[Source]) -> Vec<Source> {
    let mut best: Option<(usize, &Source)> = None;
    for candidate in sources {
        let count = sources
            .iter()
            .filter(|s| s.size == candidate.size && s.sha256 == candidate.sha256)
            .count();
        if best.is_none_or(|(most, _)| count > most) {
            best = Some((count, candidate));
        }
    }
    let Some((_, chosen)) = best else {
        return Vec::new();
    };
    sources
        .iter()
        .filter(|s| s.size == chosen.size && s.sha256 == chosen.sha256)
        .cloned()
        .collect()
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
    check_name(name).map_err(|reason| DownloadError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    fs::create_dir_all(downloads)
        .map_err(DownloadError::io("create downloads folder", downloads))?;
    let target = downloads.join(name);
    let part = downloads.join(format!("{name}{PART_SUFFIX}"));

    if let Some(outcome) = check_existing(&target, sources, reporter)? {
        return Ok(outcome);
    }
    check_part(&part, reporter)?;

    let mut failed: Vec<(String, SourceError)> = Vec::new();
    let content = choose_content(sources);
    let shareable = content.first().is_some_and(|s| s.size > PIECE_SIZE);
    if options.max_sources >= 2 && content.len() >= 2 && shareable {
        match multi::download(&content, name, &part, options.max_sources, reporter)? {
            multi::Ended::Done(done) => {
                publish(&part, &target, downloads)?;
                let chosen = &content[0];
                return Ok(Outcome::Downloaded {
                    path: target,
                    size: chosen.size,
                    sha256: chosen.sha256.clone(),
                    from: done.from.join(", "),
                    resumed_at: done.reused_bytes,
                });
            }
            multi::Ended::Fallback(fallback) => {
                reporter.note(format_args!(
                    "{}; going on with one source at a time",
                    fallback.reason
                ));
                failed = fallback.failed;
            }
        }
    }
    prepare_sequential(&part)?;

    let mut last = None;
    for source in sources {
        let addr = source.addr();
        if let Some(index) = failed.iter().position(|(a, _)| *a == addr) {
            last = Some(failed.swap_remove(index).1);
            continue;
        }
        match single::fetch(source, name, &part, reporter) {
            Ok(fetched) => {
                publish(&part, &target, downloads)?;
                return Ok(Outcome::Downloaded {
                    path: target,
                    size: source.size,
                    sha256: source.sha256.clone(),
                    from: addr,
                    resumed_at: fetched.resumed_at,
                });
            }
            Err(Attempt::Local(e)) => return Err(e),
            Err(Attempt::Source(e)) => {
                reporter.note(format_args!("{e}; trying the next source"));
                last = Some(e);
            }
        }
    }
    remove_if_empty(&part)?;
    match last {
        Some(last) => Err(DownloadError::AllSourcesFailed {
            name: name.to_owned(),
            tried: sources.len(),
            last: Box::new(last),
        }),
        None => Err(DownloadError::NotFound {
            name: name.to_owned(),
            registry: "(no sources given)".to_owned(),
        }),
    }
}

/// A `.part` left by a multi-source download has verified pieces with gaps
/// between them; the sequential path resumes a prefix. Keeps the recorded
/// pieces that start the file without a gap (the sequential path verifies
/// them with the rest) and drops the record.
fn prepare_sequential(part: &Path) -> Result<(), DownloadError> {
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

/// A `.part` that never received a byte is only clutter.
fn remove_if_empty(part: &Path) -> Result<(), DownloadError> {
    match fs::metadata(part) {
        Ok(meta) if meta.len() == 0 => {
            fs::remove_file(part).map_err(DownloadError::io("delete", part))
        }
        _ => Ok(()),
    }
}

/// A file already under the final name: the same content as a source means
/// done; other content is never overwritten.
fn check_existing(
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
fn hash_into(
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
fn publish(part: &Path, target: &Path, downloads: &Path) -> Result<(), DownloadError> {
    fs::rename(part, target)
        .map_err(DownloadError::io("rename the verified download to", target))?;
    File::open(downloads)
        .and_then(|dir| dir.sync_all())
        .map_err(DownloadError::io("sync the downloads folder", downloads))
}

/// An `ETag` that names another digest means the peer's file changed since
/// it registered; no `ETag` at all is left to the digest check.
fn check_etag(head: &ResponseHead, source: &Source, name: &str) -> Result<(), SourceError> {
    match (head.etag_value(), head.etag.as_deref()) {
        (Some(value), Some(etag)) if value != source.sha256 => Err(SourceError::Changed {
            addr: source.addr(),
            name: name.to_owned(),
            etag: etag.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::mpsc;
    use std::thread;

    fn fetch_with_defaults(
        sources: &[Source],
        name: &str,
        downloads: &Path,
        reporter: &Reporter,
    ) -> Result<Outcome, DownloadError> {
        download_from(sources, name, downloads, &Options::default(), reporter)
    }

    fn sha(bytes: &[u8]) -> String {
        to_hex(&Sha256::digest(bytes))
    }

    fn source(addr: SocketAddr, content: &[u8]) -> Source {
        Source {
            host: addr.ip().to_string(),
            port: addr.port(),
            size: content.len() as u64,
            sha256: sha(content),
        }
    }

    /// A one-shot-per-connection HTTP server that answers every request with
    /// `respond(request_head)`, recording the request heads it saw.
    fn serve(
        respond: impl Fn(&str) -> Vec<u8> + Send + 'static,
    ) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let reply = respond(&head);
                let _ = tx.send(head);
                let _ = stream.write_all(&reply);
            }
        });
        (addr, rx)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\n\r\n",
            body.len(),
            sha(body)
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Serves `content` honouring `Range: bytes=N-` as our file server does.
    fn good_server(content: Vec<u8>) -> (SocketAddr, mpsc::Receiver<String>) {
        serve(move |head| {
            let range = head
                .lines()
                .find_map(|l| l.strip_prefix("Range: bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok());
            match range {
                Some(first) if first < content.len() => {
                    let body = &content[first..];
                    let mut out = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {first}-{}/{}\r\nETag: \"{}\"\r\n\r\n",
                        body.len(),
                        content.len() - 1,
                        content.len(),
                        sha(&content)
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                }
                Some(_) => {
                    b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n".to_vec()
                }
                None => ok(&content),
            }
        })
    }

    #[test]
    fn downloads_verifies_and_renames() {
        let content = b"hello peer".repeat(1000);
        let (addr, requests) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        let name = "a file é.txt";
        let outcome = fetch_with_defaults(
            &[source(addr, &content)],
            name,
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert!(matches!(outcome, Outcome::Downloaded { resumed_at: 0, .. }));
        assert_eq!(fs::read(dir.path().join(name)).unwrap(), content);
        assert!(!dir.path().join(format!("{name}{PART_SUFFIX}")).exists());
        let head = requests.recv().unwrap();
        assert!(
            head.starts_with("GET /files/a%20file%20%C3%A9.txt HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_bad_source_is_skipped_and_its_bytes_never_published() {
        let content = b"the real thing".to_vec();
        let wrong = b"the fake thing".to_vec();
        let (bad_addr, _) = serve(move |_| ok(&wrong));
        let (good_addr, _) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        // The bad source claims the good digest.
        let sources = [source(bad_addr, &content), source(good_addr, &content)];
        let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
        match outcome {
            Outcome::Downloaded { from, .. } => assert_eq!(from, good_addr.to_string()),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
    }

    #[test]
    fn all_bad_sources_fail_without_a_file() {
        let content = b"0123456789".to_vec();
        let (addr, _) =
            serve(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcdefghij".to_vec());
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_with_defaults(
            &[source(addr, &content)],
            "f",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap_err();
        assert!(
            matches!(err, DownloadError::AllSourcesFailed { tried: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(!dir.path().join("f").exists());
        assert!(!dir.path().join("f.part").exists());
    }

    #[test]
    fn never_reads_past_the_registered_size() {
        let content = b"short".to_vec();
        let (lying, _) = serve(|_| {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
            out.extend(std::iter::repeat_n(b'x', 1000));
            out
        });
        let (no_length, _) =
            serve(|_| b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nshortAND MORE".to_vec());
        let dir = tempfile::tempdir().unwrap();
        for addr in [lying, no_length] {
            let err = fetch_with_defaults(
                &[source(addr, &content)],
                "f",
                dir.path(),
                &Reporter::quiet(),
            )
            .unwrap_err();
            let DownloadError::AllSourcesFailed { last, .. } = err else {
                panic!("{err}")
            };
            assert!(
                matches!(
                    *last,
                    SourceError::WrongLength { .. } | SourceError::TooLong { .. }
                ),
                "{last}"
            );
            assert!(!dir.path().join("f").exists());
        }
    }

    #[test]
    fn resumes_a_part_file_with_a_guarded_range() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (addr, requests) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big.part"), &content[..40_000]).unwrap();
        let outcome = fetch_with_defaults(
            &[source(addr, &content)],
            "big",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::Downloaded {
                    resumed_at: 40_000,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(fs::read(dir.path().join("big")).unwrap(), content);
        let head = requests.recv().unwrap();
        assert!(head.contains("Range: bytes=40000-\r\n"), "{head}");
        assert!(
            head.contains(&format!("If-Range: \"{}\"\r\n", sha(&content))),
            "{head}"
        );
    }

    #[test]
    fn a_part_from_other_content_is_redone_from_scratch() {
        let content: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let (addr, requests) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f.part"), vec![0xEEu8; 10_000]).unwrap();
        fetch_with_defaults(
            &[source(addr, &content)],
            "f",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
        assert!(requests.recv().unwrap().contains("Range:"));
        assert!(!requests.recv().unwrap().contains("Range:"));
    }

    #[test]
    fn a_200_reply_to_a_range_starts_over() {
        let content = b"abcdefghijklmnopqrstuvwxyz".to_vec();
        let body = content.clone();
        let (addr, _) = serve(move |_| ok(&body));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f.part"), b"abcdefXXXX").unwrap();
        fetch_with_defaults(
            &[source(addr, &content)],
            "f",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
    }

    #[test]
    fn existing_files_are_kept() {
        let content = b"same".to_vec();
        let (addr, _) = serve(|_| panic!("must not be asked"));
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("same"), &content).unwrap();
        let outcome = fetch_with_defaults(
            &[source(addr, &content)],
            "same",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert!(matches!(outcome, Outcome::AlreadyPresent { .. }));

        fs::write(dir.path().join("other"), b"different").unwrap();
        let err = fetch_with_defaults(
            &[source(addr, &content)],
            "other",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap_err();
        assert!(matches!(err, DownloadError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("move or delete"), "{err}");
        assert_eq!(fs::read(dir.path().join("other")).unwrap(), b"different");
    }

    #[test]
    fn names_are_checked_before_they_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["..", "../escape", "a/b", "", " x"] {
            let err = fetch_with_defaults(&[], name, dir.path(), &Reporter::quiet()).unwrap_err();
            assert!(
                matches!(err, DownloadError::BadName { .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn dead_and_refusing_sources_fall_through() {
        let content = b"payload".to_vec();
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (missing, _) =
            serve(|_| b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        let (garbage, _) = serve(|_| b"SPDY/9 what\r\n\r\n".to_vec());
        let (good, _) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        let sources: Vec<Source> = [dead, missing, garbage, good]
            .into_iter()
            .map(|a| source(a, &content))
            .collect();
        fetch_with_defaults(&sources, "p", dir.path(), &Reporter::quiet()).unwrap();
        assert_eq!(fs::read(dir.path().join("p")).unwrap(), content);
    }

    #[test]
    fn a_cut_transfer_is_resumed_by_the_next_source() {
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
        let half = content[..80_000].to_vec();
        let total = content.len();
        let (cut, _) = serve(move |_| {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes();
            out.extend_from_slice(&half);
            out
        });
        let (good, requests) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        let sources = [source(cut, &content), source(good, &content)];
        let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::Downloaded {
                    resumed_at: 80_000,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
        assert!(requests.recv().unwrap().contains("Range: bytes=80000-"));
    }

    #[test]
    fn a_source_whose_file_changed_is_skipped_and_the_part_kept() {
        let content = b"0123456789abcdefghij".to_vec();
        let (changed, _) = serve(|_| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nETag: \"other\"\r\n\r\nXXXXXXXXXXXXXXXXXXXX"
                .to_vec()
        });
        let (good, requests) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f.part"), &content[..10]).unwrap();
        let sources = [source(changed, &content), source(good, &content)];
        let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
        assert!(
            matches!(outcome, Outcome::Downloaded { resumed_at: 10, .. }),
            "{outcome:?}"
        );
        assert!(requests.recv().unwrap().contains("Range: bytes=10-"));
    }

    /// `n` in-process file servers sharing one folder that holds `name`.
    fn peers(
        n: usize,
        name: &str,
        content: &[u8],
    ) -> (tempfile::TempDir, Vec<crate::http::FileServer>, Vec<Source>) {
        use crate::files::{HashCache, SharedDir};
        use crate::http::{FileServer, FileServerConfig};
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), content).unwrap();
        let mut servers = Vec::new();
        let mut sources = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let shared = SharedDir::open(dir.path()).unwrap();
            let server = FileServer::start(
                listener,
                shared,
                HashCache::new(),
                FileServerConfig::default(),
            )
            .unwrap();
            sources.push(source(server.local_addr(), content));
            servers.push(server);
        }
        (dir, servers, sources)
    }

    fn big(seed: u32) -> Vec<u8> {
        (0..(2 * PIECE_SIZE as u32 + 1000))
            .map(|i| (i.wrapping_mul(seed) >> 7) as u8)
            .collect()
    }

    #[test]
    fn several_sources_share_a_big_file() {
        let content = big(2_654_435_761);
        let (_dir, _servers, sources) = peers(3, "big", &content);
        let downloads = tempfile::tempdir().unwrap();
        let outcome =
            fetch_with_defaults(&sources, "big", downloads.path(), &Reporter::quiet()).unwrap();
        let Outcome::Downloaded {
            from, resumed_at, ..
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(resumed_at, 0);
        assert!(!from.is_empty());
        assert_eq!(fs::read(downloads.path().join("big")).unwrap(), content);
        assert!(!downloads.path().join("big.part").exists());
        assert!(!downloads.path().join("big.part.pieces").exists());
    }

    #[test]
    fn a_multi_source_part_resumes_its_verified_pieces() {
        let content = big(40_503);
        let (_dir, _servers, sources) = peers(2, "r", &content);
        let downloads = tempfile::tempdir().unwrap();
        let part = downloads.path().join("r.part");
        // Piece 1 verified and recorded, piece 0 recorded but wrong.
        let list =
            crate::pieces::PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).unwrap();
        let mut seeded = vec![0u8; content.len()];
        let one = list.range(1);
        seeded[one.start as usize..one.end as usize]
            .copy_from_slice(&content[one.start as usize..one.end as usize]);
        fs::write(&part, &seeded).unwrap();
        let mut record =
            resume::Writer::create(&resume::record_path(&part), &list, &[true, true]).unwrap();
        record.append(2).unwrap();
        drop(record);

        let outcome =
            fetch_with_defaults(&sources, "r", downloads.path(), &Reporter::quiet()).unwrap();
        assert!(
            matches!(outcome, Outcome::Downloaded { resumed_at, .. } if resumed_at == PIECE_SIZE),
            "{outcome:?}"
        );
        assert_eq!(fs::read(downloads.path().join("r")).unwrap(), content);
    }

    #[test]
    fn one_source_resumes_the_prefix_of_a_multi_source_part() {
        let content = big(97);
        let (_dir, _servers, sources) = peers(1, "p", &content);
        let downloads = tempfile::tempdir().unwrap();
        let part = downloads.path().join("p.part");
        let list =
            crate::pieces::PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).unwrap();
        // Pieces 0 and 2 of 3 are there; only piece 0 starts the file.
        let mut seeded = content.clone();
        let hole = list.range(1);
        seeded[hole.start as usize..hole.end as usize].fill(0);
        fs::write(&part, &seeded).unwrap();
        resume::Writer::create(&resume::record_path(&part), &list, &[true, false, true]).unwrap();

        let outcome =
            fetch_with_defaults(&sources, "p", downloads.path(), &Reporter::quiet()).unwrap();
        assert!(
            matches!(outcome, Outcome::Downloaded { resumed_at, .. } if resumed_at == PIECE_SIZE),
            "{outcome:?}"
        );
        assert_eq!(fs::read(downloads.path().join("p")).unwrap(), content);
        assert!(!resume::record_path(&part).exists());
    }

    #[test]
    fn the_content_most_sources_have_is_chosen() {
        let at = |port, sha: &str| Source {
            host: "127.0.0.1".into(),
            port,
            size: 10,
            sha256: sha.into(),
        };
        let sources = [at(1, "a"), at(2, "b"), at(3, "b"), at(4, "a"), at(5, "b")];
        let chosen: Vec<u16> = choose_content(&sources).iter().map(|s| s.port).collect();
        assert_eq!(chosen, [2, 3, 5]);
        // A tie goes to the version seen most recently (first).
        let chosen: Vec<u16> = choose_content(&sources[..4])
            .iter()
            .map(|s| s.port)
            .collect();
        assert_eq!(chosen, [1, 4]);
        assert!(choose_content(&[]).is_empty());
    }

    #[test]
    fn a_symlink_in_place_of_the_part_is_not_written_through() {
        let content = b"through the link?".to_vec();
        let (addr, _) = good_server(content.clone());
        let dir = tempfile::tempdir().unwrap();
        let downloads = dir.path().join("downloads");
        fs::create_dir(&downloads).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"mine").unwrap();
        std::os::unix::fs::symlink(&outside, downloads.join("f.part")).unwrap();
        fetch_with_defaults(
            &[source(addr, &content)],
            "f",
            &downloads,
            &Reporter::quiet(),
        )
        .unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"mine");
        assert_eq!(fs::read(downloads.join("f")).unwrap(), content);
    }
}
