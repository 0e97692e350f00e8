//! End-to-end tests of the peer's scriptable side: a real `dht-server`, real
//! `peer serve` processes, and `peer search` / `peer get` runs against them.
//! What is checked is what a user sees: exit codes, one-line failures, and
//! files that are byte-identical to the shared ones, never half-written.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::thread;
use std::time::Duration;

use p2p_tests::{
    bin, pseudo_random_bytes, run, sha256_hex, wait_until, Peer, Registry, Running, WAIT_TIMEOUT,
};

/// Generous: a debug build moves tens of MiB.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `peer --server R --downloads D <args>`.
fn peer_in(registry: &Registry, downloads: &Path, args: &[&str]) -> Output {
    let server = registry.addr_string();
    let downloads = downloads.to_str().expect("UTF-8 temp path");
    let mut all = vec!["--server", &server, "--downloads", downloads];
    all.extend_from_slice(args);
    run(&bin("peer"), &all, RUN_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Asserts a failure with `code` whose stderr is exactly one non-empty line.
fn one_line_failure(output: &Output, code: i32) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{stderr}",
        text(&output.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got:\n{stderr}");
    assert!(!lines[0].trim().is_empty());
    lines[0].to_owned()
}

fn no_part_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read downloads") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".part"),
            "{name:?} left in {}",
            dir.display()
        );
    }
}

/// A stand-in for a dishonest or broken peer (tests/support's scripted
/// source): answers every request with `200` and `body`, and logs them.
fn raw_http_server(body: Vec<u8>) -> (SocketAddr, p2p_tests::FakeSource) {
    let fake = p2p_tests::FakeSource::start(move |_, stream| {
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes());
        let _ = stream.write_all(&body);
        false
    });
    (fake.addr, fake)
}

#[test]
fn get_downloads_byte_identical_files() {
    let registry = Registry::start();
    let big = pseudo_random_bytes(32 * 1024 * 1024, 7);
    let odd_name = "été à la plage 1.txt";
    let odd = b"sun, sand and UTF-8\n".repeat(100);
    let tiny = b"x".to_vec();
    let peer = Peer::serve(
        &registry,
        &[
            ("big.bin", &big),
            (odd_name, &odd),
            ("tiny", &tiny),
            ("empty", b""),
        ],
        &[],
    );
    let (_dir, _shared, downloads) = Peer::folders();

    for (name, content) in [
        ("big.bin", &big),
        (odd_name, &odd),
        ("tiny", &tiny),
        ("empty", &Vec::new()),
    ] {
        let out = ok(&peer_in(&registry, &downloads, &["get", name]));
        assert!(out.contains(&peer.addr.port().to_string()), "{out}");
        let got = std::fs::read(downloads.join(name)).expect("downloaded file");
        assert!(got == *content, "{name}: content differs");
    }
    no_part_files(&downloads);
}

#[test]
fn search_prints_sources_and_exits_0_or_1() {
    let registry = Registry::start();
    let content = b"findable".to_vec();
    let peer = Peer::serve(&registry, &[("a b.txt", &content)], &[]);
    let (_dir, _shared, downloads) = Peer::folders();

    let out = ok(&peer_in(&registry, &downloads, &["search", "a b.txt"]));
    let expected = format!(
        "127.0.0.1:{} {} {}",
        peer.addr.port(),
        content.len(),
        sha256_hex(&content)
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), [expected.as_str()]);

    let missing = peer_in(&registry, &downloads, &["search", "nobody has this"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stderr));
    assert!(missing.stdout.is_empty());
}

#[test]
fn get_of_an_unknown_name_fails_with_one_line() {
    let registry = Registry::start();
    let (_dir, _shared, downloads) = Peer::folders();
    let line = one_line_failure(&peer_in(&registry, &downloads, &["get", "ghost.txt"]), 1);
    assert!(line.contains("ghost.txt"), "{line}");
    assert!(!downloads.join("ghost.txt").exists());
    no_part_files(&downloads);

    let line = one_line_failure(&peer_in(&registry, &downloads, &["get", "../escape"]), 2);
    assert!(line.contains("../escape"), "{line}");
}

#[test]
fn get_with_the_registry_down_fails_with_one_line() {
    let mut registry = Registry::start();
    let addr = registry.addr_string();
    registry.stop();
    let (_dir, _shared, downloads) = Peer::folders();
    let out = run(
        &bin("peer"),
        &[
            "--server",
            &addr,
            "--downloads",
            downloads.to_str().expect("UTF-8"),
            "get",
            "x",
        ],
        RUN_TIMEOUT,
    );
    let line = one_line_failure(&out, 2);
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn a_corrupted_source_beside_a_good_one_yields_the_good_content() {
    let registry = Registry::start();
    let good = pseudo_random_bytes(3 * 1024 * 1024 + 5, 11);
    let mut bad = good.clone();
    bad[1_000_000] ^= 0x55;
    let _honest = Peer::serve(&registry, &[("doc.bin", &good)], &[]);

    // The liar registers after the honest peer, so it is tried first, and
    // claims the good size and digest.
    let (liar, hits) = raw_http_server(bad);
    registry
        .client()
        .register(
            liar.port(),
            good.len() as u64,
            &sha256_hex(&good),
            "doc.bin",
        )
        .expect("register the liar");

    let (_dir, _shared, downloads) = Peer::folders();
    let out = ok(&peer_in(&registry, &downloads, &["get", "doc.bin"]));
    assert!(
        !hits.requests().is_empty(),
        "the bad source was never tried"
    );
    assert!(
        out.contains(&liar.to_string()) && out.contains("trying the next source"),
        "says which source failed:\n{out}"
    );
    assert!(std::fs::read(downloads.join("doc.bin")).expect("file") == good);
    no_part_files(&downloads);
}

#[test]
fn each_failed_source_but_the_last_says_the_next_is_tried() {
    let registry = Registry::start();
    let mut client = registry.client();
    for _ in 0..2 {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("address").port();
        drop(closed);
        client
            .register(port, 5, &sha256_hex(b"ghost"), "ghost.txt")
            .expect("register a dead source");
    }
    let (_dir, _shared, downloads) = Peer::folders();
    let out = peer_in(&registry, &downloads, &["get", "ghost.txt"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.matches("trying the next source").count(),
        1,
        "{stdout}"
    );
    let line = one_line_failure(&out, 2);
    assert!(line.contains("2 tried"), "{line}");
}

#[test]
fn only_corrupted_sources_leave_nothing_behind() {
    let registry = Registry::start();
    let claimed = b"what the registry was promised".to_vec();
    let (liar, _) = raw_http_server(b"what the liar actually sends!!".to_vec());
    registry
        .client()
        .register(
            liar.port(),
            claimed.len() as u64,
            &sha256_hex(&claimed),
            "lie.txt",
        )
        .expect("register");
    let (_dir, _shared, downloads) = Peer::folders();
    let out = peer_in(&registry, &downloads, &["get", "lie.txt"]);
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("next source"),
        "there was no next source:\n{stdout}"
    );
    let line = one_line_failure(&out, 2);
    assert!(line.contains("sha256"), "{line}");
    assert!(!downloads.join("lie.txt").exists());
    no_part_files(&downloads);
}

#[test]
fn resumes_from_a_half_part_file() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(8 * 1024 * 1024 + 3, 5);
    let _peer = Peer::serve(&registry, &[("resume me.bin", &content)], &[]);
    let (_dir, _shared, downloads) = Peer::folders();
    let half = content.len() / 2;
    std::fs::write(downloads.join("resume me.bin.part"), &content[..half]).expect("write .part");

    let out = ok(&peer_in(&registry, &downloads, &["get", "resume me.bin"]));
    assert!(out.contains(&format!("resumed at {half}")), "{out}");
    assert!(std::fs::read(downloads.join("resume me.bin")).expect("file") == content);
    no_part_files(&downloads);
}

#[test]
fn a_part_file_with_foreign_bytes_is_redone() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(1024 * 1024, 9);
    let _peer = Peer::serve(&registry, &[("f.bin", &content)], &[]);
    let (_dir, _shared, downloads) = Peer::folders();
    std::fs::write(downloads.join("f.bin.part"), pseudo_random_bytes(1000, 1)).expect("write");

    ok(&peer_in(&registry, &downloads, &["get", "f.bin"]));
    assert!(std::fs::read(downloads.join("f.bin")).expect("file") == content);
    no_part_files(&downloads);
}

#[test]
fn an_existing_download_is_kept_whatever_its_content() {
    let registry = Registry::start();
    let content = b"version two".to_vec();
    let _peer = Peer::serve(&registry, &[("v.txt", &content), ("w.txt", &content)], &[]);
    let (_dir, _shared, downloads) = Peer::folders();

    ok(&peer_in(&registry, &downloads, &["get", "v.txt"]));
    let again = ok(&peer_in(&registry, &downloads, &["get", "v.txt"]));
    assert!(again.contains("already there"), "{again}");

    std::fs::write(downloads.join("w.txt"), b"version one").expect("write");
    let line = one_line_failure(&peer_in(&registry, &downloads, &["get", "w.txt"]), 2);
    assert!(line.contains("move or delete"), "{line}");
    assert_eq!(
        std::fs::read(downloads.join("w.txt")).expect("file"),
        b"version one"
    );
}

fn found(registry: &Registry, name: &str) -> bool {
    !registry.client().search(name).expect("search").is_empty()
}

#[test]
fn serve_unregisters_its_files_on_sigterm_and_sigint() {
    let registry = Registry::start();
    for signal in ["TERM", "INT"] {
        let mut peer = Peer::serve(&registry, &[("bye.txt", b"so long")], &[]);
        assert!(found(&registry, "bye.txt"));
        let process = peer.process.take().expect("running");
        process.signal(signal);
        let (status, stderr) = process.wait_exit(WAIT_TIMEOUT);
        assert!(status.success(), "{signal}: {status}: {stderr}");
        assert!(!found(&registry, "bye.txt"), "{signal}: still registered");
    }
}

#[test]
fn serve_registers_again_what_the_registry_lost() {
    let registry = Registry::start();
    let peer = Peer::serve(
        &registry,
        &[("phoenix", b"rises")],
        &["--heartbeat", "200ms"],
    );
    // The test runs on the same host, so it may withdraw the peer's registration.
    let removed = registry
        .client()
        .unregister(peer.addr.port(), "phoenix")
        .expect("unregister");
    assert!(removed);
    wait_until("the peer to register phoenix again", WAIT_TIMEOUT, || {
        found(&registry, "phoenix")
    });
}

/// HEARTBEATs the registry has answered (its `--http` metrics at `http`).
fn heartbeats(http: &str) -> u64 {
    p2p_tests::metric(http, r#"p2p_registry_requests_total{command="heartbeat"}"#).unwrap_or(0)
}

/// Stops a `peer serve` with SIGTERM; its stderr, after a clean exit.
fn stop_after_term(peer: &mut Peer) -> String {
    let process = peer.process.take().expect("running");
    process.signal("TERM");
    let (status, stderr) = process.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "{status}: {stderr}");
    stderr
}

#[test]
fn a_heartbeat_slower_than_the_registry_ttl_speeds_up_after_a_lapse() {
    let registry = Registry::start_with(&["--ttl", "3s", "--http", "127.0.0.1:0"]);
    let http = registry.http_addr();
    let mut peer = Peer::serve(
        &registry,
        &[("kept.txt", b"kept alive")],
        &["--heartbeat", "8s"],
    );
    // The registration lapses before the beat at 8 s (which registers it
    // again), before the one at 16 s (a second lapse in a row: the interval
    // halves to 4 s) and before the one at 20 s (halved to 2 s, under the
    // TTL): the fourth beat is the first that finds it alive.
    let beats = || heartbeats(&http);
    wait_until("four heartbeats", Duration::from_secs(90), || beats() >= 4);
    assert!(found(&registry, "kept.txt"));
    let stderr = stop_after_term(&mut peer);
    // The first lapse registers again and keeps the interval; the next ones halve it.
    let first = stderr.find("had lost this peer's files (expired");
    let halved = stderr.find("heartbeating every 4s");
    assert!(first.is_some() && first < halved, "{stderr}");
    assert!(stderr.contains("heartbeating every 2s"), "{stderr}");
}

#[test]
fn one_lapse_such_as_a_prune_is_registered_again_without_a_shorter_heartbeat() {
    let registry = Registry::start_with(&["--http", "127.0.0.1:0"]);
    let http = registry.http_addr();
    let mut peer = Peer::serve(
        &registry,
        &[("pruned.txt", b"pruned once")],
        &["--heartbeat", "1500ms"],
    );
    let beats = || heartbeats(&http);
    // As an operator's prune does (the test runs on the peer's host, so it
    // may withdraw the peer's registration).
    let mut client = registry.client();
    assert!(client.unregister(peer.addr.port(), "pruned.txt").unwrap());
    wait_until("registered again", WAIT_TIMEOUT, || {
        found(&registry, "pruned.txt")
    });
    // Two beats after the one that registered it again find it alive.
    let seen = beats();
    wait_until("two more heartbeats", Duration::from_secs(60), || {
        beats() >= seen + 2
    });
    assert!(found(&registry, "pruned.txt"));
    let stderr = stop_after_term(&mut peer);
    assert!(stderr.contains("removed by its operator"), "{stderr}");
    assert!(
        !stderr.contains("heartbeating every"),
        "one lapse kept the interval: {stderr}"
    );
}

#[test]
fn serve_waits_for_a_registry_that_is_down_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::write(shared.join("patient.txt"), b"waiting").expect("write");
    let port = p2p_tests::free_port();
    let server = format!("127.0.0.1:{port}");

    let mut command = std::process::Command::new(bin("peer"));
    command
        .args([
            "--server",
            &server,
            "--shared",
            shared.to_str().expect("UTF-8"),
            "serve",
            "--port",
            "0",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let peer = Running::spawn(command, &bin("peer"));

    let db = dir.path().join("registry.db");
    let (_, _registry) = Running::start(
        &bin("dht-server"),
        &[
            "--db",
            db.to_str().expect("UTF-8"),
            "--listen",
            &server,
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    let (addr, _peer) = peer.wait_for_address("listening on ");
    let mut client = p2p_proto::client::Client::connect(&server).expect("connect");
    let sources = client.search("patient.txt").expect("search");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].port, addr.port());
}

/// Peak resident memory (`VmHWM`) of a running process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn memory_stays_flat_serving_and_downloading_a_large_file() {
    const SIZE: usize = 96 * 1024 * 1024;
    const LIMIT: u64 = 48 * 1024 * 1024;
    if peak_rss(std::process::id()).is_none() {
        eprintln!("skipped: no /proc/<pid>/status here");
        return;
    }
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 21);
    let peer = Peer::serve(&registry, &[("large.bin", &content)], &[]);
    let expected = sha256_hex(&content);
    drop(content);
    let (_dir, _shared, downloads) = Peer::folders();

    let server = registry.addr_string();
    let mut child = std::process::Command::new(bin("peer"))
        .args([
            "--server",
            &server,
            "--downloads",
            downloads.to_str().expect("UTF-8"),
            "get",
            "large.bin",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start peer get");
    let mut peak = 0;
    let status = loop {
        if let Some(rss) = peak_rss(child.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "peer get failed: {status}");
    assert!(peak > 0, "never saw the downloader's memory");
    assert!(
        peak < LIMIT,
        "downloader peaked at {peak} bytes for a {SIZE}-byte file"
    );

    let served = peer
        .process
        .as_ref()
        .and_then(|p| peak_rss(p.pid()))
        .expect("the serving peer's memory");
    assert!(
        served < LIMIT,
        "server peaked at {served} bytes for a {SIZE}-byte file"
    );

    eprintln!("peak RSS for a {SIZE}-byte file: downloader {peak}, server {served}");
    let mut file = std::fs::File::open(downloads.join("large.bin")).expect("downloaded");
    let mut hasher = Vec::new();
    file.read_to_end(&mut hasher).expect("read back");
    assert_eq!(sha256_hex(&hasher), expected);
}

#[test]
fn register_adds_one_file_for_a_running_file_server() {
    let registry = Registry::start();
    let peer = Peer::serve(&registry, &[], &[]);
    std::fs::write(peer.shared.join("late.txt"), b"added later").expect("write");
    let server = registry.addr_string();
    let port = peer.addr.port().to_string();
    let mut args = peer.common_args(&server);
    args.extend(["register", "late.txt", "--port", &port]);
    let out = ok(&run(&bin("peer"), &args, RUN_TIMEOUT));
    assert!(out.contains("registered late.txt"), "{out}");

    let (_dir, _shared, downloads) = Peer::folders();
    ok(&peer_in(&registry, &downloads, &["get", "late.txt"]));
    assert_eq!(
        std::fs::read(downloads.join("late.txt")).expect("file"),
        b"added later"
    );

    let mut args = peer.common_args(&server);
    args.extend(["register", "missing.txt", "--port", &port]);
    let line = one_line_failure(&run(&bin("peer"), &args, RUN_TIMEOUT), 2);
    assert!(line.contains("missing.txt"), "{line}");
}

#[test]
fn help_shows_examples() {
    let out = ok(&run(&bin("peer"), &["--help"], RUN_TIMEOUT));
    for needle in ["Examples:", "peer serve --port", "peer get", "Exit status"] {
        assert!(
            out.contains(needle),
            "{needle:?} missing from --help:\n{out}"
        );
    }
}
