//! Routing one UI request: the safety checks first ([`super::guard`]), then
//! the page, its assets, the JSON API under `/api/` and the file views.
//!
//! Routes (every response closes its connection):
//! - `GET /`: the page, with the token in a `<meta>` element.
//! - `GET /assets/app.js`, `GET /assets/style.css`.
//! - `GET /api/find?q=WORDS`: FIND over the registry.
//! - `GET /api/downloads`, `GET /api/downloads/ID`: downloads with progress.
//! - `POST /api/downloads` with `{"name": N, "sha256": S?}`: start one (`202`).
//! - `POST /api/downloads/ID/cancel`, `POST /api/downloads/ID/retry`.
//! - `GET /api/shared`: the shared folder with registration states, and the
//!   verified files of the downloads folder.
//! - `GET /view/shared/NAME`, `GET /view/downloads/NAME`: a file, inline, in
//!   a sandbox (`Content-Security-Policy: sandbox`), so a shared HTML file
//!   cannot run script as the UI.
//!
//! `HEAD` is answered like `GET` without the body.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::assets;
use super::guard::{Guard, Refusal};
use super::jobs::{JobError, Jobs};
use super::request::{read_request, UiReadError, UiRequest};
use super::{Context, UI_READ_TIMEOUT, UI_WRITE_TIMEOUT};
use crate::download::PART_SUFFIX;
use crate::files::{is_partial_download, FilesError, SharedDir};
use crate::http::handler::content_type;
use p2p_proto::client::Client;

/// Longest search text accepted; the registry's request line is 4096 bytes.
pub const MAX_QUERY_BYTES: usize = 1024;

/// Most words of one search that are sent to the registry.
pub const MAX_QUERY_WORDS: usize = 16;

/// Buffer a viewed file is streamed through.
const VIEW_BUFFER_BYTES: usize = 64 * 1024;

/// The policy of the page: its own script and style only, no framing.
const PAGE_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The policy of a viewed file: a sandbox (no script, an opaque origin).
const VIEW_CSP: &str =
    "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'";

/// Everything a UI worker needs.
pub struct Site {
    pub guard: Guard,
    pub context: Context,
    pub jobs: Jobs,
}

/// A response before it is written.
struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    File(File, u64),
}

impl Response {
    fn json(status: u16, value: &impl Serialize) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Body::Bytes(body),
        }
    }

    fn error(status: u16, message: impl std::fmt::Display) -> Response {
        Response::json(status, &json!({ "error": message.to_string() }))
    }

    fn bytes(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn write_reply(stream: &mut TcpStream, reply: Response, head_only: bool) -> io::Result<()> {
    let len = match &reply.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File(_, len) => *len,
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type
    );
    for (name, value) in &reply.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        match reply.body {
            Body::Bytes(b) => stream.write_all(&b)?,
            Body::File(file, len) => {
                let mut body = io::BufReader::with_capacity(VIEW_BUFFER_BYTES, file.take(len));
                io::copy(&mut body, stream)?;
            }
        }
    }
    stream.flush()
}

/// Answers `503` to a connection no worker can take (called by the acceptor).
pub fn busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = write_reply(
        &mut stream,
        Response::error(503, "the UI is busy; try again"),
        false,
    );
    let _ = stream.shutdown(Shutdown::Both);
}

/// Serves the one request of a connection, then closes it.
pub fn serve_connection(mut stream: TcpStream, site: &Site) {
    let _ = stream.set_write_timeout(Some(UI_WRITE_TIMEOUT));
    let deadline = Instant::now() + UI_READ_TIMEOUT;
    let (reply, head_only) = match read_request(&stream, deadline) {
        Ok(request) => {
            let head_only = request.method == "HEAD";
            (answer(&request, site), head_only)
        }
        Err(UiReadError::Gone) => return,
        Err(UiReadError::Io(e)) => {
            tracing::debug!("ui: {e}");
            return;
        }
        Err(e @ UiReadError::HeadTooLarge) => (Response::error(431, e), false),
        Err(e @ UiReadError::BodyTooLarge) => (Response::error(413, e), false),
        Err(e @ UiReadError::Chunked) => (Response::error(411, e), false),
        Err(e @ UiReadError::Malformed(_)) => (Response::error(400, e), false),
    };
    if let Err(e) = write_reply(&mut stream, reply, head_only) {
        tracing::debug!("ui: writing a response: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// The safety checks, then the route.
fn answer(request: &UiRequest, site: &Site) -> Response {
    if let Err(refusal) = site.guard.check(
        request.host.as_deref(),
        request.origin.as_deref(),
        request.token.as_deref(),
        request.changes_state(),
    ) {
        tracing::info!(target = request.target, "ui: 403: {refusal}");
        // Someone who typed `localhost:8390` learns where the UI answers
        // (only the UI's own address is accepted, against DNS rebinding).
        return match refusal {
            Refusal::Host => {
                Response::error(403, format!("{refusal}; open {} instead", site.guard.url()))
            }
            _ => Response::error(403, refusal),
        };
    }
    let read = matches!(request.method.as_str(), "GET" | "HEAD");
    let post = request.method == "POST";
    let path = request.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_allowed = |allow: &str| {
        Response::error(405, format!("{} is not allowed here", request.method))
            .header("Allow", allow.to_owned())
    };
    match segments.as_slice() {
        [""] if read => page(site),
        ["assets", "app.js"] if read => {
            Response::bytes("text/javascript; charset=utf-8", assets::APP_JS)
        }
        ["assets", "style.css"] if read => {
            Response::bytes("text/css; charset=utf-8", assets::STYLE_CSS)
        }
        [""] | ["assets", _] => not_allowed("GET, HEAD"),
        ["api", "find"] if read => find(site, request.query()),
        ["api", "shared"] if read => shared(site),
        ["api", "downloads"] if read => {
            Response::json(200, &json!({ "downloads": site.jobs.list() }))
        }
        ["api", "downloads"] if post => start(site, &request.body),
        ["api", "downloads"] => not_allowed("GET, HEAD, POST"),
        ["api", "downloads", id] if read => {
            match id.parse().ok().and_then(|id| site.jobs.get(id)) {
                Some(job) => Response::json(200, &job),
                None => Response::error(404, format!("no download {id}")),
            }
        }
        ["api", "downloads", id, action @ ("cancel" | "retry")] if post => {
            let Ok(id) = id.parse::<u64>() else {
                return Response::error(404, format!("no download {id}"));
            };
            let result = if *action == "cancel" {
                site.jobs.cancel(id)
            } else {
                site.jobs.retry(id)
            };
            match result {
                Ok(job) => Response::json(if *action == "cancel" { 200 } else { 202 }, &job),
                Err(e) => job_error(e),
            }
        }
        ["api", "downloads", _] => not_allowed("GET, HEAD"),
        ["api", "downloads", _, "cancel" | "retry"] => not_allowed("POST"),
        ["view", folder @ ("shared" | "downloads"), encoded] if read => view(site, folder, encoded),
        ["view", "shared" | "downloads", _] => not_allowed("GET, HEAD"),
        _ => Response::error(404, format!("no such page {path:?}")),
    }
}

fn job_error(e: JobError) -> Response {
    let status = match e {
        JobError::Unknown(_) => 404,
        JobError::Busy(_) | JobError::Ended(_) | JobError::NotEnded(_) => 409,
        JobError::QueueFull => 429,
        JobError::BadName(..) => 400,
    };
    Response::error(status, e)
}

fn page(site: &Site) -> Response {
    Response::bytes("text/html; charset=utf-8", assets::page(site.guard.token()))
        .header("Content-Security-Policy", PAGE_CSP)
        .header("X-Frame-Options", "DENY")
}

/// The value of `key` in a query string, decoded (`+` is a space).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            let v = v.replace('+', " ");
            percent_decode_str(&v).decode_utf8_lossy().into_owned()
        })
    })
}

/// One FIND result.
#[derive(Debug, Serialize)]
struct Hit {
    name: String,
    size: u64,
    sha256: String,
    sources: u64,
}

fn find(site: &Site, query: &str) -> Response {
    let text = query_value(query, "q").unwrap_or_default();
    if text.len() > MAX_QUERY_BYTES {
        return Response::error(
            400,
            format!("the search is longer than {MAX_QUERY_BYTES} bytes"),
        );
    }
    // Whitespace (line breaks included) separates words, so no word can end
    // the registry's request line; other control characters are dropped.
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !w.chars().any(char::is_control))
        .take(MAX_QUERY_WORDS)
        .collect();
    if words.is_empty() {
        return Response::json(200, &json!({ "query": text, "results": [] }));
    }
    let server = &site.context.config.server;
    match Client::connect(server).and_then(|mut client| client.find(&words)) {
        Ok(hits) => {
            let mut results: Vec<Hit> = hits
                .into_iter()
                .map(|h| Hit {
                    name: h.name,
                    size: h.size,
                    sha256: h.sha256,
                    sources: h.sources,
                })
                .collect();
            // The same name with several contents sits together, the most shared first.
            results.sort_by(|a, b| a.name.cmp(&b.name).then(b.sources.cmp(&a.sources)));
            Response::json(200, &json!({ "query": text, "results": results }))
        }
        Err(e) => Response::error(502, format!("cannot search the registry at {server}: {e}")),
    }
}

#[derive(Debug, Deserialize)]
struct StartRequest {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
}

fn start(site: &Site, body: &[u8]) -> Response {
    let request: StartRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(
                400,
                format!("the body must be {{\"name\": ..., \"sha256\": ...}}: {e}"),
            )
        }
    };
    if let Some(sha) = &request.sha256 {
        if !p2p_proto::protocol::is_sha256_hex(sha) {
            return Response::error(400, "sha256 must be 64 lowercase hex digits");
        }
    }
    match site
        .jobs
        .start_download(&request.name, request.sha256.as_deref())
    {
        Ok(job) => Response::json(202, &job),
        Err(e) => job_error(e),
    }
}

/// One file of the shared folder, as `/api/shared` lists it.
#[derive(Debug, Serialize)]
struct SharedEntry {
    name: String,
    size: u64,
    /// `registered`, `not registered`, or `changed` (registered with other
    /// content than the file now has).
    state: &'static str,
    sha256: Option<String>,
    view: String,
}

/// One verified file of the downloads folder.
#[derive(Debug, Serialize)]
struct DownloadedEntry {
    name: String,
    size: u64,
    view: String,
}

fn view_url(folder: &str, name: &str) -> String {
    format!(
        "/view/{folder}/{}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

fn shared(site: &Site) -> Response {
    let registered = site.context.registrar.registered();
    let files = match site.context.shared().list() {
        Ok(files) => files,
        Err(e) => return Response::error(500, e),
    };
    let shared: Vec<SharedEntry> = files
        .iter()
        .filter(|f| !f.name.ends_with(PART_SUFFIX))
        .map(|f| {
            let (state, sha256) = match registered.get(&f.name) {
                Some(r) if r.size == f.size => ("registered", Some(r.sha256.clone())),
                Some(r) => ("changed", Some(r.sha256.clone())),
                None => ("not registered", None),
            };
            SharedEntry {
                name: f.name.clone(),
                size: f.size,
                state,
                sha256,
                view: view_url("shared", &f.name),
            }
        })
        .collect();
    let downloaded: Vec<DownloadedEntry> = SharedDir::open(&site.context.config.downloads)
        .and_then(|dir| dir.list())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !is_partial_download(&f.name))
        .map(|f| DownloadedEntry {
            view: view_url("downloads", &f.name),
            name: f.name,
            size: f.size,
        })
        .collect();
    Response::json(
        200,
        &json!({
            "registry": site.context.config.server,
            "port": site.context.registrar.port(),
            "shared_folder": site.context.shared().path(),
            "downloads_folder": site.context.config.downloads,
            "shared": shared,
            "downloaded": downloaded,
        }),
    )
}

fn view(site: &Site, folder: &str, encoded: &str) -> Response {
    let Ok(name) = crate::http::handler::decode_name(encoded) else {
        return Response::error(400, "bad file name");
    };
    let dir = if folder == "shared" {
        Ok(site.context.shared().clone())
    } else if is_partial_download(&name) {
        // A partial download (or its piece record) is never shown as a file.
        return Response::error(404, format!("no file {name:?}"));
    } else {
        SharedDir::open(&site.context.config.downloads)
    };
    let opened = dir.and_then(|dir| dir.resolve(&name)).and_then(|file| {
        let handle = File::open(&file.path).map_err(|source| FilesError::Io {
            path: file.path.clone(),
            source,
        })?;
        let meta = handle.metadata().map_err(|source| FilesError::Io {
            path: file.path.clone(),
            source,
        })?;
        Ok((handle, meta))
    });
    match opened {
        Ok((handle, meta)) if meta.is_file() => Response {
            status: 200,
            content_type: content_type(&name),
            headers: Vec::new(),
            body: Body::File(handle, meta.len()),
        }
        .header(
            "Content-Disposition",
            crate::http::handler::disposition(&name, true),
        )
        .header("Content-Security-Policy", VIEW_CSP),
        Ok(_)
        | Err(
            FilesError::OpenDir { .. }
            | FilesError::NotFound { .. }
            | FilesError::NotRegular { .. }
            | FilesError::Outside { .. },
        ) => Response::error(404, format!("no file {name:?} in the {folder} folder")),
        Err(FilesError::BadName { .. }) => Response::error(400, "bad file name"),
        Err(e) => Response::error(500, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value("q=a+b%C3%A9&x=1", "q").as_deref(), Some("a bé"));
        assert_eq!(query_value("x=1", "q"), None);
        assert_eq!(query_value("q", "q").as_deref(), Some(""));
        assert_eq!(view_url("shared", "a b/<"), "/view/shared/a%20b%2F%3C");
    }
}
