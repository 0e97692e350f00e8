//! End-to-end tests of what the registry promises about its data: a clean
//! stop and a `kill -9` both keep every acknowledged change, registrations
//! expire without heartbeats, SIGTERM exits 0 even mid-conversation, and a
//! database it cannot use stops it at start-up with one clear line and the
//! file untouched.
//!
//! Each test starts its own `dht-server` on `127.0.0.1:0` with its database
//! in a temp dir. Waits poll a condition until a deadline; nothing sleeps to
//! synchronise.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use p2p_proto::client::Client;
use p2p_tests::{bin, pseudo_random_bytes, sha256_hex, wait_until, Registry, Running, Wire};

/// How long a raw socket or a client waits for a reply before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a server may take to exit after SIGTERM, or to fail at start-up.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn hash_of(content: &str) -> String {
    sha256_hex(content.as_bytes())
}

fn client(registry: &Registry) -> Client {
    Client::connect_timeout(&registry.addr_string(), READ_TIMEOUT).expect("connect to the registry")
}

/// Asserts that SEARCH `name` lists exactly `127.0.0.1:port size sha`.
fn assert_registered(client: &mut Client, port: u16, size: u64, sha: &str, name: &str) {
    let sources = client
        .search(name)
        .unwrap_or_else(|e| panic!("SEARCH {name:?}: {e}"));
    let found: Vec<(String, u16, u64, String)> = sources
        .into_iter()
        .map(|s| (s.host, s.port, s.size, s.sha256))
        .collect();
    assert_eq!(
        found,
        [("127.0.0.1".to_owned(), port, size, sha.to_owned())],
        "SEARCH {name:?}"
    );
}

// ---------------------------------------------------------------------------
// Restart and crash
// ---------------------------------------------------------------------------

#[test]
fn data_registered_before_a_clean_stop_is_there_after_a_restart() {
    let mut registry = Registry::start();
    let files: Vec<(u16, u64, String, &str)> = vec![
        (8001, 11, hash_of("one"), "first file.txt"),
        (8001, 22, hash_of("two"), "Привет мир.txt"),
        (8002, 33, hash_of("three"), "🎵 song.mp3"),
        (8002, 44, hash_of("gone"), "removed before stop"),
    ];
    let mut c = client(&registry);
    for (port, size, sha, name) in &files {
        c.register(*port, *size, sha, name).expect("REGISTER");
    }
    assert!(c
        .unregister(8002, "removed before stop")
        .expect("UNREGISTER"));
    drop(c);

    registry.stop(); // SIGTERM; asserts exit 0
    registry.restart(&[]);

    let mut c = client(&registry);
    for (port, size, sha, name) in &files[..3] {
        assert_registered(&mut c, *port, *size, sha, name);
    }
    assert!(
        c.search("removed before stop").expect("SEARCH").is_empty(),
        "an acknowledged UNREGISTER is durable too"
    );
    // The word index came back with the data.
    let hits = c.find(&["привет"]).expect("FIND");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].name, "Привет мир.txt");
    assert_eq!(c.heartbeat(8001).expect("HEARTBEAT"), 2);

    // And a second clean cycle changes nothing.
    drop(c);
    registry.stop();
    registry.restart(&[]);
    let mut c = client(&registry);
    for (port, size, sha, name) in &files[..3] {
        assert_registered(&mut c, *port, *size, sha, name);
    }
}

#[test]
fn every_acknowledged_registration_survives_kill_9() {
    const CONNECTIONS: u16 = 8;
    /// OKs to see before the kill, so it lands in the middle of the work.
    const OKS_BEFORE_KILL: usize = 300;

    let mut registry = Registry::start();
    let addr = registry.addr_string();
    let sha = hash_of("crash content");
    let acked: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let ok_count = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));

    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|t| {
            let (addr, sha) = (addr.clone(), sha.clone());
            let (acked, ok_count, finished) = (acked.clone(), ok_count.clone(), finished.clone());
            thread::spawn(move || {
                let port = 8100 + t;
                let mut c = Client::connect_timeout(&addr, READ_TIMEOUT).expect("connect");
                // Register until the server dies under us; the bound only
                // keeps a broken test from running forever.
                for i in 0..1_000_000u64 {
                    let name = format!("crash {t} {i}");
                    match c.register(port, i, &sha, &name) {
                        Ok(()) => {
                            acked.lock().unwrap().push((port, name));
                            ok_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();

    wait_until(
        &format!("{OKS_BEFORE_KILL} acknowledged registrations"),
        Duration::from_secs(30),
        || ok_count.load(Ordering::SeqCst) >= OKS_BEFORE_KILL,
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "every connection was still registering when the server was killed"
    );
    registry.crash(); // SIGKILL
    for worker in workers {
        worker.join().expect("registering thread");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= OKS_BEFORE_KILL);

    registry.restart(&[]);
    let mut c = client(&registry);
    let mut lost = Vec::new();
    for (port, name) in &acked {
        let sources = c
            .search(name)
            .unwrap_or_else(|e| panic!("SEARCH {name:?}: {e}"));
        let i: u64 = name.rsplit(' ').next().unwrap().parse().unwrap();
        let expected = (String::from("127.0.0.1"), *port, i, sha.clone());
        let found: Vec<_> = sources
            .into_iter()
            .map(|s| (s.host, s.port, s.size, s.sha256))
            .collect();
        if found != [expected] {
            lost.push((name.clone(), found));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged registrations are missing or wrong after kill -9, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    // The restarted server takes new work on the same file.
    c.register(8100, 1, &sha, "after the crash")
        .expect("REGISTER");
    assert_registered(&mut c, 8100, 1, &sha, "after the crash");
}

// ---------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------

#[test]
fn registrations_expire_without_heartbeat_and_live_with_one() {
    let registry = Registry::start_with(&["--ttl", "2s"]);
    let mut c = client(&registry);
    let sha = hash_of("ttl");
    c.register(8201, 1, &sha, "forgotten file")
        .expect("REGISTER");
    c.register(8202, 2, &sha, "kept alive file")
        .expect("REGISTER");
    c.register(8202, 2, &sha, "forgotten file")
        .expect("REGISTER");
    assert_eq!(c.search("forgotten file").expect("SEARCH").len(), 2);

    // Port 8202 keeps sending heartbeats while we wait for 8201 to expire.
    wait_until(
        "the registration without heartbeat to leave SEARCH",
        Duration::from_secs(15),
        || {
            assert_eq!(
                c.heartbeat(8202).expect("HEARTBEAT"),
                2,
                "both of 8202's stay live"
            );
            let sources = c.search("forgotten file").expect("SEARCH");
            sources.iter().all(|s| s.port != 8201)
        },
    );
    assert_eq!(c.heartbeat(8202).expect("HEARTBEAT"), 2);
    assert_registered(&mut c, 8202, 2, &sha, "kept alive file");
    assert_registered(&mut c, 8202, 2, &sha, "forgotten file");
    let hits = c.find(&["forgotten"]).expect("FIND");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].sources, 1, "FIND counts only live sources");

    // Once 8202 falls silent too, everything goes.
    wait_until(
        "every registration to expire",
        Duration::from_secs(15),
        || {
            c.search("kept alive file").expect("SEARCH").is_empty()
                && c.search("forgotten file").expect("SEARCH").is_empty()
        },
    );
    assert!(c.find(&["file"]).expect("FIND").is_empty());

    // Registering again brings a name back.
    c.register(8201, 1, &sha, "forgotten file")
        .expect("REGISTER");
    assert_registered(&mut c, 8201, 1, &sha, "forgotten file");
}

// ---------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------

#[test]
fn sigterm_mid_conversation_exits_0_and_keeps_what_was_acknowledged() {
    let mut registry = Registry::start();
    let sha = hash_of("term");

    // One client has talked and is idle, one is in the middle of a line.
    let mut idle = Wire::connect(registry.addr);
    assert_eq!(idle.ask("PING"), "PONG");
    assert_eq!(
        idle.ask(&format!("REGISTER 8301 4 {sha} before term")),
        "OK"
    );
    let mut partial = Wire::connect(registry.addr);
    assert_eq!(partial.ask("PING"), "PONG");
    partial.send("SEARCH half a li");

    // A third keeps registering while the signal arrives.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let ok_count = Arc::new(AtomicUsize::new(0));
    let addr = registry.addr_string();
    let busy = {
        let (acked, ok_count, sha) = (acked.clone(), ok_count.clone(), sha.clone());
        thread::spawn(move || {
            let mut c = Client::connect_timeout(&addr, READ_TIMEOUT).expect("connect");
            for i in 0..1_000_000u64 {
                let name = format!("during term {i}");
                if c.register(8302, 4, &sha, &name).is_err() {
                    break;
                }
                acked.lock().unwrap().push(name);
                ok_count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until(
        "some registrations before SIGTERM",
        Duration::from_secs(30),
        || ok_count.load(Ordering::SeqCst) >= 20,
    );

    let process = registry.process.take().expect("running");
    process.signal("TERM");
    let (status, stderr) = process.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM with open connections must exit 0, got {status}; stderr:\n{stderr}"
    );
    busy.join().expect("registering thread");
    idle.expect_closed();
    partial.expect_closed();

    registry.restart(&[]);
    let mut c = client(&registry);
    assert_registered(&mut c, 8301, 4, &sha, "before term");
    let acked = acked.lock().unwrap().clone();
    for name in &acked {
        assert_registered(&mut c, 8302, 4, &sha, name);
    }
}

#[test]
fn sigint_exits_0_too() {
    let mut registry = Registry::start();
    let mut c = client(&registry);
    c.register(8311, 1, &hash_of("int"), "before int")
        .expect("REGISTER");
    let process = registry.process.take().expect("running");
    process.signal("INT");
    let (status, stderr) = process.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "SIGINT must exit 0, got {status}; stderr:\n{stderr}"
    );
    drop(c);
    registry.restart(&[]);
    let mut c = client(&registry);
    assert_registered(&mut c, 8311, 1, &hash_of("int"), "before int");
}

// ---------------------------------------------------------------------------
// Start-up errors: non-zero exit, one clear line, the file untouched
// ---------------------------------------------------------------------------

/// Starts `dht-server --db <db>` and expects it to fail at start-up; returns
/// its stderr. `RUST_LOG` is cleared so only the error itself is printed.
fn start_expecting_failure(db: &Path) -> String {
    let program = bin("dht-server");
    let mut command = Command::new(&program);
    command
        .args(["--db", db.to_str().expect("UTF-8 temp path")])
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let process = Running::spawn(command, &program);
    let (status, stderr) = process.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success() && status.code().is_some(),
        "dht-server --db {} must exit non-zero, got {status}; stderr:\n{stderr}",
        db.display()
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "dht-server --db {} must explain itself in one line; stderr:\n{stderr}",
        db.display()
    );
    stderr
}

/// The failure names the file it could not use.
fn assert_names(stderr: &str, db: &Path) {
    let name = db.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(name.as_ref()),
        "the error should name {}; stderr:\n{stderr}",
        db.display()
    );
}

/// The directory's entries, to show that a failed start left nothing behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_that_is_not_sqlite_stops_start_up_and_is_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "notes.db",
            b"these are my notes, not a database\n".repeat(200),
        ),
        ("random.db", pseudo_random_bytes(64 * 1024, 7)),
        (
            "short.db",
            b"SQLite format 3\0 but nothing after the magic".to_vec(),
        ),
    ];
    for (file, content) in cases {
        let db = dir.path().join(file);
        std::fs::write(&db, &content).unwrap();
        let stderr = start_expecting_failure(&db);
        assert_names(&stderr, &db);
        assert!(
            std::fs::read(&db).unwrap() == content,
            "{file} was modified by a failed start"
        );
    }
}

#[test]
fn a_database_from_a_newer_version_stops_start_up_and_is_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("future.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE future_things (id INTEGER PRIMARY KEY, what TEXT);
             INSERT INTO future_things (what) VALUES ('from version 99');
             PRAGMA user_version = 99;",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let listing = entries(dir.path());

    let stderr = start_expecting_failure(&db);
    assert_names(&stderr, &db);
    assert!(
        std::fs::read(&db).unwrap() == before,
        "a database of a newer version was modified (journal mode, schema or version)"
    );
    assert_eq!(entries(dir.path()), listing, "nothing left beside it");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 99);
}

#[test]
fn a_directory_as_database_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a directory");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(db.join("inside.txt"), b"keep me").unwrap();
    let stderr = start_expecting_failure(&db);
    assert_names(&stderr, &db);
    assert_eq!(entries(&db), ["inside.txt"]);
    assert_eq!(std::fs::read(db.join("inside.txt")).unwrap(), b"keep me");
}

#[test]
fn a_database_under_a_missing_directory_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no such dir").join("registry.db");
    let stderr = start_expecting_failure(&db);
    assert_names(&stderr, &db);
    assert!(
        !dir.path().join("no such dir").exists(),
        "a failed start must not create directories"
    );
}

#[test]
fn a_missing_database_is_created_with_its_schema() {
    // The other side of the start-up checks: a fresh path is fine.
    let mut registry = Registry::start();
    assert!(registry.db.exists(), "the database file was created");
    let mut c = client(&registry);
    c.register(8401, 3, &hash_of("new"), "fresh db")
        .expect("REGISTER");
    drop(c);
    registry.stop();
    let conn = rusqlite::Connection::open(&registry.db).unwrap();
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert!(
        version >= 1,
        "the schema version is recorded, got {version}"
    );
}

// ---------------------------------------------------------------------------
// Repeated SIGKILL
// ---------------------------------------------------------------------------

#[test]
fn twenty_sigkills_under_load_lose_no_acknowledged_write() {
    const CYCLES: usize = 20;
    const CONNECTIONS: u16 = 4;
    /// Acknowledged writes to see in each cycle before the kill.
    const OKS_PER_CYCLE: usize = 40;

    let mut registry = Registry::start();
    let sha = hash_of("cycle content");
    // (port, name) → registered (true) or unregistered (false), acknowledged;
    // names whose request was in flight at the kill may go either way.
    let state: Arc<Mutex<std::collections::HashMap<(u16, String), bool>>> = Arc::default();
    let in_doubt: Arc<Mutex<std::collections::HashSet<(u16, String)>>> = Arc::default();
    let mut acknowledged = 0;
    let mut checks = 0;
    for cycle in 0..CYCLES {
        let oks = Arc::new(AtomicUsize::new(0));
        let addr = registry.addr_string();
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|t| {
                let (addr, sha) = (addr.clone(), sha.clone());
                let (state, in_doubt, oks) = (state.clone(), in_doubt.clone(), oks.clone());
                thread::spawn(move || {
                    let port = 8200 + t;
                    let Ok(mut c) = Client::connect_timeout(&addr, READ_TIMEOUT) else {
                        return;
                    };
                    for i in 0..1_000_000u64 {
                        // Every third request undoes the one before it.
                        let undo = i % 3 == 2;
                        let n = if undo { i - 1 } else { i };
                        let key = (port, format!("k{cycle} {t} {n}"));
                        let result = if undo {
                            c.unregister(port, &key.1).map(|_| false)
                        } else {
                            c.register(port, i, &sha, &key.1).map(|()| true)
                        };
                        match result {
                            Ok(registered) => {
                                state.lock().unwrap().insert(key, registered);
                                oks.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                in_doubt.lock().unwrap().insert(key);
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        wait_until(
            &format!("{OKS_PER_CYCLE} acknowledged writes in cycle {cycle}"),
            Duration::from_secs(30),
            || oks.load(Ordering::SeqCst) >= OKS_PER_CYCLE,
        );
        registry.crash(); // SIGKILL
        for w in workers {
            w.join().expect("writing thread");
        }
        acknowledged += oks.load(Ordering::SeqCst);
        registry.restart(&[]);

        // Every acknowledged write of every cycle so far, as last acknowledged.
        let mut c = client(&registry);
        let state = state.lock().unwrap();
        let in_doubt = in_doubt.lock().unwrap();
        for ((port, name), &registered) in state.iter() {
            if in_doubt.contains(&(*port, name.clone())) {
                continue;
            }
            let found = c
                .search(name)
                .unwrap_or_else(|e| panic!("SEARCH {name:?}: {e}"))
                .iter()
                .any(|s| s.port == *port);
            assert_eq!(found, registered, "{name:?} after SIGKILL {}", cycle + 1);
            checks += 1;
        }
        let conn = rusqlite::Connection::open(&registry.db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "integrity after SIGKILL {}", cycle + 1);
    }
    println!(
        "SIGKILL cycles: {CYCLES} kills, {acknowledged} acknowledged writes, {checks} checks, \
         integrity_check ok after each"
    );
}

// ---------------------------------------------------------------------------
// Read-only databases (a read-only bind mount in a mount namespace of the
// test's own, so that it holds for root too)
// ---------------------------------------------------------------------------

/// Runs `program args` with `dir` (a folder or a file) mounted read-only
/// (for that process only);
/// `None` when this system cannot make mount namespaces (the test then
/// says so and checks nothing).
fn run_with_read_only_dir(
    dir: &Path,
    program: &Path,
    args: &[&str],
) -> Option<std::process::Output> {
    let probe = Command::new("unshare")
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            "mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\"",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !probe.status.success() {
        println!(
            "skipped: no mount namespace here ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return None;
    }
    let script =
        "mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\" && shift && exec \"$@\"";
    let dir = dir.to_str().expect("temp paths are UTF-8");
    let program = program.to_str().expect("the target path is UTF-8");
    let mut all = vec!["-m", "--", "sh", "-c", script, dir, "--", program];
    all.extend_from_slice(args);
    // A deadline: a server that wrongly starts would otherwise never return.
    Some(p2p_tests::run(Path::new("unshare"), &all, EXIT_TIMEOUT))
}

#[test]
fn a_read_only_database_stops_start_up() {
    let mut registry = Registry::start();
    let mut c = client(&registry);
    c.register(8500, 1, &hash_of("x"), "kept")
        .expect("REGISTER");
    drop(c);
    registry.stop();
    let before = std::fs::read(&registry.db).unwrap();
    let db = registry.db.to_str().unwrap().to_owned();
    // The file read-only, its folder writable.
    let Some(out) = run_with_read_only_dir(
        &registry.db,
        &bin("dht-server"),
        &["--db", &db, "--listen", "127.0.0.1:0", "--no-mdns"],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started on a read-only database: {stderr}"
    );
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains(&db), "names the file: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "never listened"
    );
    assert_eq!(std::fs::read(&registry.db).unwrap(), before);
    println!(
        "read-only database: refused at start with: {}",
        stderr.trim()
    );
}

#[test]
fn p2p_admin_reads_a_database_in_a_read_only_folder() {
    let mut registry = Registry::start();
    let mut c = client(&registry);
    c.register(8501, 1, &hash_of("x"), "visible")
        .expect("REGISTER");
    drop(c);
    registry.stop();
    let db = registry.db.to_str().unwrap().to_owned();
    for command in [&["list"][..], &["stats"], &["export", "--format", "csv"]] {
        let mut args = vec!["--db", db.as_str()];
        args.extend_from_slice(command);
        let Some(out) = run_with_read_only_dir(registry.dir.path(), &bin("p2p-admin"), &args)
        else {
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "p2p-admin {command:?} on a read-only folder: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command[0] != "stats" {
            assert!(stdout.contains("visible"), "{stdout}");
        }
    }
    println!("p2p-admin list, stats, export work on a read-only folder");
}

#[test]
fn the_expiry_sweep_keeps_up_under_continuous_writes() {
    let registry = Registry::start_with(&["--ttl", "2s"]);
    let mut c = client(&registry);
    let sha = hash_of("sweep");
    for i in 0..200 {
        c.register(8600, i, &sha, &format!("forgotten {i}"))
            .expect("REGISTER");
    }
    // Four connections that never let the writer rest.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u16)
        .map(|t| {
            let (addr, stop, sha) = (registry.addr_string(), stop.clone(), sha.clone());
            thread::spawn(move || {
                let mut c = Client::connect_timeout(&addr, READ_TIMEOUT).expect("connect");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.register(8700 + t, i % 50, &sha, &format!("busy {t} {}", i % 50))
                        .expect("REGISTER");
                    i += 1;
                }
                i
            })
        })
        .collect();
    let conn = rusqlite::Connection::open_with_flags(
        &registry.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    wait_until(
        "the expired registrations deleted while writes go on",
        Duration::from_secs(30),
        || {
            conn.query_row(
                "SELECT count(*) FROM registrations r JOIN peers p ON p.id = r.peer_id
                 WHERE p.port = 8600",
                [],
                |row| row.get::<_, i64>(0),
            )
            .unwrap()
                == 0
        },
    );
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    println!("sweep under load: 200 expired rows deleted while {writes} writes went on");
}
