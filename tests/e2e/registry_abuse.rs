//! Availability under abuse (issue 12), against the real `dht-server`: one
//! client must not be able to take the registry down or lock others out.
//! Each test prints the figures `docs/reliability.md` quotes.
//!
//! Other client addresses are 127.0.0.2 and 127.0.0.3 (a socket bound
//! before it connects); everything stays on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_tests::{bin, metric, run, wait_until, Registry, Running, Wire, WAIT_TIMEOUT};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// A stream from `local` (127.0.0.x) to `server`.
fn connect_from(local: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((local, 0)).into())
        .expect("bind a loopback address");
    socket
        .connect_timeout(&server.into(), Duration::from_secs(5))
        .expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A [`Wire`] from `local`.
fn wire_from(local: Ipv4Addr, server: SocketAddr) -> Wire {
    let stream = connect_from(local, server);
    let reader = BufReader::new(stream.try_clone().unwrap());
    Wire { stream, reader }
}

/// One line from `stream`, `None` when closed or reset.
fn read_line(stream: &TcpStream) -> Option<String> {
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Registers `name` from this connection on `count` ports, pipelined.
fn register_many(wire: &mut Wire, name: &str, first_port: u16, count: u16) {
    let mut batch = String::new();
    for port in first_port..first_port + count {
        batch.push_str(&format!("REGISTER {port} 5 {HASH} {name}\n"));
    }
    let mut writer = wire.stream.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(batch.as_bytes()).unwrap());
    for _ in 0..count {
        assert_eq!(wire.line(), "OK");
    }
    sender.join().unwrap();
}

/// The registry SEARCH is answered by: SQLite (the default), then the
/// in-memory index once loaded (`--memory-index`), which writes the reply
/// straight into the connection's buffer (`Registry::search_into`).
fn search_modes(listen: &str, test: impl Fn(&Registry)) {
    for extra in [&[][..], &["--memory-index", "--http", "127.0.0.1:0"][..]] {
        let registry = Registry::start_on(listen, extra);
        if !extra.is_empty() {
            let http = registry.http_addr();
            wait_until("the index to be loaded", WAIT_TIMEOUT, || {
                metric(&http, "p2p_registry_change_log_lag") == Some(0)
            });
        }
        test(&registry);
    }
}

#[test]
fn loopback_sources_are_shown_as_the_address_the_client_reached() {
    search_modes("0.0.0.0:0", loopback_sources_shown_as_reached);
}

fn loopback_sources_shown_as_reached(registry: &Registry) {
    let port = registry.addr.port();
    let via = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
    let mut local = Wire::connect(via(1));
    assert_eq!(
        local.ask(&format!("REGISTER 7000 5 {HASH} shared.txt")),
        "OK"
    );
    // The same source, asked for over two addresses of the registry.
    let mut other = Wire::connect(via(2));
    assert_eq!(
        other.call("SEARCH shared.txt"),
        ["FOUND 1".to_owned(), format!("127.0.0.2:7000 5 {HASH}")]
    );
    assert_eq!(
        local.call("SEARCH shared.txt"),
        ["FOUND 1".to_owned(), format!("127.0.0.1:7000 5 {HASH}")]
    );
    // A source registered over 127.0.0.3 is loopback too.
    let mut third = Wire::connect(via(3));
    assert_eq!(
        third.ask(&format!("REGISTER 7001 5 {HASH} shared.txt")),
        "OK"
    );
    let mut lines = other.call("SEARCH shared.txt");
    assert_eq!(lines.remove(0), "FOUND 2");
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("127.0.0.2:7000 5 {HASH}"),
            format!("127.0.0.2:7001 5 {HASH}")
        ]
    );
    println!("loopback rewrite: SEARCH over 127.0.0.2 answers 127.0.0.2:PORT");
}

#[test]
fn a_search_reply_lists_at_most_200_sources() {
    search_modes("127.0.0.1:0", at_most_200_sources);
}

fn at_most_200_sources(registry: &Registry) {
    let mut wire = Wire::connect(registry.addr);
    register_many(&mut wire, "popular", 10_000, 500);
    let reply = wire.call("SEARCH popular");
    assert_eq!(reply[0], "FOUND 200");
    // The most recently seen: the last ports registered.
    assert_eq!(reply[1], format!("127.0.0.1:10499 5 {HASH}"));
    assert_eq!(reply[200], format!("127.0.0.1:10300 5 {HASH}"));
}

#[test]
fn pipelined_search_floods_keep_memory_bounded() {
    const PORTS: u16 = 2_000;
    const CONNECTIONS: usize = 4;
    /// Far below the half a gigabyte this flood cost before, far above a
    /// debug build's normal footprint.
    const CEILING_KIB: u64 = 200 * 1024;
    let registry = Registry::start();
    let pid = registry.process.as_ref().unwrap().pid();
    let mut wire = Wire::connect(registry.addr);
    register_many(&mut wire, "big", 10_000, PORTS);
    let before = status_kib(pid, "VmRSS");

    // 8,189 bytes of SEARCH per connection, sent before reading anything.
    let request = "SEARCH big\n".repeat(8189 / 11);
    let requests = 8189 / 11;
    let replies = Arc::new(AtomicUsize::new(0));
    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (addr, request, replies) = (registry.addr, request.clone(), replies.clone());
            thread::spawn(move || {
                let stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                writer.write_all(request.as_bytes()).unwrap();
                // Now read every reply, as a slow but honest client would.
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                let mut found = 0;
                while found < requests {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if line.starts_with("FOUND ") {
                        found += 1;
                    }
                }
                replies.fetch_add(found, Ordering::SeqCst);
            })
        })
        .collect();
    // Meanwhile another client is served.
    let mut other = Wire::connect(registry.addr);
    other.ping();
    for flood in floods {
        flood.join().unwrap();
    }
    other.ping();
    let peak = status_kib(pid, "VmHWM");
    println!(
        "SEARCH flood: {CONNECTIONS} connections x {requests} pipelined SEARCH of a name on {PORTS} ports: \
         RSS {} MiB before, peak {} MiB",
        before / 1024,
        peak / 1024
    );
    assert_eq!(replies.load(Ordering::SeqCst), CONNECTIONS * requests);
    assert!(
        peak < CEILING_KIB,
        "peak RSS {peak} KiB over the {CEILING_KIB} KiB ceiling"
    );
}

#[test]
fn a_client_that_does_not_read_is_closed_after_the_write_timeout_in_all() {
    let registry = Registry::start_with(&["--write-timeout", "1s"]);
    let mut wire = Wire::connect(registry.addr);
    register_many(&mut wire, "big", 10_000, 200);
    // Megabytes of replies owed; the client takes a little now and then,
    // which once restarted the timer at every partial write. Its receive
    // buffer is small, and it sends more than the server reads at once, so
    // the server's close is a reset the client sees at once.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect_timeout(&registry.addr.into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let request = "SEARCH big\n".repeat(3000);
        let _ = writer.write_all(request.as_bytes());
    });
    let started = Instant::now();
    let mut reader = stream;
    let mut chunk = [0u8; 512];
    let mut taken = 0;
    let closed = loop {
        match reader.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => taken += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => {}
        }
        if started.elapsed() > WAIT_TIMEOUT {
            break false;
        }
        thread::sleep(Duration::from_millis(50)); // a trickling reader, not synchronisation
    };
    sender.join().unwrap();
    assert!(
        closed,
        "a trickling reader kept its connection for {WAIT_TIMEOUT:?}"
    );
    println!(
        "write timeout 1 s: trickling reader closed after {:?}, {taken} bytes taken",
        started.elapsed()
    );
    wire.ping();
}

#[test]
fn registrations_per_host_are_capped() {
    let registry = Registry::start_with(&["--max-per-host", "3"]);
    let mut wire = Wire::connect(registry.addr);
    for name in ["a", "b", "c"] {
        assert_eq!(wire.ask(&format!("REGISTER 7000 5 {HASH} {name}")), "OK");
    }
    let over = wire.ask(&format!("REGISTER 7001 5 {HASH} d"));
    assert!(over.starts_with("ERR busy "), "{over}");
    // Refreshing an existing registration is no new one.
    assert_eq!(wire.ask(&format!("REGISTER 7000 5 {HASH} a")), "OK");
    assert_eq!(wire.ask("UNREGISTER 7000 b"), "OK");
    assert_eq!(wire.ask(&format!("REGISTER 7001 5 {HASH} d")), "OK");
    // Another host has its own allowance.
    let mut other = wire_from(Ipv4Addr::new(127, 0, 0, 2), registry.addr);
    assert_eq!(other.ask(&format!("REGISTER 7000 5 {HASH} e")), "OK");
    wire.ping();
    println!("max per host 3: the 4th registration refused with {over:?}");
}

#[test]
fn writes_during_a_big_prune_are_acknowledged() {
    const STALE: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("registry.db");
    let db_str = db.to_str().unwrap().to_owned();
    // Create the schema with the server itself, then fill it with stale rows.
    {
        let (_, server) = Running::start(
            &bin("dht-server"),
            &["--db", &db_str, "--listen", "127.0.0.1:0", "--no-mdns"],
            "listening on ",
            &[],
        );
        server.signal("TERM");
        let (status, _) = server.wait_exit(WAIT_TIMEOUT);
        assert!(status.success());
    }
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        let old = 1_000_000_i64; // 1970: stale for any cutoff
        tx.execute(
            "INSERT INTO peers (host, port) VALUES ('10.9.9.9', 9000)",
            [],
        )
        .unwrap();
        for i in 0..STALE {
            // Schema version 4: the name's SHA-256 as a BLOB in file_keys,
            // and its words put in the full-text index by the writer.
            let name = format!("stale {i}");
            let id: i64 = tx
                .query_row(
                    "INSERT INTO files (name) VALUES (?1) RETURNING id",
                    [&name],
                    |r| r.get(0),
                )
                .unwrap();
            tx.execute(
                "INSERT INTO file_keys (name_key, file_id) VALUES (unhex(?1), ?2)",
                rusqlite::params![p2p_proto::protocol::name_key(&name), id],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO files_fts (rowid, name) VALUES (?1, ?2)",
                rusqlite::params![id, name],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO registrations (file_id, peer_id, size, sha256, registered_at, last_seen, seen_seq)
             SELECT f.id, p.id, 1, unhex(?1), ?2, ?2, f.id FROM files f, peers p",
            rusqlite::params![HASH, old],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let (addr, _server) = Running::start(
        &bin("dht-server"),
        &[
            "--db",
            &db_str,
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--ttl",
            "100y",
        ],
        "listening on ",
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4u16)
        .map(|t| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let mut wire = Wire::connect(addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let reply = if i.is_multiple_of(2) {
                        wire.ask(&format!("REGISTER {} 5 {HASH} live {t} {i}", 7000 + t))
                    } else {
                        wire.ask(&format!("HEARTBEAT {}", 7000 + t))
                    };
                    if reply == "OK" || reply.starts_with("OK ") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("write refused during prune: {reply}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    wait_until("writes flowing", WAIT_TIMEOUT, || {
        ok.load(Ordering::Relaxed) > 100
    });
    let during_start = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    let started = Instant::now();
    let out = run(
        &bin("p2p-admin"),
        &[
            "--db", &db_str, "prune", "--stale", "1d", "--format", "jsonl",
        ],
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    let during = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) - during_start;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(
        out.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        STALE,
        "every stale row pruned"
    );
    let refused = failed.load(Ordering::Relaxed);
    println!(
        "prune of {STALE} rows took {took:?}; {during} REGISTER/HEARTBEAT during it, {refused} refused"
    );
    assert_eq!(refused, 0, "writes refused while the prune ran");
    let mut wire = Wire::connect(addr);
    assert_eq!(wire.call("SEARCH stale 7"), ["NOT_FOUND"]);
}

#[test]
fn one_address_holding_every_slot_yields_to_another() {
    const LIMIT: usize = 20;
    let registry = Registry::start_with(&["--max-connections", &LIMIT.to_string()]);
    let hog = Ipv4Addr::new(127, 0, 0, 2);
    // Half busy (a line begun, unfinished), half idle (served, waiting).
    // The busy ones first, so their workers have read the partial line
    // long before the idle ones are done.
    let mut busy: Vec<Wire> = (0..LIMIT / 2)
        .map(|_| {
            let mut w = wire_from(hog, registry.addr);
            w.ping();
            w.send("PIN");
            w
        })
        .collect();
    let mut idle: Vec<Wire> = (0..LIMIT / 2)
        .map(|_| {
            let mut w = wire_from(hog, registry.addr);
            w.ping();
            w
        })
        .collect();
    // The hog's next connection is refused: it holds the most.
    let refused = connect_from(hog, registry.addr);
    let line = read_line(&refused).unwrap_or_default();
    assert!(line.starts_with("ERR busy "), "{line:?}");

    // Others are served, each at the cost of one of the hog's idle ones.
    let other = Ipv4Addr::new(127, 0, 0, 3);
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut w = wire_from(other, registry.addr);
        w.ping();
        newcomers.push(w);
    }
    // Every busy connection of the hog survived: idle ones went first.
    for w in &mut busy {
        w.send("G\n");
        assert_eq!(w.line(), "PONG");
    }
    let mut closed = 0;
    for w in &mut idle {
        let _ = w.stream.write_all(b"PING\n");
        match w.try_line() {
            Ok(Some(line)) => assert_eq!(line, "PONG"),
            _ => closed += 1,
        }
    }
    assert_eq!(closed, 3, "one idle connection of the hog per newcomer");
    println!(
        "fair slots: {LIMIT} slots held by 127.0.0.2 ({} idle, {} busy); 127.0.0.2's next refused, \
         3 of 3 newcomers from 127.0.0.3 served, {closed} idle connections reclaimed, 0 busy",
        LIMIT / 2,
        LIMIT / 2
    );
}

#[test]
fn the_soft_descriptor_limit_is_raised_and_the_rest_refused_with_busy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let server_bin = bin("dht-server");
    let db_str = db.to_str().unwrap();
    // A soft limit of 128 under a hard one of 1024.
    let script = "ulimit -H -n 1024; ulimit -S -n 128; exec \"$0\" \"$@\"";
    let (addr, _server) = Running::start(
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            script,
            server_bin.to_str().unwrap(),
            "--db",
            db_str,
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    // More than 128 descriptors' worth: all are answered.
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut w = Wire::connect(addr);
        w.ping();
        held.push(w);
    }
    drop(held);

    // Now a hard limit of 64: the connections that do not fit get ERR busy,
    // none gets silence.
    let (addr, _server) = Running::start(
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            "ulimit -n 64; exec \"$0\" \"$@\"",
            server_bin.to_str().unwrap(),
            "--db",
            dir.path().join("r2.db").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    let (mut served, mut busy) = (0, 0);
    let mut held = Vec::new();
    for _ in 0..60 {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (&stream).write_all(b"PING\n").unwrap();
        match read_line(&stream).as_deref() {
            Some("PONG") => served += 1,
            Some(line) if line.starts_with("ERR busy ") => busy += 1,
            other => panic!("connection {} got {other:?}", served + busy),
        }
        held.push(stream);
    }
    println!("fd limits: soft 128 raised, 200 connections served; hard 64: {served} served, {busy} ERR busy, 0 silent");
    assert!(served > 0 && busy > 0);
}

#[test]
fn sigterm_stops_the_server_while_clients_are_connected() {
    let mut registry = Registry::start();
    let mut idle = Wire::connect(registry.addr);
    idle.ping();
    let stderr = registry.stop();
    assert!(stderr.contains("shut down cleanly"), "{stderr}");
}

#[test]
fn find_takes_at_most_32_distinct_words_and_repeats_count_once() {
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(
        wire.ask(&format!("REGISTER 7000 5 {HASH} alpha beta")),
        "OK"
    );
    let many: Vec<String> = (0..33).map(|i| format!("w{i}")).collect();
    let reply = wire.ask(&format!("FIND {}", many.join(" ")));
    assert!(reply.starts_with("ERR bad_request "), "{reply}");
    let repeats = "al ".repeat(500);
    assert_eq!(wire.call(&format!("FIND {repeats}beta")).len(), 2);
    wire.ping();
}

#[test]
fn sigterm_works_after_the_listen_address_went_away() {
    // A network namespace of the test's own, with an address that is then
    // removed (an interface going away).
    let probe = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        println!("skipped: no network namespace here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let script = "ip link set lo up && ip addr add 10.77.0.1/32 dev lo && exec \"$0\" \"$@\"";
    let server_bin = bin("dht-server");
    let (addr, server) = Running::start(
        std::path::Path::new("unshare"),
        &[
            "-n",
            "--",
            "sh",
            "-c",
            script,
            server_bin.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "10.77.0.1:0",
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    assert_eq!(addr.ip().to_string(), "10.77.0.1");
    // The server is the exec'd shell: its pid is the unshare child's.
    let pid = server.pid().to_string();
    let removed = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "-n",
            "ip",
            "addr",
            "del",
            "10.77.0.1/32",
            "dev",
            "lo",
        ])
        .status()
        .expect("nsenter runs");
    assert!(removed.success(), "address removed");
    server.signal("TERM");
    let (status, stderr) = server.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("shut down cleanly"), "{stderr}");
    println!("SIGTERM after the listen address was removed: clean exit");
}

#[test]
fn a_worker_that_cannot_be_started_costs_one_busy_reply_not_the_server() {
    // An unprivileged user with few threads allowed (RLIMIT_NPROC counts
    // threads; root is exempt, hence setpriv). The pool then cannot grow.
    let dir = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let db = dir.path().join("r.db");
    let probe = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "true",
        ])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        println!("skipped: cannot switch to an unprivileged user here");
        return;
    }
    let server_bin = bin("dht-server");
    let (addr, server) = Running::start(
        std::path::Path::new("setpriv"),
        &[
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "prlimit",
            "--nproc=40",
            server_bin.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--workers",
            "4",
        ],
        "listening on ",
        &[],
    );
    let (mut served, mut busy) = (0, 0);
    let mut held = Vec::new();
    for _ in 0..80 {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (&stream).write_all(b"PING\n").unwrap();
        match read_line(&stream).as_deref() {
            Some("PONG") => served += 1,
            Some(line) if line.starts_with("ERR busy ") => busy += 1,
            other => panic!("connection {} got {other:?}", served + busy),
        }
        held.push(stream);
    }
    assert!(
        busy > 0,
        "the thread limit was never reached ({served} served)"
    );
    drop(held);
    wait_until("served again", WAIT_TIMEOUT, || {
        let mut w = Wire::connect(addr);
        w.ask("PING") == "PONG"
    });
    server.signal("TERM");
    let (status, stderr) = server.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "exit {status}: {stderr}");
    println!(
        "thread limit: {served} served, {busy} ERR busy when no worker could start; server went on"
    );
}

#[test]
fn search_is_answered_while_other_clients_flood_find() {
    const NAMES: u16 = 5_000;
    const FLOODERS: usize = 8;
    let registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    // Many names that all match one word, from many ports (one name each).
    let mut batch = String::new();
    for i in 0..NAMES {
        batch.push_str(&format!(
            "REGISTER {} 5 {HASH} common file {i}\n",
            1 + (i % 60_000)
        ));
    }
    let mut writer = wire.stream.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(batch.as_bytes()).unwrap());
    for _ in 0..NAMES {
        assert_eq!(wire.line(), "OK");
    }
    sender.join().unwrap();
    assert_eq!(wire.ask(&format!("REGISTER 7000 5 {HASH} target")), "OK");

    let stop = Arc::new(AtomicBool::new(false));
    let finds = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (addr, stop, finds) = (registry.addr, stop.clone(), finds.clone());
            thread::spawn(move || {
                let mut w = Wire::connect_with_timeout(addr, Duration::from_secs(30));
                while !stop.load(Ordering::Relaxed) {
                    let reply = w.call("FIND common");
                    assert!(
                        reply[0].starts_with("RESULTS ") || reply[0].starts_with("ERR busy"),
                        "{reply:?}"
                    );
                    finds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until("the FIND flood running", WAIT_TIMEOUT, || {
        finds.load(Ordering::Relaxed) >= FLOODERS
    });
    let mut searcher = Wire::connect(registry.addr);
    let mut took = Vec::new();
    let finds_before = finds.load(Ordering::Relaxed);
    // At least 100 SEARCH, and for as long as the flooders take to finish
    // four FIND each.
    while took.len() < 100 || finds.load(Ordering::Relaxed) < finds_before + 4 * FLOODERS {
        let started = Instant::now();
        assert_eq!(searcher.call("SEARCH target")[0], "FOUND 1");
        took.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    took.sort();
    let finds = finds.load(Ordering::Relaxed);
    println!(
        "FIND flood: {FLOODERS} connections of FIND over {NAMES} matching names ({finds} FINDs); \
         {} SEARCH meanwhile: median {:?}, p99 {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
}

/// 12.7: a writer thread that dies (a panic, injected through the debug
/// builds' `P2P_FAULT`, since no input can cause one) ends the process with
/// status 70, so a supervisor restarts it, instead of a registry that
/// answers reads and fails every write; what was acknowledged before is on
/// disk, and the database is intact.
#[test]
fn a_dead_writer_ends_the_process_with_status_70() {
    let mut registry = Registry::start_with_env(&[], &[("P2P_FAULT", "writer-panic-after:1")]);
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.ask(&format!("REGISTER 7001 5 {HASH} kept.txt")), "OK");
    // The second batch finds the writer dead: no OK, then the process ends.
    let mut other = Wire::connect(registry.addr);
    other.send(format!("REGISTER 7001 5 {HASH} lost.txt\n"));
    let answer = other.try_line();
    assert!(
        !matches!(&answer, Ok(Some(line)) if line == "OK"),
        "an unwritten registration was acknowledged: {answer:?}"
    );
    let server = registry.process.take().expect("registry is running");
    let (status, stderr) = server.wait_exit(WAIT_TIMEOUT);
    assert_eq!(status.code(), Some(70), "{status}: {stderr}");
    assert!(stderr.contains("writer thread panicked"), "{stderr}");

    registry.restart(&[]);
    let mut wire = Wire::connect(registry.addr);
    assert!(wire.call("SEARCH kept.txt")[0].starts_with("FOUND 1"));
    assert_eq!(wire.ask("SEARCH lost.txt"), "NOT_FOUND");
    registry.stop();
    let conn = rusqlite::Connection::open(&registry.db).expect("open the database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}
