//! Tests of the download paths against in-process fake sources and file
//! servers.

use super::part::PART_SUFFIX;
use super::*;
use p2p_proto::protocol::to_hex;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};

use p2p_tests::{serve_content, wait_until, FakeSource, WAIT_TIMEOUT};

fn fetch_with_defaults(
    sources: &[Source],
    name: &str,
    downloads: &Path,
    reporter: &Reporter,
) -> Result<Outcome, DownloadError> {
    download_from(sources, name, downloads, &Options::default(), reporter)
}

fn sha(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn source(addr: SocketAddr, content: &[u8]) -> Source {
    Source {
        host: addr.ip().to_string(),
        port: addr.port(),
        size: content.len() as u64,
        sha256: sha(content),
    }
}

/// A source that answers every request with `respond(request_head)` and
/// closes the connection: the one scripted fake of the test suites
/// (`p2p_tests::FakeSource`, in tests/support), which records the heads.
fn serve(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> (SocketAddr, Heads) {
    let fake = FakeSource::start(move |request, stream| {
        let _ = stream.write_all(&respond(&request.head));
        false
    });
    (fake.addr, Heads { fake, read: 0 })
}

/// The request heads a [`serve`] source received, in order.
struct Heads {
    fake: FakeSource,
    read: usize,
}

impl Heads {
    /// The next head received (waits for it, with a deadline).
    fn next(&mut self) -> String {
        let wanted = self.read + 1;
        wait_until("a request at the fake source", WAIT_TIMEOUT, || {
            self.fake.requests().len() >= wanted
        });
        self.read = wanted;
        self.fake.requests()[wanted - 1].head.clone()
    }
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\n\r\n",
        body.len(),
        sha(body)
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serves `content` as our file server does (ranges, `ETag`; no piece
/// list), one request per connection.
fn good_server(content: Vec<u8>) -> (SocketAddr, Heads) {
    let fake = FakeSource::start(move |request, stream| {
        serve_content(request, stream, &content, None);
        false
    });
    (fake.addr, Heads { fake, read: 0 })
}

#[test]
fn downloads_verifies_and_renames() {
    let content = b"hello peer".repeat(1000);
    let (addr, mut requests) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    let name = "a file é.txt";
    let outcome = fetch_with_defaults(
        &[source(addr, &content)],
        name,
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap();
    assert!(matches!(outcome, Outcome::Downloaded { resumed_at: 0, .. }));
    assert_eq!(fs::read(dir.path().join(name)).unwrap(), content);
    assert!(!dir.path().join(format!("{name}{PART_SUFFIX}")).exists());
    let head = requests.next();
    assert!(
        head.starts_with("GET /files/a%20file%20%C3%A9.txt HTTP/1.1\r\n"),
        "{head}"
    );
}

#[test]
fn a_bad_source_is_skipped_and_its_bytes_never_published() {
    let content = b"the real thing".to_vec();
    let wrong = b"the fake thing".to_vec();
    let (bad_addr, _) = serve(move |_| ok(&wrong));
    let (good_addr, _) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    // The bad source claims the good digest.
    let sources = [source(bad_addr, &content), source(good_addr, &content)];
    let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
    match outcome {
        Outcome::Downloaded { from, .. } => assert_eq!(from, good_addr.to_string()),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
}

#[test]
fn all_bad_sources_fail_without_a_file() {
    let content = b"0123456789".to_vec();
    let (addr, _) = serve(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcdefghij".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let err = fetch_with_defaults(
        &[source(addr, &content)],
        "f",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap_err();
    assert!(
        matches!(err, DownloadError::AllSourcesFailed { tried: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(!dir.path().join("f").exists());
    assert!(!dir.path().join("f.part").exists());
}

#[test]
fn never_reads_past_the_registered_size() {
    let content = b"short".to_vec();
    let (lying, _) = serve(|_| {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        out.extend(std::iter::repeat_n(b'x', 1000));
        out
    });
    let (no_length, _) =
        serve(|_| b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nshortAND MORE".to_vec());
    let dir = tempfile::tempdir().unwrap();
    for addr in [lying, no_length] {
        let err = fetch_with_defaults(
            &[source(addr, &content)],
            "f",
            dir.path(),
            &Reporter::quiet(),
        )
        .unwrap_err();
        let DownloadError::AllSourcesFailed { last, .. } = err else {
            panic!("{err}")
        };
        assert!(
            matches!(
                *last,
                SourceError::WrongLength { .. } | SourceError::TooLong { .. }
            ),
            "{last}"
        );
        assert!(!dir.path().join("f").exists());
    }
}

#[test]
fn resumes_a_part_file_with_a_guarded_range() {
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (addr, mut requests) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("big.part"), &content[..40_000]).unwrap();
    let outcome = fetch_with_defaults(
        &[source(addr, &content)],
        "big",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Downloaded {
                resumed_at: 40_000,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(fs::read(dir.path().join("big")).unwrap(), content);
    let head = requests.next();
    assert!(head.contains("Range: bytes=40000-\r\n"), "{head}");
    assert!(
        head.contains(&format!("If-Range: \"{}\"\r\n", sha(&content))),
        "{head}"
    );
}

#[test]
fn a_part_from_other_content_is_redone_from_scratch() {
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    let (addr, mut requests) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.part"), vec![0xEEu8; 10_000]).unwrap();
    fetch_with_defaults(
        &[source(addr, &content)],
        "f",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
    assert!(requests.next().contains("Range:"));
    assert!(!requests.next().contains("Range:"));
}

#[test]
fn a_200_reply_to_a_range_starts_over() {
    let content = b"abcdefghijklmnopqrstuvwxyz".to_vec();
    let body = content.clone();
    let (addr, _) = serve(move |_| ok(&body));
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.part"), b"abcdefXXXX").unwrap();
    fetch_with_defaults(
        &[source(addr, &content)],
        "f",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
}

#[test]
fn existing_files_are_kept() {
    let content = b"same".to_vec();
    let (addr, _) = serve(|_| panic!("must not be asked"));
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("same"), &content).unwrap();
    let outcome = fetch_with_defaults(
        &[source(addr, &content)],
        "same",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap();
    assert!(matches!(outcome, Outcome::AlreadyPresent { .. }));

    fs::write(dir.path().join("other"), b"different").unwrap();
    let err = fetch_with_defaults(
        &[source(addr, &content)],
        "other",
        dir.path(),
        &Reporter::quiet(),
    )
    .unwrap_err();
    assert!(matches!(err, DownloadError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("move or delete"), "{err}");
    assert_eq!(fs::read(dir.path().join("other")).unwrap(), b"different");
}

#[test]
fn names_are_checked_before_they_become_paths() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["..", "../escape", "a/b", "", " x"] {
        let err = fetch_with_defaults(&[], name, dir.path(), &Reporter::quiet()).unwrap_err();
        assert!(
            matches!(err, DownloadError::BadName { .. }),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn dead_and_refusing_sources_fall_through() {
    let content = b"payload".to_vec();
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (missing, _) = serve(|_| b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
    let (garbage, _) = serve(|_| b"SPDY/9 what\r\n\r\n".to_vec());
    let (good, _) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    let sources: Vec<Source> = [dead, missing, garbage, good]
        .into_iter()
        .map(|a| source(a, &content))
        .collect();
    fetch_with_defaults(&sources, "p", dir.path(), &Reporter::quiet()).unwrap();
    assert_eq!(fs::read(dir.path().join("p")).unwrap(), content);
}

#[test]
fn a_cut_transfer_is_resumed_by_the_next_source() {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    let half = content[..80_000].to_vec();
    let total = content.len();
    let (cut, _) = serve(move |_| {
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes();
        out.extend_from_slice(&half);
        out
    });
    let (good, mut requests) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    let sources = [source(cut, &content), source(good, &content)];
    let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Downloaded {
                resumed_at: 80_000,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), content);
    assert!(requests.next().contains("Range: bytes=80000-"));
}

#[test]
fn a_source_whose_file_changed_is_skipped_and_the_part_kept() {
    let content = b"0123456789abcdefghij".to_vec();
    let (changed, _) = serve(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\nETag: \"other\"\r\n\r\nXXXXXXXXXXXXXXXXXXXX"
            .to_vec()
    });
    let (good, mut requests) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.part"), &content[..10]).unwrap();
    let sources = [source(changed, &content), source(good, &content)];
    let outcome = fetch_with_defaults(&sources, "f", dir.path(), &Reporter::quiet()).unwrap();
    assert!(
        matches!(outcome, Outcome::Downloaded { resumed_at: 10, .. }),
        "{outcome:?}"
    );
    assert!(requests.next().contains("Range: bytes=10-"));
}

/// `n` in-process file servers sharing one folder that holds `name`.
fn peers(
    n: usize,
    name: &str,
    content: &[u8],
) -> (tempfile::TempDir, Vec<crate::http::FileServer>, Vec<Source>) {
    use crate::files::{HashCache, SharedDir};
    use crate::http::{FileServer, FileServerConfig};
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(name), content).unwrap();
    let mut servers = Vec::new();
    let mut sources = Vec::new();
    for _ in 0..n {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = SharedDir::open(dir.path()).unwrap();
        let server = FileServer::start(
            listener,
            shared,
            HashCache::new(),
            FileServerConfig::default(),
        )
        .unwrap();
        sources.push(source(server.local_addr(), content));
        servers.push(server);
    }
    (dir, servers, sources)
}

fn big(seed: u32) -> Vec<u8> {
    (0..(2 * PIECE_SIZE as u32 + 1000))
        .map(|i| (i.wrapping_mul(seed) >> 7) as u8)
        .collect()
}

#[test]
fn several_sources_share_a_big_file() {
    let content = big(2_654_435_761);
    let (_dir, _servers, sources) = peers(3, "big", &content);
    let downloads = tempfile::tempdir().unwrap();
    let outcome =
        fetch_with_defaults(&sources, "big", downloads.path(), &Reporter::quiet()).unwrap();
    let Outcome::Downloaded {
        from, resumed_at, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(resumed_at, 0);
    assert!(!from.is_empty());
    assert_eq!(fs::read(downloads.path().join("big")).unwrap(), content);
    assert!(!downloads.path().join("big.part").exists());
    assert!(!downloads.path().join("big.part.pieces").exists());
}

#[test]
fn a_multi_source_part_resumes_its_verified_pieces() {
    let content = big(40_503);
    let (_dir, _servers, sources) = peers(2, "r", &content);
    let downloads = tempfile::tempdir().unwrap();
    let part = downloads.path().join("r.part");
    // Piece 1 verified and recorded, piece 0 recorded but wrong.
    let list = crate::pieces::PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).unwrap();
    let mut seeded = vec![0u8; content.len()];
    let one = list.range(1);
    seeded[one.start as usize..one.end as usize]
        .copy_from_slice(&content[one.start as usize..one.end as usize]);
    fs::write(&part, &seeded).unwrap();
    let mut record =
        resume::Writer::create(&resume::record_path(&part), &list, &[true, true]).unwrap();
    record.append(2).unwrap();
    drop(record);

    let outcome = fetch_with_defaults(&sources, "r", downloads.path(), &Reporter::quiet()).unwrap();
    assert!(
        matches!(outcome, Outcome::Downloaded { resumed_at, .. } if resumed_at == PIECE_SIZE),
        "{outcome:?}"
    );
    assert_eq!(fs::read(downloads.path().join("r")).unwrap(), content);
}

#[test]
fn one_source_resumes_the_prefix_of_a_multi_source_part() {
    let content = big(97);
    let (_dir, _servers, sources) = peers(1, "p", &content);
    let downloads = tempfile::tempdir().unwrap();
    let part = downloads.path().join("p.part");
    let list = crate::pieces::PieceList::hash(&mut &content[..], PIECE_SIZE, &mut |_| {}).unwrap();
    // Pieces 0 and 2 of 3 are there; only piece 0 starts the file.
    let mut seeded = content.clone();
    let hole = list.range(1);
    seeded[hole.start as usize..hole.end as usize].fill(0);
    fs::write(&part, &seeded).unwrap();
    resume::Writer::create(&resume::record_path(&part), &list, &[true, false, true]).unwrap();

    let outcome = fetch_with_defaults(&sources, "p", downloads.path(), &Reporter::quiet()).unwrap();
    assert!(
        matches!(outcome, Outcome::Downloaded { resumed_at, .. } if resumed_at == PIECE_SIZE),
        "{outcome:?}"
    );
    assert_eq!(fs::read(downloads.path().join("p")).unwrap(), content);
    assert!(!resume::record_path(&part).exists());
}

#[test]
fn the_content_most_sources_have_is_chosen() {
    // Each source on its own host (issue 11.3: hosts are counted, not ports).
    let at = |port: u16, sha: &str| Source {
        host: format!("10.0.0.{port}"),
        port,
        size: 10,
        sha256: sha.into(),
    };
    let sources = [at(1, "a"), at(2, "b"), at(3, "b"), at(4, "a"), at(5, "b")];
    let chosen: Vec<u16> = choose_content(&sources).iter().map(|s| s.port).collect();
    assert_eq!(chosen, [2, 3, 5]);
    // A tie goes to the version seen most recently (first).
    let chosen: Vec<u16> = choose_content(&sources[..4])
        .iter()
        .map(|s| s.port)
        .collect();
    assert_eq!(chosen, [1, 4]);
    assert!(choose_content(&[]).is_empty());
}

#[test]
fn three_ports_of_one_host_are_one_vote() {
    let at = |host: &str, port: u16, sha: &str| Source {
        host: host.into(),
        port,
        size: 10,
        sha256: sha.into(),
    };
    // The poisoner is the most recent and has three ports; the honest
    // content has two hosts.
    let sources = [
        at("10.0.0.9", 1, "evil"),
        at("10.0.0.9", 2, "evil"),
        at("10.0.0.9", 3, "evil"),
        at("10.0.0.1", 4, "good"),
        at("10.0.0.2", 4, "good"),
    ];
    let chosen: Vec<String> = choose_content(&sources)
        .iter()
        .map(|s| s.sha256.clone())
        .collect();
    assert_eq!(chosen, ["good", "good"]);
    let alts = alternatives(&sources);
    assert_eq!(alts.len(), 2);
    assert_eq!((alts[1].hosts.len(), alts[1].sources), (1, 3));
}

#[test]
fn only_ip_literals_are_hosts() {
    for ok in ["127.0.0.1", "10.1.2.3", "[::1]", "[fe80::1]"] {
        assert!(is_ip_literal(ok), "{ok}");
    }
    for bad in [
        "localhost",
        "0x7f.0.0.1",
        "2130706433",
        "127.1",
        "::1",
        "[localhost]",
        "example.com",
        "",
    ] {
        assert!(!is_ip_literal(bad), "{bad}");
    }
}

#[test]
fn long_names_get_partial_names_that_fit() {
    assert_eq!(part_name("short.txt"), "short.txt.part");
    let longest_plain = "a".repeat(MAX_FILE_NAME_BYTES - ".part.pieces".len());
    assert_eq!(part_name(&longest_plain), format!("{longest_plain}.part"));
    for len in [244, 250, 255] {
        let name = "é".repeat(len / 2) + &"x".repeat(len % 2);
        let part = part_name(&name);
        assert!(part.len() + ".pieces".len() <= MAX_FILE_NAME_BYTES, "{len}");
        assert!(part.ends_with(".part"));
        assert_eq!(part, part_name(&name), "stable");
        assert_ne!(part, part_name(&(name.clone() + "y")));
    }
}

#[test]
fn a_symlink_in_place_of_the_part_is_not_written_through() {
    let content = b"through the link?".to_vec();
    let (addr, _) = good_server(content.clone());
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    fs::create_dir(&downloads).unwrap();
    let outside = dir.path().join("outside");
    fs::write(&outside, b"mine").unwrap();
    std::os::unix::fs::symlink(&outside, downloads.join("f.part")).unwrap();
    fetch_with_defaults(
        &[source(addr, &content)],
        "f",
        &downloads,
        &Reporter::quiet(),
    )
    .unwrap();
    assert_eq!(fs::read(&outside).unwrap(), b"mine");
    assert_eq!(fs::read(downloads.join("f")).unwrap(), content);
}
