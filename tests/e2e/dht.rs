//! `--dht` end to end: a real `p2p-dht-testnet` (Mainline DHT nodes on
//! 127.0.0.1), real `peer serve --dht` processes announcing on it, and
//! `peer search --dht` / `peer get --dht` (one name or a batch) finding
//! them there, with and without a registry; and `dht-server --dht-port` as
//! a LAN's own DHT.
//!
//! Nothing here contacts the public DHT: every DHT client gets
//! `--bootstrap` on loopback. Every peer also gets the hidden
//! `--dht-request-timeout 300ms` (a loopback node answers at once; the 2 s
//! default only slows each query's end). No fixed sleeps: every wait polls a
//! condition with a deadline.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use p2p_peer::pieces::PIECE_SIZE;
use p2p_tests::{
    bin, pseudo_random_bytes, run, sha256_hex, wait_until, Peer, Registry, Running, WAIT_TIMEOUT,
};

/// Nodes of the testnet: the 20.
const NODES: usize = 20;

/// Generous: debug builds, two shared cores, several processes.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long announcements may take to become findable.
const FIND_TIMEOUT: Duration = Duration::from_secs(60);

/// Big enough for the multi-source path (more than one piece).
const SIZE: usize = 3 * PIECE_SIZE as usize + 4321;

/// A registry address where nothing listens.
const NO_REGISTRY: &str = "127.0.0.1:1";

/// The hidden short timeouts every DHT client in these tests gets.
const FAST: [&str; 4] = [
    "--dht-request-timeout",
    "300ms",
    "--dht-announce-interval",
    "5s",
];

/// A running `p2p-dht-testnet`; killed on drop.
struct Testnet {
    bootstrap: String,
    _process: Running,
}

impl Testnet {
    fn start(nodes: usize) -> Testnet {
        let program = bin("p2p-dht-testnet");
        let mut command = Command::new(&program);
        command
            .args(["--nodes", &nodes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Running::spawn(command, &program);
        let mut addrs = Vec::new();
        for _ in 0..nodes {
            let line = process.wait_for_line(|l| l.starts_with("bootstrap "), WAIT_TIMEOUT);
            let addr = line["bootstrap ".len()..].trim().to_owned();
            assert!(addr.starts_with("127.0.0.1:"), "{line}");
            addrs.push(addr);
        }
        // A few entry points are enough to join (and keep the command short).
        Testnet {
            bootstrap: addrs[..3].join(","),
            _process: process,
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

/// `peer serve --dht` sharing `files`, registered with `registry`.
fn serve(bootstrap: &str, registry: &str, files: &[(&str, &[u8])]) -> Peer {
    let (dir, shared, downloads) = Peer::folders();
    for (name, content) in files {
        std::fs::write(shared.join(name), content).unwrap();
    }
    let mut args = vec![
        "--server",
        registry,
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
        "serve",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--ui",
        "off",
        "--dht",
        "--bootstrap",
        bootstrap,
    ];
    args.extend_from_slice(&FAST);
    let (addr, process) = Running::start(&bin("peer"), &args, "listening on ", &[]);
    Peer {
        addr,
        shared,
        downloads,
        process: Some(process),
        dir,
    }
}

/// `peer [--server R] [--downloads D] <sub> NAME --dht --bootstrap ...`.
fn peer_dht(bootstrap: &str, registry: &str, downloads: &Path, sub: &str, name: &str) -> Output {
    peer_dht_all(bootstrap, registry, downloads, sub, &[name])
}

/// [`peer_dht`] with several names (a `get` batch).
fn peer_dht_all(
    bootstrap: &str,
    registry: &str,
    downloads: &Path,
    sub: &str,
    names: &[&str],
) -> Output {
    let mut args = vec![
        "--server",
        registry,
        "--downloads",
        downloads.to_str().unwrap(),
        sub,
    ];
    args.extend_from_slice(names);
    args.extend_from_slice(&["--dht", "--bootstrap", bootstrap]);
    args.extend_from_slice(&FAST);
    run(&bin("peer"), &args, RUN_TIMEOUT)
}

/// The lines of a failure's stderr: `peer get` fails with one.
fn stderr_lines(output: &Output) -> Vec<String> {
    text(&output.stderr).lines().map(str::to_owned).collect()
}

/// The `HOST:PORT SIZE SHA256` lines of a successful `search --dht`, or
/// none when it failed.
fn search_lines(bootstrap: &str, registry: &str, name: &str) -> Vec<String> {
    let (_dir, _shared, downloads) = Peer::folders();
    let out = peer_dht(bootstrap, registry, &downloads, "search", name);
    if !out.status.success() {
        return Vec::new();
    }
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn line_of(peer: &Peer, content: &[u8]) -> String {
    format!(
        "127.0.0.1:{} {} {}",
        peer.addr.port(),
        content.len(),
        sha256_hex(content)
    )
}

/// Waits until `search --dht` prints exactly `expected` (in any order).
fn wait_for_sources(
    bootstrap: &str,
    registry: &str,
    name: &str,
    expected: &[String],
) -> Vec<String> {
    let mut want = expected.to_vec();
    want.sort();
    let mut last = Vec::new();
    wait_until(
        &format!("search --dht to list {want:?}"),
        FIND_TIMEOUT,
        || {
            last = search_lines(bootstrap, registry, name);
            let mut got = last.clone();
            got.sort();
            got == want
        },
    );
    last
}

#[test]
fn two_announcers_are_found_and_both_deliver_without_a_registry() {
    let testnet = Testnet::start(NODES);
    let content = pseudo_random_bytes(SIZE, 17);
    let name = "shared over the dht é.bin";
    let a = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &content)]);
    let b = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &content)]);

    let lines = [line_of(&a, &content), line_of(&b, &content)];
    wait_for_sources(&testnet.bootstrap, NO_REGISTRY, name, &lines);

    // The registry that cannot be asked is one plain warning line.
    let (_dir, _shared, downloads) = Peer::folders();
    let search = peer_dht(&testnet.bootstrap, NO_REGISTRY, &downloads, "search", name);
    assert!(search.status.success(), "{}", text(&search.stderr));
    let warnings = stderr_lines(&search);
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("peer: warning: the registry cannot be asked"),
        "{warnings:?}"
    );

    let out = ok(&peer_dht(
        &testnet.bootstrap,
        NO_REGISTRY,
        &downloads,
        "get",
        name,
    ));
    assert_eq!(std::fs::read(downloads.join(name)).unwrap(), content);
    for peer in [&a, &b] {
        assert!(
            out.contains(&format!("127.0.0.1:{}", peer.addr.port())),
            "{} did not deliver:\n{out}",
            peer.addr
        );
    }

    // A name nobody announced: exit 1, one line.
    let missing = peer_dht(
        &testnet.bootstrap,
        NO_REGISTRY,
        &downloads,
        "get",
        "nobody has this",
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stderr));
    let lines = stderr_lines(&missing);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The registry that could not be asked is part of the reason.
    assert!(
        lines[0].starts_with("peer: no peer shares \"nobody has this\" on the DHT")
            && lines[0].contains(NO_REGISTRY),
        "{lines:?}"
    );

    // A file that appears in the shared folder while serving is announced too.
    let late = b"copied in later".to_vec();
    std::fs::write(a.shared.join("late.txt"), &late).unwrap();
    wait_for_sources(
        &testnet.bootstrap,
        NO_REGISTRY,
        "late.txt",
        &[line_of(&a, &late)],
    );
}

#[test]
fn other_bytes_are_grouped_apart_and_a_stopped_peer_is_no_longer_used() {
    let testnet = Testnet::start(NODES);
    let name = "report.txt";
    let good = b"the report everybody has".repeat(100);
    let other = b"a different file under the same name".to_vec();
    let a = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &good)]);
    let mut b = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &good)]);
    let liar = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &other)]);

    let expected = [
        line_of(&a, &good),
        line_of(&b, &good),
        line_of(&liar, &other),
    ];
    let lines = wait_for_sources(&testnet.bootstrap, NO_REGISTRY, name, &expected);
    // Grouped by content, the most common first.
    assert_eq!(lines[2], expected[2], "{lines:?}");

    let (_dir, _shared, downloads) = Peer::folders();
    let out = ok(&peer_dht(
        &testnet.bootstrap,
        NO_REGISTRY,
        &downloads,
        "get",
        name,
    ));
    assert_eq!(std::fs::read(downloads.join(name)).unwrap(), good);
    let liar_addr = format!("127.0.0.1:{}", liar.addr.port());
    assert!(!out.contains(&liar_addr), "{out}");

    // b stops: the DHT still lists it, but its HEAD fails, so it is left out.
    let b_addr = format!("127.0.0.1:{}", b.addr.port());
    let process = b.process.take().unwrap();
    process.signal("TERM");
    let (status, stderr) = process.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "{stderr}");
    wait_for_sources(
        &testnet.bootstrap,
        NO_REGISTRY,
        name,
        &[line_of(&a, &good), line_of(&liar, &other)],
    );

    // One source per content now: either is a whole, verified file, never a mix.
    let (_dir, _shared, again) = Peer::folders();
    let out = ok(&peer_dht(
        &testnet.bootstrap,
        NO_REGISTRY,
        &again,
        "get",
        name,
    ));
    let got = std::fs::read(again.join(name)).unwrap();
    assert!(got == good || got == other, "{out}");
    assert!(!out.contains(&b_addr), "{out}");
}

#[test]
fn registry_and_dht_sources_are_merged_without_duplicates() {
    let testnet = Testnet::start(NODES);
    let registry = Registry::start();
    let server = registry.addr_string();
    let name = "both.bin";
    let content = b"found in the registry and on the dht".to_vec();
    let a = serve(&testnet.bootstrap, &server, &[(name, &content)]);
    let b = serve(&testnet.bootstrap, &server, &[(name, &content)]);
    let dht_only = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &content)]);

    // Without --dht: the registry's two, as before.
    let (_dir, _shared, downloads) = Peer::folders();
    let plain = ok(&run(
        &bin("peer"),
        &["--server", &server, "search", name],
        RUN_TIMEOUT,
    ));
    assert_eq!(plain.lines().count(), 2, "{plain}");

    // With --dht: all three, each once.
    let lines = wait_for_sources(
        &testnet.bootstrap,
        &server,
        name,
        &[
            line_of(&a, &content),
            line_of(&b, &content),
            line_of(&dht_only, &content),
        ],
    );
    assert_eq!(lines.len(), 3);

    let out = ok(&peer_dht(
        &testnet.bootstrap,
        &server,
        &downloads,
        "get",
        name,
    ));
    assert_eq!(
        std::fs::read(downloads.join(name)).unwrap(),
        content,
        "{out}"
    );
}

#[test]
fn a_registry_with_dht_port_is_the_dht_of_its_lan() {
    // No testnet: the registry's own node is the whole (private) DHT.
    let registry = Registry::start_with(&["--dht-port", "0"]);
    let line = registry
        .process
        .as_ref()
        .unwrap()
        .wait_for_line(|l| l.starts_with("dht on "), WAIT_TIMEOUT);
    let node = line["dht on ".len()..].trim().to_owned();
    assert!(node.starts_with("127.0.0.1:"), "{line}");
    let name = "lan only.txt";
    let content = b"never leaves the lan".to_vec();
    let a = serve(&node, NO_REGISTRY, &[(name, &content)]);
    wait_for_sources(&node, NO_REGISTRY, name, &[line_of(&a, &content)]);
    let (_dir, _shared, downloads) = Peer::folders();
    ok(&peer_dht(&node, NO_REGISTRY, &downloads, "get", name));
    assert_eq!(std::fs::read(downloads.join(name)).unwrap(), content);

    // Bad DHT options are refused before anything starts.
    let db = registry.dir.path().join("other.db");
    let bad = run(
        &bin("dht-server"),
        &[
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--dht-port",
            "0",
            "--bootstrap",
            "nope",
        ],
        RUN_TIMEOUT,
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("bootstrap"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn the_testnet_prints_one_line_per_node_and_exits_0_on_sigterm() {
    for signal in ["TERM", "INT"] {
        let program = bin("p2p-dht-testnet");
        let mut command = Command::new(&program);
        command
            .args(["--nodes", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Running::spawn(command, &program);
        let mut ports = std::collections::HashSet::new();
        for _ in 0..3 {
            let line = process.wait_for_line(|l| l.starts_with("bootstrap "), WAIT_TIMEOUT);
            let addr: std::net::SocketAddr = line["bootstrap ".len()..].parse().unwrap();
            assert_eq!(addr.ip().to_string(), "127.0.0.1");
            ports.insert(addr.port());
        }
        assert_eq!(ports.len(), 3);
        process.signal(signal);
        let (status, stderr) = process.wait_exit(WAIT_TIMEOUT);
        assert!(status.success(), "{signal}: {status} {stderr}");
    }
    let bad = run(&bin("p2p-dht-testnet"), &["--nodes", "0"], RUN_TIMEOUT);
    assert!(!bad.status.success());
}

#[test]
fn the_menu_with_dht_downloads_from_a_dht_source() {
    let testnet = Testnet::start(NODES);
    let name = "menu pick.txt";
    let content = b"chosen in the menu".to_vec();
    let a = serve(&testnet.bootstrap, NO_REGISTRY, &[(name, &content)]);
    wait_for_sources(
        &testnet.bootstrap,
        NO_REGISTRY,
        name,
        &[line_of(&a, &content)],
    );

    let (_dir, shared, downloads) = Peer::folders();
    let mut args = vec![
        "--server".to_owned(),
        NO_REGISTRY.to_owned(),
        "--shared".to_owned(),
        shared.to_str().unwrap().to_owned(),
        "--downloads".to_owned(),
        downloads.to_str().unwrap().to_owned(),
        "--port".to_owned(),
        "0".to_owned(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--ui".to_owned(),
        "off".to_owned(),
        "--dht".to_owned(),
        "--bootstrap".to_owned(),
        testnet.bootstrap.clone(),
    ];
    args.extend(FAST.iter().map(|s| s.to_string()));
    // The menu reads its choices from stdin: 2 (download), the name, 3 (exit).
    let script = format!("printf '2\\n{name}\\n3\\n' | \"$0\" \"$@\"",);
    let mut sh_args = vec![
        "-c".to_owned(),
        script,
        bin("peer").to_str().unwrap().to_owned(),
    ];
    sh_args.extend(args);
    let sh_args: Vec<&str> = sh_args.iter().map(String::as_str).collect();
    let out = ok(&run(Path::new("/bin/sh"), &sh_args, RUN_TIMEOUT));
    assert_eq!(
        std::fs::read(downloads.join(name)).unwrap(),
        content,
        "{out}"
    );
}

/// `serve --dht` started while its registry is down shares on the DHT at
/// once, and registers its files when the registry comes up.
#[test]
fn a_peer_started_before_its_registry_registers_once_it_is_up() {
    let testnet = Testnet::start(3);
    // A port nothing listens on yet, for the registry to take later.
    let port = p2p_tests::free_port();
    let registry_addr = format!("127.0.0.1:{port}");
    let content = b"shared before the registry was up".to_vec();
    let peer = serve(
        &testnet.bootstrap,
        &registry_addr,
        &[("early.txt", &content)],
    );

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.db");
    let (_addr, _registry) = Running::start(
        &bin("dht-server"),
        &[
            "--db",
            db.to_str().unwrap(),
            "--listen",
            &registry_addr,
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    let expected = line_of(&peer, &content);
    wait_until(
        "the peer registers with the new registry",
        FIND_TIMEOUT,
        || {
            p2p_proto::client::Client::connect(&registry_addr)
                .and_then(|mut c| c.search("early.txt"))
                .is_ok_and(|sources| {
                    sources.iter().any(|s| {
                        format!("{}:{} {} {}", s.host, s.port, s.size, s.sha256) == expected
                    })
                })
        },
    );
}

/// A batch (`peer get A B --dht`) looks its names up on the DHT too, the
/// single `peer get --dht`'s way: with no registry, the DHT alone.
#[test]
fn a_batch_with_dht_and_no_registry_fetches_every_name() {
    let testnet = Testnet::start(3);
    let first = pseudo_random_bytes(SIZE, 41);
    let second = b"the second file of the batch".to_vec();
    let peer = serve(
        &testnet.bootstrap,
        NO_REGISTRY,
        &[("first.bin", &first), ("second.txt", &second)],
    );
    for (name, content) in [("first.bin", &first), ("second.txt", &second)] {
        wait_for_sources(
            &testnet.bootstrap,
            NO_REGISTRY,
            name,
            &[line_of(&peer, content)],
        );
    }

    let (_dir, _shared, downloads) = Peer::folders();
    let out = peer_dht_all(
        &testnet.bootstrap,
        NO_REGISTRY,
        &downloads,
        "get",
        &["first.bin", "second.txt"],
    );
    let stdout = ok(&out);
    assert_eq!(std::fs::read(downloads.join("first.bin")).unwrap(), first);
    assert_eq!(std::fs::read(downloads.join("second.txt")).unwrap(), second);
    assert!(
        stdout.contains("batch of 2 files: 2 downloaded, 0 already present, 0 failed"),
        "{stdout}"
    );
    // Said once for the batch, on stdout: stderr is for failures.
    assert_eq!(stdout.matches("using the DHT only").count(), 1, "{stdout}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    // A name nobody shares: one line for it, exit 1, the others still there.
    let out = peer_dht_all(
        &testnet.bootstrap,
        NO_REGISTRY,
        &downloads,
        "get",
        &["second.txt", "nobody has this"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("peer: failed \"nobody has this\": no peer shares"),
        "{lines:?}"
    );
}

#[test]
fn a_file_held_open_for_writing_is_not_announced_until_closed() {
    let testnet = Testnet::start(3);
    let ready = b"announced at start".to_vec();
    let peer = serve(&testnet.bootstrap, NO_REGISTRY, &[("ready.txt", &ready)]);
    wait_for_sources(
        &testnet.bootstrap,
        NO_REGISTRY,
        "ready.txt",
        &[line_of(&peer, &ready)],
    );

    let content = pseudo_random_bytes(200 * 1024, 5);
    let (first, rest) = content.split_at(64 * 1024);
    let mut file = std::fs::File::create(peer.shared.join("open.bin")).unwrap();
    std::io::Write::write_all(&mut file, first).unwrap();
    // Held open, unwritten, across more than two of the announcer's scans
    // (workload pacing: what is checked is that the part is never found;
    // without the check it is announced at the next scan, and a HEAD
    // confirms its size and digest, so search lists it).
    let window =
        std::time::Instant::now() + 2 * p2p_peer::dht::SCAN_INTERVAL + Duration::from_secs(2);
    while std::time::Instant::now() < window {
        let lines = search_lines(&testnet.bootstrap, NO_REGISTRY, "open.bin");
        assert!(
            lines.is_empty(),
            "announced while open for writing: {lines:?}"
        );
    }
    std::io::Write::write_all(&mut file, rest).unwrap();
    drop(file);
    wait_for_sources(
        &testnet.bootstrap,
        NO_REGISTRY,
        "open.bin",
        &[line_of(&peer, &content)],
    );
}
