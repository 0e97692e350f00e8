//! End-to-end tests of `p2p-admin` against databases filled by the real
//! `dht-server` through the protocol: list, export (CSV, JSON, JSON Lines,
//! to a file), prune by peer while the server runs, prune of stale rows,
//! dry runs, bad database files, and an export of 100,000 rows in bounded
//! memory.
//!
//! The tests read the database file with their own SQL (`rows_of`), not
//! with the store code under test, so the file itself is the oracle.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use p2p_tests::{bin, pseudo_random_bytes, run, sha256_hex, wait_until, Registry, WAIT_TIMEOUT};
use rusqlite::{Connection, OpenFlags};

/// Largest peak resident memory allowed for exporting 100,000 rows. The
/// test's export is larger than this (checked), so it cannot have been
/// built in memory; the tool itself needs about 11 MiB.
const EXPORT_MEMORY_LIMIT_KIB: u64 = 32 * 1024;

/// Runs `p2p-admin --db DB ARGS...` to completion.
fn admin(db: &Path, args: &[&str]) -> Output {
    let db = db.to_str().expect("UTF-8 temp path");
    let mut all = vec!["--db", db];
    all.extend_from_slice(args);
    run(&bin("p2p-admin"), &all, WAIT_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "p2p-admin failed with {}: {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// One registration as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    name: String,
    peer: String,
    size: u64,
    sha256: String,
    registered_at: i64,
    last_seen: i64,
}

/// Every registration in the file, plus the file and peer counts, read
/// with the test's own SQL.
fn rows_of(db: &Path) -> (Vec<Row>, u64, u64) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the database to inspect it");
    let mut stmt = conn
        .prepare(
            "SELECT f.name, p.host || ':' || p.port, r.size, lower(hex(r.sha256)), r.registered_at, r.last_seen
             FROM registrations r JOIN files f ON f.id = r.file_id JOIN peers p ON p.id = r.peer_id
             ORDER BY 1, 2",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |row| {
            Ok(Row {
                name: row.get(0)?,
                peer: row.get(1)?,
                size: row.get::<_, i64>(2)? as u64,
                sha256: row.get(3)?,
                registered_at: row.get(4)?,
                last_seen: row.get(5)?,
            })
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("read rows");
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql) as u64;
    let files = count("SELECT count(*) FROM files");
    let peers = count("SELECT count(*) FROM peers");
    (rows, files, peers)
}

/// (name, peer, size, sha256) of every registration the file holds.
fn keys_of(db: &Path) -> BTreeSet<(String, String, u64, String)> {
    rows_of(db)
        .0
        .into_iter()
        .map(|r| (r.name, r.peer, r.size, r.sha256))
        .collect()
}

/// Registers `names` from 127.0.0.1 announcing `port`, through the server.
fn register(registry: &Registry, port: u16, names: &[&str]) {
    let mut client = registry.client();
    for name in names {
        let content = format!("{name} on {port}");
        client
            .register(
                port,
                content.len() as u64,
                &sha256_hex(content.as_bytes()),
                name,
            )
            .unwrap_or_else(|e| panic!("register {name:?} on {port}: {e}"));
    }
}

/// How soon the server's answers show a change another process (this
/// tool) committed: docs/architecture.md, "Reads from memory".
const PRUNE_SEEN_WITHIN: Duration = Duration::from_secs(1);

fn search_peers(registry: &Registry, name: &str) -> BTreeSet<String> {
    registry
        .client()
        .search(name)
        .expect("search")
        .into_iter()
        .map(|s| s.addr())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Names that exercise CSV quoting and JSON escaping.
const NAMES: [&str; 4] = [
    "report.pdf",
    "holiday photos, \"best of\" 2023.zip",
    "café au lait.mp3",
    "a;b'c.txt",
];

#[test]
fn list_and_every_export_format_show_each_registration_once() {
    let registry = Registry::start();
    register(&registry, 7001, &NAMES);
    register(&registry, 7002, &NAMES[..2]);
    register(&registry, 7003, &NAMES[..1]);
    let expected = keys_of(&registry.db);
    assert_eq!(expected.len(), 7);

    // The table: one line per registration with its name and peer.
    let table = ok(admin(&registry.db, &["list"]));
    for (name, peer, _, _) in &expected {
        let lines = table
            .lines()
            .filter(|l| l.contains(name.as_str()) && l.contains(peer.as_str()))
            .count();
        assert_eq!(lines, 1, "{name} from {peer} in\n{table}");
    }
    assert_eq!(table.matches("live").count(), 7, "{table}");

    // CSV, parsed back with the csv crate.
    let parse_csv = |text: &str| {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().expect("header row").clone();
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [
                "name",
                "size",
                "sha256",
                "peer",
                "registered_at",
                "last_seen",
                "live"
            ]
        );
        let records: Vec<csv::StringRecord> = reader
            .records()
            .collect::<Result<_, _>>()
            .expect("valid CSV");
        records
            .iter()
            .map(|r| {
                assert_eq!(&r[6], "true");
                (
                    r[0].to_owned(),
                    r[3].to_owned(),
                    r[1].parse().expect("size"),
                    r[2].to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let from_csv = parse_csv(&ok(admin(&registry.db, &["export", "--format", "csv"])));
    assert_eq!(from_csv.len(), expected.len());
    assert_eq!(from_csv.into_iter().collect::<BTreeSet<_>>(), expected);

    // JSON array and JSON Lines, parsed back with serde_json.
    let key_of = |v: &serde_json::Value| {
        (
            v["name"].as_str().expect("name").to_owned(),
            v["peer"].as_str().expect("peer").to_owned(),
            v["size"].as_u64().expect("size"),
            v["sha256"].as_str().expect("sha256").to_owned(),
        )
    };
    let json: serde_json::Value =
        serde_json::from_str(&ok(admin(&registry.db, &["export", "--format", "json"])))
            .expect("valid JSON");
    let array = json.as_array().expect("an array");
    assert_eq!(array.len(), expected.len());
    assert_eq!(array.iter().map(key_of).collect::<BTreeSet<_>>(), expected);
    let lines = ok(admin(&registry.db, &["export", "--format", "jsonl"]));
    let from_jsonl: Vec<_> = lines
        .lines()
        .map(|l| key_of(&serde_json::from_str(l).expect("one JSON object per line")))
        .collect();
    assert_eq!(from_jsonl.len(), expected.len());
    assert_eq!(from_jsonl.into_iter().collect::<BTreeSet<_>>(), expected);

    // To a file: complete, and nothing else left in the directory.
    let out_dir = tempfile::tempdir().expect("temp dir");
    let file = out_dir.path().join("registry.csv");
    let said = ok(admin(
        &registry.db,
        &[
            "export",
            "--format",
            "csv",
            "-o",
            file.to_str().expect("UTF-8"),
        ],
    ));
    assert!(said.contains("exported 7 registrations"), "{said}");
    let from_file = parse_csv(&fs::read_to_string(&file).expect("the export exists"));
    assert_eq!(from_file.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(fs::read_dir(out_dir.path()).expect("read dir").count(), 1);

    // Filters.
    let by_peer = ok(admin(
        &registry.db,
        &["list", "--peer", "127.0.0.1:7002", "--format", "jsonl"],
    ));
    assert_eq!(by_peer.lines().count(), 2, "{by_peer}");
    assert!(by_peer
        .lines()
        .all(|l| l.contains("\"peer\":\"127.0.0.1:7002\"")));
    let by_name = ok(admin(
        &registry.db,
        &["list", "--name", "CAFÉ", "--format", "csv"],
    ));
    // ASCII case is folded, other letters are not: "CAFÉ" does not match "café".
    assert_eq!(by_name.lines().count(), 1, "{by_name}");
    let by_name = ok(admin(
        &registry.db,
        &["list", "--name", "CAF", "--format", "csv"],
    ));
    assert_eq!(by_name.lines().count(), 2, "{by_name}");
    let limited = ok(admin(
        &registry.db,
        &["list", "--limit", "3", "--format", "jsonl"],
    ));
    assert_eq!(limited.lines().count(), 3);

    let stats: serde_json::Value =
        serde_json::from_str(&ok(admin(&registry.db, &["stats", "--format", "json"])))
            .expect("stats JSON");
    assert_eq!(stats["files"], 4);
    assert_eq!(stats["peers"], 3);
    assert_eq!(stats["registrations"], 7);
    assert_eq!(stats["live"], 7);
    assert_eq!(stats["top_names"][0]["name"], "report.pdf");
    assert_eq!(stats["top_names"][0]["sources"], 3);
}

#[test]
fn prune_by_peer_while_the_server_runs_and_dry_run_changes_nothing() {
    let registry = Registry::start();
    register(&registry, 7001, &["shared.bin", "only-a.bin"]);
    register(&registry, 7002, &["shared.bin"]);
    assert_eq!(
        search_peers(&registry, "shared.bin"),
        set(&["127.0.0.1:7001", "127.0.0.1:7002"])
    );

    let before = rows_of(&registry.db);
    let dry = ok(admin(
        &registry.db,
        &["prune", "--peer", "127.0.0.1:7001", "--dry-run"],
    ));
    assert!(
        dry.contains("would remove 2 registrations of peer 127.0.0.1:7001"),
        "{dry}"
    );
    assert!(
        dry.contains("only-a.bin") && dry.contains("shared.bin"),
        "{dry}"
    );
    assert_eq!(
        rows_of(&registry.db),
        before,
        "a dry run changed the database"
    );

    let done = ok(admin(&registry.db, &["prune", "--peer", "127.0.0.1:7001"]));
    assert!(
        done.contains("removed 2 registrations of peer 127.0.0.1:7001"),
        "{done}"
    );

    // The running server no longer knows the peer (its index catches up
    // with another process's commit within PRUNE_SEEN_WITHIN), and keeps working.
    wait_until(
        "SEARCH to forget the pruned peer",
        PRUNE_SEEN_WITHIN,
        || search_peers(&registry, "shared.bin") == set(&["127.0.0.1:7002"]),
    );
    assert!(search_peers(&registry, "only-a.bin").is_empty());
    let (rows, files, peers) = rows_of(&registry.db);
    assert_eq!(
        (rows.len(), files, peers),
        (1, 1, 1),
        "orphans left: {rows:?}"
    );
    register(&registry, 7001, &["back again.bin"]);
    assert_eq!(
        search_peers(&registry, "back again.bin"),
        set(&["127.0.0.1:7001"])
    );

    // Pruning a peer with nothing left is not an error.
    let again = ok(admin(&registry.db, &["prune", "--peer", "127.0.0.1:7003"]));
    assert!(again.contains("removed 0 registrations"), "{again}");
}

#[test]
fn prune_stale_removes_only_rows_not_seen_for_that_long() {
    let registry = Registry::start();
    register(&registry, 7001, &["old one.txt", "old two.txt"]);
    let old_newest = rows_of(&registry.db)
        .0
        .iter()
        .map(|r| r.last_seen)
        .max()
        .expect("old rows");
    // The old rows must be clearly older than `--stale 2s` and the new ones
    // clearly younger: wait until the old ones are 3s old, then register.
    wait_until("the old registrations to be 3s old", WAIT_TIMEOUT, || {
        dht_server::store::now_ms() >= old_newest + 3_000
    });
    register(&registry, 7002, &["new.txt", "old one.txt"]);

    let before = rows_of(&registry.db);
    let dry = ok(admin(
        &registry.db,
        &["prune", "--stale", "2s", "--dry-run"],
    ));
    assert!(
        dry.contains("would remove 2 registrations not seen for 2s"),
        "{dry}"
    );
    assert_eq!(
        rows_of(&registry.db),
        before,
        "a dry run changed the database"
    );

    let done = admin(
        &registry.db,
        &["prune", "--stale", "2s", "--format", "jsonl"],
    );
    assert!(stderr(&done).contains("removed 2 registrations not seen for 2s"));
    let removed: BTreeSet<String> = ok(done)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            format!(
                "{} {}",
                v["peer"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        removed,
        set(&["127.0.0.1:7001 old one.txt", "127.0.0.1:7001 old two.txt"])
    );
    let left: BTreeSet<(String, String)> = rows_of(&registry.db)
        .0
        .into_iter()
        .map(|r| (r.peer, r.name))
        .collect();
    assert_eq!(
        left,
        [
            ("127.0.0.1:7002", "new.txt"),
            ("127.0.0.1:7002", "old one.txt")
        ]
        .iter()
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
    );
    wait_until(
        "SEARCH to forget the pruned rows",
        PRUNE_SEEN_WITHIN,
        || search_peers(&registry, "old one.txt") == set(&["127.0.0.1:7002"]),
    );
    assert!(search_peers(&registry, "old two.txt").is_empty());
}

/// Every command on `db` fails with exit 1 and a message containing `says`,
/// and leaves the file byte for byte as it was.
fn assert_refused(db: &Path, says: &str) {
    let original = fs::read(db).ok();
    let out_file = db.with_extension("export.csv");
    let out = out_file.to_str().expect("UTF-8");
    for args in [
        &["list"][..],
        &["stats"],
        &["export", "--format", "json"],
        &["export", "-o", out],
        &["prune", "--peer", "127.0.0.1:7001"],
        &["prune", "--stale", "1h", "--dry-run"],
    ] {
        let result = admin(db, args);
        assert_eq!(
            result.status.code(),
            Some(1),
            "{args:?} on {}: {result:?}",
            db.display()
        );
        let message = stderr(&result);
        assert!(message.contains(says), "{args:?}: {message}");
        assert!(
            message.contains(db.to_str().expect("UTF-8")),
            "names the file: {message}"
        );
        assert!(
            result.stdout.is_empty(),
            "{args:?} printed {:?}",
            stdout(&result)
        );
        assert_eq!(
            fs::read(db).ok(),
            original,
            "{args:?} changed {}",
            db.display()
        );
        assert!(!out_file.exists(), "{args:?} left an export behind");
    }
}

#[test]
fn missing_garbage_and_newer_databases_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");

    let missing = dir.path().join("missing.db");
    assert_refused(&missing, "does not exist");
    assert!(!missing.exists(), "a missing database was created");

    let garbage = dir.path().join("garbage.db");
    fs::write(&garbage, pseudo_random_bytes(64 * 1024, 7)).expect("write garbage");
    assert_refused(&garbage, "not a SQLite database");

    // A real registry, copied consistently while the server runs, then
    // stamped with a schema version from the future.
    let registry = Registry::start();
    register(&registry, 7001, &["a.txt"]);
    let newer = dir.path().join("newer.db");
    {
        let conn = Connection::open(&registry.db).expect("open the registry");
        conn.execute("VACUUM INTO ?1", [newer.to_str().expect("UTF-8")])
            .expect("copy the registry");
        let copy = Connection::open(&newer).expect("open the copy");
        copy.pragma_update(None, "user_version", 99)
            .expect("set version");
    }
    assert_refused(&newer, "schema version 99");

    // Bad command lines are exit 2 and touch nothing either.
    for args in [
        &["prune", "--peer", "localhost:7001"][..],
        &["prune", "--peer", "127.0.0.1"],
        &["prune", "--stale", "a while"],
        &["prune"],
        &["list", "--format", "xml"],
    ] {
        let result = admin(&registry.db, args);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {result:?}");
        assert!(!stderr(&result).is_empty());
    }
    assert_eq!(rows_of(&registry.db).0.len(), 1);
}

/// Peak resident memory of `p2p-admin ARGS...` in KiB, with its output.
/// Uses `/usr/bin/time -v` when present; otherwise samples the child's
/// `VmHWM` (its high-water mark) from /proc until it exits.
fn peak_memory_kib(args: &[&str]) -> (u64, Output) {
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let admin = bin("p2p-admin");
        let mut all = vec!["-v", admin.to_str().expect("UTF-8")];
        all.extend_from_slice(args);
        let out = run(time, &all, Duration::from_secs(120));
        let peak = stderr(&out)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no peak RSS in /usr/bin/time output: {}", stderr(&out)));
        return (peak, out);
    }
    let mut child = std::process::Command::new(bin("p2p-admin"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start p2p-admin");
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "p2p-admin {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    (
        peak,
        Output {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
    )
}

#[test]
fn an_export_of_100k_rows_runs_in_bounded_memory() {
    const NAMES: usize = 10_000;
    const PEERS: u16 = 10;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("big.db");
    let db_str = db.to_str().expect("UTF-8");
    {
        // Filled through the store's own write function in one transaction,
        // not through the server: 100,000 acknowledged REGISTERs would take
        // minutes for nothing this test is about.
        use dht_server::store::{self, writes, OpenMode, SyncMode};
        let mut conn = store::open_connection(db_str, OpenMode::CreateOrMigrate, SyncMode::Normal)
            .expect("create the registry");
        let tx = conn.transaction().expect("begin");
        let now = store::now_ms();
        for i in 0..NAMES {
            // Long names (230 bytes), so the export is larger than the bound.
            let name = format!(
                "file {i:05}{}.bin",
                " with a rather long descriptive name".repeat(6)
            );
            let key = p2p_proto::protocol::name_key(&name);
            let sha = sha256_hex(name.as_bytes());
            for p in 0..PEERS {
                let host = format!("10.0.{}.{}", p, i % 250);
                writes::register(
                    &tx,
                    &host,
                    9000 + p,
                    &key,
                    &name,
                    i as u64,
                    &sha,
                    writes::Stamp::at(now),
                )
                .expect("register");
            }
        }
        writes::commit(tx).expect("commit");
    }
    let total = NAMES * usize::from(PEERS);

    let out = dir.path().join("big.csv");
    let (peak, result) = peak_memory_kib(&[
        "--db",
        db_str,
        "export",
        "--format",
        "csv",
        "-o",
        out.to_str().expect("UTF-8"),
    ]);
    assert!(
        result.status.success(),
        "export failed: {}",
        stderr(&result)
    );
    let csv = fs::read_to_string(&out).expect("export written");
    assert_eq!(
        csv.lines().count(),
        total + 1,
        "header plus one line per registration"
    );
    assert!(
        csv.len() as u64 > EXPORT_MEMORY_LIMIT_KIB * 1024,
        "the export ({} bytes) must be larger than the memory bound to prove anything",
        csv.len()
    );
    drop(csv);
    eprintln!("csv export of {total} rows to a file: peak {peak} KiB");
    assert!(
        peak < EXPORT_MEMORY_LIMIT_KIB,
        "CSV export of {total} rows peaked at {peak} KiB"
    );

    for format in ["json", "table"] {
        let (peak, result) = peak_memory_kib(&["--db", db_str, "export", "--format", format]);
        assert!(
            result.status.success(),
            "{format} export failed: {}",
            stderr(&result)
        );
        if format == "json" && !result.stdout.is_empty() {
            let json: serde_json::Value =
                serde_json::from_slice(&result.stdout).expect("the JSON export parses");
            assert_eq!(json.as_array().map(Vec::len), Some(total));
        }
        eprintln!("{format} export of {total} rows to stdout: peak {peak} KiB");
        assert!(
            peak < EXPORT_MEMORY_LIMIT_KIB,
            "{format} export of {total} rows peaked at {peak} KiB"
        );
    }
}
