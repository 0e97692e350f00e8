//! Pipelined writes (issue 15, the write path): a client that sends many
//! requests without waiting has the writes already in the server's read
//! buffer submitted together and answered after one commit, in order, and a
//! read that follows them sees them. Every `OK` still means committed: a
//! commit that fails answers none of its writes `OK`, and a `kill -9` after
//! the `OK`s loses none of them.
//!
//! Each test starts its own `dht-server` on `127.0.0.1:0` and speaks raw
//! bytes to it; waits poll a condition until a deadline.

use p2p_tests::{Registry, Wire};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// Writes pipelined in one send: more than one read buffer's worth (8 KiB),
/// at most what one SEARCH lists (200 sources).
const PIPELINED: u16 = 150;

fn register_line(port: u16, name: &str) -> String {
    format!("REGISTER {port} 5 {HASH} {name}\n")
}

/// The value of metric `name`, which must be shown.
fn metric(http: &str, name: &str) -> u64 {
    p2p_tests::metric(http, name).unwrap_or_else(|| panic!("no metric {name} on {http}"))
}

/// N REGISTERs then a SEARCH, sent at once: N `OK`s in order, then a SEARCH
/// that lists every one of them (read-your-writes on one connection), with
/// the index and without it.
#[test]
fn pipelined_registers_then_a_search_see_every_write() {
    for extra in [&["--memory-index"][..], &[][..]] {
        let mut registry = Registry::start_with(extra);
        let mut wire = Wire::connect(registry.addr);
        let mut batch = String::new();
        for port in 1..=PIPELINED {
            batch.push_str(&register_line(port, "shared name.txt"));
        }
        batch.push_str("SEARCH shared name.txt\n");
        wire.send(&batch);
        for port in 1..=PIPELINED {
            assert_eq!(wire.line(), "OK", "REGISTER from port {port} ({extra:?})");
        }
        let found = wire.reply();
        assert_eq!(found[0], format!("FOUND {PIPELINED}"), "{extra:?}");
        let mut ports: Vec<u16> = found[1..]
            .iter()
            .map(|l| {
                let addr = l.split(' ').next().expect("a source");
                addr.rsplit(':').next().unwrap().parse().expect("a port")
            })
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, (1..=PIPELINED).collect::<Vec<_>>(), "{extra:?}");
        registry.stop();
    }
}

/// The writes of one pipelining connection share commits: N REGISTERs sent
/// at once take far fewer than N commits. (Before pipelined writes, each
/// was read, committed and answered alone: N commits.)
#[test]
fn pipelined_writes_share_commits() {
    let mut registry = Registry::start_with(&["--http", "127.0.0.1:0"]);
    let http = registry.http_addr();
    let commits_before = metric(&http, "p2p_registry_commit_batch_size_count");
    let mut wire = Wire::connect(registry.addr);
    let batch: String = (1..=PIPELINED)
        .map(|port| register_line(port, "one commit.txt"))
        .collect();
    wire.send(&batch);
    for port in 1..=PIPELINED {
        assert_eq!(wire.line(), "OK", "REGISTER from port {port}");
    }
    let commits = metric(&http, "p2p_registry_commit_batch_size_count") - commits_before;
    assert!(
        commits <= u64::from(PIPELINED) / 4,
        "{PIPELINED} pipelined REGISTERs took {commits} commits"
    );
    assert_eq!(
        metric(&http, "p2p_registry_commit_batch_size_sum"),
        u64::from(PIPELINED)
    );
    registry.stop();
}

/// Lines that are not writes, or not valid, end a run and are answered in
/// their place; every write around them gets its own outcome, in order
/// (OK, NOT_FOUND, OK <n>, and ERR busy from the per-host limit, in one run).
#[test]
fn a_pipeline_with_invalid_lines_in_the_middle_is_answered_in_order() {
    let mut registry = Registry::start_with(&["--max-per-host", "3"]);
    let mut wire = Wire::connect(registry.addr);
    let mut batch = String::new();
    batch.push_str(&register_line(7001, "a.txt"));
    batch.push_str("REGISTER 7001 five\n"); // malformed
    batch.push_str(&register_line(7001, "b.txt"));
    batch.push_str("FROBNICATE\n"); // unknown command
    batch.push_str(&register_line(7001, "c.txt"));
    batch.push_str(&register_line(7001, "d.txt")); // the fourth: over the limit
    batch.push_str("UNREGISTER 7001 never registered.txt\n");
    batch.push_str("HEARTBEAT 7001\n");
    batch.push_str("UNREGISTER 7001 b.txt\n");
    batch.push_str("SEARCH a.txt\n");
    batch.push_str("SEARCH b.txt\n");
    batch.push_str("SEARCH d.txt\n");
    batch.push_str("PING\n");
    wire.send(&batch);
    assert_eq!(wire.line(), "OK", "REGISTER a.txt");
    assert!(
        wire.line().starts_with("ERR bad_request "),
        "malformed line"
    );
    assert_eq!(wire.line(), "OK", "REGISTER b.txt");
    assert!(
        wire.line().starts_with("ERR unknown_command "),
        "unknown command"
    );
    assert_eq!(wire.line(), "OK", "REGISTER c.txt");
    assert!(
        wire.line().starts_with("ERR busy "),
        "REGISTER over the limit"
    );
    assert_eq!(wire.line(), "NOT_FOUND", "UNREGISTER of nothing");
    assert_eq!(wire.line(), "OK 3", "HEARTBEAT");
    assert_eq!(wire.line(), "OK", "UNREGISTER b.txt");
    assert_eq!(wire.reply().len(), 2, "SEARCH a.txt finds one source");
    assert_eq!(wire.line(), "NOT_FOUND", "SEARCH b.txt, unregistered");
    assert_eq!(wire.line(), "NOT_FOUND", "SEARCH d.txt, refused");
    assert_eq!(wire.line(), "PONG");
    registry.stop();
}

/// A pipelined run whose commit fails (injected through the debug builds'
/// `P2P_FAULT`, since no input can cause one) is answered with errors, not
/// one `OK`; the server goes on, a read after the run does not see the
/// writes, and after a restart they are not there, while what was committed
/// before is.
#[test]
fn a_failed_commit_acknowledges_no_write_of_its_run() {
    let mut registry =
        Registry::start_with_env(&[], &[("P2P_FAULT", "writer-commit-fail-after:1")]);
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.ask(register_line(7001, "kept.txt").trim_end()), "OK");
    let mut batch: String = (0..20)
        .map(|i| register_line(7001, &format!("lost {i}.txt")))
        .collect();
    batch.push_str("SEARCH lost 0.txt\nSEARCH kept.txt\nPING\n");
    wire.send(&batch);
    for i in 0..20 {
        let answer = wire.line();
        assert!(
            answer.starts_with("ERR internal "),
            "REGISTER lost {i}.txt, whose commit failed, answered {answer:?}"
        );
    }
    assert_eq!(wire.line(), "NOT_FOUND", "SEARCH lost 0.txt");
    assert_eq!(wire.reply().len(), 2, "SEARCH kept.txt");
    assert_eq!(wire.line(), "PONG");
    drop(wire);
    registry.stop();
    registry.restart(&[]);
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(wire.call("SEARCH kept.txt").len(), 2);
    for i in 0..20 {
        assert_eq!(wire.ask(&format!("SEARCH lost {i}.txt")), "NOT_FOUND");
    }
    registry.stop();
}

/// `kill -9` right after the `OK`s of a pipelined run: every one of them
/// is there after a restart.
#[test]
fn pipelined_oks_survive_kill_9() {
    let mut registry = Registry::start_with(&["--memory-index"]);
    let mut wire = Wire::connect(registry.addr);
    let batch: String = (1..=PIPELINED)
        .map(|port| register_line(port, &format!("file {port}.txt")))
        .collect();
    wire.send(&batch);
    for port in 1..=PIPELINED {
        assert_eq!(wire.line(), "OK", "REGISTER file {port}.txt");
    }
    registry.crash();
    registry.restart(&["--memory-index"]);
    let mut wire = Wire::connect(registry.addr);
    for port in 1..=PIPELINED {
        let found = wire.call(&format!("SEARCH file {port}.txt"));
        assert_eq!(
            found,
            ["FOUND 1".to_owned(), format!("127.0.0.1:{port} 5 {HASH}")],
            "file {port}.txt after kill -9"
        );
    }
    registry.stop();
}

/// New names enter the full-text index once per commit (schema 4, no
/// trigger): a run that registers new names and unregisters some of them
/// again before its commit leaves FIND and the index exactly right, and
/// SQLite's own FTS5 integrity check (which compares the index with the
/// `files` table) passes after a restart.
#[test]
fn new_names_unregistered_in_the_same_commit_leave_the_full_text_index_right() {
    let mut registry = Registry::start();
    let mut wire = Wire::connect(registry.addr);
    let mut batch = String::new();
    for i in 0..40 {
        batch.push_str(&register_line(7001, &format!("batched word{i}.txt")));
        if i % 3 == 0 {
            batch.push_str(&format!("UNREGISTER 7001 batched word{i}.txt\n"));
        }
    }
    batch.push_str("FIND batched\n");
    wire.send(&batch);
    for i in 0..40 {
        assert_eq!(wire.line(), "OK", "REGISTER batched word{i}.txt");
        if i % 3 == 0 {
            assert_eq!(wire.line(), "OK", "UNREGISTER batched word{i}.txt");
        }
    }
    let mut found: Vec<String> = wire.reply()[1..]
        .iter()
        .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
        .collect();
    found.sort();
    let mut kept: Vec<String> = (0..40)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("word{i}.txt"))
        .collect();
    kept.sort();
    assert_eq!(found, kept, "FIND lists the names kept, and only them");
    assert_eq!(
        wire.call("FIND word3")[0],
        "RESULTS 6",
        "word31, 32, 34, 35, 37, 38 (3, 30, 33, 36, 39 gone)"
    );
    drop(wire);
    registry.stop();

    let conn = rusqlite::Connection::open(&registry.db).expect("open the database");
    conn.execute(
        "INSERT INTO files_fts (files_fts, rank) VALUES ('integrity-check', 1)",
        [],
    )
    .expect("the full-text index matches the files table");
    registry.restart(&[]);
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(
        wire.call("FIND word1")[0],
        "RESULTS 8",
        "word1, word10-19 but 12, 15, 18"
    );
    registry.stop();
}
