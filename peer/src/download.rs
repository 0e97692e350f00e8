//! Downloading one file by name: ask the registry for its sources, fetch it
//! from them over HTTP/1.1 into `<downloads>/<name>.part` while hashing,
//! check size and SHA-256 against what the source registered, then fsync and
//! rename it atomically to `<downloads>/<name>`.
//!
//! Sources are tried most recently seen first, each against its own
//! registered size and digest. A source that sends the wrong bytes is
//! skipped and its bytes deleted; one that fails mid-transfer leaves the
//! `.part` in place, and the next source (or the next run) resumes it with
//! `Range: bytes=<len>-` guarded by `If-Range: "<sha256>"`.
//!
//! This module must not: let a name become a path before [`check_name`]
//! accepted it; trust a peer's `Content-Length` or `Content-Range` beyond the
//! registered size; ever let unverified bytes appear under the final name;
//! overwrite a file that is already in the downloads folder; hold more than
//! one [`COPY_BUFFER_BYTES`] buffer of a file in memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dht_server::client::{Client, ClientError};
use dht_server::protocol::{check_name, to_hex, NameError, Source};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::progress::Reporter;

/// How long to wait for a peer to accept the connection: a dead source must
/// not hold up the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one read from a peer may block (the response head or any chunk
/// of the body); a stalled transfer is abandoned and resumed from another source.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long sending the request may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response head accepted (status line and headers): far more than
/// any file server sends, small enough that a hostile peer cannot make us
/// buffer much.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Most response headers parsed.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// Size of the one buffer a transfer streams through.
pub const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// Suffix of the file a download is written to until it is verified.
pub const PART_SUFFIX: &str = ".part";

/// What is escaped in a name placed in a URL path: everything except the
/// unreserved characters of RFC 3986.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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

/// Why one source could not deliver the file; the download goes on with the
/// next source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("transfer from {addr} failed: {source}")]
    Network { addr: String, source: io::Error },
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
}

/// What a successful [`download`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file was fetched, verified and renamed into place.
    Downloaded {
        path: PathBuf,
        size: u64,
        sha256: String,
        /// `host:port` of the source that delivered it.
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
    reporter: &Reporter,
) -> Result<Outcome, DownloadError> {
    let sources = search(registry, name)?;
    download_from(&sources, name, downloads, reporter)
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

/// Downloads `name` from the first of `sources` that delivers it intact.
pub fn download_from(
    sources: &[Source],
    name: &str,
    downloads: &Path,
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

    let mut last = None;
    for source in sources {
        match fetch(source, name, &part, reporter) {
            Ok(fetched) => {
                publish(&part, &target, downloads)?;
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

/// fsync the verified `.part`'s directory entry change: rename, then fsync
/// the folder so the new name survives a crash.
fn publish(part: &Path, target: &Path, downloads: &Path) -> Result<(), DownloadError> {
    fs::rename(part, target)
        .map_err(DownloadError::io("rename the verified download to", target))?;
    File::open(downloads)
        .and_then(|dir| dir.sync_all())
        .map_err(DownloadError::io("sync the downloads folder", downloads))
}

/// How one attempt failed: because of the source (try the next) or because
/// of this machine (stop).
#[derive(Debug)]
enum Attempt {
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
struct Fetched {
    resumed_at: u64,
}

/// Fetches `name` from one source into `part`, resuming what is there.
///
/// When a resumed transfer does not verify, the old bytes may be the
/// culprit (they may come from another version of the file), so the source
/// gets one more try from scratch before it is blamed.
fn fetch(
    source: &Source,
    name: &str,
    part: &Path,
    reporter: &Reporter,
) -> Result<Fetched, Attempt> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(DownloadError::io("open", part))?;
    let mut allow_resume = true;
    loop {
        let (hasher, have) = if allow_resume {
            existing_prefix(&mut file, part, source, reporter)?
        } else {
            truncate(&mut file, part)?;
            (Sha256::new(), 0)
        };
        let result = transfer(&mut file, part, hasher, have, source, name, reporter);
        match result {
            Ok(resumed_at) => {
                file.sync_all().map_err(DownloadError::io("sync", part))?;
                return Ok(Fetched { resumed_at });
            }
            Err(Transfer::Mismatch(e, resumed)) => {
                if resumed && allow_resume {
                    reporter.note(format_args!(
                        "the resumed {} does not verify; starting it over from {}",
                        part.display(),
                        source.addr()
                    ));
                    allow_resume = false;
                    continue;
                }
                // Bad bytes from this source: they must not be resumed by the next.
                drop(file);
                fs::remove_file(part).map_err(DownloadError::io("delete", part))?;
                reporter.note(format_args!(
                    "deleted {}: the bytes from {} are not the registered ones",
                    part.display(),
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

/// Hashes what the `.part` already holds so the download can go on from
/// there; discards it when it cannot belong to this source's file.
fn existing_prefix(
    file: &mut File,
    part: &Path,
    source: &Source,
    reporter: &Reporter,
) -> Result<(Sha256, u64), DownloadError> {
    let len = file
        .metadata()
        .map_err(DownloadError::io("inspect", part))?
        .len();
    if len == 0 {
        return Ok((Sha256::new(), 0));
    }
    if len > source.size {
        reporter.note(format_args!(
            "{} is longer than the {} bytes registered at {}; starting over",
            part.display(),
            source.size,
            source.addr()
        ));
        truncate(file, part)?;
        return Ok((Sha256::new(), 0));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(DownloadError::io("seek", part))?;
    let mut hasher = Sha256::new();
    let mut progress = reporter.hashing(part.display().to_string(), len);
    let hashed = hash_into(&mut (&mut *file).take(len), &mut hasher, &mut |n| {
        progress.set(n)
    })
    .map_err(DownloadError::io("read", part))?;
    progress.finish();
    if hashed != len {
        // The file shrank under us; start clean rather than guess.
        truncate(file, part)?;
        return Ok((Sha256::new(), 0));
    }
    Ok((hasher, len))
}

fn truncate(file: &mut File, part: &Path) -> Result<(), DownloadError> {
    file.set_len(0)
        .map_err(DownloadError::io("truncate", part))?;
    file.seek(SeekFrom::Start(0))
        .map_err(DownloadError::io("seek", part))?;
    Ok(())
}

/// One HTTP exchange: asks for the bytes after `have`, appends them to the
/// `.part`, and checks the whole against the source's size and digest.
/// Returns how many bytes of the verified file came from the old `.part`.
fn transfer(
    file: &mut File,
    part: &Path,
    mut hasher: Sha256,
    mut have: u64,
    source: &Source,
    name: &str,
    reporter: &Reporter,
) -> Result<u64, Transfer> {
    let addr = source.addr();
    let size = source.size;
    if have < size {
        let range = (have > 0).then_some(have);
        let mut response = request(source, name, range)?;
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
                    truncate(file, part)?;
                    hasher = Sha256::new();
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
        file.seek(SeekFrom::Start(have))
            .map_err(DownloadError::io("seek", part))?;
        let what = format!("{name} from {addr}");
        let mut progress = reporter.transfer(what, size, have);
        let start = have;
        let copied = copy_body(
            &mut response,
            file,
            part,
            &mut hasher,
            size - have,
            &mut |n| progress.set(start + n),
        );
        let copied = match copied {
            Ok(n) => n,
            Err(e) => {
                // Keep what arrived for a resume; the failure is reported by the caller.
                let _ = file.sync_data();
                return Err(e);
            }
        };
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
        if response.content_length.is_none() && response.has_more()? {
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
        let actual = to_hex(&hasher.finalize());
        if actual != source.sha256 {
            return Err(Transfer::Mismatch(
                SourceError::WrongHash {
                    addr,
                    name: name.to_owned(),
                    actual,
                    expected: source.sha256.clone(),
                },
                start > 0,
            ));
        }
        return Ok(start);
    }
    // The .part is already complete: it only needs checking.
    let actual = to_hex(&hasher.finalize());
    if actual == source.sha256 {
        return Ok(have);
    }
    Err(Transfer::Mismatch(
        SourceError::WrongHash {
            addr,
            name: name.to_owned(),
            actual,
            expected: source.sha256.clone(),
        },
        have > 0,
    ))
}

/// Streams at most `limit` body bytes into `file` and `hasher`.
fn copy_body(
    response: &mut Response,
    file: &mut File,
    part: &Path,
    hasher: &mut Sha256,
    limit: u64,
    on_progress: &mut dyn FnMut(u64),
) -> Result<u64, Transfer> {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut copied = 0u64;
    while copied < limit {
        let want = usize::try_from(limit - copied)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let n = match response.read(&mut buffer[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SourceError::Network {
                    addr: response.addr.clone(),
                    source,
                }
                .into())
            }
        };
        file.write_all(&buffer[..n])
            .map_err(DownloadError::io("write", part))?;
        hasher.update(&buffer[..n]);
        copied += n as u64;
        on_progress(copied);
    }
    Ok(copied)
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

/// `bytes first-last/total`.
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (digits(first)?, digits(last)?, digits(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

/// An `ETag` that names another digest means the peer's file changed since
/// it registered; no `ETag` at all is left to the digest check.
fn check_etag(response: &Response, source: &Source, name: &str) -> Result<(), SourceError> {
    match response.etag.as_deref() {
        Some(etag) if etag.trim_start_matches("W/").trim_matches('"') != source.sha256 => {
            Err(SourceError::Changed {
                addr: source.addr(),
                name: name.to_owned(),
                etag: etag.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Plain decimal digits.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The URL path of a shared file.
pub fn file_path(name: &str) -> String {
    format!("/files/{}", utf8_percent_encode(name, PATH_SEGMENT))
}

/// A response whose head has been read; reading it yields the body.
#[derive(Debug)]
struct Response {
    addr: String,
    status: u16,
    reason: String,
    content_length: Option<u64>,
    content_range: Option<String>,
    etag: Option<String>,
    /// Body bytes that arrived with the head.
    buffered: Vec<u8>,
    offset: usize,
    stream: TcpStream,
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset < self.buffered.len() {
            let n = buf.len().min(self.buffered.len() - self.offset);
            buf[..n].copy_from_slice(&self.buffered[self.offset..self.offset + n]);
            self.offset += n;
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl Response {
    /// Whether a body without `Content-Length` goes on past what we read.
    fn has_more(&mut self) -> Result<bool, SourceError> {
        let mut one = [0u8; 1];
        loop {
            match self.read(&mut one) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(SourceError::Network {
                        addr: self.addr.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// Connects to the source and sends `GET /files/<name>`, with a guarded
/// range when resuming at `range`; reads the response head.
fn request(source: &Source, name: &str, range: Option<u64>) -> Result<Response, SourceError> {
    let addr = source.addr();
    let mut stream = connect(&addr)?;
    let net = |source| SourceError::Network {
        addr: addr.clone(),
        source,
    };
    stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(net)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(net)?;
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: p2p-peer/{}\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n",
        file_path(name),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(first) = range {
        head.push_str(&format!(
            "Range: bytes={first}-\r\nIf-Range: \"{}\"\r\n",
            source.sha256
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(net)?;
    read_head(stream, addr)
}

fn connect(addr: &str) -> Result<TcpStream, SourceError> {
    let err = |source| SourceError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
    let mut last = io::Error::new(ErrorKind::NotFound, "the address resolves to nothing");
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// Reads until the blank line that ends the head, at most
/// [`MAX_RESPONSE_HEAD_BYTES`], and parses it with httparse.
fn read_head(mut stream: TcpStream, addr: String) -> Result<Response, SourceError> {
    let bad = |reason: &str| SourceError::BadResponse {
        addr: addr.clone(),
        reason: reason.to_owned(),
    };
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SourceError::Network {
                    addr: addr.clone(),
                    source,
                })
            }
        };
        if n == 0 {
            return Err(bad("the connection closed before the response head ended"));
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let head = Head::from_parsed(&parsed).map_err(|reason| bad(&reason))?;
                let buffered = buffer[head_len..].to_vec();
                return Ok(Response {
                    addr,
                    status: head.status,
                    reason: head.reason,
                    content_length: head.content_length,
                    content_range: head.content_range,
                    etag: head.etag,
                    buffered,
                    offset: 0,
                    stream,
                });
            }
            Ok(httparse::Status::Partial) if buffer.len() > MAX_RESPONSE_HEAD_BYTES => {
                return Err(bad("response head longer than 16 KiB"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(bad(&e.to_string())),
        }
    }
}

/// The parts of a response head a download needs.
struct Head {
    status: u16,
    reason: String,
    content_length: Option<u64>,
    content_range: Option<String>,
    etag: Option<String>,
}

impl Head {
    fn from_parsed(parsed: &httparse::Response<'_, '_>) -> Result<Head, String> {
        let status = parsed.code.ok_or("no status code")?;
        let mut head = Head {
            status,
            reason: parsed.reason.unwrap_or("").to_owned(),
            content_length: None,
            content_range: None,
            etag: None,
        };
        for header in parsed.headers.iter() {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| format!("header {} is not UTF-8", header.name))?
                .trim();
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let len = digits(value).ok_or_else(|| format!("bad Content-Length {value:?}"))?;
                if head.content_length.is_some_and(|old| old != len) {
                    return Err("conflicting Content-Length headers".to_owned());
                }
                head.content_length = Some(len);
            } else if name.eq_ignore_ascii_case("content-range") {
                head.content_range = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("etag") {
                head.etag = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && !value.eq_ignore_ascii_case("identity")
            {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

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
        let outcome = download_from(
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
        let outcome = download_from(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
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
        let err = download_from(
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
            let err = download_from(
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
        let outcome = download_from(
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
        download_from(
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
        download_from(
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
        let outcome = download_from(
            &[source(addr, &content)],
            "same",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap();
        assert!(matches!(outcome, Outcome::AlreadyPresent { .. }));

        fs::write(dir.path().join("other"), b"different").unwrap();
        let err = download_from(
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
            let err = download_from(&[], name, dir.path(), &Reporter::quiet()).unwrap_err();
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
        download_from(&sources, "p", dir.path(), &Reporter::quiet()).unwrap();
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
        let outcome = download_from(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
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
        let outcome = download_from(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
        assert!(
            matches!(outcome, Outcome::Downloaded { resumed_at: 10, .. }),
            "{outcome:?}"
        );
        assert!(requests.recv().unwrap().contains("Range: bytes=10-"));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 9, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn url_paths_escape_everything_but_unreserved() {
        assert_eq!(file_path("a b/c?d#e%"), "/files/a%20b%2Fc%3Fd%23e%25");
        assert_eq!(file_path("x-y_z.~"), "/files/x-y_z.~");
    }
}
