//! The peer's HTTP/1.1 file server, spoken to over raw TCP (exact status
//! lines and headers) and with curl (a real client), in process: the server
//! runs as `p2p_peer::http::FileServer` on `127.0.0.1:0`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use p2p_peer::files::{HashCache, SharedDir};
use p2p_peer::http::{FileServer, FileServerConfig};
use p2p_proto::protocol::to_hex;
use sha2::{Digest, Sha256};

/// How long a test client waits for any one read before failing the test
/// instead of hanging.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Contents of the file most tests fetch: 26 distinct bytes, so every range
/// is recognisable.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// A server over a temporary shared folder that holds `alphabet.txt`,
/// `hello world.txt` and, next to the folder, a `secret` file.
struct Fixture {
    tmp: tempfile::TempDir,
    shared: PathBuf,
    server: FileServer,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::with_config(FileServerConfig::default())
    }

    fn with_config(config: FileServerConfig) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("alphabet.txt"), ALPHABET).unwrap();
        fs::write(shared.join("hello world.txt"), b"hello, world\n").unwrap();
        fs::write(tmp.path().join("secret"), b"top secret").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = SharedDir::open(&shared).unwrap();
        let server = FileServer::start(listener, dir, HashCache::new(), config).unwrap();
        Fixture {
            tmp,
            shared,
            server,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// One request on a fresh connection.
    fn get(&self, target: &str, extra_headers: &str) -> Response {
        let mut client = self.connect();
        client.send(&format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n"
        ));
        client.response(false)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Response {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", self.status_line))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> u64 {
        self.header("Content-Length")
            .expect("Content-Length")
            .parse()
            .unwrap()
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &str) {
        self.send_bytes(bytes.as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Reads a status line and headers; then, unless `head`, a body of
    /// `Content-Length` bytes.
    fn response(&mut self, head: bool) -> Response {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        assert!(
            status_line.ends_with("\r\n"),
            "no complete status line, got {status_line:?}"
        );
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("header line without CRLF: {line:?}"));
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(": ").expect("name: value");
            headers.push((name.to_owned(), value.to_owned()));
        }
        let mut response = Response {
            status_line: status_line.trim_end().to_owned(),
            headers,
            body: Vec::new(),
        };
        if !head {
            let len = response.content_length();
            (&mut self.reader)
                .take(len)
                .read_to_end(&mut response.body)
                .unwrap();
            assert_eq!(response.body.len() as u64, len, "short body");
        }
        response
    }

    /// Whether the server closed the connection (EOF with nothing more).
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

fn quoted_sha256(data: &[u8]) -> String {
    format!("\"{}\"", sha256_hex(data))
}

#[test]
fn full_get_has_the_contract_headers() {
    let f = Fixture::start();
    let r = f.get("/files/alphabet.txt", "");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.body, ALPHABET);
    assert_eq!(r.header("Content-Length"), Some("26"));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(r.header("ETag"), Some(quoted_sha256(ALPHABET).as_str()));
    assert!(r
        .header("Last-Modified")
        .is_some_and(|d| d.ends_with(" GMT")));
    assert_eq!(r.header("Connection"), None);

    let r = f.get("/files/hello%20world.txt", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"hello, world\n");
}

#[test]
fn head_sends_the_same_headers_without_a_body() {
    let f = Fixture::start();
    let get = f.get("/files/alphabet.txt", "");
    let mut client = f.connect();
    client.send("HEAD /files/alphabet.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.response(true);
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    for name in ["Content-Length", "Content-Type", "Accept-Ranges", "ETag"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    // No body bytes came: the next response starts right after the head.
    client.send("HEAD /files/alphabet.txt HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n");
    let ranged = client.response(true);
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.header("Content-Range"), Some("bytes 0-1/26"));
    client.send("HEAD /files/missing HTTP/1.1\r\n\r\n");
    assert_eq!(client.response(true).status(), 404);
    client.send("GET /files/alphabet.txt HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(client.response(false).body, ALPHABET);
    assert!(client.closed_by_server());
}

#[test]
fn every_range_form() {
    let f = Fixture::start();
    let cases = [
        ("bytes=0-4", "bytes 0-4/26", &ALPHABET[0..=4]),
        ("bytes=10-10", "bytes 10-10/26", &ALPHABET[10..=10]),
        ("bytes=20-", "bytes 20-25/26", &ALPHABET[20..]),
        ("bytes=-3", "bytes 23-25/26", &ALPHABET[23..]),
        ("bytes=-100", "bytes 0-25/26", ALPHABET),
        ("bytes=24-1000", "bytes 24-25/26", &ALPHABET[24..]),
    ];
    for (range, content_range, body) in cases {
        let r = f.get("/files/alphabet.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status_line, "HTTP/1.1 206 Partial Content", "{range}");
        assert_eq!(r.header("Content-Range"), Some(content_range), "{range}");
        assert_eq!(r.content_length(), body.len() as u64, "{range}");
        assert_eq!(r.body, body, "{range}");
        assert_eq!(r.header("ETag"), Some(quoted_sha256(ALPHABET).as_str()));
    }
}

#[test]
fn unsatisfiable_ranges_get_416() {
    let f = Fixture::start();
    for range in [
        "bytes=26-",
        "bytes=26-30",
        "bytes=-0",
        "bytes=99999999999999999999-",
    ] {
        let r = f.get("/files/alphabet.txt", &format!("Range: {range}\r\n"));
        assert_eq!(
            r.status_line, "HTTP/1.1 416 Range Not Satisfiable",
            "{range}"
        );
        assert_eq!(r.header("Content-Range"), Some("bytes */26"), "{range}");
        assert!(r.body.is_empty());
    }
    fs::write(f.shared.join("empty"), b"").unwrap();
    let r = f.get("/files/empty", "Range: bytes=0-\r\n");
    assert_eq!(r.status(), 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */0"));
    let r = f.get("/files/empty", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Length"), Some("0"));
    assert_eq!(r.header("ETag"), Some(quoted_sha256(b"").as_str()));
}

#[test]
fn malformed_or_multiple_ranges_are_ignored() {
    let f = Fixture::start();
    for range in [
        "bytes=5-2",
        "bytes=0-1,4-5",
        "items=0-1",
        "bytes=x-",
        "bytes=-",
    ] {
        let r = f.get("/files/alphabet.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.body, ALPHABET, "{range}");
        assert_eq!(r.header("Content-Range"), None);
    }
}

#[test]
fn if_range_honours_only_the_current_etag() {
    let f = Fixture::start();
    let etag = quoted_sha256(ALPHABET);
    let r = f.get(
        "/files/alphabet.txt",
        &format!("Range: bytes=1-2\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!(r.status(), 206);
    assert_eq!(r.body, b"bc");
    let stale = quoted_sha256(b"an older version");
    let r = f.get(
        "/files/alphabet.txt",
        &format!("Range: bytes=1-2\r\nIf-Range: {stale}\r\n"),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, ALPHABET);
}

#[test]
fn a_changed_file_gets_a_new_etag() {
    let f = Fixture::start();
    let before = f.get("/files/alphabet.txt", "");
    fs::write(f.shared.join("alphabet.txt"), b"new and longer contents").unwrap();
    let after = f.get("/files/alphabet.txt", "");
    assert_eq!(after.body, b"new and longer contents");
    assert_ne!(before.header("ETag"), after.header("ETag"));
    assert_eq!(
        after.header("ETag"),
        Some(quoted_sha256(b"new and longer contents").as_str())
    );
}

#[test]
fn unknown_names_and_paths_get_404() {
    let f = Fixture::start();
    for target in [
        "/files/nope",
        "/files/ALPHABET.TXT",
        "/nothing",
        "/files",
        "/etc/passwd",
    ] {
        let r = f.get(target, "");
        assert_eq!(r.status_line, "HTTP/1.1 404 Not Found", "{target}");
    }
}

#[test]
fn other_methods_get_405_with_allow() {
    let f = Fixture::start();
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let mut client = f.connect();
        client.send(&format!("{method} /files/alphabet.txt HTTP/1.1\r\n\r\n"));
        let r = client.response(false);
        assert_eq!(r.status_line, "HTTP/1.1 405 Method Not Allowed", "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        // The connection stays usable.
        client.send("GET /files/alphabet.txt HTTP/1.1\r\n\r\n");
        assert_eq!(client.response(false).body, ALPHABET);
    }
    // A request with a body is answered, then the connection is closed
    // because the body is never read.
    let mut client = f.connect();
    client.send("POST /files/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    let r = client.response(false);
    assert_eq!(r.status(), 405);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(client.closed_by_server());
}

#[test]
fn traversal_attempts_are_refused() {
    let f = Fixture::start();
    let bad_names = [
        "/files/..%2Fsecret",
        "/files/..%2fsecret",
        "/files/%2E%2E%2Fsecret",
        "/files/..",
        "/files/%2E%2E",
        "/files/../secret",
        "/files/a/b",
        "/files/%2Fetc%2Fpasswd",
        "/files//etc/passwd",
        "/files/..%5Csecret",
        "/files/",
        "/files/%FF",
        "/files/a%00b",
        "/files/%20alphabet.txt",
    ];
    for target in bad_names {
        let r = f.get(target, "");
        assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request", "{target}");
        assert!(!r.body.windows(6).any(|w| w == b"secret"));
    }
}

#[test]
fn only_regular_files_inside_the_folder_are_served() {
    let f = Fixture::start();
    symlink(f.tmp.path().join("secret"), f.shared.join("escape")).unwrap();
    symlink("../secret", f.shared.join("relative-escape")).unwrap();
    symlink("/etc/passwd", f.shared.join("passwd")).unwrap();
    symlink("alphabet.txt", f.shared.join("alias")).unwrap();
    fs::create_dir(f.shared.join("subdir")).unwrap();
    fs::write(f.shared.join("subdir").join("inner"), b"x").unwrap();
    for target in [
        "/files/escape",
        "/files/relative-escape",
        "/files/passwd",
        "/files/subdir",
    ] {
        let r = f.get(target, "");
        assert_eq!(r.status(), 404, "{target}");
        assert!(!r.body.starts_with(b"top secret"));
    }
    let r = f.get("/files/alias", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, ALPHABET);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let f = Fixture::start();
    let mut client = f.connect();
    for i in 0..5 {
        client.send(&format!(
            "GET /files/alphabet.txt HTTP/1.1\r\nRange: bytes={i}-{i}\r\n\r\n"
        ));
        let r = client.response(false);
        assert_eq!(r.status(), 206);
        assert_eq!(r.body, &ALPHABET[i..=i]);
    }
    // Two pipelined requests in one write.
    client.send(
        "GET /files/hello%20world.txt HTTP/1.1\r\n\r\nGET /files/alphabet.txt HTTP/1.1\r\n\r\n",
    );
    assert_eq!(client.response(false).body, b"hello, world\n");
    assert_eq!(client.response(false).body, ALPHABET);
    client.send("GET /files/alphabet.txt HTTP/1.1\r\nConnection: close\r\n\r\n");
    let last = client.response(false);
    assert_eq!(last.header("Connection"), Some("close"));
    assert!(client.closed_by_server());
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let f = Fixture::start();
    let mut client = f.connect();
    client.send("GET /files/alphabet.txt HTTP/1.0\r\n\r\n");
    let r = client.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(client.closed_by_server());

    let mut client = f.connect();
    client.send("GET /files/alphabet.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.response(false).header("Connection"), None);
    client.send("GET /files/alphabet.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.response(false).body, ALPHABET);
}

#[test]
fn malformed_and_oversized_heads() {
    let f = Fixture::start();
    let mut client = f.connect();
    client.send("THIS IS NOT HTTP\r\n\r\n");
    let r = client.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(client.closed_by_server());

    let mut client = f.connect();
    let huge = "x".repeat(20 * 1024);
    client.send(&format!(
        "GET /files/alphabet.txt HTTP/1.1\r\nX-Big: {huge}\r\n\r\n"
    ));
    let r = client.response(false);
    assert_eq!(
        r.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    let mut client = f.connect();
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    client.send(&format!("GET /files/alphabet.txt HTTP/1.1\r\n{many}\r\n"));
    assert_eq!(client.response(false).status(), 431);

    // The server is still fine.
    assert_eq!(f.get("/files/alphabet.txt", "").body, ALPHABET);
}

#[test]
fn a_stalled_client_is_timed_out() {
    let f = Fixture::with_config(FileServerConfig {
        read_timeout: Duration::from_millis(200),
        ..FileServerConfig::default()
    });
    // Half a head, then nothing: the server answers 408 and closes.
    let mut client = f.connect();
    client.send("GET /files/alphabet.txt HTTP/1.1\r\nHost:");
    let r = client.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 408 Request Timeout");
    assert!(client.closed_by_server());
    // An idle keep-alive connection is closed without a word.
    let mut client = f.connect();
    client.send("GET /files/alphabet.txt HTTP/1.1\r\n\r\n");
    assert_eq!(client.response(false).body, ALPHABET);
    assert!(client.closed_by_server());
}

#[test]
fn connections_over_the_limit_get_503() {
    let f = Fixture::with_config(FileServerConfig {
        max_connections: 1,
        ..FileServerConfig::default()
    });
    let mut first = f.connect();
    first.send("GET /files/alphabet.txt HTTP/1.1\r\n\r\n");
    assert_eq!(first.response(false).status(), 200);

    // The first connection is still open: the second one is refused.
    let mut second = f.connect();
    let r = second.response(false);
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(second.closed_by_server());

    // Once the server has closed the first, a new connection is served.
    first.send("GET /files/alphabet.txt HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(first.response(false).status(), 200);
    assert!(first.closed_by_server());
    drop(first);
    let r = f.get("/files/alphabet.txt", "");
    assert_eq!(r.status(), 200);
}

#[test]
fn index_lists_shared_files_with_escaped_links() {
    let f = Fixture::start();
    fs::write(f.shared.join("<b>&.txt"), b"1234").unwrap();
    fs::create_dir(f.shared.join("not-a-file")).unwrap();
    let r = f.get("/", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let page = String::from_utf8(r.body).unwrap();
    assert!(
        page.contains(
            "<a href=\"/files/alphabet.txt\">alphabet.txt</a> <span class=\"size\">26 B</span>"
        ),
        "{page}"
    );
    assert!(page.contains("href=\"/files/hello%20world.txt\""), "{page}");
    assert!(
        page.contains(">&lt;b&gt;&amp;.txt</a> <span class=\"size\">4 B</span>"),
        "{page}"
    );
    assert!(!page.contains("not-a-file"));
    // Every link works.
    let r = f.get("/files/%3Cb%3E%26.txt", "");
    assert_eq!(r.body, b"1234");
}

#[test]
fn shutdown_closes_idle_connections_and_returns() {
    let f = Fixture::start();
    let mut client = f.connect();
    client.send("GET /files/alphabet.txt HTTP/1.1\r\n\r\n");
    assert_eq!(client.response(false).status(), 200);
    let addr = f.addr();
    let Fixture { server, tmp, .. } = f;
    server.shutdown();
    assert!(client.closed_by_server());
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
    drop(tmp);
}

/// A server whose folder holds one sparse file, `sparse.bin`, of `size`
/// bytes, with its digest already in the cache (a made-up one: these tests
/// are about transfers, and hashing 64 MiB in a debug build is slow).
fn sparse_server(size: u64, config: FileServerConfig) -> (tempfile::TempDir, FileServer) {
    let tmp = tempfile::tempdir().unwrap();
    let file = fs::File::create(tmp.path().join("sparse.bin")).unwrap();
    file.set_len(size).unwrap();
    let dir = SharedDir::open(tmp.path()).unwrap();
    let hashes = HashCache::new();
    hashes.insert(&dir.resolve("sparse.bin").unwrap(), "0".repeat(64));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = FileServer::start(listener, dir, hashes, config).unwrap();
    (tmp, server)
}

/// Far more than the kernel's socket buffers can hold in flight.
const STALL_SIZE: u64 = 256 * 1024 * 1024;

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let (_tmp, server) = sparse_server(
        STALL_SIZE,
        FileServerConfig {
            max_connections: 1,
            write_timeout: Duration::from_millis(200),
            ..FileServerConfig::default()
        },
    );
    let mut stalled = Client::connect(server.local_addr());
    stalled.send("GET /files/sparse.bin HTTP/1.1\r\n\r\n");
    assert_eq!(stalled.response(true).content_length(), STALL_SIZE);

    // The only worker is busy with the stalled client until the write
    // timeout frees it; poll until a new connection is served.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    loop {
        let mut probe = Client::connect(server.local_addr());
        probe.send("HEAD /files/sparse.bin HTTP/1.1\r\nConnection: close\r\n\r\n");
        match probe.response(true).status() {
            200 => break,
            503 => {}
            other => panic!("unexpected status {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled client still holds the worker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stalled client got only part of the body, then the end.
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = stalled.reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    assert!(received < STALL_SIZE, "received {received} bytes");
}

#[test]
fn shutdown_cuts_transfers_in_progress() {
    let (_tmp, server) = sparse_server(STALL_SIZE, FileServerConfig::default());
    let mut client = Client::connect(server.local_addr());
    client.send("GET /files/sparse.bin HTTP/1.1\r\n\r\n");
    assert_eq!(client.response(true).status(), 200);
    // The worker is blocked sending to a client that does not read; the
    // default write timeout is a minute, so returning promptly proves the
    // connection was closed by shutdown.
    let started = std::time::Instant::now();
    server.shutdown();
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Runs curl, failing the test with a clear message when it is missing.
fn curl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests need curl on the PATH to act as a real HTTP client: {e}")
        });
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn curl_downloads_whole_files_and_ranges() {
    let f = Fixture::start();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    fs::write(f.shared.join("data file.bin"), &data).unwrap();
    let url = f.url("/files/data%20file.bin");

    let out = f.tmp.path().join("full");
    curl(&["-o", path_str(&out), &url]);
    assert_eq!(fs::read(&out).unwrap(), data);

    assert_eq!(curl(&["--range", "1000-1999", &url]), &data[1000..2000]);
    assert_eq!(curl(&["--range", "-10", &url]), &data[data.len() - 10..]);

    // Resume a partial download, as a user would with curl -C -.
    let part = f.tmp.path().join("part");
    fs::write(&part, &data[..123_456]).unwrap();
    curl(&["-C", "-", "-o", path_str(&part), &url]);
    assert_eq!(fs::read(&part).unwrap(), data);
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A file far larger than any buffer in the server: 64 MiB, written in
/// chunks with a position-dependent pattern (byte `p` is `p % 251`) so a
/// misplaced byte shows. Received bytes are compared with the pattern, not
/// hashed again: SHA-256 is slow in debug builds.
#[test]
fn serves_a_file_larger_than_any_buffer() {
    const SIZE: u64 = 64 * 1024 * 1024;
    const CHUNK: usize = 1024 * 1024;
    // Any run of up to CHUNK bytes starting at position p is
    // pattern[p % 251..][..len].
    let pattern: Vec<u8> = (0..CHUNK + 251).map(|p| (p % 251) as u8).collect();
    let expected_at = |position: u64, len: usize| &pattern[(position % 251) as usize..][..len];

    let f = Fixture::start();
    let path = f.shared.join("big.bin");
    let mut expected = Sha256::new();
    {
        let mut file = fs::File::create(&path).unwrap();
        for c in 0..SIZE / CHUNK as u64 {
            let chunk = expected_at(c * CHUNK as u64, CHUNK);
            file.write_all(chunk).unwrap();
            expected.update(chunk);
        }
    }
    let expected = to_hex(&expected.finalize());

    // Compares everything `reader` yields with the pattern; returns the count.
    let check = |reader: &mut dyn Read| -> u64 {
        let mut buf = vec![0u8; CHUNK];
        let mut position: u64 = 0;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                return position;
            }
            assert!(
                buf[..n] == *expected_at(position, n),
                "wrong bytes in {position}..{}",
                position + n as u64
            );
            position += n as u64;
        }
    };

    let mut client = f.connect();
    client.send("GET /files/big.bin HTTP/1.1\r\n\r\n");
    let head = client.response(true);
    assert_eq!(head.status(), 200);
    assert_eq!(head.content_length(), SIZE);
    assert_eq!(
        head.header("ETag"),
        Some(format!("\"{expected}\"").as_str())
    );
    assert_eq!(check(&mut (&mut client.reader).take(SIZE)), SIZE);

    // A range deep inside, on the same connection.
    let start = SIZE - 3 * CHUNK as u64 - 5;
    client.send(&format!(
        "GET /files/big.bin HTTP/1.1\r\nRange: bytes={start}-{}\r\n\r\n",
        start + 9
    ));
    let r = client.response(false);
    assert_eq!(r.status(), 206);
    assert_eq!(r.body, expected_at(start, 10));

    // And curl agrees.
    let out = f.tmp.path().join("big.out");
    curl(&["-o", path_str(&out), &f.url("/files/big.bin")]);
    assert_eq!(check(&mut fs::File::open(&out).unwrap()), SIZE);
}

/// A big file nobody has hashed yet (dropped into the folder a moment ago)
/// is read once, by the background hasher: the requests for it wait for that
/// one read, at most `MAX_WAITERS` (8) of them; the next gets `503` with
/// `Retry-After` at once, so a worker stays free for other files.
#[test]
fn requests_for_a_big_unhashed_file_wait_for_one_read_and_leave_workers_free() {
    const SIZE: u64 = 1024 * 1024 * 1024; // sparse; far over the 16 MiB inline limit
    const WAITERS: usize = 8;
    let tmp = tempfile::tempdir().unwrap();
    fs::File::create(tmp.path().join("big.bin"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    fs::write(tmp.path().join("small.txt"), ALPHABET).unwrap();
    let dir = SharedDir::open(tmp.path()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = FileServerConfig {
        max_connections: WAITERS + 1,
        ..FileServerConfig::default()
    };
    let server = FileServer::start(listener, dir, HashCache::new(), config).unwrap();
    let addr = server.local_addr();
    let head = move |target: &str| {
        let mut client = Client::connect(addr);
        client.send(&format!(
            "HEAD {target} HTTP/1.1\r\nConnection: close\r\n\r\n"
        ));
        client.response(true)
    };

    let (answers_tx, answers) = std::sync::mpsc::channel();
    let asks: Vec<_> = (0..=WAITERS)
        .map(|_| {
            let answers_tx = answers_tx.clone();
            std::thread::spawn(move || {
                let _ = answers_tx.send(head("/files/big.bin"));
            })
        })
        .collect();
    // One more than may wait: that one is refused at once, while the hash runs.
    let first = answers.recv_timeout(CLIENT_TIMEOUT).unwrap();
    assert_eq!(first.status(), 503, "{first:?}");
    let retry: u64 = first.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry >= 1, "{first:?}");
    // (That `503` is the hasher's: the connection table's has no `Retry-After`.)
    // Its slot is freed once the connection is closed: another file is served.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let small = loop {
        let small = head("/files/small.txt");
        if small.status() != 503 || std::time::Instant::now() > deadline {
            break small;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(small.status(), 200, "{small:?}");
    assert_eq!(
        small.header("ETag").unwrap(),
        format!("\"{}\"", to_hex(&Sha256::digest(ALPHABET)))
    );

    let mut zeros = Sha256::new();
    let block = vec![0u8; 1 << 20];
    for _ in 0..SIZE / block.len() as u64 {
        zeros.update(&block);
    }
    let expected = format!("\"{}\"", to_hex(&zeros.finalize()));
    // The ones that waited get the file's digest.
    for _ in 0..WAITERS {
        let answer = answers.recv_timeout(Duration::from_secs(300)).unwrap();
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert_eq!(answer.header("ETag").unwrap(), expected);
        assert_eq!(answer.content_length(), SIZE);
    }
    for ask in asks {
        ask.join().unwrap();
    }
    // The piece list came from the same read.
    let pieces = head("/pieces/big.bin");
    assert_eq!(pieces.status(), 200);
    assert_eq!(pieces.header("ETag").unwrap(), expected);
    server.shutdown();
}
