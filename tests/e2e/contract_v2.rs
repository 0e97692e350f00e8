//! A black-box check of sentences of the contract (/work/shared/contract.md)
//! that no other end-to-end test pins exactly, against the real binaries:
//! the registry address from `P2P_SERVER` (and `--server` before it), the
//! control UI's default address (8390 or the next free port above it) in
//! `peer serve` and in the menu, `p2p-dht-testnet` on SIGINT, SEARCH and
//! FIND giving only live registrations, the v1 reply shapes in one
//! conversation, and `GET`/`HEAD /files/<name>?inline` by extension.
//!
//! Each test names the sentence it checks. Every wait is on a condition
//! with a deadline; all traffic is on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use p2p_tests::{
    bin, run_with, sha256_hex, wait_until, Peer, Registry, Running, Wire, WAIT_TIMEOUT,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One HTTP/1.1 request with `Connection: close`; the status, the header
/// lines (lower-cased names) and the body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn http(addr: SocketAddr, method: &str, target: &str, host: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = text(&raw[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// "Registry address: `--server ADDR` if given, else the environment
/// variable `P2P_SERVER`, …"
#[test]
fn p2p_server_names_the_registry_and_server_comes_before_it() {
    let registry = Registry::start();
    let _source = Peer::serve(&registry, &[("env.txt", b"env")], &["--ui", "off"]);
    let good = registry.addr_string();
    let search = |args: &[&str], env: &str| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["search", "env.txt"]);
        run_with(
            &bin("peer"),
            &all,
            None,
            &[("P2P_SERVER", env)],
            WAIT_TIMEOUT,
        )
    };

    // No --server: P2P_SERVER is the registry (no LAN browse needed).
    let out = search(&[], &good);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&sha256_hex(b"env")));

    // --server wins: a good flag over a dead P2P_SERVER works, ...
    let out = search(&["--server", &good], "127.0.0.1:1");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // ... and a dead flag over a good P2P_SERVER fails (it is not consulted).
    let out = search(&["--server", "127.0.0.1:1"], &good);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
}

/// The port of a `ui on http://HOST:PORT/` line, checked for its shape.
fn ui_port(line: &str) -> u16 {
    let addr = line
        .strip_prefix("ui on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not `ui on http://HOST:PORT/`: {line:?}"));
    let addr: SocketAddr = addr.parse().expect("HOST:PORT");
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "loopback by default");
    addr.port()
}

/// "The menu and `peer serve` start a control UI on `--ui ADDR` (default:
/// loopback, `127.0.0.1:8390`, or the next free port above it …) and print
/// `ui on http://HOST:PORT/` once it accepts connections."
#[test]
fn the_ui_defaults_to_8390_or_the_next_free_port_in_serve_and_in_the_menu() {
    let registry = Registry::start();
    // Hold 8390 when it is free, so "the next free port above" is exercised.
    let held = TcpListener::bind("127.0.0.1:8390").ok();

    let peer = Peer::serve(&registry, &[], &[]);
    let line = peer
        .process
        .as_ref()
        .unwrap()
        .wait_for_line(|l| l.starts_with("ui on"), WAIT_TIMEOUT);
    let port = ui_port(&line);
    assert!((8390..8490).contains(&port), "{line}");
    if held.is_some() {
        assert!(port > 8390, "8390 is taken by the test: {line}");
    }
    // It accepts connections once printed, at its own Host.
    let ui: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let page = http(ui, "GET", "/", &format!("127.0.0.1:{port}"));
    assert_eq!(page.status, 200);
    assert_eq!(
        http(ui, "GET", "/api/shared", &format!("localhost.evil:{port}")).status,
        403
    );

    // The menu prints the line too (after `listening on`).
    let (dir, shared, downloads) = Peer::folders();
    let server = registry.addr_string();
    let args = [
        "--server",
        &server,
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
        "--port",
        "0",
    ];
    let mut command = std::process::Command::new(bin("peer"));
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let menu = Running::spawn(command, &bin("peer"));
    let line = menu.wait_for_line(|l| l.starts_with("ui on"), WAIT_TIMEOUT);
    let menu_port = ui_port(&line);
    assert!((8390..8490).contains(&menu_port), "{line}");
    assert_ne!(menu_port, port, "the serve's UI holds {port}");
    drop(menu);
    drop(dir);
}

/// "`p2p-dht-testnet --nodes N`: N DHT nodes on 127.0.0.1, one line
/// `bootstrap 127.0.0.1:PORT` per node on stdout …, until SIGINT/SIGTERM
/// (exit 0)." (SIGTERM is in tests/e2e/dht.rs.)
#[test]
fn the_testnet_prints_n_bootstrap_lines_and_exits_0_on_sigint() {
    let mut command = std::process::Command::new(bin("p2p-dht-testnet"));
    command
        .args(["--nodes", "3"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let testnet = Running::spawn(command, &bin("p2p-dht-testnet"));
    let mut ports = Vec::new();
    for _ in 0..3 {
        let line = testnet.wait_for_line(|l| l.starts_with("bootstrap "), WAIT_TIMEOUT);
        let addr: SocketAddr = line["bootstrap ".len()..].parse().expect("HOST:PORT");
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
        ports.push(addr.port());
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three distinct nodes");
    testnet.signal("INT");
    let (status, stderr) = testnet.wait_exit(WAIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// "SEARCH and FIND return only live registrations (heartbeat or
/// registration within the TTL)."
#[test]
fn search_and_find_give_only_live_registrations() {
    let registry = Registry::start_with(&["--ttl", "1s"]);
    let mut wire = Wire::connect(registry.addr);
    let hash = sha256_hex(b"soon gone");
    assert_eq!(
        wire.ask(&format!("REGISTER 7000 9 {hash} expiring word.txt")),
        "OK"
    );
    assert_eq!(wire.ask("FIND expiring"), "RESULTS 1");
    wire.line();
    wait_until("the registration expires", WAIT_TIMEOUT, || {
        wire.call("SEARCH expiring word.txt") == ["NOT_FOUND"]
    });
    assert_eq!(wire.call("FIND expiring"), ["RESULTS 0"]);
    assert_eq!(wire.call("FIND word"), ["RESULTS 0"]);
    // A heartbeat no longer finds it (it was not live), a new REGISTER does.
    assert_eq!(
        wire.ask(&format!("REGISTER 7000 9 {hash} expiring word.txt")),
        "OK"
    );
    let found = wire.call("FIND expiring");
    assert_eq!(found[0], "RESULTS 1", "{found:?}");
}

/// The v1 table, one conversation, mixed-case command words, CRLF and LF:
/// every reply's exact status line.
#[test]
fn every_v1_request_gets_its_status_line() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let hash = sha256_hex(b"12345");
    assert_eq!(wire.ask("pInG\r"), "PONG");
    assert_eq!(
        wire.ask(&format!("register 7000 5 {hash} two  spaces.txt\r")),
        "OK"
    );
    assert_eq!(
        wire.call("Search two  spaces.txt"),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7000 5 {hash}")]
    );
    assert_eq!(
        wire.call("find TWO spa"),
        [
            "RESULTS 1".to_owned(),
            format!("1 5 {hash} two  spaces.txt")
        ]
    );
    assert_eq!(wire.call("FIND nothing"), ["RESULTS 0"]);
    assert_eq!(wire.ask("heartbeat 7000"), "OK 1");
    assert_eq!(wire.ask("HEARTBEAT 7999"), "OK 0");
    // Another port of the same host is another peer.
    assert_eq!(wire.ask("UNREGISTER 7001 two  spaces.txt"), "NOT_FOUND");
    assert_eq!(wire.ask("Unregister 7000 two  spaces.txt"), "OK");
    assert_eq!(wire.ask("UNREGISTER 7000 two  spaces.txt"), "NOT_FOUND");
    assert_eq!(wire.call("SEARCH two  spaces.txt"), ["NOT_FOUND"]);
    for (request, code) in [
        ("HELLO", "unknown_command"),
        ("REGISTER 7000 5", "bad_request"),
        (&*format!("REGISTER 7000 5 {hash} a/b"), "bad_name"),
        (&*format!("REGISTER 7000 5 {hash} .."), "bad_name"),
        ("SEARCH  lead", "bad_name"),
    ] {
        let reply = wire.ask(request);
        assert!(
            reply.starts_with(&format!("ERR {code} ")),
            "{request:?}: {reply:?}"
        );
        // The connection stays usable after these errors.
        assert_eq!(wire.ask("PING"), "PONG");
    }
    assert_eq!(wire.ask("quit"), "BYE");
    wire.expect_closed();
}

/// "`GET /files/<name>?inline` answers with a content type from the name's
/// extension and `Content-Disposition: inline`; without it,
/// `Content-Disposition: attachment` carries the real name (RFC 6266
/// `filename*=UTF-8''...`)", and "`HEAD` answers the same headers without a
/// body. Responses carry `ETag: "<sha256>"`."
#[test]
fn files_inline_by_extension_attachment_by_default_and_head_agrees() {
    let registry = Registry::start();
    let files: [(&str, &[u8], &str); 4] = [
        ("notes é.txt", b"plain words", "text/plain"),
        ("pic.png", b"\x89PNG fake", "image/png"),
        ("page.HTML", b"<p>hi</p>", "text/html"),
        ("blob.unknownext", b"???", "application/octet-stream"),
    ];
    let shared: Vec<(&str, &[u8])> = files.iter().map(|(n, c, _)| (*n, *c)).collect();
    let peer = Peer::serve(&registry, &shared, &["--ui", "off"]);
    let host = peer.addr.to_string();
    let addr: SocketAddr = format!("127.0.0.1:{}", peer.addr.port()).parse().unwrap();
    for (name, content, mime) in files {
        let path = format!("/files/{}", encode(name));
        let etag = format!("\"{}\"", sha256_hex(content));
        let inline = http(addr, "GET", &format!("{path}?inline"), &host);
        assert_eq!(inline.status, 200, "{name}");
        assert_eq!(inline.body, content, "{name}");
        let ctype = inline.header("content-type").unwrap_or_default();
        assert!(ctype.starts_with(mime), "{name}: {ctype}");
        let disposition = inline.header("content-disposition").unwrap_or_default();
        assert!(disposition.starts_with("inline"), "{name}: {disposition}");
        assert_eq!(inline.header("etag"), Some(etag.as_str()), "{name}");

        let attachment = http(addr, "GET", &path, &host);
        assert_eq!(attachment.status, 200);
        let disposition = attachment.header("content-disposition").unwrap_or_default();
        assert!(
            disposition.starts_with("attachment"),
            "{name}: {disposition}"
        );
        // RFC 5987 leaves `.`, `-`, `_` unencoded; compare decoded values.
        let got = disposition
            .split(';')
            .map(str::trim)
            .find_map(|p| p.strip_prefix("filename*=UTF-8''"))
            .unwrap_or_else(|| panic!("{name}: no filename*=UTF-8'': {disposition}"));
        assert_eq!(decode(got), name, "{disposition}");
        assert_eq!(attachment.header("etag"), Some(etag.as_str()));

        for target in [path.clone(), format!("{path}?inline")] {
            let get = http(addr, "GET", &target, &host);
            let head = http(addr, "HEAD", &target, &host);
            assert_eq!(head.status, 200, "{target}");
            assert!(head.body.is_empty(), "{target}: HEAD has no body");
            for header in [
                "content-length",
                "content-type",
                "content-disposition",
                "etag",
            ] {
                assert_eq!(head.header(header), get.header(header), "{target} {header}");
            }
        }
    }
}

/// Percent-encodes every byte but ASCII letters and digits.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Decodes `%XX` escapes (the value must be UTF-8).
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// "`peer get NAME`: … non-zero with a one-line reason otherwise": one
/// line, and the cause said once (the error chain printed without repeats).
#[test]
fn a_failure_is_one_line_that_says_its_cause_once() {
    let (_dir, shared, downloads) = Peer::folders();
    for command in [
        &["search", "x"][..],
        &["get", "x"],
        &["register", "x", "--port", "5"],
    ] {
        if command[0] == "register" {
            std::fs::write(shared.join("x"), b"x").unwrap();
        }
        let mut args = vec![
            "--server",
            "127.0.0.1:1",
            "--shared",
            shared.to_str().unwrap(),
            "--downloads",
            downloads.to_str().unwrap(),
        ];
        args.extend_from_slice(command);
        let out = run_with(&bin("peer"), &args, None, &[], WAIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let stderr = text(&out.stderr);
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{command:?}: {stderr}"
        );
        assert_eq!(
            stderr.matches("127.0.0.1:1").count(),
            1,
            "{command:?}: {stderr}"
        );
    }
}
