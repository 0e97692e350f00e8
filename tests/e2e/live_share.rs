//! The live shared folder, end to end with the real binaries: files added,
//! changed, removed and renamed while `peer serve` runs show up in SEARCH;
//! a file written slowly, or held open across long pauses, is announced
//! only once complete; the persistent
//! hash cache spares a restart from reading the folder and is discarded when
//! corrupt; `--share-downloads` shares finished downloads and never a
//! `.part`; the menu's `1` takes `*`; the registry sees the `--bind` address.
//!
//! The peers run with a short hidden `--settle` so the tests take seconds;
//! every wait is on a condition with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use p2p_proto::protocol::Source;
use p2p_tests::{bin, pseudo_random_bytes, run, sha256_hex, wait_until, Peer, Registry};

/// Generous against a loaded machine; the contract's figure is 5 s.
const LIVE_DEADLINE: Duration = Duration::from_secs(15);

/// Short settle time for the tests (the default is 1 s).
const FAST: [&str; 2] = ["--settle", "200ms"];

fn search(registry: &Registry, name: &str) -> Vec<Source> {
    registry.client().search(name).expect("SEARCH")
}

/// Waits until SEARCH `name` gives exactly one source with `content`.
fn wait_registered(registry: &Registry, name: &str, content: &[u8]) {
    let sha = sha256_hex(content);
    wait_until(
        &format!("{name} registered with its content"),
        LIVE_DEADLINE,
        || {
            let sources = search(registry, name);
            sources.len() == 1
                && sources[0].sha256 == sha
                && sources[0].size == content.len() as u64
        },
    );
}

fn wait_gone(registry: &Registry, name: &str) {
    wait_until(&format!("{name} unregistered"), LIVE_DEADLINE, || {
        search(registry, name).is_empty()
    });
}

/// Polls SEARCH `name` until `done` says so and returns the distinct
/// sources seen meanwhile for which `wrong` holds (what must never be
/// announced while a file is written).
fn seen_while(
    registry: &Registry,
    name: &str,
    mut done: impl FnMut() -> bool,
    wrong: impl Fn(&Source) -> bool,
) -> Vec<Source> {
    let mut seen = Vec::new();
    while !done() {
        for s in search(registry, name) {
            if wrong(&s) && !seen.contains(&s) {
                seen.push(s);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// A `done` for [`seen_while`]: true once `window` has passed (workload
/// pacing for a check that something does not happen meanwhile).
fn after(window: Duration) -> impl FnMut() -> bool {
    let end = std::time::Instant::now() + window;
    move || std::time::Instant::now() >= end
}

/// SIGTERM and wait; returns stderr.
fn stop(peer: &mut Peer) -> String {
    let process = peer.process.take().expect("running");
    process.signal("TERM");
    let (status, stderr) = process.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "peer exited with {status}: {stderr}");
    stderr
}

#[test]
fn added_changed_removed_and_renamed_files_show_in_search() {
    let registry = Registry::start();
    let mut peer = Peer::serve(&registry, &[("a.txt", b"first a")], &FAST);
    wait_registered(&registry, "a.txt", b"first a");

    std::fs::write(peer.shared.join("b.txt"), b"new file b").unwrap();
    wait_registered(&registry, "b.txt", b"new file b");

    std::fs::write(peer.shared.join("a.txt"), b"a, changed and longer").unwrap();
    wait_registered(&registry, "a.txt", b"a, changed and longer");

    std::fs::remove_file(peer.shared.join("b.txt")).unwrap();
    wait_gone(&registry, "b.txt");

    std::fs::rename(peer.shared.join("a.txt"), peer.shared.join("c.txt")).unwrap();
    wait_gone(&registry, "a.txt");
    wait_registered(&registry, "c.txt", b"a, changed and longer");

    // Renamed in from outside the folder.
    let outside = peer.dir.path().join("outside.bin");
    std::fs::write(&outside, b"moved in").unwrap();
    std::fs::rename(&outside, peer.shared.join("moved.bin")).unwrap();
    wait_registered(&registry, "moved.bin", b"moved in");

    stop(&mut peer);
    for name in ["c.txt", "moved.bin"] {
        assert!(search(&registry, name).is_empty(), "{name}");
    }
}

#[test]
fn without_notifications_the_rescan_finds_the_changes() {
    let registry = Registry::start();
    let peer = Peer::serve(
        &registry,
        &[("kept.txt", b"kept")],
        &["--no-watch", "--rescan", "300ms", FAST[0], FAST[1]],
    );
    std::fs::write(peer.shared.join("late.txt"), b"found by listing").unwrap();
    wait_registered(&registry, "late.txt", b"found by listing");
    std::fs::remove_file(peer.shared.join("kept.txt")).unwrap();
    wait_gone(&registry, "kept.txt");
}

#[test]
fn after_the_registry_lost_them_the_files_shared_now_are_registered_again() {
    let registry = Registry::start();
    let peer = Peer::serve(
        &registry,
        &[("at-start.txt", b"s"), ("removed.txt", b"r")],
        &["--heartbeat", "200ms", FAST[0], FAST[1]],
    );
    std::fs::write(peer.shared.join("added.txt"), b"added live").unwrap();
    wait_registered(&registry, "added.txt", b"added live");
    std::fs::remove_file(peer.shared.join("removed.txt")).unwrap();
    wait_gone(&registry, "removed.txt");

    // As after a registry restart on an empty database (the test runs on the
    // peer's host, so it may withdraw the peer's registrations).
    let mut client = registry.client();
    for name in ["at-start.txt", "added.txt"] {
        assert!(client.unregister(peer.addr.port(), name).unwrap(), "{name}");
    }
    wait_registered(&registry, "at-start.txt", b"s");
    wait_registered(&registry, "added.txt", b"added live");
    assert!(search(&registry, "removed.txt").is_empty());
}

#[test]
fn a_file_written_slowly_is_announced_only_once_complete() {
    let registry = Registry::start();
    // A settle time far above the writer's pauses between chunks (25 ms),
    // so even a stalled writer thread is not taken for a finished file.
    let peer = Peer::serve(&registry, &[], &["--settle", "2s"]);
    let content = pseudo_random_bytes(4 * 1024 * 1024, 7);
    let (final_size, final_sha) = (content.len() as u64, sha256_hex(&content));

    let path = peer.shared.join("slow.bin");
    let writer = {
        let content = content.clone();
        thread::spawn(move || {
            let mut file = std::fs::File::create(&path).unwrap();
            for chunk in content.chunks(64 * 1024) {
                file.write_all(chunk).unwrap();
                file.flush().unwrap();
                // Workload pacing, not synchronisation.
                thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let announced_early = seen_while(
        &registry,
        "slow.bin",
        || writer.is_finished(),
        |s| s.size != final_size || s.sha256 != final_sha,
    );
    writer.join().unwrap();
    wait_registered(&registry, "slow.bin", &content);
    assert!(
        announced_early.is_empty(),
        "registered before complete: {announced_early:?}"
    );
}

#[test]
fn a_file_held_open_for_writing_is_not_announced_while_its_writer_pauses() {
    let registry = Registry::start();
    // A settle time far below the writer's pause: the file's size and
    // modification time stay the same for longer than that, and only the
    // open file (no close event yet) says it is not finished.
    let peer = Peer::serve(&registry, &[], &FAST);
    let content = pseudo_random_bytes(256 * 1024, 11);
    let (first, rest) = content.split_at(100 * 1024);
    let (final_size, final_sha) = (content.len() as u64, sha256_hex(&content));

    let mut file = std::fs::File::create(peer.shared.join("paused.bin")).unwrap();
    file.write_all(first).unwrap();
    file.flush().unwrap();
    // The writer pauses, the file still open, for fifteen settle times
    // (workload pacing: what is checked is that nothing is announced
    // meanwhile; without the open-file check the half is registered
    // within a settle time and a listing).
    let announced_early = seen_while(
        &registry,
        "paused.bin",
        after(Duration::from_secs(3)),
        |s| s.size != final_size || s.sha256 != final_sha,
    );
    file.write_all(rest).unwrap();
    drop(file);
    wait_registered(&registry, "paused.bin", &content);
    assert!(
        announced_early.is_empty(),
        "registered while still open for writing: {announced_early:?}"
    );

    // Closed after a pause without another write: announced at once.
    let mut file = std::fs::File::create(peer.shared.join("closed.bin")).unwrap();
    file.write_all(first).unwrap();
    let while_open = seen_while(
        &registry,
        "closed.bin",
        after(Duration::from_secs(1)),
        |_| true,
    );
    assert!(
        while_open.is_empty(),
        "announced while open: {while_open:?}"
    );
    drop(file);
    wait_registered(&registry, "closed.bin", first);
}

#[test]
fn a_lapsed_registration_is_not_renewed_from_a_file_being_rewritten() {
    // Registrations lapse between heartbeats here (TTL 2 s, beats every
    // 3 s), so each beat registers the peer's files again.
    let registry = Registry::start_with(&["--ttl", "2s"]);
    let old = pseudo_random_bytes(64 * 1024, 3);
    let peer = Peer::serve(
        &registry,
        &[("doc.bin", &old)],
        &["--heartbeat", "3s", FAST[0], FAST[1]],
    );
    let new = pseudo_random_bytes(128 * 1024, 4);
    let (first, rest) = new.split_at(32 * 1024);
    let mut file = std::fs::File::create(peer.shared.join("doc.bin")).unwrap();
    file.write_all(first).unwrap();
    // Held open across two beats (workload pacing): a beat that renewed
    // the registration by reading the file now would announce the part.
    let announced = seen_while(&registry, "doc.bin", after(Duration::from_secs(7)), |s| {
        s.size as usize == first.len()
    });
    file.write_all(rest).unwrap();
    drop(file);
    wait_registered(&registry, "doc.bin", &new);
    assert!(
        announced.is_empty(),
        "the part was registered: {announced:?}"
    );
}

/// The cache line `peer serve` prints on stderr.
fn cache_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("hashed "))
        .unwrap_or_else(|| panic!("no `hashed N files` line in:\n{stderr}"))
}

#[test]
fn a_restart_reads_no_unchanged_file_and_a_corrupt_cache_is_discarded() {
    let registry = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pseudo_random_bytes(100_000 + i, i as u64),
            )
        })
        .collect();
    let named: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    let mut peer = Peer::serve(&registry, &named, &["--state", state_arg]);
    let first = stop(&mut peer);
    assert_eq!(
        cache_line(&first),
        "hashed 3 files, 0 from cache",
        "{first}"
    );
    let caches: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(caches.len(), 1, "one cache file: {caches:?}");

    let args: Vec<String> = peer
        .common_args(&registry.addr_string())
        .into_iter()
        .chain(["serve", "--port", "0", "--state", state_arg])
        .map(str::to_owned)
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_once = |peer: &mut Peer, files: &[(String, Vec<u8>)]| -> String {
        let (_, process) = p2p_tests::Running::start(&bin("peer"), &args, "listening on ", &[]);
        peer.process = Some(process);
        for (name, content) in files {
            wait_registered(&registry, name, content);
        }
        stop(peer)
    };

    let second = run_once(&mut peer, &files);
    assert_eq!(
        cache_line(&second),
        "hashed 3 files, 3 from cache",
        "{second}"
    );

    // One file changed (new size and time): only it is read again.
    std::fs::write(peer.shared.join("f1.bin"), b"changed").unwrap();
    let mut files = files.clone();
    files[1].1 = b"changed".to_vec();
    let third = run_once(&mut peer, &files);
    assert_eq!(
        cache_line(&third),
        "hashed 3 files, 2 from cache",
        "{third}"
    );

    // Flip one byte of the cache: discarded with a warning, all hashed again.
    let mut bytes = std::fs::read(&caches[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&caches[0], &bytes).unwrap();
    let fourth = run_once(&mut peer, &files);
    assert!(fourth.contains("discarding it"), "{fourth}");
    assert_eq!(
        cache_line(&fourth),
        "hashed 3 files, 0 from cache",
        "{fourth}"
    );
}

/// `GET /files/<name>` on a peer; returns the status code.
fn http_status(addr: std::net::SocketAddr, name: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "HEAD /files/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    let _ = stream.read_to_string(&mut head);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[test]
fn share_downloads_shares_a_finished_download_and_never_a_part() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(300_000, 3);
    let seeder = Peer::serve(&registry, &[("movie.bin", &content)], &FAST);

    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(downloads.join("half.bin.part"), b"not yet").unwrap();
    std::fs::write(downloads.join("half.bin.part.pieces"), b"record").unwrap();
    std::fs::write(downloads.join(".hidden-temp"), b"temp").unwrap();
    std::fs::write(downloads.join("old.bin"), b"finished before").unwrap();
    std::fs::write(shared.join("same.txt"), b"the shared one").unwrap();
    std::fs::write(downloads.join("same.txt"), b"the downloaded one").unwrap();
    let server = registry.addr_string();
    let args = [
        "--server",
        &server,
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
        "serve",
        "--port",
        "0",
        "--share-downloads",
        FAST[0],
        FAST[1],
    ];
    let (addr, _sharer) = p2p_tests::Running::start(&bin("peer"), &args, "listening on ", &[]);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
    wait_registered(&registry, "old.bin", b"finished before");
    // A name in both folders is the shared folder's file.
    wait_registered(&registry, "same.txt", b"the shared one");
    for partial in ["half.bin.part", "half.bin.part.pieces", ".hidden-temp"] {
        assert!(search(&registry, partial).is_empty(), "{partial}");
        assert_eq!(http_status(local, partial), 404, "{partial}");
    }
    assert_eq!(http_status(local, "old.bin"), 200);

    let got = run(
        &bin("peer"),
        &[
            "--server",
            &server,
            "--downloads",
            downloads.to_str().unwrap(),
            "get",
            "movie.bin",
        ],
        Duration::from_secs(60),
    );
    assert!(got.status.success(), "{got:?}");
    wait_until("the download shared onward", LIVE_DEADLINE, || {
        let sources = search(&registry, "movie.bin");
        sources.len() == 2 && sources.iter().all(|s| s.sha256 == sha256_hex(&content))
    });
    assert!(search(&registry, "movie.bin.part").is_empty());
    drop(seeder);
}

#[test]
fn the_registry_sees_the_bind_address_and_0_0_0_0_says_where_it_is_reachable() {
    let registry = Registry::start();
    let bound = Peer::serve(&registry, &[("x.txt", b"x")], &["--bind", "127.0.0.2"]);
    assert_eq!(bound.addr.ip().to_string(), "127.0.0.2");
    let sources = search(&registry, "x.txt");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].addr(), bound.addr.to_string());

    let open = Peer::serve(&registry, &[("y.txt", b"y")], &[]);
    assert!(open.addr.ip().is_unspecified(), "{}", open.addr);
    let line = open
        .process
        .as_ref()
        .unwrap()
        .wait_for_line(|l| l.starts_with("reachable at "), Duration::from_secs(10));
    let port = format!(":{}", open.addr.port());
    for addr in line["reachable at ".len()..].split(", ") {
        assert!(addr.ends_with(&port), "{line}");
        let ip: std::net::IpAddr = addr[..addr.len() - port.len()]
            .trim_matches(['[', ']'])
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(!ip.is_unspecified(), "{line}");
    }
}

#[test]
fn peer_register_with_bind_is_registered_from_that_address() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.txt"), b"bound").unwrap();
    let shared = dir.path().to_str().unwrap();
    let server = registry.addr_string();
    let args = [
        "--server",
        &server,
        "register",
        "b.txt",
        "--port",
        "4101",
        "--bind",
        "127.0.0.3",
        "--shared",
        shared,
    ];
    let out = run(&bin("peer"), &args, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    let sources = search(&registry, "b.txt");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].addr(), "127.0.0.3:4101", "the --bind address");
}

/// The menu with piped stdin and a stdout line reader.
struct Menu {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Menu {
    fn start(server: &str, shared: &Path, downloads: &Path) -> Menu {
        let mut child = Command::new(bin("peer"))
            .args(["--server", server, "--port", "0", "--settle", "200ms"])
            .arg("--shared")
            .arg(shared)
            .arg("--downloads")
            .arg(downloads)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the menu");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Menu {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn expect_line(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    fn finish(mut self) {
        self.send("3\n");
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(std::time::Instant::now() < deadline, "menu did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Menu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn menu_choice_1_takes_star_and_keeps_what_it_registered_in_sync() {
    let registry = Registry::start();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(shared.join("one.txt"), b"1").unwrap();
    std::fs::write(shared.join("two.txt"), b"22").unwrap();
    let mut menu = Menu::start(&registry.addr_string(), &shared, &downloads);
    menu.expect_line("listening on ");
    menu.send("1\n*\n");
    menu.expect_line("registered 2 files");
    wait_registered(&registry, "one.txt", b"1");
    wait_registered(&registry, "two.txt", b"22");

    // What it registered follows the folder; a new file is the person's choice.
    std::fs::write(shared.join("one.txt"), b"one, edited").unwrap();
    wait_registered(&registry, "one.txt", b"one, edited");
    std::fs::remove_file(shared.join("two.txt")).unwrap();
    wait_gone(&registry, "two.txt");
    std::fs::write(shared.join("three.txt"), b"3").unwrap();
    menu.send("4\n");
    menu.expect_line("three.txt");
    assert!(search(&registry, "three.txt").is_empty());

    menu.finish();
    assert!(search(&registry, "one.txt").is_empty());
}
