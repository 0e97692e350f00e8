//! A black-box check of the contract's "Finding and batch downloads"
//! sentences (/work/shared/contract.md, "Additions, version 2") that
//! tests/e2e/find_batch.rs and tests/e2e/menu.rs leave open: `peer find --json`
//! counting the sources of one content, and exit 2 on a registry that is
//! down; a batch `peer get` failing every file with one line each when the
//! registry is down; a batch whose files are all fetched or already there
//! (with `--jobs 1` and with `--find`) exiting 0; the menu's "Download
//! which" prompt ending cleanly on end of input.
//!
//! These need `peer find`, batch `peer get` and menu 2's FIND list (from
//! branch `find`); kept apart from tests/e2e/contract_v2.rs, which was written
//! before that branch was merged.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use p2p_tests::{
    bin, pseudo_random_bytes, run, serve_content, sha256_hex, FakeSource, Peer, Registry,
    WAIT_TIMEOUT,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn peer(args: &[&str]) -> Output {
    run(&bin("peer"), args, WAIT_TIMEOUT)
}

/// "`peer find WORDS...`: … `--json` prints one JSON array of objects with
/// the keys `name`, `size`, `sha256`, `sources`. Exit 0 with at least one
/// hit, 1 with none, 2 on any other failure."
#[test]
fn find_json_counts_the_sources_of_a_content_and_a_dead_registry_is_2() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let content = b"a road trip, filmed".as_slice();
    let _a = Peer::serve(&registry, &[("Road Trip.mp4", content)], &["--ui", "off"]);
    let _b = Peer::serve(&registry, &[("Road Trip.mp4", content)], &["--ui", "off"]);

    // Words as separate arguments, prefixes, any case.
    let out = peer(&["--server", &server, "find", "--json", "ROAD", "tri"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_str(text(&out.stdout).trim()).expect("stdout is one JSON value");
    let hits = json.as_array().expect("an array");
    assert_eq!(hits.len(), 1, "{json}");
    let hit = hits[0].as_object().expect("an object");
    let mut keys: Vec<&str> = hit.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["name", "sha256", "size", "sources"]);
    assert_eq!(hit["name"], "Road Trip.mp4");
    assert_eq!(hit["size"], content.len());
    assert_eq!(hit["sha256"], sha256_hex(content).as_str());
    assert_eq!(hit["sources"], 2, "two peers share it");

    // Every word must match: one that matches nothing is no hit.
    let out = peer(&["--server", &server, "find", "--json", "road", "zebra"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let none: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(none, serde_json::json!([]));

    // The registry down: 2, with --json and without.
    for json in [true, false] {
        let mut args = vec!["--server", "127.0.0.1:1", "find"];
        if json {
            args.push("--json");
        }
        args.push("road");
        let out = peer(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).trim().is_empty(), "says why");
    }
}

/// "… otherwise non-zero, with one line per file that failed saying why."
#[test]
fn a_batch_with_the_registry_down_names_every_file_that_failed() {
    let (_dir, shared, downloads) = Peer::folders();
    let out = peer(&[
        "--server",
        "127.0.0.1:1",
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
        "get",
        "first.bin",
        "second.bin",
        "third.bin",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    for name in ["first.bin", "second.bin", "third.bin"] {
        let lines = stderr.lines().filter(|l| l.contains(name)).count();
        assert_eq!(lines, 1, "one line for {name}:\n{stderr}");
    }
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 0);
}

/// "Exit 0 only when every file ends up in the downloads folder, verified
/// (a file already there with the same content counts)", with `--jobs 1`
/// and with `--find`.
#[test]
fn a_batch_of_files_fetched_or_already_there_exits_0() {
    let registry = Registry::start();
    let files: [(&str, &[u8]); 3] = [
        ("song one.ogg", b"one one one"),
        ("song two.ogg", b"two two"),
        ("song three.ogg", b"three"),
    ];
    let _source = Peer::serve(&registry, &files, &["--ui", "off"]);
    let server = registry.addr_string();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(downloads.join("song two.ogg"), b"two two").unwrap();
    let common = [
        "--server",
        &server,
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
    ];

    let mut args = common.to_vec();
    args.extend_from_slice(&["get", "song one.ogg", "song two.ogg", "--jobs", "1"]);
    let out = peer(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let mut args = common.to_vec();
    args.extend_from_slice(&["get", "--find", "song"]);
    let out = peer(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (name, content) in files {
        assert_eq!(
            std::fs::read(downloads.join(name)).unwrap(),
            content,
            "{name}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "nothing else, no .part: {names:?}");
}

/// "End of input (Ctrl-D) exits cleanly, like choosing exit", also at menu
/// 2's "Download which" prompt of FIND matches.
#[test]
fn end_of_input_at_the_choice_of_find_matches_exits_cleanly() {
    let registry = Registry::start();
    let _source = Peer::serve(
        &registry,
        &[("Holiday Photos.zip", b"photos")],
        &["--ui", "off"],
    );
    let server = registry.addr_string();
    let (_dir, shared, downloads) = Peer::folders();
    let mut child = Command::new(bin("peer"))
        .args([
            "--server",
            &server,
            "--shared",
            shared.to_str().unwrap(),
            "--downloads",
            downloads.to_str().unwrap(),
            "--port",
            "0",
            "--ui",
            "off",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the menu");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    stdin.write_all(b"2\nholiday\n").unwrap();
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(WAIT_TIMEOUT)
            .unwrap_or_else(|_| panic!("no numbered match listed: {seen:?}"));
        let numbered = line.trim_start().starts_with("1) Holiday Photos.zip");
        seen.push(line);
        if numbered {
            break;
        }
    }
    drop(stdin); // Ctrl-D at "Download which"
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the menu did not exit"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(!downloads.join("Holiday Photos.zip").exists());
}

/// "`--jobs N` bounds the files fetched at once." A fake source holds every
/// file's answer until a third one is asked for at the same time (or 1 s
/// passed, so a correct peer is not stuck), and counts the most in flight.
#[test]
fn jobs_bounds_the_files_fetched_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let registry = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("part {i}.bin"), pseudo_random_bytes(1000, 40 + i)))
        .collect();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak, served) = (Arc::clone(&in_flight), Arc::clone(&most), files.clone());
    let source = FakeSource::start(move |request, stream| {
        let file = served
            .iter()
            .find(|(name, _)| request.path == format!("/files/{}", encode(name)));
        let Some((_, content)) = file.filter(|_| request.method == "GET") else {
            return serve_content(request, stream, b"", None);
        };
        let count = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(count, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while now.load(Ordering::SeqCst) <= 2 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // Out of flight before the last byte: the peer cannot finish this
        // file, and start another, before the count went down.
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\n\r\n",
            content.len(),
            sha256_hex(content)
        );
        let (body, last) = content.split_at(content.len() - 1);
        let ok = stream.write_all(head.as_bytes()).is_ok() && stream.write_all(body).is_ok();
        now.fetch_sub(1, Ordering::SeqCst);
        ok && stream.write_all(last).is_ok()
    });
    for (name, content) in &files {
        source.register(&registry, name, content.len() as u64, &sha256_hex(content));
    }
    let (_dir, shared, downloads) = Peer::folders();
    let server = registry.addr_string();
    let mut args = vec![
        "--server",
        &server,
        "--shared",
        shared.to_str().unwrap(),
        "--downloads",
        downloads.to_str().unwrap(),
        "get",
        "--jobs",
        "2",
    ];
    args.extend(files.iter().map(|(name, _)| name.as_str()));
    let out = peer(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for (name, content) in &files {
        assert_eq!(
            &std::fs::read(downloads.join(name)).unwrap(),
            content,
            "{name}"
        );
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} files were fetched at once with --jobs 2");
}

/// Percent-encodes a name as the peer does in `/files/<name>` (spaces as
/// `%20`; letters, digits and `-._~` as they are).
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
