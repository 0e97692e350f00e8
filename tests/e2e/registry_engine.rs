//! The registry's engine end to end (issue 15): SEARCH is answered from an
//! in-memory index, which must follow every acknowledged write, see a
//! change made by `p2p-admin` in another process within a second, and be
//! rebuilt from disk after `kill -9` exactly as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use p2p_tests::{bin, metric, run, wait_until, Registry, Running, WAIT_TIMEOUT};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// How soon the server's answers show a change another process committed
/// (docs/architecture.md, "Reads from memory").
const OTHER_PROCESS_SEEN_WITHIN: Duration = Duration::from_secs(1);

fn admin(db: &Path, args: &[&str]) -> String {
    let db = db.to_str().expect("UTF-8 temp path");
    let mut all = vec!["--db", db];
    all.extend_from_slice(args);
    let out = run(&bin("p2p-admin"), &all, WAIT_TIMEOUT);
    assert!(
        out.status.success(),
        "p2p-admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn ports(registry: &Registry, name: &str) -> Vec<u16> {
    registry
        .client()
        .search(name)
        .expect("SEARCH")
        .iter()
        .map(|s| s.port)
        .collect()
}

#[test]
fn an_admin_prune_under_register_load_is_seen_within_a_second_and_loses_nothing_else() {
    let registry = Registry::start_with(&["--memory-index"]);
    let mut c = registry.client();
    for name in ["shared.bin", "victim only.bin"] {
        c.register(7001, 1, HASH, name).expect("REGISTER victim");
    }
    c.register(7002, 1, HASH, "shared.bin")
        .expect("REGISTER other");

    // Load: one client registers new names from port 7100 until told to stop,
    // remembering each one acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let stop = Arc::clone(&stop);
        let mut c = registry.client();
        thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || acked.len() < 50 {
                let name = format!("load {i}");
                c.register(7100, i, HASH, &name)
                    .expect("REGISTER under load");
                acked.push(name);
                i += 1;
            }
            acked
        })
    };
    wait_until("some load", WAIT_TIMEOUT, || {
        !ports(&registry, "load 10").is_empty()
    });

    let out = admin(&registry.db, &["prune", "--peer", "127.0.0.1:7001"]);
    assert!(out.contains("removed 2 registrations"), "{out}");
    wait_until(
        "SEARCH to forget the pruned peer",
        OTHER_PROCESS_SEEN_WITHIN,
        || ports(&registry, "shared.bin") == [7002],
    );
    assert!(ports(&registry, "victim only.bin").is_empty());

    stop.store(true, Ordering::Relaxed);
    let acked = loader.join().expect("loader");
    for name in &acked {
        assert_eq!(ports(&registry, name), [7100], "{name} lost");
    }
    let listed = admin(&registry.db, &["list"]);
    for name in &acked {
        assert!(listed.contains(name.as_str()), "list misses {name}");
    }
}

/// Every answer the index gives for `names`, in order.
fn answers(registry: &Registry, names: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut c = registry.client();
    names
        .iter()
        .map(|n| {
            let sources = c.search(n).expect("SEARCH");
            let lines = sources
                .iter()
                .map(|s| format!("{} {} {}", s.addr(), s.size, s.sha256))
                .collect();
            (n.clone(), lines)
        })
        .collect()
}

/// Registers 20 names on 1 to 4 ports each, then reorders some sources
/// and removes others, so order and absence matter; returns the names.
fn fill(registry: &Registry) -> Vec<String> {
    let mut c = registry.client();
    let names: Vec<String> = (0..20).map(|i| format!("file {i}")).collect();
    for (i, name) in names.iter().enumerate() {
        for port in 1..=(i % 4 + 1) as u16 {
            c.register(port, i as u64, HASH, name).expect("REGISTER");
        }
    }
    c.heartbeat(2).expect("HEARTBEAT");
    assert!(c.unregister(1, &names[3]).expect("UNREGISTER"));
    c.register(1, 99, HASH, &names[7]).expect("re-REGISTER");
    names
}

#[test]
fn after_kill_9_the_index_rebuilt_from_disk_answers_as_before() {
    let mut registry = Registry::start_with(&["--memory-index"]);
    let names = fill(&registry);
    let before = answers(&registry, &names);
    assert_eq!(before[&names[7]][0], "127.0.0.1:1 99 ".to_owned() + HASH);

    registry.crash();
    registry.restart(&["--memory-index", "--http", "127.0.0.1:0"]);
    // The index loads after the server listens (SQLite answers until then):
    // compare once it is in, so the answers are the rebuilt index's.
    let http = registry.http_addr();
    wait_until("the index to be loaded", WAIT_TIMEOUT, || {
        metric(&http, "p2p_registry_change_log_lag") == Some(0)
    });
    assert_eq!(answers(&registry, &names), before);
}

/// The `p2p_registry_index_entries` gauge of `GET /metrics`, if shown.
fn index_entries(http: &str) -> Option<u64> {
    metric(http, "p2p_registry_index_entries")
}

#[test]
fn metrics_show_the_size_of_the_index() {
    let mut registry = Registry::start_with(&["--http", "127.0.0.1:0", "--memory-index"]);
    let http = registry.http_addr();
    assert_eq!(index_entries(&http), Some(0));
    let mut c = registry.client();
    for port in 1..=3 {
        c.register(port, 1, HASH, "counted").expect("REGISTER");
    }
    assert!(c.unregister(2, "counted").expect("UNREGISTER"));
    assert_eq!(index_entries(&http), Some(2));
    registry.stop();
}

/// `dht-server`'s test-only variable: the start-up load of the index waits
/// until this file exists (server/src/writer.rs, `LOAD_GATE_ENV`).
const LOAD_GATE_ENV: &str = "DHT_SERVER_INDEX_LOAD_GATE";

#[test]
fn while_the_index_loads_search_answers_as_the_database_and_writes_go_on() {
    // Registrations made without the index: these answers are SQLite's.
    let mut registry = Registry::start();
    let names = fill(&registry);
    let from_sql = answers(&registry, &names);
    registry.stop();

    // Restart with the index, its load held until the gate file exists.
    let gate = registry.dir.path().join("load gate");
    let db = registry.db.to_str().expect("UTF-8 temp path").to_owned();
    let args = [
        "--db",
        &db,
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--memory-index",
        "--http",
        "127.0.0.1:0",
    ];
    let gate_env = gate.to_str().expect("UTF-8 temp path");
    let (addr, process) = Running::start(
        &bin("dht-server"),
        &args,
        "listening on ",
        &[(LOAD_GATE_ENV, gate_env)],
    );
    registry.addr = addr;
    registry.process = Some(process);
    let http = registry.http_addr();

    // Listening, the index not loaded (it cannot be: the gate is shut),
    // and every SEARCH answered as the database answers it.
    assert_eq!(metric(&http, "p2p_registry_change_log_lag"), Some(1));
    assert_eq!(answers(&registry, &names), from_sql, "SEARCH while loading");

    // Writes go on while the index loads (the gate is still shut: a write
    // that waited for the load would time out in the client), SEARCH shows
    // them at once (from SQLite), and the loaded index has them too.
    let mut c = registry.client();
    c.register(4242, 7, HASH, &names[0])
        .expect("REGISTER during the load");
    assert!(c
        .unregister(2, &names[5])
        .expect("UNREGISTER during the load"));
    drop(c);
    let mut expected = from_sql;
    let first = expected.get_mut(&names[0]).expect("answer for names[0]");
    first.insert(0, format!("127.0.0.1:4242 7 {HASH}"));
    let fifth = expected.get_mut(&names[5]).expect("answer for names[5]");
    fifth.retain(|line| !line.starts_with("127.0.0.1:2 "));
    assert_eq!(answers(&registry, &names), expected, "SEARCH while loading");
    assert_eq!(metric(&http, "p2p_registry_change_log_lag"), Some(1));

    std::fs::write(&gate, b"").expect("open the gate");
    wait_until("the index to be loaded", WAIT_TIMEOUT, || {
        metric(&http, "p2p_registry_change_log_lag") == Some(0)
    });
    assert_eq!(
        answers(&registry, &names),
        expected,
        "SEARCH from the index"
    );
    let held: usize = expected.values().map(Vec::len).sum();
    assert_eq!(index_entries(&http), Some(held as u64));
    registry.stop();
}

/// FIND words over [`find_names`]: prefixes, case, phrases, diacritics, a
/// word of separators only, a word in every name.
const FINDS: [&[&str]; 14] = [
    &["file"],
    &["FILE", "1"],
    &["photos-20"],
    &["holiday", "photos"],
    &["café"],
    &["CAFÉ"],
    &["caf", "ü"],
    &["日本"],
    &["привет"],
    &["b-b"],
    &["-"],
    &["1", "2"],
    &["zzz"],
    &["a"],
];

/// Names with the edge cases of FIND, registered from 1 to 3 ports, with
/// two contents among them, some unregistered again.
fn find_names(registry: &Registry, round: u64) {
    let mut c = registry.client();
    let names = [
        "Holiday Photos-2024.zip",
        "holiday-photos a-a a",
        "CAFÉ über.txt",
        "Café.txt",
        "日本語テスト.txt",
        "Привет мир",
        "b b-b.b",
        "file 1",
        "file 12",
        "file 2 1",
    ];
    const OTHER: &str = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";
    for (i, name) in names.iter().enumerate() {
        let name = format!("{name} r{round}");
        for port in 1..=(i % 3 + 1) as u16 {
            let hash = if (i + port as usize).is_multiple_of(4) {
                OTHER
            } else {
                HASH
            };
            c.register(port, 10 + i as u64, hash, &name)
                .expect("REGISTER");
        }
        if i % 4 == 1 {
            assert!(c.unregister(1, &name).expect("UNREGISTER"));
        }
    }
}

/// Every FIND answer for [`FINDS`], as lines.
fn find_answers(registry: &Registry) -> Vec<Vec<String>> {
    let mut c = registry.client();
    FINDS
        .iter()
        .map(|words| {
            c.find(words)
                .expect("FIND")
                .iter()
                .map(|h| format!("{} {} {} {}", h.sources, h.size, h.sha256, h.name))
                .collect()
        })
        .collect()
}

#[test]
fn find_from_the_index_answers_as_the_database() {
    let mut registry = Registry::start();
    find_names(&registry, 0);
    let from_sql = find_answers(&registry);
    assert!(from_sql.iter().any(|a| a.len() > 1), "{from_sql:?}");

    // The same database, FIND now from the loaded index.
    registry.stop();
    registry.restart(&["--memory-index", "--http", "127.0.0.1:0"]);
    let http = registry.http_addr();
    wait_until("the index to be loaded", WAIT_TIMEOUT, || {
        metric(&http, "p2p_registry_change_log_lag") == Some(0)
    });
    assert_eq!(
        find_answers(&registry),
        from_sql,
        "FIND from the loaded index"
    );

    // Names added (and removed) after the load, then the database alone.
    find_names(&registry, 1);
    let from_memory = find_answers(&registry);
    assert_ne!(from_memory, from_sql, "the new names are found");
    registry.stop();
    registry.restart(&[]);
    assert_eq!(find_answers(&registry), from_memory, "FIND after writes");
    registry.stop();
}
