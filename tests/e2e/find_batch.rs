//! `peer find` and the batch forms of `peer get` (several names,
//! `--find`, `--from-file`, stdin), with the real binaries: exit codes,
//! the JSON shape, the per-file failure lines and the summary, that every
//! file that ends up in the downloads folder is the registered one, and
//! that a batch reuses keep-alive connections to a source (counted on the
//! source's side) and survives sources that close idle ones.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use p2p_tests::{
    bin, pseudo_random_bytes, run, serve_content, serve_content_as, sha256_hex, FakeRequest,
    FakeSource, Peer, Registry, WAIT_TIMEOUT,
};

fn peer(args: &[&str]) -> Output {
    run(&bin("peer"), args, WAIT_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A downloading peer's folders and the common options pointing at them.
struct Client {
    _dir: tempfile::TempDir,
    downloads: std::path::PathBuf,
    args: Vec<String>,
}

impl Client {
    fn new(registry: &Registry) -> Client {
        let (dir, shared, downloads) = Peer::folders();
        let args = vec![
            "--server".to_owned(),
            registry.addr_string(),
            "--shared".to_owned(),
            shared.display().to_string(),
            "--downloads".to_owned(),
            downloads.display().to_string(),
        ];
        Client {
            _dir: dir,
            downloads,
            args,
        }
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        peer(&args)
    }

    /// Runs `peer` with `input` on its stdin.
    fn run_with_stdin(&self, extra: &[&str], input: &str) -> Output {
        let mut child = Command::new(bin("peer"))
            .args(&self.args)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peer");
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_owned();
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        // wait_with_output has no deadline; the run itself is bounded by
        // the peer's own timeouts, and the registry and sources are local.
        let output = child.wait_with_output().expect("peer ran");
        writer.join().expect("stdin writer");
        output
    }

    fn file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.downloads.join(name)).ok()
    }
}

/// A source that answers every request for its one file with the
/// registered length and ETag and the wrong bytes: a corrupt peer (the
/// suites' scripted [`FakeSource`], keeping its connections alive).
fn corrupt_source(length: usize, etag: String) -> u16 {
    let wrong = vec![b'X'; length];
    FakeSource::start(move |request, stream| serve_content_as(request, stream, &wrong, &etag, None))
        .addr
        .port()
}

#[test]
fn find_exit_codes_and_json() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let content = b"holiday bytes".as_slice();
    let _source = Peer::serve(
        &registry,
        &[
            ("Holiday Photos 2024.zip", content),
            ("holiday.txt", b"h"),
            ("other.bin", b"o"),
        ],
        &[],
    );

    let out = peer(&["--server", &server, "find", "holi", "pho"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("Holiday Photos 2024.zip"), "{stdout}");
    assert!(stdout.contains("13 B"), "{stdout}");

    // One argument may carry several words.
    let out = peer(&["--server", &server, "find", "--json", "HOLIDAY"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON value");
    let hits = json.as_array().expect("a JSON array");
    assert_eq!(hits.len(), 2, "{json}");
    for hit in hits {
        let object = hit.as_object().expect("objects");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["name", "sha256", "size", "sources"], "{json}");
        assert!(
            object["size"].is_u64() && object["sources"].is_u64(),
            "{json}"
        );
    }
    let photos = hits
        .iter()
        .find(|h| h["name"] == "Holiday Photos 2024.zip")
        .expect("the zip is a hit");
    assert_eq!(photos["size"], 13);
    assert_eq!(photos["sources"], 1);
    assert_eq!(photos["sha256"], sha256_hex(content).as_str());

    let out = peer(&["--server", &server, "find", "nothing-like-it"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let out = peer(&["--server", &server, "find", "--json", "nothing-like-it"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout).trim(), "[]");

    // Nobody listens on port 1.
    let out = peer(&["--server", "127.0.0.1:1", "find", "holiday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_batch_reports_every_file_and_fetches_the_good_ones_verified() {
    let registry = Registry::start();
    let good_a = pseudo_random_bytes(100_000, 1);
    let good_b = pseudo_random_bytes(4096, 2);
    let same = pseudo_random_bytes(5000, 3);
    let theirs = pseudo_random_bytes(6000, 4);
    let source = Peer::serve(
        &registry,
        &[
            ("good a.bin", &good_a),
            ("good-b.bin", &good_b),
            ("same.bin", &same),
            ("conflict.bin", &theirs),
        ],
        &[],
    );
    // A source that serves the registered length with the wrong bytes.
    let corrupt = pseudo_random_bytes(3000, 5);
    let port = corrupt_source(corrupt.len(), sha256_hex(&corrupt));
    registry
        .client()
        .register(
            port,
            corrupt.len() as u64,
            &sha256_hex(&corrupt),
            "corrupt.bin",
        )
        .expect("register the corrupt source");

    let client = Client::new(&registry);
    std::fs::write(client.downloads.join("same.bin"), &same).unwrap();
    let mine = b"my own conflict.bin, not theirs".to_vec();
    std::fs::write(client.downloads.join("conflict.bin"), &mine).unwrap();

    let out = client.run(&[
        "get",
        "good a.bin",
        "missing.bin",
        "same.bin",
        "conflict.bin",
        "corrupt.bin",
        "good-b.bin",
        "good a.bin",
        "--jobs",
        "3",
    ]);
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let failures: Vec<&str> = stderr.lines().filter(|l| l.contains("failed")).collect();
    assert_eq!(failures.len(), 3, "{stderr}");
    assert!(
        failures
            .iter()
            .any(|l| l.contains("missing.bin") && l.contains("no peer shares")),
        "{stderr}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("conflict.bin") && l.contains("other content")),
        "{stderr}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("corrupt.bin") && l.contains("not the registered")),
        "{stderr}"
    );
    assert!(
        stdout
            .contains("batch of 6 files: 2 downloaded, 1 already present, 3 failed (1 not found)"),
        "{stdout}"
    );
    // One counted line per file, failed ones included: [1/6] ... [6/6].
    for k in 1..=6 {
        assert_eq!(
            stdout.matches(&format!("[{k}/6] ")).count(),
            1,
            "[{k}/6]:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("] failed ").count(), 3, "{stdout}");

    assert_eq!(client.file("good a.bin"), Some(good_a));
    assert_eq!(client.file("good-b.bin"), Some(good_b));
    assert_eq!(client.file("same.bin"), Some(same));
    assert_eq!(client.file("conflict.bin"), Some(mine), "never overwritten");
    assert_eq!(
        client.file("corrupt.bin"),
        None,
        "never under its final name"
    );
    assert_eq!(client.file("missing.bin"), None);

    // Everything there now: the same batch minus the failures is a success.
    let out = client.run(&["get", "good a.bin", "good-b.bin", "same.bin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 already present, 0 failed"),
        "{}",
        text(&out.stdout)
    );

    // A batch whose only failures are names nobody shares exits 1.
    let out = client.run(&["get", "good-b.bin", "nope-1", "nope-2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().count(),
        2,
        "{}",
        text(&out.stderr)
    );
    drop(source);
}

#[test]
fn names_from_a_file_from_stdin_and_from_find() {
    let registry = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("track {i:02}.ogg"), pseudo_random_bytes(4096, i)))
        .collect();
    let listed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let mut shared = listed.clone();
    shared.push(("notes.txt", b"notes"));
    let _source = Peer::serve(&registry, &shared, &[]);

    // Standard input, CRLF and blank lines.
    let client = Client::new(&registry);
    let mut input = String::new();
    for (name, _) in &files[..6] {
        input.push_str(name);
        input.push_str("\r\n\n");
    }
    let out = client.run_with_stdin(&["get", "--from-file", "-", "--jobs", "2"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("batch of 6 files: 6 downloaded"),
        "{}",
        text(&out.stdout)
    );
    for (name, content) in &files[..6] {
        assert_eq!(client.file(name).as_ref(), Some(content), "{name}");
    }

    // A list file.
    let client = Client::new(&registry);
    let list = client.downloads.parent().unwrap().join("names.txt");
    let names: Vec<&str> = files[6..].iter().map(|(n, _)| n.as_str()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let out = client.run(&["get", "--from-file", list.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (name, content) in &files[6..] {
        assert_eq!(client.file(name).as_ref(), Some(content), "{name}");
    }
    let missing = Path::new("/nonexistent/names.txt");
    let out = client.run(&["get", "--from-file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("names.txt"),
        "{}",
        text(&out.stderr)
    );

    // Every FIND hit, and nothing else.
    let client = Client::new(&registry);
    let out = client.run(&["get", "--find", "track"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (name, content) in &files {
        assert_eq!(client.file(name).as_ref(), Some(content), "{name}");
    }
    assert_eq!(client.file("notes.txt"), None);
    let out = client.run(&["get", "--find", "no-such-word"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_single_name_not_found_suggests_find_hits() {
    let registry = Registry::start();
    let _source = Peer::serve(&registry, &[("big.bin", b"big")], &[]);
    let client = Client::new(&registry);
    let out = client.run(&["get", "big"]);
    assert_eq!(out.status.code(), Some(1));
    // The reason and the suggestions: one line (the contract's "one-line
    // reason"), with no log colours either.
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("peer: no peer shares \"big\"")
            && lines[0].ends_with("; did you mean \"big.bin\"?"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let out = client.run(&["get", "big.bin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut content = Vec::new();
    std::fs::File::open(client.downloads.join("big.bin"))
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    assert_eq!(content, b"big");
}

/// Names and contents of the files a fake source serves.
type Files = Vec<(String, Vec<u8>)>;

/// `count` files of 4 KiB (sequential path: below one piece), named
/// `<prefix>NN.bin` (no character the URL escapes), registered by `source`.
fn fake_files(
    registry: &Registry,
    source: &FakeSource,
    prefix: &str,
    count: u64,
) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let content = pseudo_random_bytes(4096, 1000 + i);
            (format!("{prefix}{i:02}.bin"), content)
        })
        .collect();
    for (name, content) in &files {
        source.register(registry, name, content.len() as u64, &sha256_hex(content));
    }
    files
}

/// The file of `files` a request asks for.
fn requested<'a>(files: &'a [(String, Vec<u8>)], request: &FakeRequest) -> Option<&'a [u8]> {
    files
        .iter()
        .find(|(name, _)| request.path == format!("/files/{name}"))
        .map(|(_, content)| content.as_slice())
}

fn not_found(stream: &mut TcpStream) -> bool {
    stream
        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        .is_ok()
}

fn fetch_list(client: &Client, files: &[(String, Vec<u8>)], jobs: &str) -> Output {
    let list = client.downloads.parent().unwrap().join("names.txt");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    client.run(&["get", "--from-file", list.to_str().unwrap(), "--jobs", jobs])
}

#[test]
fn a_batch_reuses_keep_alive_connections_per_source() {
    let registry = Registry::start();
    let files: Arc<Mutex<Files>> = Arc::default();
    let served = Arc::clone(&files);
    let source = FakeSource::start(move |request, stream| {
        let files = served.lock().unwrap();
        match requested(&files, request) {
            Some(content) => serve_content(request, stream, content, None),
            None => not_found(stream),
        }
    });
    *files.lock().unwrap() = fake_files(&registry, &source, "kept-", 20);
    let files = files.lock().unwrap().clone();

    let client = Client::new(&registry);
    let out = fetch_list(&client, &files, "2");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("batch of 20 files: 20 downloaded"),
        "{}",
        text(&out.stdout)
    );
    for (name, content) in &files {
        assert_eq!(client.file(name).as_ref(), Some(content), "{name}");
    }
    let gets = source
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 20, "one request per file");
    // Each worker keeps its connection from file to file: one per job
    // (without the pool, one per file: 20).
    let opened = source.connections();
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for 20 files with --jobs 2"
    );
}

#[test]
fn sources_that_drop_idle_connections_still_give_a_verified_batch() {
    let registry = Registry::start();
    // One source closes after every response without saying so
    // (`Connection: close` is never sent); the other answers one request
    // per connection and closes, unanswered, when the next one arrives:
    // the keep-alive race, every time.
    let closing_files: Arc<Mutex<Files>> = Arc::default();
    let served = Arc::clone(&closing_files);
    let closing = FakeSource::start(move |request, stream| {
        let files = served.lock().unwrap();
        match requested(&files, request) {
            Some(content) => {
                serve_content(request, stream, content, None);
            }
            None => {
                not_found(stream);
            }
        }
        false
    });
    let racing_files: Arc<Mutex<Files>> = Arc::default();
    let served = Arc::clone(&racing_files);
    let answered: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let racing = FakeSource::start(move |request, stream| {
        let Ok(client) = stream.peer_addr() else {
            return false;
        };
        if !answered.lock().unwrap().insert(client) {
            // Read and left unanswered: the connection just closes.
            return false;
        }
        let files = served.lock().unwrap();
        match requested(&files, request) {
            Some(content) => serve_content(request, stream, content, None),
            None => not_found(stream),
        }
    });
    *closing_files.lock().unwrap() = fake_files(&registry, &closing, "closing-", 10);
    *racing_files.lock().unwrap() = fake_files(&registry, &racing, "racing-", 10);
    let mut files = closing_files.lock().unwrap().clone();
    files.extend(racing_files.lock().unwrap().iter().cloned());

    let client = Client::new(&registry);
    let out = fetch_list(&client, &files, "2");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("batch of 20 files: 20 downloaded"),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for (name, content) in &files {
        assert_eq!(client.file(name).as_ref(), Some(content), "{name}");
    }
    assert!(
        std::fs::read_dir(&client.downloads).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".part")),
        "no .part left"
    );
    // The batch did reuse connections to the racing source (it got
    // requests it left unanswered) and sent those requests again.
    let asked = racing.requests().len();
    assert!(
        asked > 10,
        "{asked} requests for 10 files: no connection was reused"
    );
}
