//! Schema migrations end to end: a version-2 database, as the registry
//! wrote it before schema 3 (issue 15, item 5), and a version-1 database
//! are migrated in place by the real `dht-server` on start-up (to schema
//! 4), keeping every registration; and a migration that fails leaves the
//! file exactly as it was.
//!
//! The version-2 file is built here, not committed: the version-1 and 2
//! migrations (`migrations/0001_*.sql`, `0002_*.sql`, the very SQL the
//! earlier builds applied) and then rows written with the INSERT statements
//! of the version-2 store (`server/src/store/writes.rs` at 628aa64, hex
//! digests in TEXT columns). The test reads the files with its own SQL, so
//! the file itself is the oracle.

use std::collections::BTreeSet;
use std::path::Path;

use p2p_tests::{bin, run, Running, Wire, WAIT_TIMEOUT};
use rusqlite::{params, Connection, OpenFlags};

const V1: &str = include_str!("../../migrations/0001_init.sql");
const V2: &str = include_str!("../../migrations/0002_host_counts.sql");

const HASH_A: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const HASH_B: &str = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";

/// Base of the stored times (unix ms, November 2023); `--ttl 100y` keeps them live.
const T0: i64 = 1_700_000_000_000;

/// One registration as the version-2 file holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reg {
    name: String,
    host: String,
    port: u16,
    size: u64,
    sha256: String,
    registered_at: i64,
    last_seen: i64,
    seen_seq: i64,
}

/// The registrations of the version-2 file: a name with three sources and
/// two contents, IPv6, non-ASCII, and a bulk of names over three peers.
fn registrations() -> Vec<Reg> {
    let reg = |name: &str, host: &str, port, size, sha: &str, seq: i64| Reg {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        size,
        sha256: sha.to_owned(),
        registered_at: T0 + seq,
        last_seen: T0 + 1_000 + seq,
        seen_seq: seq,
    };
    let mut all = vec![
        reg("report.pdf", "10.0.0.1", 7001, 100, HASH_A, 1),
        reg("report.pdf", "[2001:db8::1]", 7002, 100, HASH_A, 2),
        reg("report.pdf", "10.0.0.2", 7001, 200, HASH_B, 3),
        reg("holiday photos 2024.zip", "10.0.0.1", 7001, 5, HASH_B, 4),
        reg("café menu.txt", "[2001:db8::1]", 7002, 0, HASH_A, 5),
    ];
    let hosts = ["10.0.0.1", "10.0.0.2", "[2001:db8::1]"];
    for i in 0..300u16 {
        let sha = if i % 2 == 0 { HASH_A } else { HASH_B };
        let seq = 10 + i64::from(i);
        all.push(reg(
            &format!("bulk file {i}.bin"),
            hosts[usize::from(i) % 3],
            7001 + i % 2,
            u64::from(i),
            sha,
            seq,
        ));
    }
    all
}

/// Writes a version-2 database at `db` holding `regs`, in WAL mode as the
/// server leaves it, with the statements of the version-2 store.
fn build_v2(db: &Path, regs: &[Reg]) {
    build(db, regs, 2)
}

/// Writes a database of schema `version` (1 or 2) holding `regs`: the
/// version-1 and version-2 stores wrote registrations with the same
/// statements; version 2 only added the per-host counts.
fn build(db: &Path, regs: &[Reg], version: u32) {
    let mut conn = Connection::open(db).expect("create the old file");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("WAL");
    assert_eq!(mode, "wal");
    let tx = conn.transaction().expect("begin");
    tx.execute_batch(V1).expect("schema 1");
    tx.pragma_update(None, "user_version", 1)
        .expect("version 1");
    if version >= 2 {
        tx.execute_batch(V2).expect("schema 2");
        tx.pragma_update(None, "user_version", 2)
            .expect("version 2");
    }
    for r in regs {
        let key = p2p_proto::protocol::name_key(&r.name);
        let file_id: i64 =
            match tx.query_row("SELECT id FROM files WHERE name_key = ?1", [&key], |row| {
                row.get(0)
            }) {
                Ok(id) => id,
                Err(_) => tx
                    .query_row(
                        "INSERT INTO files (name_key, name) VALUES (?1, ?2) RETURNING id",
                        params![key, r.name],
                        |row| row.get(0),
                    )
                    .expect("insert file"),
            };
        let peer_id: i64 = match tx.query_row(
            "SELECT id FROM peers WHERE host = ?1 AND port = ?2",
            params![r.host, r.port],
            |row| row.get(0),
        ) {
            Ok(id) => id,
            Err(_) => tx
                .query_row(
                    "INSERT INTO peers (host, port) VALUES (?1, ?2) RETURNING id",
                    params![r.host, r.port],
                    |row| row.get(0),
                )
                .expect("insert peer"),
        };
        tx.execute(
            "INSERT INTO registrations
                 (file_id, peer_id, size, sha256, registered_at, last_seen, seen_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                file_id,
                peer_id,
                r.size as i64,
                r.sha256,
                r.registered_at,
                r.last_seen,
                r.seen_seq
            ],
        )
        .expect("insert registration");
    }
    tx.commit().expect("commit");
    conn.close().expect("close");
}

fn read_only(db: &Path) -> Connection {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
}

fn user_version(db: &Path) -> u32 {
    read_only(db)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version")
}

/// Every registration of a version-3 file, read with the test's own SQL.
fn v3_rows(db: &Path) -> BTreeSet<Reg> {
    let conn = read_only(db);
    let mut stmt = conn
        .prepare(
            "SELECT f.name, p.host, p.port, r.size, lower(hex(r.sha256)),
                    r.registered_at, r.last_seen, r.seen_seq
             FROM registrations r JOIN files f ON f.id = r.file_id
             JOIN peers p ON p.id = r.peer_id",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |row| {
            Ok(Reg {
                name: row.get(0)?,
                host: row.get(1)?,
                port: row.get(2)?,
                size: row.get::<_, i64>(3)? as u64,
                sha256: row.get(4)?,
                registered_at: row.get(5)?,
                last_seen: row.get(6)?,
                seen_seq: row.get(7)?,
            })
        })
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

/// The schema objects (type, name) of a file and the version-2 rows it
/// holds (name, peer, size, sha256).
type Snapshot = (Vec<(String, String)>, Vec<(String, String, i64, String)>);

fn v2_snapshot(db: &Path) -> Snapshot {
    let conn = read_only(db);
    let schema = conn
        .prepare("SELECT type, name FROM sqlite_schema ORDER BY type, name")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("schema");
    let rows = conn
        .prepare(
            "SELECT f.name, p.host || ':' || p.port, r.size, r.sha256
             FROM registrations r JOIN files f ON f.id = r.file_id
             JOIN peers p ON p.id = r.peer_id ORDER BY 1, 2",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    (schema, rows)
}

fn start(db: &Path, extra: &[&str]) -> (std::net::SocketAddr, Running) {
    let db = db.to_str().expect("UTF-8 temp path");
    let mut args = vec![
        "--db",
        db,
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--ttl",
        "100y",
    ];
    args.extend_from_slice(extra);
    Running::start(&bin("dht-server"), &args, "listening on ", &[])
}

/// The `FOUND` reply SEARCH must give for `name`: its sources, most
/// recently seen first.
fn expected_found(regs: &[Reg], name: &str) -> Vec<String> {
    let mut sources: Vec<&Reg> = regs.iter().filter(|r| r.name == name).collect();
    sources.sort_by_key(|r| std::cmp::Reverse(r.seen_seq));
    let mut lines = vec![format!("FOUND {}", sources.len())];
    lines.extend(
        sources
            .iter()
            .map(|r| format!("{}:{} {} {}", r.host, r.port, r.size, r.sha256)),
    );
    lines
}

fn check_search(addr: std::net::SocketAddr, regs: &[Reg]) {
    let mut wire = Wire::connect(addr);
    let names: BTreeSet<&str> = regs.iter().map(|r| r.name.as_str()).collect();
    for name in names {
        assert_eq!(
            wire.call(&format!("SEARCH {name}")),
            expected_found(regs, name),
            "SEARCH {name:?} after the migration"
        );
    }
}

#[test]
fn a_version_2_database_is_migrated_on_start_keeping_every_registration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("registry.db");
    let regs = registrations();
    build_v2(&db, &regs);
    assert_eq!(user_version(&db), 2);

    let (addr, server) = start(&db, &[]);
    assert_eq!(user_version(&db), 4, "migrated to schema 4 on start-up");
    let free: i64 = read_only(&db)
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .expect("freelist_count");
    assert_eq!(free, 0, "the old tables' pages given back (VACUUM)");
    let expected: BTreeSet<Reg> = regs.iter().cloned().collect();
    assert_eq!(
        v3_rows(&db),
        expected,
        "every row kept, times and order included"
    );

    // SEARCH (from SQLite) and FIND (the full-text index, rebuilt).
    check_search(addr, &regs);
    let mut wire = Wire::connect(addr);
    assert_eq!(
        wire.call("FIND REPO"),
        [
            "RESULTS 2",
            &format!("2 100 {HASH_A} report.pdf"),
            &format!("1 200 {HASH_B} report.pdf"),
        ]
    );
    assert_eq!(
        wire.call("FIND holi phot"),
        [
            "RESULTS 1",
            &format!("1 5 {HASH_B} holiday photos 2024.zip")
        ]
    );
    assert_eq!(
        wire.call("FIND caf"),
        ["RESULTS 1", &format!("1 0 {HASH_A} café menu.txt")]
    );
    assert_eq!(wire.call("FIND 299")[0], "RESULTS 1");

    // p2p-admin export sees every registration, digests in hex.
    let out = run(
        &bin("p2p-admin"),
        &[
            "--db",
            db.to_str().expect("UTF-8"),
            "export",
            "--format",
            "jsonl",
        ],
        WAIT_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let exported: BTreeSet<(String, String, u64, String)> = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            (
                v["name"].as_str().expect("name").to_owned(),
                v["peer"].as_str().expect("peer").to_owned(),
                v["size"].as_u64().expect("size"),
                v["sha256"].as_str().expect("sha256").to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64, String)> = regs
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                format!("{}:{}", r.host, r.port),
                r.size,
                r.sha256.clone(),
            )
        })
        .collect();
    assert_eq!(exported, want);

    // Writes go on in the new schema: a new source, and the last source of a
    // name leaving takes the name (and its full-text entry) with it.
    assert_eq!(
        wire.ask(&format!("REGISTER 7009 7 {HASH_B} café menu.txt")),
        "OK"
    );
    assert_eq!(wire.call("SEARCH café menu.txt")[0], "FOUND 2");
    assert_eq!(wire.ask("UNREGISTER 7009 café menu.txt"), "OK");
    // A name new in schema 4 is put in the full-text index by the writer
    // (no trigger), found, and taken out again when its last source goes.
    assert_eq!(
        wire.ask(&format!(
            "REGISTER 7009 7 {HASH_B} fresh-after-migration.txt"
        )),
        "OK"
    );
    assert_eq!(
        wire.call("FIND fresh migra"),
        [
            "RESULTS 1",
            &format!("1 7 {HASH_B} fresh-after-migration.txt")
        ]
    );
    assert_eq!(wire.ask("UNREGISTER 7009 fresh-after-migration.txt"), "OK");
    assert_eq!(wire.call("FIND fresh"), ["RESULTS 0"]);
    drop(wire);
    server.signal("TERM");
    let (status, stderr) = server.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "{stderr}");

    // Started again (already at version 4), with the in-memory index loaded
    // from the migrated rows: the same answers.
    let (addr, _server) = start(&db, &["--memory-index"]);
    assert_eq!(user_version(&db), 4);
    check_search(addr, &regs);
    // A prune by another process deletes migrated rows, and the names left
    // without a source go with their keys: no key is left behind.
    let pruned = run(
        &bin("p2p-admin"),
        &[
            "--db",
            db.to_str().expect("UTF-8"),
            "prune",
            "--peer",
            "10.0.0.2:7001",
        ],
        WAIT_TIMEOUT,
    );
    assert!(pruned.status.success(), "{pruned:?}");
    let left: BTreeSet<Reg> = regs
        .iter()
        .filter(|r| !(r.host == "10.0.0.2" && r.port == 7001))
        .cloned()
        .collect();
    assert!(left.len() < regs.len());
    assert_eq!(v3_rows(&db), left);
    let (files, keys, names): (i64, i64, i64) = read_only(&db)
        .query_row(
            "SELECT (SELECT count(*) FROM files),
                    (SELECT count(*) FROM file_keys k JOIN files f ON f.id = k.file_id),
                    (SELECT count(DISTINCT file_id) FROM registrations)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("count");
    let all_keys: i64 = read_only(&db)
        .query_row("SELECT count(*) FROM file_keys", [], |r| r.get(0))
        .expect("count");
    assert_eq!((files, keys, all_keys), (names, names, names));
}

/// A version-1 file (before the per-host counts) goes through every later
/// migration on start, in one transaction: every registration kept, the
/// per-host counts computed from them, SEARCH and FIND answer as before,
/// and writes go on.
#[test]
fn a_version_1_database_is_migrated_on_start_keeping_every_registration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("registry.db");
    let regs = registrations();
    build(&db, &regs, 1);
    assert_eq!(user_version(&db), 1);

    let (addr, server) = start(&db, &[]);
    assert_eq!(user_version(&db), 4, "migrated to schema 4 on start-up");
    let expected: BTreeSet<Reg> = regs.iter().cloned().collect();
    assert_eq!(v3_rows(&db), expected, "every row kept");
    let mut per_host = std::collections::BTreeMap::<String, i64>::new();
    for r in &regs {
        *per_host.entry(r.host.clone()).or_default() += 1;
    }
    let counts: std::collections::BTreeMap<String, i64> = read_only(&db)
        .prepare("SELECT host, registrations FROM host_counts")
        .expect("host_counts")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("read host_counts")
        .map(|row| row.expect("row"))
        .collect();
    assert_eq!(counts, per_host, "per-host counts from the old rows");
    check_search(addr, &regs);
    let mut wire = Wire::connect(addr);
    assert_eq!(
        wire.call("FIND holi phot"),
        [
            "RESULTS 1",
            &format!("1 5 {HASH_B} holiday photos 2024.zip")
        ]
    );
    assert_eq!(
        wire.ask(&format!("REGISTER 7009 7 {HASH_B} after v1.txt")),
        "OK"
    );
    assert_eq!(wire.call("FIND after")[0], "RESULTS 1");
    drop(wire);
    server.signal("TERM");
    let (status, stderr) = server.wait_exit(WAIT_TIMEOUT);
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_failed_migration_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("registry.db");
    let regs = registrations();
    build_v2(&db, &regs);
    // A hand-edited row whose content hash is not hex: its copy fails the
    // schema-3 CHECK, after the new tables were made and others copied.
    {
        let conn = Connection::open(&db).expect("open");
        conn.execute(
            "UPDATE registrations SET sha256 = ?1 WHERE seen_seq = 200",
            ["z".repeat(64)],
        )
        .expect("spoil one row");
        conn.close().expect("close");
    }
    let bytes_before = std::fs::read(&db).expect("read the file");
    let snapshot_before = v2_snapshot(&db);

    let out = run(
        &bin("dht-server"),
        &[
            "--db",
            db.to_str().expect("UTF-8"),
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        WAIT_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must refuse: {stderr}");
    assert!(stderr.contains("cannot migrate"), "{stderr}");

    assert_eq!(user_version(&db), 2, "still version 2");
    assert_eq!(
        v2_snapshot(&db),
        snapshot_before,
        "schema and rows as they were"
    );
    assert!(
        std::fs::read(&db).expect("read the file") == bytes_before,
        "the database file is byte for byte as it was"
    );

    // Repaired, the same file migrates, every registration kept.
    {
        let conn = Connection::open(&db).expect("open");
        conn.execute(
            "UPDATE registrations SET sha256 = ?1 WHERE seen_seq = 200",
            [HASH_A],
        )
        .expect("repair");
        conn.close().expect("close");
    }
    let (addr, _server) = start(&db, &[]);
    assert_eq!(user_version(&db), 4);
    let mut fixed = regs.clone();
    for r in fixed.iter_mut().filter(|r| r.seen_seq == 200) {
        r.sha256 = HASH_A.to_owned();
    }
    assert_eq!(v3_rows(&db), fixed.iter().cloned().collect());
    check_search(addr, &fixed);
}
