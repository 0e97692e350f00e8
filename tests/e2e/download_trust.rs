//! Downloads you can trust (issue 11): the real `dht-server` and `peer get`
//! against scripted fake sources (tests/support's [`FakeSource`]) and small
//! hostile registries in the test process.
//!
//! Each test is one reproduction of docs/reliability.md's rows 11.x; each
//! failed before its fix. Time limits of the downloader are shortened with
//! `P2P_TEST_TIMEOUT_SCALE` so stalls cost fractions of a second; the bounds
//! here are deadlines of the whole run, never timing assertions.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_peer::pieces::{PieceList, PIECE_SIZE};
use p2p_tests::{
    bin, hold_open, pseudo_random_bytes, run_with, serve_content, sha256_hex, wait_until,
    FakeRequest, FakeSource, Registry, Running, WAIT_TIMEOUT,
};

/// Deadline of one `peer get` (a debug build on a loaded 2-core machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The factor on the downloader's time limits in these tests: a 5 s
/// first-byte deadline becomes 0.5 s.
const SCALE: &str = "0.1";

/// A small file: the sequential path.
const SMALL: usize = 300_000 + 17;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn new_downloads() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let downloads = dir.path().join("downloads");
    fs::create_dir_all(&downloads).expect("downloads/");
    (dir, downloads)
}

fn get_args<'a>(server: &'a str, downloads: &'a Path, name: &'a str) -> Vec<&'a str> {
    vec![
        "--server",
        server,
        "--downloads",
        downloads.to_str().expect("UTF-8 temp path"),
        "get",
        name,
    ]
}

/// Runs `peer get NAME` (plus `extra`) with the shortened time limits.
fn get(server: &str, downloads: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = get_args(server, downloads, name);
    args.extend_from_slice(extra);
    run_with(
        &bin("peer"),
        &args,
        None,
        &[("P2P_TEST_TIMEOUT_SCALE", SCALE)],
        RUN_TIMEOUT,
    )
}

/// Starts `peer get NAME` in the background.
fn spawn_get(server: &str, downloads: &Path, name: &str) -> Running {
    let mut command = Command::new(bin("peer"));
    command
        .args(get_args(server, downloads, name))
        .env("P2P_TEST_TIMEOUT_SCALE", SCALE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running::spawn(command, &bin("peer"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

fn assert_ok(output: &Output) {
    assert!(output.status.success(), "{}", describe(output));
}

/// Only `allowed` names (and nothing else) are in `dir`.
fn assert_only(dir: &Path, allowed: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read downloads/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "in {}", dir.display());
}

/// A source that serves `content` honestly, but slowly: `chunk` bytes at a
/// time with a short pause (a slow uplink, not a synchronisation).
fn slow_honest(content: Vec<u8>, chunk: usize, pause: Duration) -> FakeSource {
    FakeSource::start(move |request, stream| {
        if request.is_pieces() {
            return serve_content(request, stream, &content, None);
        }
        let first = request.range.map_or(0, |(first, _)| first as usize);
        let body = &content[first.min(content.len())..];
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Length: {}\r\nETag: \"{}\"\r\n",
            if request.range.is_some() {
                "206 Partial Content"
            } else {
                "200 OK"
            },
            body.len(),
            sha256_hex(&content)
        );
        if request.range.is_some() {
            head.push_str(&format!(
                "Content-Range: bytes {first}-{}/{}\r\n",
                content.len() - 1,
                content.len()
            ));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).is_err() {
            return false;
        }
        for piece in body.chunks(chunk) {
            if stream.write_all(piece).is_err() {
                return false;
            }
            thread::sleep(pause);
        }
        true
    })
}

fn honest(content: Vec<u8>) -> FakeSource {
    FakeSource::start(move |request, stream| serve_content(request, stream, &content, None))
}

fn len_of(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// 11.1: a second `peer get` of the same name into the same folder while the
/// first runs is refused; the first publishes the verified file.
#[test]
fn a_second_get_of_one_name_waits_its_turn() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 11);
    let slow = slow_honest(content.clone(), 4 * 1024, Duration::from_millis(30));
    slow.register(&registry, "F", SMALL as u64, &sha256_hex(&content));
    let (_dir, downloads) = new_downloads();
    let server = registry.addr_string();

    let first = spawn_get(&server, &downloads, "F");
    let part = downloads.join("F.part");
    wait_until("the first get writes its .part", WAIT_TIMEOUT, || {
        len_of(&part) > 0
    });
    let second = get(&server, &downloads, "F", &[]);
    assert!(!second.status.success(), "{}", describe(&second));
    let err = text(&second.stderr);
    assert!(
        err.contains("another download of \"F\" is in progress"),
        "{}",
        describe(&second)
    );
    let (status, stderr) = first.wait_exit(RUN_TIMEOUT);
    assert!(status.success(), "first get: {stderr}");
    assert_eq!(fs::read(downloads.join("F")).expect("F"), content);
    assert_only(&downloads, &["F"]);
    println!("11.1: the second get was refused while the first ran; F verified");
}

/// 11.2: bytes another program writes into the `.part` during the download
/// are never published as verified.
#[test]
fn bytes_written_into_the_part_by_another_program_are_never_published() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 12);
    let slow = slow_honest(content.clone(), 4 * 1024, Duration::from_millis(20));
    slow.register(&registry, "T", SMALL as u64, &sha256_hex(&content));
    let (_dir, downloads) = new_downloads();
    let server = registry.addr_string();

    let running = spawn_get(&server, &downloads, "T");
    let part = downloads.join("T.part");
    wait_until("the get has written 64 KiB", WAIT_TIMEOUT, || {
        len_of(&part) > 64 * 1024
    });
    let tamper = fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .expect("open the .part as another program");
    tamper.write_all_at(b"EVIL", 0).expect("write EVIL");
    drop(tamper);
    let (status, stderr) = running.wait_exit(RUN_TIMEOUT);
    let target = downloads.join("T");
    if target.exists() {
        assert_eq!(fs::read(&target).expect("T"), content, "{stderr}");
    } else {
        assert!(!status.success());
    }
    // Whatever happened, the tampered bytes are gone.
    if part.exists() {
        let kept = fs::read(&part).expect(".part");
        assert!(!kept.starts_with(b"EVIL"), "tampered bytes kept for resume");
    }
    println!("11.2: EVIL written at offset 0 mid-download: never published (exit {status})");
}

/// 11.2 with the hash pipelined (issue 16.1): the digest is read back
/// behind the writer, so EVIL at offset 0 lands in bytes already hashed;
/// the `.part`'s change guard must notice it and the file is checked again.
#[test]
fn a_write_behind_the_hasher_is_noticed_and_never_published() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 31);
    let slow = slow_honest(content.clone(), 4 * 1024, Duration::from_millis(20));
    slow.register(&registry, "B", SMALL as u64, &sha256_hex(&content));
    let (_dir, downloads) = new_downloads();
    let running = spawn_get(&registry.addr_string(), &downloads, "B");
    let part = downloads.join("B.part");
    wait_until("the get has written 64 KiB", WAIT_TIMEOUT, || {
        len_of(&part) > 64 * 1024
    });
    let tamper = fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .expect("open the .part as another program");
    tamper.write_all_at(b"EVIL", 0).expect("write EVIL");
    drop(tamper);
    running.wait_for_line(
        |line| line.contains("was changed by another program during the download"),
        RUN_TIMEOUT,
    );
    let (status, stderr) = running.wait_exit(RUN_TIMEOUT);
    assert!(!status.success(), "EVIL published? {stderr}");
    assert!(!downloads.join("B").exists());
    println!("16.1: EVIL behind the hasher: noticed, checked again, not published");
}

/// 11.2 with the hash pipelined: a `truncate` by another program in the
/// middle of the body (the writer then extends the file again with a hole
/// of zeros) is noticed; nothing is published under the final name.
#[test]
fn a_part_truncated_by_another_program_is_never_published() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 32);
    let slow = slow_honest(content.clone(), 4 * 1024, Duration::from_millis(20));
    slow.register(&registry, "Z", SMALL as u64, &sha256_hex(&content));
    let (_dir, downloads) = new_downloads();
    let running = spawn_get(&registry.addr_string(), &downloads, "Z");
    let part = downloads.join("Z.part");
    wait_until("the get has written 64 KiB", WAIT_TIMEOUT, || {
        len_of(&part) > 64 * 1024
    });
    fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .and_then(|f| f.set_len(0))
        .expect("truncate the .part as another program");
    running.wait_for_line(
        |line| line.contains("was changed by another program"),
        RUN_TIMEOUT,
    );
    let (status, stderr) = running.wait_exit(RUN_TIMEOUT);
    let target = downloads.join("Z");
    if target.exists() {
        assert_eq!(fs::read(&target).expect("Z"), content, "{stderr}");
    } else {
        assert!(!status.success(), "{stderr}");
    }
    println!("16.1: a truncate mid-body: noticed, never published (exit {status})");
}

/// 11.2 on the multi-source path: pieces are written by several workers
/// and the whole-file digest is read back behind them; a write by another
/// program into a piece already hashed is noticed, and whatever the
/// download does then, the final name holds only the right bytes.
#[test]
fn a_tampering_writer_during_a_multi_source_download_is_caught() {
    let registry = Registry::start();
    let size = 3 * PIECE_SIZE as usize + 1000;
    let content = pseudo_random_bytes(size, 33);
    let sha = sha256_hex(&content);
    let list = PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).expect("hash");
    let doc = list.to_document().into_bytes();
    // The last two pieces are held back (head sent, body paused) until the
    // tamper has landed, so a write of ours always follows it, however late
    // the loaded test thread gets to it; at most 10 s.
    let tampered = Arc::new(AtomicBool::new(false));
    let mut sources = Vec::new();
    for _ in 0..2 {
        let content = content.clone();
        let doc = doc.clone();
        let tampered = Arc::clone(&tampered);
        let source = FakeSource::start(move |request: &FakeRequest, stream| {
            let late = request
                .range
                .is_some_and(|(first, _)| first >= 2 * PIECE_SIZE);
            if request.is_pieces() || !late {
                return serve_content(request, stream, &content, Some(&doc));
            }
            let Some((first, last)) = request.range else {
                return false;
            };
            let last = last.map_or(content.len() as u64 - 1, |l| {
                l.min(content.len() as u64 - 1)
            });
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nETag: \"{}\"\r\nContent-Range: bytes {first}-{last}/{}\r\n\r\n",
                last - first + 1,
                sha256_hex(&content),
                content.len()
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return false;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !tampered.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            stream
                .write_all(&content[first as usize..=last as usize])
                .is_ok()
        });
        source.register(&registry, "M", size as u64, &sha);
        sources.push(source);
    }
    let (_dir, downloads) = new_downloads();
    let running = spawn_get(&registry.addr_string(), &downloads, "M");
    let part = downloads.join("M.part");
    let record = downloads.join("M.part.pieces");
    // Both early pieces are recorded verified (written) before the tamper:
    // the record's four header lines, then one line per piece. Then no
    // write of ours is in flight when the tamper lands (the late pieces'
    // bodies wait for it), so it never falls in the guard's documented
    // residual window (between one of our `pwrite`s and the `fstat` after
    // it, docs/reliability.md 11.2), which a loaded machine can widen.
    wait_until("the early pieces are written", WAIT_TIMEOUT, || {
        fs::read_to_string(&record).is_ok_and(|r| r.lines().count() >= 6)
    });
    let tamper = fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .expect("open the .part as another program");
    tamper.write_all_at(b"EVIL", 0).expect("write EVIL");
    drop(tamper);
    tampered.store(true, Ordering::SeqCst);
    running.wait_for_line(
        |line| line.contains("was changed by another program"),
        RUN_TIMEOUT,
    );
    let (status, stderr) = running.wait_exit(RUN_TIMEOUT);
    let target = downloads.join("M");
    if target.exists() {
        assert_eq!(fs::read(&target).expect("M"), content, "{stderr}");
    } else {
        assert!(!status.success(), "{stderr}");
    }
    println!("16.1: EVIL during a multi-source download: never published (exit {status})");
}

/// 11.2: a `.part` that is a hard link to a file elsewhere is not written
/// through.
#[test]
fn a_part_that_is_a_hard_link_is_not_written_through() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 13);
    let source = honest(content.clone());
    source.register(&registry, "H", SMALL as u64, &sha256_hex(&content));
    let (dir, downloads) = new_downloads();
    let outside = dir.path().join("precious");
    fs::write(&outside, b"mine, not yours").expect("outside file");
    fs::hard_link(&outside, downloads.join("H.part")).expect("hard link");

    assert_ok(&get(&registry.addr_string(), &downloads, "H", &[]));
    assert_eq!(fs::read(&outside).expect("outside"), b"mine, not yours");
    assert_eq!(fs::read(downloads.join("H")).expect("H"), content);
    println!("11.2: a hard-linked .part was replaced, its other name untouched");
}

/// 11.3: three ports of one host do not outvote two hosts; the disagreement
/// is shown on stderr; `--sha256` pins another version.
#[test]
fn three_ports_of_one_host_do_not_outvote_two_hosts() {
    let registry = Registry::start();
    let good = pseudo_random_bytes(SMALL, 14);
    let evil = pseudo_random_bytes(SMALL, 153);
    let (good_sha, evil_sha) = (sha256_hex(&good), sha256_hex(&evil));
    // The poisoner's three processes register first...
    let poisoners: Vec<FakeSource> = (0..3)
        .map(|_| {
            let evil = evil.clone();
            let fake = FakeSource::start(move |r, s| serve_content(r, s, &evil, None));
            fake.register(&registry, "report.pdf", SMALL as u64, &evil_sha);
            fake
        })
        .collect();
    // ...then two honest hosts (listening on every loopback address, as a
    // registry may give a loopback source as 127.0.0.1).
    let honest_hosts: Vec<FakeSource> = [2u8, 3]
        .into_iter()
        .map(|last| {
            let good = good.clone();
            let fake =
                FakeSource::start_on("0.0.0.0", move |r, s| serve_content(r, s, &good, None));
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            p2p_tests::client_from(&registry, from)
                .register(fake.addr.port(), SMALL as u64, &good_sha, "report.pdf")
                .expect("register the honest host");
            fake
        })
        .collect();

    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "report.pdf", &[]);
    assert_ok(&output);
    assert_eq!(fs::read(downloads.join("report.pdf")).expect("file"), good);
    let err = text(&output.stderr);
    assert!(err.contains("disagree"), "{}", describe(&output));
    assert!(
        err.contains(&good_sha[..12]) && err.contains(&evil_sha[..12]),
        "{err}"
    );
    assert!(poisoners.iter().all(|p| p.requests().is_empty()));

    // The person may still choose the other version.
    let (_dir2, other) = new_downloads();
    let pinned = get(
        &registry.addr_string(),
        &other,
        "report.pdf",
        &["--sha256", &evil_sha],
    );
    assert_ok(&pinned);
    assert_eq!(fs::read(other.join("report.pdf")).expect("file"), evil);
    let missing = get(
        &registry.addr_string(),
        &other,
        "other.pdf",
        &["--sha256", &good_sha],
    );
    assert!(!missing.status.success());
    drop(honest_hosts);
    println!("11.3: 3 ports of one host vs 2 hosts: the 2 hosts' content, the choice on stderr");
}

/// A `peer get` whose sources disagree and whose chosen version's sources
/// all fail says why in one line: the versions are listed only once the
/// file is there (the contract's one-line reason).
#[test]
fn disagreeing_sources_that_all_fail_give_one_line() {
    let registry = Registry::start();
    let good_sha = sha256_hex(&pseudo_random_bytes(SMALL, 20));
    let evil_sha = sha256_hex(&pseudo_random_bytes(SMALL, 23));
    let missing = |_: &FakeRequest, stream: &mut TcpStream| {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        false
    };
    // One host registers a version; two hosts the other, which is chosen,
    // and neither of those two has the file any more.
    let lone = FakeSource::start(missing);
    lone.register(&registry, "gone.pdf", SMALL as u64, &evil_sha);
    let chosen: Vec<FakeSource> = [2u8, 3]
        .into_iter()
        .map(|last| {
            let fake = FakeSource::start_on("0.0.0.0", missing);
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            p2p_tests::client_from(&registry, from)
                .register(fake.addr.port(), SMALL as u64, &good_sha, "gone.pdf")
                .expect("register the host");
            fake
        })
        .collect();

    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "gone.pdf", &[]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let err = text(&output.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{}", describe(&output));
    assert!(
        lines[0].starts_with("peer: every source of \"gone.pdf\" failed"),
        "{}",
        describe(&output)
    );
    assert!(chosen.iter().all(|c| !c.requests().is_empty()));
}

/// 11.4: sources that accept and never answer cost a first-byte deadline
/// each, not 30 s; at most `MAX_SOURCES_TRIED` are tried.
#[test]
fn stalling_sources_cost_a_short_deadline_and_are_capped() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 16);
    let sha = sha256_hex(&content);
    let good = honest(content.clone());
    good.register(&registry, "S", SMALL as u64, &sha);
    let stallers: Vec<FakeSource> = (0..6)
        .map(|_| {
            let fake = FakeSource::start(|_, stream| hold_open(stream));
            fake.register(&registry, "S", SMALL as u64, &sha);
            fake
        })
        .collect();
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "S", &[]);
    assert_ok(&output);
    assert_eq!(fs::read(downloads.join("S")).expect("S"), content);
    assert!(stallers.iter().all(|s| s.connections() <= 2));

    // A registry full of stalling sources: at most MAX_SOURCES_TRIED asked.
    let many: Vec<FakeSource> = (0..p2p_peer::download::MAX_SOURCES_TRIED + 5)
        .map(|_| {
            let fake = FakeSource::start(|_, stream| hold_open(stream));
            fake.register(&registry, "N", SMALL as u64, &sha);
            fake
        })
        .collect();
    let output = get(&registry.addr_string(), &downloads, "N", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    let asked = many.iter().filter(|f| f.connections() > 0).count();
    assert!(
        asked <= p2p_peer::download::MAX_SOURCES_TRIED,
        "{asked} sources asked"
    );
    println!("11.4: 6 stalling sources before an honest one, then 25 stalling: {asked} asked");
}

/// 11.6: a source that sends its response head one byte at a time is cut
/// off by the head deadline, and the next source delivers.
#[test]
fn a_head_sent_one_byte_at_a_time_is_cut_off() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 17);
    let sha = sha256_hex(&content);
    let good = honest(content.clone());
    good.register(&registry, "D", SMALL as u64, &sha);
    let head = format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n", "x".repeat(1000));
    let trickler = FakeSource::start(move |_, stream| {
        for byte in head.bytes() {
            if stream.write_all(&[byte]).is_err() {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    });
    trickler.register(&registry, "D", SMALL as u64, &sha);
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "D", &[]);
    assert_ok(&output);
    assert_eq!(fs::read(downloads.join("D")).expect("D"), content);
    assert_eq!(trickler.requests().len(), 1);
    println!("11.6: a head trickled at 10 bytes/s was cut off by its deadline");
}

/// A hostile registry in the test process: answers every request line with
/// `reply(line, stream)`.
fn hostile_registry(reply: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reply = std::sync::Arc::new(reply);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let reply = std::sync::Arc::clone(&reply);
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    match stream.read(&mut byte) {
                        Ok(1) if byte[0] == b'\n' => {
                            let text = String::from_utf8_lossy(&line).into_owned();
                            reply(text.trim_end(), &mut stream);
                            line.clear();
                        }
                        Ok(1) => line.push(byte[0]),
                        _ => return,
                    }
                }
            });
        }
    });
    addr
}

/// 11.6: a registry that announces a million sources, or trickles its
/// reply, is cut off.
#[test]
fn a_registry_that_floods_or_trickles_is_cut_off() {
    let (_dir, downloads) = new_downloads();
    let flood = hostile_registry(|_, stream| {
        let _ = stream.write_all(b"FOUND 1000000\n");
        let line = format!("127.0.0.1:9 10 {}\n", "a".repeat(64));
        for _ in 0..1_000_000 {
            if stream.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    let output = get(&flood.to_string(), &downloads, "x", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("more items"),
        "{}",
        describe(&output)
    );

    let trickle = hostile_registry(|_, stream| {
        let reply = format!("FOUND 1\n127.0.0.1:9 10 {}\n", "a".repeat(64));
        for byte in reply.bytes() {
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    let output = get(&trickle.to_string(), &downloads, "x", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("no whole reply"),
        "{}",
        describe(&output)
    );
    assert_only(&downloads, &[]);
    println!("11.6: FOUND 1000000 refused at once; a reply trickled at 5 bytes/s cut off");
}

/// 11.7: a registered size larger than the free space is refused before a
/// byte is fetched; a `.part` whose bytes failed verification is removed.
#[test]
fn a_fake_size_never_fills_the_disk() {
    let registry = Registry::start();
    let zeros = FakeSource::start(|_, stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1152921504606846976\r\n\r\n");
        let _ = stream.write_all(&vec![0u8; 1024 * 1024]);
        false
    });
    let huge: u64 = 1 << 60;
    zeros.register(&registry, "Z", huge, &"0".repeat(64));
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "Z", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("not enough room"),
        "{}",
        describe(&output)
    );
    assert_eq!(zeros.connections(), 0);
    assert_only(&downloads, &[]);

    // Right length, wrong bytes: nothing of them stays.
    let content = pseudo_random_bytes(SMALL, 20);
    let wrong = pseudo_random_bytes(SMALL, 191);
    let liar = FakeSource::start(move |r, s| serve_content(r, s, &wrong, None));
    liar.register(&registry, "W", SMALL as u64, &sha256_hex(&content));
    let output = get(&registry.addr_string(), &downloads, "W", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert_only(&downloads, &[]);
    println!("11.7: a 1 EiB registration refused before connecting; bad bytes removed");
}

/// 11.8: names of 244 to 255 bytes download, and resume.
#[test]
fn the_longest_valid_names_download_and_resume() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 20);
    let sha = sha256_hex(&content);
    let (_dir, downloads) = new_downloads();
    for len in [244usize, 255] {
        let name = format!("{}.bin", "n".repeat(len - 4));
        assert_eq!(name.len(), len);
        let good = honest(content.clone());
        good.register(&registry, &name, SMALL as u64, &sha);
        // The newest source cuts the transfer in half: the honest one resumes.
        let half = content[..SMALL / 2].to_vec();
        let cut = FakeSource::start(move |_, stream| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SMALL}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&half);
            false
        });
        cut.register(&registry, &name, SMALL as u64, &sha);
        let output = get(&registry.addr_string(), &downloads, &name, &[]);
        assert_ok(&output);
        assert!(
            text(&output.stdout).contains(&format!("resumed at {}", SMALL / 2)),
            "{}",
            describe(&output)
        );
        assert_eq!(fs::read(downloads.join(&name)).expect("file"), content);
    }
    assert_eq!(fs::read_dir(&downloads).expect("dir").count(), 2);
    println!("11.8: names of 244 and 255 bytes downloaded, each resumed from half");
}

/// 11.9: a registry that names hosts (`localhost`, `2130706433`) or sends
/// control characters makes the peer connect nowhere and print no raw
/// control character.
#[test]
fn a_hostile_registry_cannot_make_the_peer_resolve_or_ring() {
    let content = pseudo_random_bytes(1000, 21);
    let target = honest(content.clone());
    let port = target.addr.port();
    let sha = sha256_hex(&content);
    let registry = hostile_registry(move |line, stream| {
        if line.starts_with("SEARCH") {
            let reply = format!(
                "FOUND 3\nlocalhost:{port} 1000 {sha}\n2130706433:{port} 1000 {sha}\n\
                 127.0.0.1\u{1b}]0;pwned\u{7}:{port} 1000 {sha}\n"
            );
            let _ = stream.write_all(reply.as_bytes());
        } else {
            let _ = stream.write_all(b"ERR BAD_REQUEST \x1b[2Jno\x07\n");
        }
    });
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.to_string(), &downloads, "file", &[]);
    assert!(!output.status.success(), "{}", describe(&output));
    assert_eq!(target.connections(), 0, "{}", describe(&output));
    for stream in [&output.stdout, &output.stderr] {
        assert!(
            !stream.iter().any(|&b| b == 0x1b || b == 0x07),
            "{}",
            describe(&output)
        );
    }
    assert_only(&downloads, &[]);
    let search = run_with(
        &bin("peer"),
        &["--server", &registry.to_string(), "search", "file"],
        None,
        &[],
        RUN_TIMEOUT,
    );
    assert!(
        !search.stdout.iter().any(|&b| b == 0x1b || b == 0x07),
        "{}",
        describe(&search)
    );
    println!("11.9: host names refused, control characters escaped");
}

/// 11.5: the first piece list comes from a liar that serves no pieces; the
/// honest source's good pieces fail against it, yet the honest source is
/// not blamed and delivers the file.
#[test]
fn a_lying_piece_list_does_not_blame_the_honest_source() {
    let registry = Registry::start();
    let size = 2 * PIECE_SIZE as usize + 1000;
    let content = pseudo_random_bytes(size, 22);
    let sha = sha256_hex(&content);
    // The honest source has no piece list (a plain HTTP server).
    let good = honest(content.clone());
    good.register(&registry, "L", size as u64, &sha);
    // The liar's list claims the registered size and digest, with the
    // piece hashes of other bytes; it serves no piece.
    let mut lie = PieceList::hash(
        &mut &pseudo_random_bytes(size, 233)[..],
        PIECE_SIZE,
        &mut |_| {},
    )
    .expect("hash");
    lie.sha256 = sha.clone();
    let doc = lie.to_document().into_bytes();
    let liar = FakeSource::start(move |request: &FakeRequest, stream| {
        if request.is_pieces() {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", doc.len()).into_bytes();
            out.extend_from_slice(&doc);
            return stream.write_all(&out).is_ok();
        }
        let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        false
    });
    liar.register(&registry, "L", size as u64, &sha);
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "L", &[]);
    assert_ok(&output);
    assert_eq!(fs::read(downloads.join("L")).expect("L"), content);
    assert_only(&downloads, &["L"]);
    println!("11.5: a lying list first, no piece from the liar: the honest source delivered");
}

/// 11.10: a source that is not our peer: `100 Continue` first, then a
/// chunked body.
#[test]
fn chunked_bodies_and_interim_answers_are_understood() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SMALL, 24);
    let body = content.clone();
    let source = FakeSource::start(move |request, stream| {
        if request.is_pieces() {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return true;
        }
        let mut out = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in body.chunks(7000) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        let _ = stream.write_all(&out);
        false
    });
    source.register(&registry, "C", SMALL as u64, &sha256_hex(&content));
    let (_dir, downloads) = new_downloads();
    let output = get(&registry.addr_string(), &downloads, "C", &[]);
    assert_ok(&output);
    assert_eq!(fs::read(downloads.join("C")).expect("C"), content);
    println!("11.10: 100 Continue then a chunked body with extensions and a trailer");
}
