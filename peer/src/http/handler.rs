//! Answering one parsed request: routing, the shared-folder lookup, the
//! range decision, and streaming the body.
//!
//! Routes:
//! - `GET|HEAD /` → an HTML index of the shared files (human sizes, a
//!   download and a view link each; `.part` files never).
//! - `GET|HEAD /files/<percent-encoded name>` → the file (200/206/416) as an
//!   attachment under its real name (`Content-Disposition: attachment;
//!   filename="<ASCII fallback>"; filename*=UTF-8''<name>`, RFC 6266/5987,
//!   so `curl -OJ` saves the real name); with the query `?inline`, with a
//!   content type from the name's extension ([`content_type`]),
//!   `Content-Disposition: inline` and a sandboxing
//!   `Content-Security-Policy`, so browsers show text, images, audio and
//!   video (and a shared HTML file cannot run script); or
//!   `400` for a name that breaks the rules (including an encoded `/` and
//!   `..`), `404` when there is no such regular file inside the folder. A
//!   symlink that leads outside the folder also gets `404`, exactly like a
//!   missing file, so a client cannot probe what the links point to.
//! - `GET|HEAD /pieces/<percent-encoded name>` → the file's piece list (a
//!   peer extension, see [`crate::pieces`]), with the same name rules,
//!   `400` and `404` as `/files`; `Range` is ignored there.
//! - any other path → `404`; any other method → `405` with `Allow`.
//!
//! Bodies go from the `File` to the raw `TcpStream` with `sendfile(2)`
//! (through rustix's safe wrapper): no copy through this process, and no
//! memory that grows with the file size. Under an upload limit
//! ([`Site::limiter`]) a [`BODY_BUFFER_BYTES`] buffer is written chunk by
//! chunk instead, each chunk paid for with the limiter's tokens.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

pub use p2p_proto::paths::{
    decode_name, file_url, pieces_url, BadName, FILES_PREFIX, PATH_SEGMENT, PIECES_PREFIX,
};
use percent_encoding::utf8_percent_encode;

use super::hasher::{Hasher, Ready};
use super::pieces::PieceCache;
use super::range::{self, RangeDecision};
use super::request::{Method, Request};
use super::response::{error_head, finish, http_date, plain, Head, Status};
use super::throttle::RateLimiter;
use crate::download::PART_SUFFIX;
use crate::files::{FilesError, HashCache, SharedDir, SharedFile};

/// `Content-Type` of a piece list.
pub const PIECES_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Buffer between the file and the socket when a body is not sent with
/// `sendfile` (an upload limit, or a file system without it): the only
/// per-transfer memory, whatever the file size. The toolchain's `io::copy`
/// does not use `sendfile` towards sockets, and its default 8 KiB loop is
/// about 2.5x slower on loopback than with this buffer.
pub const BODY_BUFFER_BYTES: usize = 64 * 1024;

/// What the server shares, as the handlers see it.
pub struct Site {
    pub shared: SharedDir,
    pub hashes: HashCache,
    /// Piece lists served at `/pieces/<name>`.
    pub pieces: PieceCache,
    /// Where a request's missing hash is computed (big files off the worker).
    pub hasher: Hasher,
    /// The upload limit shared by all connections; `None` is unlimited
    /// (and keeps the plain copy loop).
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Whether the connection may carry another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// Query key that asks `/files/<name>` to be shown in the browser.
pub const INLINE_QUERY: &str = "inline";

/// `Content-Security-Policy` of an inline file: a sandbox (an opaque
/// origin, no script), so a shared HTML file is shown, never run.
pub const INLINE_CSP: &str = "sandbox";

/// Content types by file name extension (lowercase), for inline views; any
/// other extension is `application/octet-stream`. Text types say UTF-8.
const CONTENT_TYPES: &[(&str, &str)] = &[
    ("txt", "text/plain; charset=utf-8"),
    ("text", "text/plain; charset=utf-8"),
    ("md", "text/plain; charset=utf-8"),
    ("log", "text/plain; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("rs", "text/plain; charset=utf-8"),
    ("toml", "text/plain; charset=utf-8"),
    ("yaml", "text/plain; charset=utf-8"),
    ("yml", "text/plain; charset=utf-8"),
    ("ini", "text/plain; charset=utf-8"),
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("json", "application/json"),
    ("xml", "application/xml"),
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
    ("bmp", "image/bmp"),
    ("ico", "image/x-icon"),
    ("svg", "image/svg+xml"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("oga", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("wav", "audio/wav"),
    ("flac", "audio/flac"),
    ("m4a", "audio/mp4"),
    ("mp4", "video/mp4"),
    ("m4v", "video/mp4"),
    ("webm", "video/webm"),
    ("ogv", "video/ogg"),
    ("mov", "video/quicktime"),
    ("mkv", "video/x-matroska"),
    ("zip", "application/zip"),
    ("gz", "application/gzip"),
    ("tar", "application/x-tar"),
    ("iso", "application/x-iso9660-image"),
];

/// The content type of a file named `name`, from its extension.
pub fn content_type(name: &str) -> &'static str {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return "application/octet-stream";
    };
    CONTENT_TYPES
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map_or("application/octet-stream", |(_, t)| t)
}

/// `Content-Disposition` for `name` (RFC 6266): `inline` or `attachment`,
/// with the real name twice: as `filename*=UTF-8''<percent-encoded>` (RFC
/// 5987), which browsers prefer, and as the quoted `filename`, where only
/// `"`, `\` and control characters become `_`. That quoted form keeps
/// UTF-8 as it is (not an ASCII-only fallback): curl's `-OJ` (7.88, 8.x)
/// reads only `filename=`, and should save `my notes é.bin`, not
/// `my notes _.bin`.
pub fn disposition(name: &str, inline: bool) -> String {
    let quoted: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    format!(
        "{}; filename=\"{quoted}\"; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        utf8_percent_encode(name, PATH_SEGMENT)
    )
}

/// Whether a request target's query asks for [`INLINE_QUERY`].
fn wants_inline(target: &str) -> bool {
    target.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == INLINE_QUERY)
    })
}

enum Route<'a> {
    Index,
    File(&'a str),
    Pieces(&'a str),
    Unknown,
}

/// The path of a request target, without a query; absolute-form targets
/// (`http://host/path`) are reduced to their path.
fn route(target: &str) -> Route<'_> {
    let mut path = target;
    if !path.starts_with('/') {
        let Some(scheme_end) = path.find("://") else {
            return Route::Unknown;
        };
        let after = &path[scheme_end + 3..];
        path = after.find('/').map_or("/", |i| &after[i..]);
    }
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path == "/" {
        Route::Index
    } else if let Some(encoded) = path.strip_prefix(FILES_PREFIX) {
        Route::File(encoded)
    } else if let Some(encoded) = path.strip_prefix(PIECES_PREFIX) {
        Route::Pieces(encoded)
    } else {
        Route::Unknown
    }
}

/// Answers `request` on `stream`. An `Err` means the connection is broken
/// (or the body could not be sent in full) and must be closed.
pub fn respond(
    stream: &mut TcpStream,
    request: &Request,
    site: &Site,
    client: SocketAddr,
) -> io::Result<Next> {
    let close = !request.keep_alive || request.has_body;
    let next = if close { Next::Close } else { Next::KeepAlive };
    let head_only = match &request.method {
        Method::Get => false,
        Method::Head => true,
        Method::Other(method) => {
            tracing::debug!(%client, method, target = request.target, "405");
            stream.write_all(&plain(Status::MethodNotAllowed, close, false))?;
            return Ok(next);
        }
    };
    let status = match route(&request.target) {
        Route::Index => index(stream, site, close, head_only)?,
        Route::File(encoded) => file(stream, request, site, encoded, close, head_only, client)?,
        Route::Pieces(encoded) => pieces(stream, request, site, encoded, close, head_only, client)?,
        Route::Unknown => {
            stream.write_all(&plain(Status::NotFound, close, head_only))?;
            Status::NotFound
        }
    };
    tracing::debug!(%client, method = ?request.method, target = request.target, status = status.code());
    Ok(next)
}

fn index(stream: &mut TcpStream, site: &Site, close: bool, head_only: bool) -> io::Result<Status> {
    let files = match site.shared.list() {
        Ok(files) => files,
        Err(e) => {
            tracing::error!("listing the shared folder: {e}");
            stream.write_all(&plain(Status::InternalError, close, head_only))?;
            return Ok(Status::InternalError);
        }
    };
    let page = index_page(&files);
    let head = Head::new(Status::Ok, page.len() as u64, close)
        .header("Content-Type", "text/html; charset=utf-8");
    stream.write_all(&finish(&head, &page, head_only))?;
    Ok(Status::Ok)
}

/// The HTML index: one line per shared file (never a `.part`), with a
/// download link, its size for people, and a link that views it inline.
pub fn index_page(files: &[SharedFile]) -> String {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Shared files</title>\n<style>body{font-family:system-ui,sans-serif;margin:1rem auto;\
         max-width:60rem;padding:0 1rem;line-height:1.5}li{margin:.3rem 0;overflow-wrap:anywhere}\
         .size{color:#555}</style></head>\n<body><h1>Shared files</h1>\n",
    );
    let shown: Vec<&SharedFile> = files
        .iter()
        .filter(|f| !f.name.ends_with(PART_SUFFIX))
        .collect();
    if shown.is_empty() {
        page.push_str("<p>This peer shares no files yet.</p>\n");
    } else {
        page.push_str("<ul>\n");
    }
    for f in &shown {
        let url = file_url(&f.name);
        // Writing to a String cannot fail.
        let _ = writeln!(
            page,
            "<li><a href=\"{}\">{}</a> <span class=\"size\">{}</span> \
             <a href=\"{}?{INLINE_QUERY}\">view</a></li>",
            html_escape(&url),
            html_escape(&f.name),
            p2p_proto::units::human_size(f.size),
            html_escape(&url),
        );
    }
    if !shown.is_empty() {
        page.push_str("</ul>\n");
    }
    page.push_str("</body></html>\n");
    page
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What [`open_named`] found: the open file, or the error status it
/// already answered with.
enum Opened {
    File(String, File, SharedFile),
    Answered(Status),
}

/// Decodes the name of a `/files/` or `/pieces/` URL and opens that shared
/// file; a bad name is answered `400`, a missing one `404`.
fn open_named(
    stream: &mut TcpStream,
    request: &Request,
    site: &Site,
    encoded: &str,
    (close, head_only): (bool, bool),
    client: SocketAddr,
) -> io::Result<Opened> {
    let fail = |stream: &mut TcpStream, status: Status| -> io::Result<Opened> {
        stream.write_all(&plain(status, close, head_only))?;
        Ok(Opened::Answered(status))
    };
    let name = match decode_name(encoded) {
        Ok(name) => name,
        Err(e) => {
            tracing::info!(%client, target = request.target, "refused name: {e}");
            return fail(stream, Status::BadRequest);
        }
    };
    match open(&site.shared, &name) {
        Ok((file, shared)) => Ok(Opened::File(name, file, shared)),
        Err(e @ FilesError::BadName { .. }) => {
            tracing::info!(%client, "{e}");
            fail(stream, Status::BadRequest)
        }
        Err(
            e @ (FilesError::NotFound { .. }
            | FilesError::NotRegular { .. }
            | FilesError::Outside { .. }),
        ) => {
            tracing::info!(%client, "404: {e}");
            fail(stream, Status::NotFound)
        }
        Err(e) => {
            tracing::error!(%client, "serving {name:?}: {e}");
            fail(stream, Status::InternalError)
        }
    }
}

/// Answers a failure to hash a file: `503` with `Retry-After` while it is
/// being written (worth retrying once it settles), `500` otherwise.
fn hash_failed(
    stream: &mut TcpStream,
    e: &FilesError,
    name: &str,
    (close, head_only): (bool, bool),
    client: SocketAddr,
) -> io::Result<Status> {
    if let FilesError::Changed { .. } = e {
        tracing::warn!(%client, "{e}");
        let (head, body) = error_head(Status::ServiceUnavailable, close);
        let out = finish(&head.header("Retry-After", "1"), &body, head_only);
        stream.write_all(&out)?;
        return Ok(Status::ServiceUnavailable);
    }
    tracing::error!(%client, "hashing {name:?}: {e}");
    stream.write_all(&plain(Status::InternalError, close, head_only))?;
    Ok(Status::InternalError)
}

/// Answers a request for a big file not hashed yet: `503` with a
/// `Retry-After` estimate while the background hasher reads it (see
/// [`super::hasher`]).
fn being_hashed(
    stream: &mut TcpStream,
    retry_after: u64,
    (close, head_only): (bool, bool),
) -> io::Result<Status> {
    let (head, body) = error_head(Status::ServiceUnavailable, close);
    let out = finish(
        &head.header("Retry-After", retry_after.to_string()),
        &body,
        head_only,
    );
    stream.write_all(&out)?;
    Ok(Status::ServiceUnavailable)
}

/// Serves the piece list of one shared file (`GET|HEAD /pieces/<name>`).
fn pieces(
    stream: &mut TcpStream,
    request: &Request,
    site: &Site,
    encoded: &str,
    close: bool,
    head_only: bool,
    client: SocketAddr,
) -> io::Result<Status> {
    let (name, file, shared) =
        match open_named(stream, request, site, encoded, (close, head_only), client)? {
            Opened::File(name, file, shared) => (name, file, shared),
            Opened::Answered(status) => return Ok(status),
        };
    let list = match site.hasher.pieces(&shared, &file) {
        Ok(Ready::Now(list)) => list,
        Ok(Ready::Later { retry_after }) => {
            return being_hashed(stream, retry_after, (close, head_only))
        }
        Err(e) => return hash_failed(stream, &e, &name, (close, head_only), client),
    };
    let document = list.to_document();
    let head = Head::new(Status::Ok, document.len() as u64, close)
        .header("Content-Type", PIECES_CONTENT_TYPE)
        .header("ETag", format!("\"{}\"", list.sha256))
        .header("Last-Modified", http_date(shared.modified));
    stream.write_all(&finish(&head, &document, head_only))?;
    Ok(Status::Ok)
}

/// Serves one shared file: status, headers and (unless `HEAD`) the bytes.
fn file(
    stream: &mut TcpStream,
    request: &Request,
    site: &Site,
    encoded: &str,
    close: bool,
    head_only: bool,
    client: SocketAddr,
) -> io::Result<Status> {
    let (name, mut body, shared) =
        match open_named(stream, request, site, encoded, (close, head_only), client)? {
            Opened::File(name, file, shared) => (name, file, shared),
            Opened::Answered(status) => return Ok(status),
        };
    let sha256 = match site.hasher.digest(&shared) {
        Ok(Ready::Now(sha256)) => sha256,
        Ok(Ready::Later { retry_after }) => {
            return being_hashed(stream, retry_after, (close, head_only))
        }
        Err(e) => return hash_failed(stream, &e, &name, (close, head_only), client),
    };
    let etag = format!("\"{sha256}\"");
    let size = shared.size;
    let decision = range::decide(
        request.range.as_deref(),
        request.if_range.as_deref(),
        size,
        &etag,
    );
    let (status, first, len) = match decision {
        RangeDecision::Full => (Status::Ok, 0, size),
        RangeDecision::Partial(bytes) => (
            Status::PartialContent,
            *bytes.start(),
            bytes.end() - bytes.start() + 1,
        ),
        RangeDecision::Unsatisfiable => (Status::RangeNotSatisfiable, 0, 0),
    };
    let inline = wants_inline(&request.target);
    let mut head = Head::new(status, len, close)
        .header(
            "Content-Type",
            if inline {
                content_type(&name)
            } else {
                "application/octet-stream"
            },
        )
        .header("Accept-Ranges", "bytes")
        .header("ETag", etag)
        .header("Last-Modified", http_date(shared.modified))
        .header("Content-Disposition", disposition(&name, inline));
    if inline {
        head = head
            .header("Content-Security-Policy", INLINE_CSP)
            .header("X-Content-Type-Options", "nosniff");
    }
    head = match status {
        Status::PartialContent => head.header(
            "Content-Range",
            format!("bytes {first}-{}/{size}", first + len - 1),
        ),
        Status::RangeNotSatisfiable => head.header("Content-Range", format!("bytes */{size}")),
        _ => head,
    };
    head.write_to(stream)?;
    if head_only || len == 0 {
        return Ok(status);
    }
    body.seek(SeekFrom::Start(first))?;
    let sent = match &site.limiter {
        None => send_file(&body, first, len, stream)?,
        Some(limiter) => copy_limited(&mut body.take(len), stream, limiter)?,
    };
    if sent < len {
        // The file shrank under us: the promised length cannot be kept, so
        // the connection must end for the client to notice.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name:?} shrank while being sent ({sent} of {len} bytes)"),
        ));
    }
    Ok(status)
}

/// Sends `len` bytes of `file` from `first` with `sendfile(2)`: the kernel
/// moves page-cache pages to the socket, with no copy through this process
/// (about a third less CPU per byte than a read/write loop). Falls back to
/// a buffered copy where the kernel refuses (a file system without it).
fn send_file(file: &File, first: u64, len: u64, stream: &mut TcpStream) -> io::Result<u64> {
    let mut offset = first;
    let mut sent = 0u64;
    while sent < len {
        let chunk = usize::try_from(len - sent)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK_BYTES);
        match super::deadline::sendfile(stream, file, &mut offset, chunk) {
            Ok(0) => break, // the file shrank: the caller reports it
            Ok(n) => sent += n as u64,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if sent == 0 => {
                let mut file = file;
                file.seek(SeekFrom::Start(first))?;
                let mut body = BufReader::with_capacity(BODY_BUFFER_BYTES, file.take(len));
                return io::copy(&mut body, stream);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

/// Most bytes one `sendfile` call is asked for, so a write timeout and a
/// shutdown are noticed between calls on a huge file.
const SENDFILE_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Copies `body` to `stream` in the limiter's chunks, paying for each
/// chunk before it is written; returns the bytes sent.
fn copy_limited(
    body: &mut impl Read,
    stream: &mut TcpStream,
    limiter: &RateLimiter,
) -> io::Result<u64> {
    let mut buffer = vec![0u8; limiter.chunk_bytes()];
    let mut sent = 0u64;
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => return Ok(sent),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        limiter.acquire(n)?;
        super::deadline::write_all(stream, &buffer[..n])?;
        sent += n as u64;
    }
}

/// Resolves `name` and opens it, then re-checks through the open handle
/// that it is still a regular file and takes size and time from that
/// handle, so the headers describe the bytes actually sent.
fn open(shared: &SharedDir, name: &str) -> Result<(File, SharedFile), FilesError> {
    let resolved = shared.resolve(name)?;
    let io_err = |source: io::Error| -> FilesError {
        if source.kind() == io::ErrorKind::NotFound {
            FilesError::NotFound {
                name: name.to_owned(),
                dir: shared.path().to_owned(),
            }
        } else {
            FilesError::Io {
                path: resolved.path.clone(),
                source,
            }
        }
    };
    let file = File::open(&resolved.path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(FilesError::NotRegular {
            name: name.to_owned(),
            path: resolved.path,
        });
    }
    let modified = meta.modified().map_err(io_err)?;
    Ok((
        file,
        SharedFile {
            size: meta.len(),
            modified,
            ..resolved.clone()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::protocol::NameError;

    #[test]
    fn decodes_names() {
        assert_eq!(decode_name("a%20b.txt").unwrap(), "a b.txt");
        assert_eq!(decode_name("%C3%A9t%C3%A9").unwrap(), "été");
        assert_eq!(decode_name("plain").unwrap(), "plain");
        assert_eq!(decode_name("100%").unwrap(), "100%");
        assert_eq!(decode_name("%zz").unwrap(), "%zz");
        assert_eq!(decode_name("..."), Ok("...".into()));
    }

    #[test]
    fn refuses_names_that_break_the_rules() {
        assert_eq!(decode_name("%ff"), Err(BadName::NotUtf8));
        assert_eq!(
            decode_name("a%2Fb"),
            Err(BadName::Rule(NameError::Separator))
        );
        assert_eq!(
            decode_name("a%2fb"),
            Err(BadName::Rule(NameError::Separator))
        );
        assert_eq!(
            decode_name("%2Fetc%2Fpasswd"),
            Err(BadName::Rule(NameError::Separator))
        );
        assert_eq!(
            decode_name("a%5Cb"),
            Err(BadName::Rule(NameError::Separator))
        );
        assert_eq!(decode_name(".."), Err(BadName::Rule(NameError::Dots)));
        assert_eq!(decode_name("%2E%2E"), Err(BadName::Rule(NameError::Dots)));
        assert_eq!(
            decode_name("../x"),
            Err(BadName::Rule(NameError::Separator))
        );
        assert_eq!(decode_name(""), Err(BadName::Rule(NameError::Empty)));
        assert_eq!(
            decode_name("a%00"),
            Err(BadName::Rule(NameError::ControlChar))
        );
        assert_eq!(
            decode_name("%20a"),
            Err(BadName::Rule(NameError::EdgeSpace))
        );
    }

    #[test]
    fn urls_round_trip_through_decoding() {
        for name in ["a b", "été.txt", "100% & <x>", "?#[]", "a+b", "..."] {
            let url = file_url(name);
            let Route::File(encoded) = route(&url) else {
                panic!("{url} is not a file route");
            };
            assert_eq!(decode_name(encoded).unwrap(), name);
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/"), Route::Index));
        assert!(matches!(route("/?x=1"), Route::Index));
        assert!(matches!(route("http://h:1/"), Route::Index));
        assert!(matches!(route("http://h:1"), Route::Index));
        assert!(matches!(route("/files/a?x"), Route::File("a")));
        assert!(matches!(route("http://h/files/a"), Route::File("a")));
        assert!(matches!(route("/files"), Route::Unknown));
        assert!(matches!(route("/etc/passwd"), Route::Unknown));
        assert!(matches!(route("*"), Route::Unknown));
        assert!(matches!(route("files/a"), Route::Unknown));
        assert!(matches!(route("/pieces/a%20b"), Route::Pieces("a%20b")));
        assert!(matches!(route("/pieces"), Route::Unknown));
        assert_eq!(pieces_url("a b"), "/pieces/a%20b");
    }

    #[test]
    fn index_escapes_names() {
        let page = index_page(&[SharedFile {
            name: "<b>&\"'.txt".into(),
            path: "/x".into(),
            size: 7,
            modified: std::time::SystemTime::UNIX_EPOCH,
        }]);
        assert!(page.contains("&lt;b&gt;&amp;&quot;&#39;.txt</a>"), "{page}");
        assert!(page.contains("7 B"), "{page}");
        assert!(
            page.contains("href=\"/files/%3Cb%3E%26%22%27.txt\""),
            "{page}"
        );
        assert!(
            page.contains("href=\"/files/%3Cb%3E%26%22%27.txt?inline\""),
            "{page}"
        );
    }

    #[test]
    fn index_shows_human_sizes_and_never_part_files() {
        let file = |name: &str, size| SharedFile {
            name: name.into(),
            path: "/x".into(),
            size,
            modified: std::time::SystemTime::UNIX_EPOCH,
        };
        let page = index_page(&[file("big.iso", 3 * 1024 * 1024), file("half.iso.part", 9)]);
        assert!(page.contains("3.0 MiB"), "{page}");
        assert!(!page.contains("half.iso"), "{page}");
        assert!(index_page(&[]).contains("no files"));
    }

    #[test]
    fn content_types_and_dispositions() {
        assert_eq!(content_type("a.TXT"), "text/plain; charset=utf-8");
        assert_eq!(content_type("photo.jpeg"), "image/jpeg");
        assert_eq!(content_type("noext"), "application/octet-stream");
        assert_eq!(content_type("x.weird"), "application/octet-stream");
        assert_eq!(
            disposition("my notes é.bin", false),
            "attachment; filename=\"my notes é.bin\"; filename*=UTF-8''my%20notes%20%C3%A9.bin"
        );
        assert_eq!(
            disposition("a\"b%\\.txt", true),
            "inline; filename=\"a_b%_.txt\"; filename*=UTF-8''a%22b%25%5C.txt"
        );
        assert!(wants_inline("/files/a?inline"));
        assert!(wants_inline("/files/a?x=1&inline="));
        assert!(!wants_inline("/files/a"));
        assert!(!wants_inline("/files/a?inlined"));
    }
}
