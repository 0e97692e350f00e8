//! End-to-end tests of the registry's wire protocol, version 1: every request
//! and reply of the contract, and what the server does with bad input.
//!
//! Each test starts its own `dht-server` on `127.0.0.1:0` and speaks raw bytes
//! to it over a [`TcpStream`], so the wire format itself is what is tested.
//! Every raw socket has a read timeout: a server that does not answer makes a
//! test fail, never hang. Durability (restart, crash, expiry, start-up
//! errors) is in `registry_durability.rs`.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use p2p_tests::{sha256_hex, wait_until, Registry, Wire, WAIT_TIMEOUT, WIRE_TIMEOUT};

/// How fast a fresh client must be answered while other connections sit idle.
const PROMPT: Duration = Duration::from_secs(2);

/// The longest request line the contract allows, counting its line ending.
const MAX_LINE: usize = 4096;

/// Content hash used where the content does not matter.
fn hash_of(content: &str) -> String {
    sha256_hex(content.as_bytes())
}

/// Asserts `line` is `ERR <code> <message>` with a non-empty message.
fn assert_err(line: &str, code: &str, request: &[u8]) {
    let prefix = format!("ERR {code} ");
    assert!(
        line.starts_with(&prefix) && line.len() > prefix.len(),
        "request {:?}: expected `ERR {code} <message>`, got {line:?}",
        String::from_utf8_lossy(request)
    );
}

/// Sends `request` (bytes, with its line ending) on `wire` and asserts the
/// reply is `ERR <code> ...` and the connection is still usable after it.
fn expect_err_keeps_connection(wire: &mut Wire, request: &[u8], code: &str) {
    wire.send(request);
    let line = wire.line();
    assert_err(&line, code, request);
    assert_eq!(
        wire.ask("PING"),
        "PONG",
        "connection unusable after the error for {:?}",
        String::from_utf8_lossy(request)
    );
}

/// Sends `request` on a fresh connection and asserts `ERR <code> ...` then close.
fn expect_err_then_close(registry: &Registry, request: &[u8], code: &str) {
    let mut wire = Wire::connect(registry.addr);
    // Anything after the bad line must be ignored: the server closes first.
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"PING\n");
    wire.send(&bytes);
    let line = wire.line();
    assert_err(&line, code, request);
    wire.expect_closed();
}

/// A brand-new connection is answered: the server survived whatever came before.
fn assert_fresh_client_served(registry: &Registry) {
    let mut wire = Wire::connect(registry.addr);
    wire.ping();
}

fn register_line(port: u16, size: u64, sha: &str, name: &str) -> String {
    format!("REGISTER {port} {size} {sha} {name}")
}

fn register(wire: &mut Wire, port: u16, size: u64, sha: &str, name: &str) {
    let request = register_line(port, size, sha, name);
    assert_eq!(wire.ask(&request), "OK", "reply to {request:?}");
}

/// The source lines of a `SEARCH`, or an empty list for `NOT_FOUND`.
fn sources(wire: &mut Wire, name: &str) -> Vec<String> {
    let reply = wire.call(&format!("SEARCH {name}"));
    if reply[0] == "NOT_FOUND" {
        return Vec::new();
    }
    assert!(
        reply[0].starts_with("FOUND "),
        "SEARCH {name:?}: unexpected reply {reply:?}"
    );
    assert_ne!(reply[0], "FOUND 0", "an empty result is NOT_FOUND");
    reply[1..].to_vec()
}

/// The item lines of a `FIND` reply.
fn find(wire: &mut Wire, words: &str) -> Vec<String> {
    let reply = wire.call(&format!("FIND {words}"));
    assert!(
        reply[0].starts_with("RESULTS "),
        "FIND {words:?}: unexpected reply {reply:?}"
    );
    reply[1..].to_vec()
}

/// Splits a FIND line `<sources> <size> <sha256> <name>`.
fn find_line(line: &str) -> (u64, u64, String, String) {
    let mut parts = line.splitn(4, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("FIND line {line:?} has too few fields"))
    };
    let sources = next().parse().expect("sources is a number");
    let size = next().parse().expect("size is a number");
    let sha = next().to_owned();
    let name = next().to_owned();
    (sources, size, sha, name)
}

fn names_of(hits: &[String]) -> Vec<String> {
    let mut names: Vec<String> = hits.iter().map(|l| find_line(l).3).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Every request and reply of the contract
// ---------------------------------------------------------------------------

#[test]
fn ping_answers_pong() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.ask("PING"), "PONG");
    assert_eq!(wire.ask("PING"), "PONG");
}

#[test]
fn quit_answers_bye_and_the_server_closes() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    wire.ping();
    assert_eq!(wire.ask("QUIT"), "BYE");
    wire.expect_closed();

    // A request pipelined after QUIT is never answered.
    let mut wire = Wire::connect(registry.addr);
    wire.send("PING\nQUIT\nPING\n");
    assert_eq!(wire.line(), "PONG");
    assert_eq!(wire.line(), "BYE");
    wire.expect_closed();
    assert_fresh_client_served(&registry);
}

#[test]
fn register_then_search_shows_the_address_the_server_saw() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("hello");
    assert_eq!(wire.call("SEARCH hello.txt"), ["NOT_FOUND"]);
    assert_eq!(wire.ask(&format!("REGISTER 7001 5 {sha} hello.txt")), "OK");
    assert_eq!(
        wire.call("SEARCH hello.txt"),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7001 5 {sha}")]
    );
    // Another connection sees it too.
    let mut other = Wire::connect(registry.addr);
    assert_eq!(
        other.call("SEARCH hello.txt"),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7001 5 {sha}")]
    );
}

#[test]
fn search_is_exact_on_the_name() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("exact");
    register(&mut wire, 7002, 5, &sha, "Report Final.pdf");
    assert_eq!(sources(&mut wire, "Report Final.pdf").len(), 1);
    for other in [
        "report final.pdf",
        "REPORT FINAL.PDF",
        "Report Final",
        "Report",
        "Report Final.pdf2",
        "Report  Final.pdf",
    ] {
        assert_eq!(
            wire.call(&format!("SEARCH {other}")),
            ["NOT_FOUND"],
            "SEARCH {other:?} must not match \"Report Final.pdf\""
        );
    }
}

#[test]
fn register_again_replaces_size_and_hash() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let old = hash_of("v1");
    let new = hash_of("v2 longer");
    register(&mut wire, 7003, 2, &old, "changing.txt");
    register(&mut wire, 7003, 9, &new, "changing.txt");
    assert_eq!(
        sources(&mut wire, "changing.txt"),
        [format!("127.0.0.1:7003 9 {new}")],
        "one registration per peer and name, with the latest size and hash"
    );
}

#[test]
fn size_zero_and_large_sizes_round_trip() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let empty = sha256_hex(b"");
    register(&mut wire, 7004, 0, &empty, "empty file");
    assert_eq!(
        sources(&mut wire, "empty file"),
        [format!("127.0.0.1:7004 0 {empty}")]
    );
    let big = (1u64 << 53) + 1; // beyond an f64's exact integers
    let sha = hash_of("big");
    register(&mut wire, 7004, big, &sha, "big file");
    assert_eq!(
        sources(&mut wire, "big file"),
        [format!("127.0.0.1:7004 {big} {sha}")]
    );
}

#[test]
fn a_size_beyond_what_can_be_stored_is_refused_as_bad_request_or_kept_exactly() {
    // u64 sizes above i64::MAX do not fit SQLite's INTEGER. Whatever the
    // server chooses, this is the client's doing: never `ERR internal`.
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("huge");
    for size in [1u64 << 63, u64::MAX] {
        let name = format!("huge {size}");
        let request = register_line(7005, size, &sha, &name);
        let reply = wire.ask(&request);
        if reply == "OK" {
            assert_eq!(
                sources(&mut wire, &name),
                [format!("127.0.0.1:7005 {size} {sha}")],
                "a size that was accepted must come back exactly"
            );
        } else {
            assert_err(&reply, "bad_request", request.as_bytes());
        }
        wire.ping();
    }
    // One more than u64::MAX is not a size at all.
    expect_err_keeps_connection(
        &mut wire,
        format!("REGISTER 7005 18446744073709551616 {sha} too huge\n").as_bytes(),
        "bad_request",
    );
}

#[test]
fn unregister_removes_only_that_registration() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("shared");
    register(&mut wire, 7011, 6, &sha, "shared.bin");
    register(&mut wire, 7012, 6, &sha, "shared.bin");
    assert_eq!(sources(&mut wire, "shared.bin").len(), 2);

    assert_eq!(wire.ask("UNREGISTER 7011 shared.bin"), "OK");
    assert_eq!(
        sources(&mut wire, "shared.bin"),
        [format!("127.0.0.1:7012 6 {sha}")]
    );
    assert_eq!(wire.ask("UNREGISTER 7011 shared.bin"), "NOT_FOUND");
    assert_eq!(wire.ask("UNREGISTER 7013 shared.bin"), "NOT_FOUND");
    assert_eq!(wire.ask("UNREGISTER 7012 never registered"), "NOT_FOUND");
    assert_eq!(wire.ask("UNREGISTER 7012 shared.bin"), "OK");
    assert_eq!(wire.call("SEARCH shared.bin"), ["NOT_FOUND"]);
    assert_eq!(find(&mut wire, "shared"), Vec::<String>::new());
}

/// Registers and heartbeats from three ports, checking after each step that
/// SEARCH lists the most recently seen first; `rounds` times, each on its
/// own name, back to back (so steps often fall in the same millisecond).
fn check_most_recently_seen_first(registry: &Registry, rounds: usize) {
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("popular");
    for round in 0..rounds {
        let name = format!("popular {round}.iso");
        let check = |wire: &mut Wire, step: &str, order: &[u16]| {
            let expected: Vec<String> = order
                .iter()
                .map(|port| format!("127.0.0.1:{port} 7 {sha}"))
                .collect();
            assert_eq!(
                sources(wire, &name),
                expected,
                "round {round}, after {step}: most recently seen first"
            );
        };
        register(&mut wire, 7021, 7, &sha, &name);
        register(&mut wire, 7022, 7, &sha, &name);
        check(&mut wire, "REGISTER from 7021 then 7022", &[7022, 7021]);
        assert_eq!(wire.ask("HEARTBEAT 7021"), "OK 1");
        check(&mut wire, "HEARTBEAT 7021", &[7021, 7022]);
        register(&mut wire, 7023, 7, &sha, &name);
        check(&mut wire, "REGISTER from 7023", &[7023, 7021, 7022]);
        assert_eq!(wire.ask("HEARTBEAT 7022"), "OK 1");
        check(&mut wire, "HEARTBEAT 7022", &[7022, 7023, 7021]);
        // Registering again counts as being seen.
        register(&mut wire, 7021, 7, &sha, &name);
        check(&mut wire, "REGISTER again from 7021", &[7021, 7022, 7023]);
        for port in [7021, 7022, 7023] {
            assert_eq!(wire.ask(&format!("UNREGISTER {port} {name}")), "OK");
        }
    }
}

#[test]
fn search_lists_the_most_recently_seen_first() {
    let registry = Registry::start();
    check_most_recently_seen_first(&registry, 5);
}

#[test]
fn search_order_holds_when_commits_are_fast() {
    // Without an fsync per commit, consecutive requests often land in the
    // same millisecond: the order must still be that of the requests.
    let registry = Registry::start_with(&["--sync", "normal"]);
    check_most_recently_seen_first(&registry, 20);
}

#[test]
fn heartbeat_counts_the_registrations_it_refreshed() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.ask("HEARTBEAT 7031"), "OK 0");
    for i in 0..3 {
        register(&mut wire, 7031, i, &hash_of("hb"), &format!("hb file {i}"));
    }
    register(&mut wire, 7032, 1, &hash_of("hb"), "hb other port");
    assert_eq!(wire.ask("HEARTBEAT 7031"), "OK 3");
    assert_eq!(wire.ask("HEARTBEAT 7032"), "OK 1");
    assert_eq!(wire.ask("HEARTBEAT 7033"), "OK 0");
    assert_eq!(wire.ask("UNREGISTER 7031 hb file 1"), "OK");
    assert_eq!(wire.ask("HEARTBEAT 7031"), "OK 2");
}

#[test]
fn find_matches_word_prefixes_case_insensitively() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let files = [
        (7041, "Ubuntu Desktop 2404"),
        (7041, "ubuntu server 2404"),
        (7042, "Debian netinst"),
        (7042, "Café Crème recipes"),
        (7042, "Привет мир"),
    ];
    for (i, (port, name)) in files.iter().enumerate() {
        register(&mut wire, *port, i as u64 + 10, &hash_of(name), name);
    }

    assert_eq!(
        names_of(&find(&mut wire, "ubu")),
        ["Ubuntu Desktop 2404", "ubuntu server 2404"]
    );
    assert_eq!(
        names_of(&find(&mut wire, "UBUNTU")),
        names_of(&find(&mut wire, "ubuntu"))
    );
    assert_eq!(
        names_of(&find(&mut wire, "UBU DESK")),
        ["Ubuntu Desktop 2404"]
    );
    assert_eq!(
        names_of(&find(&mut wire, "desk ubu")),
        ["Ubuntu Desktop 2404"]
    );
    assert_eq!(
        names_of(&find(&mut wire, "2404 SERV")),
        ["ubuntu server 2404"]
    );
    // Every word must match.
    assert_eq!(find(&mut wire, "ubuntu debian"), Vec::<String>::new());
    assert_eq!(find(&mut wire, "ubuntu laptop"), Vec::<String>::new());
    // A prefix of a word, not any substring.
    assert_eq!(find(&mut wire, "buntu"), Vec::<String>::new());
    assert_eq!(find(&mut wire, "top"), Vec::<String>::new());
    // Non-ASCII words, and their case.
    assert_eq!(names_of(&find(&mut wire, "café")), ["Café Crème recipes"]);
    assert_eq!(
        names_of(&find(&mut wire, "CAFÉ crè")),
        ["Café Crème recipes"]
    );
    assert_eq!(names_of(&find(&mut wire, "прив")), ["Привет мир"]);
    assert_eq!(names_of(&find(&mut wire, "ПРИВЕТ МИР")), ["Привет мир"]);
    // Nothing matches: RESULTS 0, no lines.
    assert_eq!(wire.call("FIND nothingmatchesthis"), ["RESULTS 0"]);
    wire.ping();
}

#[test]
fn find_lines_carry_sources_size_hash_and_the_full_name() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let a = hash_of("version a");
    let b = hash_of("version b");
    register(&mut wire, 7051, 100, &a, "holiday photos 2024");
    register(&mut wire, 7052, 100, &a, "holiday photos 2024");
    register(&mut wire, 7053, 200, &b, "holiday photos 2024");

    let mut hits: Vec<(u64, u64, String, String)> = find(&mut wire, "holiday")
        .iter()
        .map(|l| find_line(l))
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            (1, 200, b.clone(), "holiday photos 2024".to_owned()),
            (2, 100, a.clone(), "holiday photos 2024".to_owned()),
        ],
        "one line per distinct content, counting its live sources"
    );
    assert_eq!(wire.ask("UNREGISTER 7052 holiday photos 2024"), "OK");
    let mut hits: Vec<(u64, u64, String, String)> = find(&mut wire, "PHOTOS")
        .iter()
        .map(|l| find_line(l))
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            (1, 100, a, "holiday photos 2024".to_owned()),
            (1, 200, b, "holiday photos 2024".to_owned()),
        ]
    );
}

#[test]
fn find_returns_at_most_100_lines() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    // 150 registrations pipelined in one write, then their 150 OKs.
    let mut batch = String::new();
    for i in 0..150 {
        batch.push_str(&register_line(
            7061,
            i,
            &hash_of("bulk"),
            &format!("bulk item {i:03}"),
        ));
        batch.push('\n');
    }
    wire.send(batch);
    for i in 0..150 {
        assert_eq!(wire.line(), "OK", "reply {i} of the pipelined REGISTERs");
    }
    let reply = wire.call("FIND bulk");
    assert_eq!(reply[0], "RESULTS 100");
    assert_eq!(reply.len(), 101);
    for line in &reply[1..] {
        let (sources, _, sha, name) = find_line(line);
        assert_eq!(sources, 1);
        assert_eq!(sha, hash_of("bulk"));
        assert!(name.starts_with("bulk item "), "{line:?}");
    }
    // Nothing beyond the 100 lines is waiting on the connection.
    wire.ping();
    assert_eq!(find(&mut wire, "item 149").len(), 1);
}

#[test]
fn find_words_are_never_read_as_query_syntax() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    register(&mut wire, 7071, 1, &hash_of("ops"), "AND OR NOT NEAR");
    register(&mut wire, 7071, 1, &hash_of("q"), "say \"hi\" now");
    for words in [
        "\"",
        "\"\"",
        "*",
        "a*",
        "(",
        ")",
        "(x",
        ":",
        "name:foo",
        "^x",
        "-x",
        "+",
        "{a b}",
        "a\"b",
        "NEAR(a b)",
        "'",
        "%",
        "_",
        "\\",
    ] {
        let reply = wire.call(&format!("FIND {words}"));
        assert!(
            reply[0].starts_with("RESULTS "),
            "FIND {words:?} is a valid request: got {reply:?}"
        );
        wire.ping();
    }
    for words in ["and", "AND", "or", "NOT", "NEAR", "near and or not"] {
        assert_eq!(
            names_of(&find(&mut wire, words)),
            ["AND OR NOT NEAR"],
            "FIND {words:?}"
        );
    }
    assert_eq!(find(&mut wire, "AND debian"), Vec::<String>::new());
    assert_eq!(find(&mut wire, "OR nothing"), Vec::<String>::new());
}

#[test]
fn names_with_spaces_and_non_ascii_utf8() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let names = [
        "my holiday photo 2024.jpg",
        "two  spaces inside",
        "Привет мир.txt",
        "日本語 ファイル.txt",
        "🎵 song – remix.mp3",
        "...",
        ".hidden",
        "a",
        "ümlaut ß ø",
    ];
    for (i, name) in names.iter().enumerate() {
        let sha = hash_of(name);
        let port = 7081 + i as u16;
        register(&mut wire, port, 42, &sha, name);
        assert_eq!(
            sources(&mut wire, name),
            [format!("127.0.0.1:{port} 42 {sha}")],
            "SEARCH {name:?}"
        );
    }
    assert_eq!(wire.call("SEARCH two spaces inside"), ["NOT_FOUND"]);
    assert_eq!(names_of(&find(&mut wire, "日本")), ["日本語 ファイル.txt"]);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            wire.ask(&format!("UNREGISTER {} {name}", 7081 + i)),
            "OK",
            "UNREGISTER {name:?}"
        );
        assert_eq!(wire.call(&format!("SEARCH {name}")), ["NOT_FOUND"]);
    }
}

#[test]
fn names_of_exactly_255_bytes_are_valid() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let ascii = "n".repeat(255);
    let utf8 = format!("{}x", "é".repeat(127)); // 254 + 1 bytes
    assert_eq!(utf8.len(), 255);
    for name in [&ascii, &utf8] {
        let sha = hash_of(name);
        register(&mut wire, 7091, 255, &sha, name);
        assert_eq!(
            sources(&mut wire, name),
            [format!("127.0.0.1:7091 255 {sha}")]
        );
    }
}

#[test]
fn command_words_are_case_insensitive() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("case");
    assert_eq!(wire.ask("ping"), "PONG");
    assert_eq!(wire.ask("Ping"), "PONG");
    assert_eq!(wire.ask("pInG"), "PONG");
    assert_eq!(wire.ask(&format!("register 7101 4 {sha} Case File")), "OK");
    assert_eq!(wire.ask(&format!("Register 7102 4 {sha} Case File")), "OK");
    assert_eq!(
        wire.call("search Case File"),
        [
            "FOUND 2".to_owned(),
            format!("127.0.0.1:7102 4 {sha}"),
            format!("127.0.0.1:7101 4 {sha}"),
        ]
    );
    assert_eq!(wire.call("SeArCh Case File")[0], "FOUND 2");
    assert_eq!(wire.call("find case")[0], "RESULTS 1");
    assert_eq!(wire.call("fInD CASE")[0], "RESULTS 1");
    assert_eq!(wire.ask("heartbeat 7101"), "OK 1");
    assert_eq!(wire.ask("HeartBeat 7102"), "OK 1");
    assert_eq!(wire.ask("unregister 7101 Case File"), "OK");
    assert_eq!(wire.ask("UnRegister 7102 Case File"), "OK");
    assert_eq!(wire.call("search Case File"), ["NOT_FOUND"]);
    // The name keeps its case: only the command word is folded.
    assert_eq!(wire.ask("quit"), "BYE");
    wire.expect_closed();
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.ask("Quit"), "BYE");
    wire.expect_closed();
}

#[test]
fn crlf_line_endings_are_accepted() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("crlf");
    wire.send("PING\r\n");
    assert_eq!(wire.line(), "PONG");
    wire.send(format!("REGISTER 7111 4 {sha} crlf name.txt\r\n"));
    assert_eq!(wire.line(), "OK");
    // The CR is not part of the name: a LF-only SEARCH finds it.
    assert_eq!(
        sources(&mut wire, "crlf name.txt"),
        [format!("127.0.0.1:7111 4 {sha}")]
    );
    wire.send("SEARCH crlf name.txt\r\n");
    assert_eq!(
        wire.reply(),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7111 4 {sha}")]
    );
    wire.send("FIND CRLF\r\n");
    assert_eq!(wire.reply()[0], "RESULTS 1");
    wire.send("HEARTBEAT 7111\r\n");
    assert_eq!(wire.line(), "OK 1");
    wire.send("UNREGISTER 7111 crlf name.txt\r\n");
    assert_eq!(wire.line(), "OK");
    // Mixed endings on one connection, pipelined.
    wire.send("PING\nPING\r\nPING\n");
    for _ in 0..3 {
        assert_eq!(wire.line(), "PONG");
    }
    wire.send("QUIT\r\n");
    assert_eq!(wire.line(), "BYE");
    wire.expect_closed();
}

#[test]
fn many_pipelined_requests_are_answered_in_order() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("pipe");
    let mut requests = String::new();
    let mut expected: Vec<String> = Vec::new();
    for i in 0..100 {
        requests.push_str(&format!(
            "{}\n",
            register_line(7121, i, &sha, &format!("pipe {i}"))
        ));
        expected.push("OK".into());
        requests.push_str(&format!("SEARCH pipe {i}\n"));
        expected.push("FOUND 1".into());
        expected.push(format!("127.0.0.1:7121 {i} {sha}"));
        if i % 10 == 0 {
            requests.push_str("PING\n");
            expected.push("PONG".into());
            // An error in the middle does not end the conversation.
            requests.push_str("BOGUS request\n");
            expected.push("ERR unknown_command".into());
            requests.push_str("SEARCH no such pipe\n");
            expected.push("NOT_FOUND".into());
        }
    }
    requests.push_str("HEARTBEAT 7121\n");
    expected.push("OK 100".into());
    requests.push_str("UNREGISTER 7121 pipe 0\n");
    expected.push("OK".into());
    requests.push_str("UNREGISTER 7121 pipe 0\n");
    expected.push("NOT_FOUND".into());
    requests.push_str("FIND pipe 99\n");
    expected.push("RESULTS 1".into());
    expected.push(format!("1 99 {sha} pipe 99"));
    requests.push_str("QUIT\n");
    expected.push("BYE".into());

    // All requests in one write; the replies are read only afterwards.
    wire.send(requests);
    for (i, want) in expected.iter().enumerate() {
        let got = wire.line();
        if want.starts_with("ERR ") {
            assert!(
                got.starts_with(&format!("{want} ")),
                "reply line {i}: {got:?}"
            );
        } else {
            assert_eq!(&got, want, "reply line {i}");
        }
    }
    wire.expect_closed();
}

#[test]
fn one_connection_per_request_works() {
    let registry = Registry::start();
    let sha = hash_of("single");
    let once = |request: &str| -> Vec<String> {
        let mut wire = Wire::connect(registry.addr);
        wire.call(request)
        // Dropped without QUIT, as the original design did.
    };
    assert_eq!(once(&register_line(7131, 6, &sha, "single shot")), ["OK"]);
    assert_eq!(
        once("SEARCH single shot"),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7131 6 {sha}")]
    );
    assert_eq!(once("FIND single")[0], "RESULTS 1");
    assert_eq!(once("HEARTBEAT 7131"), ["OK 1"]);
    assert_eq!(once("PING"), ["PONG"]);
    assert_eq!(once("UNREGISTER 7131 single shot"), ["OK"]);
    assert_eq!(once("SEARCH single shot"), ["NOT_FOUND"]);
    for _ in 0..50 {
        assert_eq!(once("PING"), ["PONG"]);
    }
}

#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    // A client may send its line and shut down its sending side at once.
    let registry = Registry::start();
    let sha = hash_of("half");
    let mut wire = Wire::connect(registry.addr);
    wire.send(format!("{}\n", register_line(7141, 4, &sha, "half closed")));
    wire.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(wire.line(), "OK");
    wire.expect_closed();

    let mut wire = Wire::connect(registry.addr);
    wire.send("SEARCH half closed\n");
    wire.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        wire.reply(),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7141 4 {sha}")]
    );
    wire.expect_closed();
    assert_fresh_client_served(&registry);
}

#[test]
fn a_client_sending_one_byte_at_a_time_is_answered() {
    let registry = Registry::start();
    let sha = hash_of("slow");
    let mut wire = Wire::connect(registry.addr);
    let request = format!("{}\n", register_line(7151, 4, &sha, "slow client"));
    for byte in request.as_bytes() {
        wire.send([*byte]);
        // Pacing, not synchronisation: each byte travels on its own.
        thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(wire.line(), "OK");
    for byte in b"SEARCH slow client\r\n" {
        wire.send([*byte]);
        thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(
        wire.reply(),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7151 4 {sha}")]
    );
    assert_fresh_client_served(&registry);
}

#[test]
fn a_slow_client_does_not_hold_up_others() {
    let registry = Registry::start();
    let mut slow = Wire::connect(registry.addr);
    slow.send("SEAR");
    // While the slow client is in the middle of a line, others are served.
    for _ in 0..5 {
        let start = Instant::now();
        assert_fresh_client_served(&registry);
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    }
    slow.send("CH nothing here\n");
    assert_eq!(slow.reply(), ["NOT_FOUND"]);
}

// ---------------------------------------------------------------------------
// Bad input: each gets its documented error, the connection stays usable
// ---------------------------------------------------------------------------

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

#[test]
fn unknown_commands_are_refused_and_the_connection_stays_usable() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    for request in [
        "HELLO\n",
        "GET / HTTP/1.1\n",
        "PINGX\n",
        "REGISTERX 1 1 x y\n",
        "SEARCHING x\n",
        "LIST\n",
        "ÉCHO x\n",
        "PIN\n",
    ] {
        expect_err_keeps_connection(&mut wire, request.as_bytes(), "unknown_command");
    }
    assert_fresh_client_served(&registry);
}

#[test]
fn missing_and_extra_fields_are_bad_requests() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let requests = [
        "REGISTER".to_owned(),
        "REGISTER 7201".to_owned(),
        "REGISTER 7201 5".to_owned(),
        format!("REGISTER 7201 5 {HASH}"),
        format!("REGISTER  7201 5 {HASH} name"),
        format!("REGISTER 7201  5 {HASH} name"),
        format!("REGISTER 7201 5  {HASH} name"),
        "UNREGISTER".to_owned(),
        "UNREGISTER 7201".to_owned(),
        "SEARCH".to_owned(),
        "FIND".to_owned(),
        "FIND ".to_owned(),
        "FIND   ".to_owned(),
        "HEARTBEAT".to_owned(),
        "HEARTBEAT 7201 extra".to_owned(),
        "PING extra".to_owned(),
        "QUIT now".to_owned(),
    ];
    for request in &requests {
        expect_err_keeps_connection(&mut wire, format!("{request}\n").as_bytes(), "bad_request");
    }
    // None of them registered anything.
    assert_eq!(wire.call("SEARCH name"), ["NOT_FOUND"]);
    assert_fresh_client_served(&registry);
}

#[test]
fn bad_ports_are_bad_requests() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    for port in [
        "0",
        "65536",
        "abc",
        "-1",
        "+80",
        "99999999999999999999999",
        "80x",
    ] {
        for request in [
            format!("REGISTER {port} 5 {HASH} portname\n"),
            format!("UNREGISTER {port} portname\n"),
            format!("HEARTBEAT {port}\n"),
        ] {
            expect_err_keeps_connection(&mut wire, request.as_bytes(), "bad_request");
        }
    }
    // The extremes that are valid.
    assert_eq!(wire.ask(&format!("REGISTER 1 5 {HASH} portname")), "OK");
    assert_eq!(wire.ask(&format!("REGISTER 65535 5 {HASH} portname")), "OK");
    assert_eq!(sources(&mut wire, "portname").len(), 2);
    assert_fresh_client_served(&registry);
}

#[test]
fn bad_sizes_are_bad_requests() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    for size in ["-1", "x", "+5", "1.5", "1e3", "0x10", " 5", "5 "] {
        let request = format!("REGISTER 7211 {size} {HASH} sizename\n");
        expect_err_keeps_connection(&mut wire, request.as_bytes(), "bad_request");
    }
    assert_eq!(wire.call("SEARCH sizename"), ["NOT_FOUND"]);
    assert_fresh_client_served(&registry);
}

#[test]
fn bad_hashes_are_bad_requests() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let bad = [
        HASH[..63].to_owned(),       // short
        format!("{HASH}0"),          // long
        format!("{}g", &HASH[..63]), // not hex
        HASH.to_uppercase(),         // uppercase
        format!("{}A", &HASH[..63]), // one uppercase digit
        "abc".to_owned(),
        format!("0x{}", &HASH[..62]),
    ];
    for sha in &bad {
        let request = format!("REGISTER 7221 5 {sha} hashname\n");
        expect_err_keeps_connection(&mut wire, request.as_bytes(), "bad_request");
    }
    assert_eq!(wire.call("SEARCH hashname"), ["NOT_FOUND"]);
    assert_fresh_client_served(&registry);
}

/// Names that break one rule each, as bytes after the command's other fields.
fn bad_names() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", b"".to_vec()),
        ("256 bytes", vec![b'x'; 256]),
        ("256 bytes of UTF-8", "é".repeat(128).into_bytes()),
        ("tab", b"a\tb".to_vec()),
        ("bell", b"a\x07b".to_vec()),
        ("escape", b"\x1b[31mred".to_vec()),
        ("DEL", b"a\x7fb".to_vec()),
        ("C1 control", "a\u{85}b".as_bytes().to_vec()),
        ("CR inside", b"a\rb".to_vec()),
        ("slash", b"a/b".to_vec()),
        ("leading slash", b"/etc/passwd".to_vec()),
        ("backslash", b"a\\b".to_vec()),
        ("dot", b".".to_vec()),
        ("dot dot", b"..".to_vec()),
        ("parent path", b"../x".to_vec()),
        ("leading space", b" lead".to_vec()),
        ("trailing space", b"trail ".to_vec()),
        ("only a space", b" ".to_vec()),
        ("NUL", b"nul\0byte".to_vec()),
    ]
}

#[test]
fn every_name_rule_is_enforced_as_bad_name() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    for (rule, name) in bad_names() {
        for prefix in [
            format!("REGISTER 7231 5 {HASH} "),
            "UNREGISTER 7231 ".to_owned(),
            "SEARCH ".to_owned(),
        ] {
            let mut request = prefix.into_bytes();
            request.extend_from_slice(&name);
            request.push(b'\n');
            wire.send(&request);
            let line = wire.line();
            assert!(
                line.starts_with("ERR bad_name "),
                "{rule}: {:?} earned {line:?}, expected `ERR bad_name ...`",
                String::from_utf8_lossy(&request)
            );
            wire.ping();
        }
    }
    // Nothing was registered on the way.
    assert_eq!(wire.ask("HEARTBEAT 7231"), "OK 0");
    assert_fresh_client_served(&registry);
}

#[test]
fn a_trailing_space_before_crlf_is_still_a_trailing_space() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    expect_err_keeps_connection(
        &mut wire,
        format!("REGISTER 7232 5 {HASH} trail \r\n").as_bytes(),
        "bad_name",
    );
    // A CR that is not part of the line ending is inside the name.
    expect_err_keeps_connection(&mut wire, b"SEARCH a\r\r\n", "bad_name");
    assert_fresh_client_served(&registry);
}

#[test]
fn empty_lines_are_bad_requests() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    expect_err_keeps_connection(&mut wire, b"\n", "bad_request");
    expect_err_keeps_connection(&mut wire, b"\r\n", "bad_request");
    // Two empty lines, two errors, then the PING.
    wire.send(b"\n\nPING\n");
    assert_err(&wire.line(), "bad_request", b"\n");
    assert_err(&wire.line(), "bad_request", b"\n");
    assert_eq!(wire.line(), "PONG");
    assert_fresh_client_served(&registry);
}

#[test]
fn nul_bytes_earn_an_error_and_the_connection_stays_usable() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    // In a name, NUL is a control character.
    expect_err_keeps_connection(&mut wire, b"SEARCH \0\n", "bad_name");
    expect_err_keeps_connection(
        &mut wire,
        format!("REGISTER 7241 5 {HASH} a\0\n").as_bytes(),
        "bad_name",
    );
    // In a command word it is not a known command.
    expect_err_keeps_connection(&mut wire, b"PI\0NG\n", "unknown_command");
    expect_err_keeps_connection(&mut wire, b"\0\n", "unknown_command");
    // In a number field it makes a bad number.
    expect_err_keeps_connection(&mut wire, b"HEARTBEAT 72\x0041\n", "bad_request");
    // A whole line of NULs is an error, not the end of the conversation.
    wire.send([0u8; 100]);
    wire.send(b"\n");
    let line = wire.line();
    assert!(line.starts_with("ERR "), "100 NULs earned {line:?}");
    wire.ping();
    assert_eq!(wire.ask("HEARTBEAT 7241"), "OK 0");
    assert_fresh_client_served(&registry);
}

// ---------------------------------------------------------------------------
// Line length and encoding: the cases that close the connection
// ---------------------------------------------------------------------------

/// A `FIND` line of exactly `len` bytes including `ending`, whose words all
/// match the name "alpha beta".
fn find_line_of(len: usize, ending: &str) -> Vec<u8> {
    let mut line = String::from("FIND al");
    while line.len() + ending.len() < len {
        line.push_str(" a");
    }
    line.truncate(len - ending.len());
    // Never end on a space: keep every word intact.
    if line.ends_with(' ') {
        line.pop();
        line.insert_str(5, "b ");
        line.truncate(len - ending.len());
    }
    line.push_str(ending);
    assert_eq!(line.len(), len);
    line.into_bytes()
}

#[test]
fn a_line_of_exactly_4096_bytes_is_accepted() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let sha = hash_of("alpha");
    register(&mut wire, 7301, 5, &sha, "alpha beta");

    for ending in ["\n", "\r\n"] {
        let line = find_line_of(MAX_LINE, ending);
        wire.send(&line);
        let reply = wire.reply();
        assert_eq!(
            reply,
            ["RESULTS 1".to_owned(), format!("1 5 {sha} alpha beta")],
            "a {}-byte FIND ending in {ending:?}",
            line.len()
        );
        wire.ping();
    }

    // An over-long name in a line that fits earns bad_name, not too_long.
    let name = "x".repeat(MAX_LINE - "SEARCH ".len() - 1);
    let line = format!("SEARCH {name}\n");
    assert_eq!(line.len(), MAX_LINE);
    expect_err_keeps_connection(&mut wire, line.as_bytes(), "bad_name");
    let name = "x".repeat(MAX_LINE - "SEARCH ".len() - 2);
    let line = format!("SEARCH {name}\r\n");
    assert_eq!(line.len(), MAX_LINE);
    expect_err_keeps_connection(&mut wire, line.as_bytes(), "bad_name");
    assert_fresh_client_served(&registry);
}

#[test]
fn a_line_over_4096_bytes_is_too_long_and_closes() {
    let registry = Registry::start();
    for len in [MAX_LINE + 1, MAX_LINE + 2, 10_000] {
        let line = find_line_of(len, "\n");
        expect_err_then_close(&registry, &line, "too_long");
        let name = "x".repeat(len - "SEARCH ".len() - 1);
        expect_err_then_close(&registry, format!("SEARCH {name}\n").as_bytes(), "too_long");
    }
    // 4095 bytes and a CRLF: 4097 with its ending.
    let line = find_line_of(MAX_LINE + 1, "\r\n");
    expect_err_then_close(&registry, &line, "too_long");
    assert_fresh_client_served(&registry);
}

#[test]
fn a_too_long_line_after_good_requests_still_closes() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    wire.ping();
    let mut bytes = b"PING\n".to_vec();
    bytes.extend(find_line_of(MAX_LINE + 100, "\n"));
    bytes.extend_from_slice(b"PING\n");
    wire.send(&bytes);
    assert_eq!(wire.line(), "PONG");
    assert_err(&wire.line(), "too_long", b"FIND al a a ...");
    wire.expect_closed();
    assert_fresh_client_served(&registry);
}

#[test]
fn a_mebibyte_without_a_newline_is_too_long_and_closes() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let mut writer = wire.stream.try_clone().unwrap();
    // The server may close after reading a few kilobytes; the rest of the
    // write then fails, which is fine: the reply is what is tested.
    let sender = thread::spawn(move || {
        let junk = vec![b'A'; 1 << 20];
        let _ = writer.write_all(&junk);
    });
    let line = wire.line();
    assert_err(&line, "too_long", b"AAAA... (1 MiB, no newline)");
    wire.expect_closed();
    sender.join().unwrap();
    assert_fresh_client_served(&registry);
}

#[test]
fn invalid_utf8_is_a_bad_request_and_closes() {
    let registry = Registry::start();
    let cases: [&[u8]; 6] = [
        b"SEARCH caf\xc3\n",      // truncated sequence
        b"SEARCH \xff\xfe\n",     // bytes that never occur in UTF-8
        b"\xff\n",                // in the command word
        b"SEARCH \xc0\xaf\n",     // overlong encoding of '/'
        b"SEARCH \xed\xa0\x80\n", // a UTF-16 surrogate
        b"FIND ok \x80\n",        // a lone continuation byte
    ];
    for request in cases {
        expect_err_then_close(&registry, request, "bad_request");
    }
    // After good requests on the same connection, too.
    let mut wire = Wire::connect(registry.addr);
    wire.send(b"PING\nSEARCH \xe2\x82\nPING\n");
    assert_eq!(wire.line(), "PONG");
    assert_err(&wire.line(), "bad_request", b"SEARCH \xe2\x82\n");
    wire.expect_closed();
    assert_fresh_client_served(&registry);
}

// ---------------------------------------------------------------------------
// Many connections
// ---------------------------------------------------------------------------

#[test]
fn idle_connections_do_not_starve_a_new_client() {
    let registry = Registry::start();
    let mut idle: Vec<Wire> = (0..300).map(|_| Wire::connect(registry.addr)).collect();
    // A few of them have talked once and then fall silent.
    for wire in idle.iter_mut().step_by(50) {
        wire.ping();
    }

    for _ in 0..3 {
        let start = Instant::now();
        let mut fresh = Wire::connect_with_timeout(registry.addr, PROMPT);
        assert_eq!(
            fresh.ask("PING"),
            "PONG",
            "a new client beside 300 idle connections"
        );
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    }
    let sha = hash_of("beside idle");
    let mut fresh = Wire::connect_with_timeout(registry.addr, PROMPT);
    register(&mut fresh, 7401, 1, &sha, "beside idle");
    assert_eq!(sources(&mut fresh, "beside idle").len(), 1);

    // The idle connections were not dropped: each still answers.
    for (i, wire) in idle.iter_mut().enumerate().filter(|(i, _)| i % 25 == 7) {
        wire.send("PING\n");
        assert_eq!(wire.line(), "PONG", "idle connection {i}");
    }
}

#[test]
fn many_clients_at_once_are_all_served() {
    let registry = Registry::start();
    let addr = registry.addr;
    let workers: Vec<_> = (0..32)
        .map(|t| {
            thread::spawn(move || {
                let mut wire = Wire::connect(addr);
                let sha = hash_of("concurrent");
                for i in 0..10 {
                    let name = format!("concurrent {t} {i}");
                    register(&mut wire, 7500 + t, i, &sha, &name);
                    assert_eq!(
                        sources(&mut wire, &name),
                        [format!("127.0.0.1:{} {i} {sha}", 7500 + t)]
                    );
                }
                assert_eq!(wire.ask(&format!("HEARTBEAT {}", 7500 + t)), "OK 10");
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
    assert_fresh_client_served(&registry);
}

/// Reads what a server sends before it closes a connection on its own: at
/// most one `ERR ...` line, then the close.
fn expect_dropped(wire: &mut Wire, why: &str) {
    match wire.try_line() {
        Ok(None) => {}
        Ok(Some(line)) => {
            assert!(line.starts_with("ERR "), "{why}: unexpected {line:?}");
            wire.expect_closed();
        }
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{why}: the server kept the connection open: {e}"),
    }
}

#[test]
fn a_partial_line_that_never_ends_times_out() {
    // `--line-timeout`: a client cannot pin a worker with half a line.
    let registry = Registry::start_with(&["--line-timeout", "1s", "--max-connections", "2"]);
    let mut stalled = Wire::connect(registry.addr);
    stalled.ping();
    stalled.send("SEARCH never fini");
    expect_dropped(&mut stalled, "a line unfinished after --line-timeout 1s");
    // Its place is free again: two new clients fit under the limit of 2.
    let mut a = Wire::connect(registry.addr);
    let mut b = None;
    wait_until("both places free after the timeout", WAIT_TIMEOUT, || {
        b = try_get_in(registry.addr);
        b.is_some()
    });
    a.ping();
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let registry = Registry::start_with(&["--idle-timeout", "1s"]);
    let mut idle = Wire::connect(registry.addr);
    idle.ping();
    expect_dropped(
        &mut idle,
        "a connection idle for longer than --idle-timeout 1s",
    );
    assert_fresh_client_served(&registry);
}

/// Connects and sends PING: `Some(wire)` when answered PONG, `None` when
/// refused as busy (or closed before a reply); panics on anything else.
fn try_get_in(addr: SocketAddr) -> Option<Wire> {
    let mut wire = Wire::connect(addr);
    wire.send("PING\n");
    match wire.try_line() {
        Ok(Some(line)) if line == "PONG" => Some(wire),
        Ok(Some(line)) if line.starts_with("ERR busy ") => None,
        Ok(None) => None,
        Ok(Some(other)) => panic!("unexpected reply to PING: {other:?}"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("no reply to PING within {WIRE_TIMEOUT:?}: {e}"),
    }
}

/// With all places taken, a new connection gets `ERR busy ...` at once,
/// without sending anything, and is closed.
fn assert_refused_busy(addr: SocketAddr) {
    let mut wire = Wire::connect(addr);
    let line = wire.line();
    assert_err(
        &line,
        "busy",
        b"(a connection above the limit, nothing sent)",
    );
    wire.expect_closed();
}

#[test]
fn above_the_connection_limit_a_client_gets_busy_and_is_closed() {
    let registry = Registry::start_with(&["--max-connections", "4", "--workers", "2"]);
    // Four connections, each proven accepted by a reply.
    let mut open: Vec<Wire> = (0..4)
        .map(|_| {
            let mut wire = Wire::connect(registry.addr);
            wire.ping();
            wire
        })
        .collect();
    assert_refused_busy(registry.addr);
    assert_refused_busy(registry.addr);
    // Those inside are unaffected.
    for wire in &mut open {
        wire.ping();
    }

    // One leaves politely; a new client gets in again once the server noticed.
    let mut leaving = open.pop().unwrap();
    assert_eq!(leaving.ask("QUIT"), "BYE");
    leaving.expect_closed();
    let mut newcomer = None;
    wait_until(
        "a new client is served after one quit",
        WAIT_TIMEOUT,
        || {
            newcomer = try_get_in(registry.addr);
            newcomer.is_some()
        },
    );
    open.push(newcomer.take().unwrap());
    // Full again: the refused attempts did not leak places.
    assert_refused_busy(registry.addr);

    // One drops without a word; its place is freed too.
    drop(open.remove(0));
    wait_until(
        "a new client is served after one dropped",
        WAIT_TIMEOUT,
        || {
            newcomer = try_get_in(registry.addr);
            newcomer.is_some()
        },
    );
    open.push(newcomer.take().unwrap());
    assert_refused_busy(registry.addr);
    for wire in &mut open {
        wire.ping();
    }
}
