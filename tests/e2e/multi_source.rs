//! Multi-source downloads end to end: a real `dht-server`, several real
//! `peer serve` processes sharing the same file, and `peer get` fetching
//! pieces from all of them at once; beside them, fake sources in the test
//! process that send corrupt pieces, lie in their piece list, stall, or do
//! not know `/pieces`.
//!
//! What is checked is what a user sees: the file is byte-identical, a bad
//! source is named in the output and left out, a source that stalls or
//! disappears does not hold the download up, and an interrupted download
//! fetches only the pieces it is missing. No fixed sleeps: every wait polls
//! a condition with a deadline.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_peer::pieces::{PieceList, PIECE_SIZE};
use p2p_tests::{bin, pseudo_random_bytes, run, sha256_hex, wait_until, Peer, Registry, Running};

/// Generous: debug builds move tens of MiB, some through rate limits.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A file of several pieces, not a whole number of them.
const SIZE: usize = 6 * PIECE_SIZE as usize + 12_345;

/// Upload limit of the peers in the tests that interrupt something: slow
/// enough that a piece takes a good fraction of a second.
const SLOW_RATE: &str = "3MiB";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `peer --server R --downloads D get NAME`.
fn get(registry: &Registry, downloads: &Path, name: &str, extra: &[&str]) -> Output {
    let server = registry.addr_string();
    let downloads = downloads.to_str().expect("UTF-8 temp path");
    let mut args = vec!["--server", &server, "--downloads", downloads, "get", name];
    args.extend_from_slice(extra);
    run(&bin("peer"), &args, RUN_TIMEOUT)
}

/// Asserts success and returns stdout.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Neither a `.part` nor its record is left behind.
fn no_leftovers(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read downloads") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            !name.ends_with(".part") && !name.ends_with(".pieces"),
            "{name} left in {}",
            dir.display()
        );
    }
}

fn assert_same(path: &Path, content: &[u8]) {
    let got = std::fs::read(path).expect("downloaded file");
    assert_eq!(got.len(), content.len(), "{}: wrong size", path.display());
    assert!(got == content, "{}: content differs", path.display());
}

/// The piece list our peers serve for `content`.
fn list_of(content: &[u8]) -> PieceList {
    PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).expect("hash in memory")
}

/// `content` with one byte changed in every piece.
fn corrupted(content: &[u8]) -> Vec<u8> {
    let mut bad = content.to_vec();
    for start in (0..bad.len()).step_by(PIECE_SIZE as usize) {
        bad[start + 7] ^= 0xA5;
    }
    bad
}

/// How a fake source behaves.
#[derive(Debug, Clone)]
enum Fake {
    /// Serves `body` for every range (with `ETag: "<sha256>"`) and `list`
    /// (if any) at `/pieces/`.
    Serve {
        body: Arc<Vec<u8>>,
        sha256: String,
        list: Option<String>,
    },
    /// Accepts connections and never answers.
    Silent,
}

/// A fake source: tests/support's scripted [`p2p_tests::FakeSource`]
/// (keep-alive, single byte ranges) with one of the behaviours above.
/// Counts the file requests it answers.
struct FakeSource {
    inner: p2p_tests::FakeSource,
    addr: std::net::SocketAddr,
}

impl FakeSource {
    fn start(behaviour: Fake) -> FakeSource {
        let inner = p2p_tests::FakeSource::start(move |request, stream| match &behaviour {
            Fake::Silent => p2p_tests::hold_open(stream),
            Fake::Serve { body, sha256, list } => p2p_tests::serve_content_as(
                request,
                stream,
                body,
                sha256,
                list.as_deref().map(str::as_bytes),
            ),
        });
        let addr = inner.addr;
        FakeSource { inner, addr }
    }

    /// Requests for the file (not its piece list) received so far.
    fn file_requests(&self) -> usize {
        self.inner
            .requests()
            .iter()
            .filter(|r| !r.is_pieces())
            .count()
    }

    /// Registers this fake at the registry as a source of `name` with
    /// `content`'s size and digest (the registry records 127.0.0.1 and its
    /// port). It is then the most recently seen source.
    fn register(&self, registry: &Registry, name: &str, content: &[u8]) {
        self.inner
            .register(registry, name, content.len() as u64, &sha256_hex(content));
    }
}

/// Pieces recorded as verified in `<downloads>/<name>.part.pieces`.
fn recorded_pieces(downloads: &Path, name: &str) -> usize {
    let record = downloads.join(format!("{name}.part.pieces"));
    std::fs::read_to_string(record)
        .map(|text| {
            text.lines()
                .skip(4)
                .filter(|l| l.parse::<u64>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// Starts `peer get NAME` in the background.
fn spawn_get(registry: &Registry, downloads: &Path, name: &str) -> Running {
    let mut command = Command::new(bin("peer"));
    command
        .args([
            "--server",
            &registry.addr_string(),
            "--downloads",
            downloads.to_str().expect("UTF-8 temp path"),
            "get",
            name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running::spawn(command, &bin("peer"))
}

/// `n` peers serving `name` with `content`, each with `extra` options.
fn peers(registry: &Registry, n: usize, name: &str, content: &[u8], extra: &[&str]) -> Vec<Peer> {
    (0..n)
        .map(|_| Peer::serve(registry, &[(name, content)], extra))
        .collect()
}

fn port_of(peer: &Peer) -> String {
    format!("127.0.0.1:{}", peer.addr.port())
}

#[test]
fn several_sources_deliver_a_byte_identical_file() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 31);
    let name = "big file é.bin";
    // Limited, so no source can do it all before the others start.
    let sources = peers(&registry, 3, name, &content, &["--max-upload-rate", "8MiB"]);
    let (_dir, _shared, downloads) = Peer::folders();

    let out = ok(&get(&registry, &downloads, name, &[]));
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    assert!(out.contains("from 3 sources"), "{out}");
    let pieces = list_of(&content).len();
    assert!(
        out.contains(&format!("fetched {pieces} of {pieces} pieces")),
        "{out}"
    );
    let contributors = sources
        .iter()
        .filter(|p| out.contains(&format!("{} ", port_of(p))))
        .count();
    assert!(
        contributors >= 2,
        "pieces came from one source only:\n{out}"
    );

    // --max-sources 1 is the sequential path: one source, same bytes.
    let (_dir, _shared, one) = Peer::folders();
    let out = ok(&get(&registry, &one, name, &["--max-sources", "1"]));
    assert!(!out.contains("pieces"), "{out}");
    assert_same(&one.join(name), &content);
}

#[test]
fn a_corrupt_source_is_named_left_out_and_its_pieces_fetched_elsewhere() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 32);
    let name = "doc.bin";
    // Limited, so the honest peers cannot finish before the liar is asked.
    let _honest = peers(&registry, 2, name, &content, &["--max-upload-rate", "8MiB"]);
    // Right piece list, wrong bytes in every piece, right digest claimed.
    let liar = FakeSource::start(Fake::Serve {
        body: Arc::new(corrupted(&content)),
        sha256: sha256_hex(&content),
        list: Some(list_of(&content).to_document()),
    });
    liar.register(&registry, name, &content);
    let (_dir, _shared, downloads) = Peer::folders();

    let out = ok(&get(&registry, &downloads, name, &[]));
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    assert!(liar.file_requests() >= 1, "never asked the liar:\n{out}");
    let named = out
        .lines()
        .any(|l| l.contains(&liar.addr.to_string()) && l.contains("corrupt piece"));
    assert!(named, "the corrupt source is not named:\n{out}");
    assert!(
        !out.contains(&format!("pieces per source: {} ", liar.addr))
            && !out.contains(&format!(", {} ", liar.addr)),
        "the liar is credited with pieces:\n{out}"
    );
}

#[test]
fn a_lying_piece_list_is_found_out_and_the_file_is_still_right() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 33);
    let name = "list.bin";
    let _honest = peers(&registry, 2, name, &content, &["--max-upload-rate", "8MiB"]);
    // A list that matches its own wrong bytes, under the registered digest:
    // each piece checks out against it, only the whole-file digest cannot.
    let bad = corrupted(&content);
    let mut lie = list_of(&bad);
    lie.sha256 = sha256_hex(&content);
    let liar = FakeSource::start(Fake::Serve {
        body: Arc::new(bad),
        sha256: sha256_hex(&content),
        list: Some(lie.to_document()),
    });
    liar.register(&registry, name, &content);
    let (_dir, _shared, downloads) = Peer::folders();

    let out = ok(&get(&registry, &downloads, name, &[]));
    println!("{out}");
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    // Whichever list was taken first, the liar is named.
    assert!(
        out.contains(&liar.addr.to_string()),
        "the liar is not named:\n{out}"
    );
}

#[test]
fn a_source_that_never_answers_does_not_hold_the_download() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 34);
    let name = "patient.bin";
    let _honest = peers(&registry, 2, name, &content, &[]);
    let silent = FakeSource::start(Fake::Silent);
    silent.register(&registry, name, &content);
    let (_dir, _shared, downloads) = Peer::folders();

    let started = Instant::now();
    let out = ok(&get(&registry, &downloads, name, &[]));
    let took = started.elapsed();
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    // Far less than the 30 s a read may block: the others carried it.
    assert!(
        took < p2p_peer::download::READ_TIMEOUT / 2,
        "took {took:?}:\n{out}"
    );
}

#[test]
fn sources_without_piece_lists_are_used_one_after_the_other() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 35);
    let name = "old peers.bin";
    let fakes: Vec<FakeSource> = (0..2)
        .map(|_| {
            let fake = FakeSource::start(Fake::Serve {
                body: Arc::new(content.clone()),
                sha256: sha256_hex(&content),
                list: None,
            });
            fake.register(&registry, name, &content);
            fake
        })
        .collect();
    let (_dir, _shared, downloads) = Peer::folders();

    let out = ok(&get(&registry, &downloads, name, &[]));
    assert!(out.contains("serves a piece list"), "{out}");
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    let asked: usize = fakes.iter().map(|f| f.file_requests()).sum();
    assert_eq!(asked, 1, "one whole-file request was enough:\n{out}");
}

#[test]
fn a_source_that_disappears_midway_is_replaced() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 36);
    let name = "vanishing.bin";
    let mut sources = peers(
        &registry,
        3,
        name,
        &content,
        &["--max-upload-rate", SLOW_RATE],
    );
    let (_dir, _shared, downloads) = Peer::folders();

    let download = spawn_get(&registry, &downloads, name);
    wait_until("the first verified piece", RUN_TIMEOUT, || {
        recorded_pieces(&downloads, name) >= 1
    });
    let victim = sources.remove(0);
    let victim_addr = port_of(&victim);
    victim.process.expect("running").kill();

    // The download says what happened to it, and goes on without it.
    let line = download.wait_for_line(|l| l.contains(&victim_addr), RUN_TIMEOUT);
    assert!(
        line.contains("left out") || line.contains("again"),
        "{line}"
    );
    let (status, stderr) = download.wait_exit(RUN_TIMEOUT);
    assert!(status.success(), "{status}: {stderr}");
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
}

#[test]
fn an_interrupted_download_fetches_only_the_missing_pieces() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(SIZE, 37);
    let name = "resumable.bin";
    let _sources = peers(
        &registry,
        3,
        name,
        &content,
        &["--max-upload-rate", SLOW_RATE],
    );
    let (_dir, _shared, downloads) = Peer::folders();
    let pieces = list_of(&content).len();

    let download = spawn_get(&registry, &downloads, name);
    wait_until("three verified pieces", RUN_TIMEOUT, || {
        recorded_pieces(&downloads, name) >= 3
    });
    download.kill();
    let before = recorded_pieces(&downloads, name);
    assert!(
        before < pieces,
        "the download finished before it was killed"
    );
    assert!(!downloads.join(name).exists());

    let out = ok(&get(&registry, &downloads, name, &[]));
    assert_same(&downloads.join(name), &content);
    no_leftovers(&downloads);
    // Every recorded piece is checked and kept; only the rest is fetched.
    let kept_line = out
        .lines()
        .find(|l| l.contains("pieces already verified"))
        .unwrap_or_else(|| panic!("no resume line:\n{out}"));
    let kept: usize = kept_line
        .split(": ")
        .last()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read {kept_line:?}"));
    assert!(kept >= before, "{kept} kept of {before} recorded:\n{out}");
    assert!(
        out.contains(&format!("fetched {} of {pieces} pieces", pieces - kept)),
        "{out}"
    );
}
