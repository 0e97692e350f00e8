//! Faults, floods and hostile clients against the real `dht-server`:
//! spoofing from other loopback addresses, connection floods, a low
//! descriptor limit, a full disk, and repeated SIGKILL under load.
//! Each test prints what it checked; `docs/reliability.md` sums them up.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use p2p_proto::client::{Client, ClientError};
use p2p_proto::protocol::ErrorCode;
use p2p_tests::{bin, wait_until, Registry, Running, Wire, WAIT_TIMEOUT};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client whose socket is bound to `local` (127.0.0.x) before it
/// connects, so the registry sees that address. (std has no bind-then-
/// connect; socket2 does.)
fn client_from(local: Ipv4Addr, server: SocketAddr) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((local, 0)).into())
        .expect("bind to a loopback address");
    socket
        .connect_timeout(&server.into(), READ_TIMEOUT)
        .expect("connect to the registry");
    Client::from_stream(&server.to_string(), socket.into(), READ_TIMEOUT).expect("client")
}

#[test]
fn a_client_cannot_act_for_another_address() {
    let registry = Registry::start();
    let a = Ipv4Addr::new(127, 0, 0, 2);
    let b = Ipv4Addr::new(127, 0, 0, 3);
    let mut alice = client_from(a, registry.addr);
    let mut mallory = client_from(b, registry.addr);

    alice.register(7000, 5, HASH, "report.pdf").unwrap();
    let sources = mallory.search("report.pdf").unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(
        sources[0].addr(),
        "127.0.0.2:7000",
        "the host is the one the server saw"
    );

    // Mallory names Alice's port: she can only touch her own (empty) rows.
    assert!(!mallory.unregister(7000, "report.pdf").unwrap());
    assert_eq!(mallory.heartbeat(7000).unwrap(), 0);
    assert_eq!(alice.heartbeat(7000).unwrap(), 1);

    // Her own registration of the same port and name is a separate source.
    mallory.register(7000, 5, HASH, "report.pdf").unwrap();
    let mut hosts: Vec<String> = alice
        .search("report.pdf")
        .unwrap()
        .iter()
        .map(|s| s.addr())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["127.0.0.2:7000", "127.0.0.3:7000"]);
    assert!(alice.unregister(7000, "report.pdf").unwrap());
    let left = mallory.search("report.pdf").unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].addr(), "127.0.0.3:7000");
    println!("spoofing: 7 cross-address requests checked");
}

#[test]
fn ipv6_clients_are_written_in_brackets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let (addr, _server) = Running::start(
        &bin("dht-server"),
        &[
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "[::1]:0",
            "--no-mdns",
        ],
        "listening on ",
        &[],
    );
    assert!(addr.is_ipv6(), "bound {addr}");
    let mut client = Client::connect(&addr.to_string()).unwrap();
    client.register(7000, 5, HASH, "six.txt").unwrap();
    let sources = client.search("six.txt").unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].host, "[::1]");
    assert_eq!(sources[0].addr(), "[::1]:7000");
    let mut raw = Wire::connect(addr);
    assert_eq!(
        raw.call("SEARCH six.txt"),
        ["FOUND 1".to_owned(), format!("[::1]:7000 5 {HASH}")]
    );
}

fn expect_busy(addr: SocketAddr) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    assert!(
        line.starts_with("ERR busy "),
        "expected ERR busy, got {line:?}"
    );
}

fn ping_ok(addr: SocketAddr) -> bool {
    match Client::connect_timeout(&addr.to_string(), READ_TIMEOUT) {
        Ok(mut client) => client.ping().is_ok(),
        Err(_) => false,
    }
}

#[test]
fn a_flood_of_connections_is_refused_then_served_again() {
    let registry = Registry::start_with(&["--max-connections", "8"]);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(registry.addr).unwrap();
            c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            // A round trip proves a worker owns the connection.
            c.write_all(b"PING\n").unwrap();
            let mut line = String::new();
            BufReader::new(&c).read_line(&mut line).unwrap();
            assert_eq!(line, "PONG\n");
            c
        })
        .collect();
    for _ in 0..20 {
        expect_busy(registry.addr);
    }
    drop(idle);
    wait_until("the registry serves again", WAIT_TIMEOUT, || {
        ping_ok(registry.addr)
    });

    // 1,000 short connections in a burst from 8 threads: each is answered
    // PONG or busy, none is left hanging, and the server stays up.
    let pongs = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (pongs, busy, addr) = (Arc::clone(&pongs), Arc::clone(&busy), registry.addr);
            thread::spawn(move || {
                for _ in 0..125 {
                    let mut client =
                        Client::connect_timeout(&addr.to_string(), READ_TIMEOUT).expect("connect");
                    match client.ping() {
                        Ok(()) => pongs.fetch_add(1, Ordering::Relaxed),
                        Err(ClientError::BadReply { .. }) | Err(ClientError::Refused { .. }) => {
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("connection {e} was neither served nor refused"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (pongs, busy) = (pongs.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
    assert_eq!(pongs + busy, 1000);
    assert!(pongs > 0);
    assert!(ping_ok(registry.addr));
    println!("flood: 20 busy refusals, then 1000 burst connections: {pongs} served, {busy} busy");
}

/// Starts `dht-server` through `sh` so that `setup` (ulimit, trap) applies to it.
fn start_limited(db: &Path, setup: &str, extra: &[&str]) -> (SocketAddr, Running) {
    let script = format!("{setup}; exec \"$0\" \"$@\"");
    let server = bin("dht-server");
    let mut args = vec![
        "-c",
        &script,
        server.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
    ];
    args.extend_from_slice(extra);
    Running::start(Path::new("/bin/sh"), &args, "listening on ", &[])
}

#[test]
fn running_out_of_file_descriptors_does_not_kill_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _server) = start_limited(&dir.path().join("r.db"), "ulimit -n 64", &[]);
    // Far more connections than descriptors: the kernel completes the
    // handshakes, accept fails with EMFILE, the acceptor backs off.
    let mut held = Vec::new();
    for _ in 0..150 {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            held.push(stream);
        }
    }
    let opened = held.len();
    drop(held);
    wait_until(
        "the registry serves again after the flood",
        WAIT_TIMEOUT,
        || ping_ok(addr),
    );
    let mut client = Client::connect(&addr.to_string()).unwrap();
    client.register(7000, 5, HASH, "after-emfile").unwrap();
    assert_eq!(client.search("after-emfile").unwrap().len(), 1);
    println!("fd limit 64: {opened} connections opened at once, server recovered");
}

#[test]
fn a_full_disk_fails_writes_cleanly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    // SIGXFSZ ignored (inherited through exec), so an over-limit write fails
    // with EFBIG instead of killing the process: a full disk, without root.
    // `ulimit -S -f` counts 512-byte blocks: 2 MiB per file. Only the soft
    // limit, so that raising it again later needs no privilege.
    let (addr, server) = start_limited(&db, "trap '' XFSZ; ulimit -S -f 4096", &[]);
    let mut client = Client::connect(&addr.to_string()).unwrap();
    let mut acknowledged = Vec::new();
    let long = "x".repeat(200);
    let mut refusal = None;
    for i in 0..50_000 {
        let name = format!("{long}-{i}");
        match client.register(7000, i, HASH, &name) {
            Ok(()) => acknowledged.push(name),
            Err(ClientError::Refused { code, message, .. }) => {
                assert_eq!(code, ErrorCode::Internal);
                refusal = Some(message);
                break;
            }
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    let message = refusal.expect("the file size limit was reached");
    assert!(!message.is_empty());
    // Reads keep working while writes fail.
    assert_eq!(client.search(&acknowledged[0]).unwrap().len(), 1);
    let last = acknowledged.last().unwrap().clone();
    assert_eq!(client.search(&last).unwrap().len(), 1);
    // Space returns: raise the limit of the running process.
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--fsize=unlimited")
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
    wait_until("writes succeed again", WAIT_TIMEOUT, || {
        client
            .register(7000, 1, HASH, "after the disk was freed")
            .is_ok()
    });
    drop(client);
    drop(server);
    // Nothing acknowledged is lost and the file is sound.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM registrations", [], |r| r.get(0))
        .unwrap();
    assert!(
        rows as usize > acknowledged.len(),
        "{rows} rows for {} acknowledged",
        acknowledged.len()
    );
    println!(
        "disk full: {} registrations acknowledged before the limit, refused with: {message}",
        acknowledged.len()
    );
}

/// What the load threads know was acknowledged.
#[derive(Default)]
struct Ledger {
    /// name → registered (true) or unregistered (false), acknowledged.
    state: HashMap<String, bool>,
    /// Names whose last request was in flight when the server died: either
    /// outcome is correct for them.
    in_doubt: HashSet<String>,
    acknowledged: usize,
}

#[test]
fn acknowledged_changes_survive_repeated_sigkill() {
    const CYCLES: usize = 5;
    const CONNECTIONS: usize = 6;
    let mut registry = Registry::start();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut checked = 0;
    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let addr = registry.addr.to_string();
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|t| {
                let (ledger, stop, progress, addr) = (
                    Arc::clone(&ledger),
                    Arc::clone(&stop),
                    Arc::clone(&progress),
                    addr.clone(),
                );
                thread::spawn(move || {
                    let Ok(mut client) = Client::connect(&addr) else {
                        return;
                    };
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Each thread owns its names; every third op undoes an earlier one.
                        let name = format!("c{cycle}-t{t}-{}", if i % 3 == 2 { i - 1 } else { i });
                        let result = if i % 3 == 2 {
                            client.unregister(7000 + t as u16, &name).map(|_| false)
                        } else {
                            client
                                .register(7000 + t as u16, i, HASH, &name)
                                .map(|()| true)
                        };
                        let key = format!("{t}|{name}");
                        match result {
                            Ok(registered) => {
                                let mut l = ledger.lock().unwrap();
                                l.state.insert(key, registered);
                                l.acknowledged += 1;
                                progress.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                // The server died mid-request: the outcome is unknown.
                                ledger.lock().unwrap().in_doubt.insert(key);
                                return;
                            }
                        }
                        let _ = client.search(&name);
                    }
                })
            })
            .collect();
        wait_until("some writes acknowledged", WAIT_TIMEOUT, || {
            progress.load(Ordering::Relaxed) >= 200 + cycle * 37
        });
        registry.crash();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        registry.restart(&[]);

        let mut client = registry.client();
        let l = ledger.lock().unwrap();
        for (key, &registered) in &l.state {
            if l.in_doubt.contains(key) {
                continue;
            }
            let (t, name) = key.split_once('|').unwrap();
            let port = 7000 + t.parse::<u16>().unwrap();
            let found: HashSet<u16> = client
                .search(name)
                .unwrap()
                .iter()
                .map(|s| s.port)
                .collect();
            assert_eq!(
                found.contains(&port),
                registered,
                "{name} after cycle {cycle}"
            );
            checked += 1;
        }
        drop(l);
        let conn = rusqlite::Connection::open(&registry.db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "after cycle {cycle}");
    }
    let acknowledged = ledger.lock().unwrap().acknowledged;
    println!(
        "crash cycles: {CYCLES} SIGKILLs, {acknowledged} acknowledged writes, {checked} checks"
    );
}
