//! Helpers the UI tests share: a raw HTTP/1.1 client (the UI closes every
//! connection after its response, so a reply is read to the end), the UI's
//! address from a peer's `ui on http://HOST:PORT/` line, and its token.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use p2p_tests::{Peer, START_TIMEOUT};
use serde_json::Value;

/// Longest a test waits for one UI response.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// One response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub bytes: Vec<u8>,
    /// The body as text (lossy).
    pub body: String,
}

impl HttpReply {
    /// Sends `request` as it is and reads the response to the end.
    pub fn raw(addr: SocketAddr, request: &str) -> HttpReply {
        let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        stream.write_all(request.as_bytes()).expect("send");
        // Read the head, then Content-Length bytes (or to the end when the
        // response has none): a server may keep the connection open.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).expect("read the response");
            assert!(n > 0, "no head in {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&chunk[..n]);
        };
        let length = String::from_utf8_lossy(&raw[..end])
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let head_only = request.starts_with("HEAD ");
        match length {
            Some(_) if head_only => {}
            Some(len) => {
                while raw.len() < end + 4 + len {
                    let n = stream.read(&mut chunk).expect("read the body");
                    assert!(n > 0, "the body ended early");
                    raw.extend_from_slice(&chunk[..n]);
                }
            }
            None => {
                stream.read_to_end(&mut raw).expect("read the response");
            }
        }
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let bytes = raw[end + 4..].to_vec();
        HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `METHOD target` with exactly `headers` (plus Content-Length and
/// Connection: close) and `body`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    HttpReply::raw(addr, &request)
}

/// The UI address a peer printed (`ui on http://HOST:PORT/`).
pub fn ui_addr(peer: &Peer) -> SocketAddr {
    let line = peer
        .process
        .as_ref()
        .expect("peer runs")
        .wait_for_line(|l| l.starts_with("ui on "), START_TIMEOUT);
    let addr = line
        .strip_prefix("ui on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("bad ui line {line:?}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("bad ui address in {line:?}: {e}"))
}

/// The token the UI's page carries.
pub fn token_of(ui: SocketAddr) -> String {
    let page = http(ui, "GET", "/", &[("Host", &ui.to_string())], "");
    assert_eq!(page.status, 200, "{page:?}");
    let marker = "<meta name=\"p2p-token\" content=\"";
    let start = page.body.find(marker).expect("the page carries the token") + marker.len();
    let len = page.body[start..].find('"').expect("token ends");
    page.body[start..start + len].to_owned()
}

/// Starts a download over the API (with the page's token); expects `202`.
pub fn start_download(ui: SocketAddr, name: &str, sha256: Option<&str>) -> Value {
    let token = token_of(ui);
    let body = serde_json::json!({ "name": name, "sha256": sha256 }).to_string();
    let own = ui.to_string();
    let reply = http(
        ui,
        "POST",
        "/api/downloads",
        &[
            ("Host", &own),
            ("X-P2P-Token", &token),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    reply.json()
}
