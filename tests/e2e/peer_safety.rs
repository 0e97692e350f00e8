//! Hostile and broken sources against the real `peer get`.
//!
//! Each fake source is a raw HTTP server in the test process, registered
//! with the real `dht-server` (which records 127.0.0.1 and the fake's port)
//! after an honest `peer serve`, so the fake is the first source tried and
//! the honest peer the fallback. Whatever the fake does, `peer get` must:
//! finish within a bounded time, write nothing outside its downloads folder,
//! never leave unverified bytes under the final name, and, when a good
//! source exists, end with a byte-identical file.
//!
//! Every run happens in `<tmp>/home/user` with `--downloads
//! <tmp>/home/user/downloads`; afterwards the whole of `<tmp>` is walked and
//! any file or folder the run had no business creating fails the test.
//! Each test prints what it checked; `docs/reliability.md` sums them up.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use p2p_peer::download::READ_TIMEOUT;
use p2p_tests::{bin, pseudo_random_bytes, run_with, sha256_hex, Peer, Registry};
use tempfile::TempDir;

/// Room on top of the peer's own timeouts for starting the process, asking
/// the registry and a debug-build transfer on a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_secs(20);

/// The bound for a download with one source that stalls: the peer gives up
/// on it after its (scaled) read timeout, so twice that plus slack is
/// generous.
fn stall_bound() -> Duration {
    read_timeout() * 2 + SLACK
}

/// A download where no source stalls: generous for a debug build.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Bigger than the peer's 256 KiB copy buffer, so bodies arrive in pieces.
const SIZE: usize = 300_000 + 17;

/// The factor on the downloader's time limits in these runs
/// (`P2P_TEST_TIMEOUT_SCALE`): a stall costs 3 s, not 30.
const TIME_SCALE: f64 = 0.1;

/// The downloader's read timeout in these runs.
fn read_timeout() -> Duration {
    READ_TIMEOUT.mul_f64(TIME_SCALE)
}

/// A fake source with one behaviour per connection: tests/support's
/// scripted [`p2p_tests::FakeSource`], one request per connection.
struct FakeSource {
    inner: p2p_tests::FakeSource,
    addr: SocketAddr,
}

impl FakeSource {
    fn start(behaviour: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static) -> FakeSource {
        let inner = p2p_tests::FakeSource::start(move |request, stream| {
            behaviour(&request.head, stream);
            false
        });
        let addr = inner.addr;
        FakeSource { inner, addr }
    }

    /// Every request head it received, in order.
    fn requests(&self) -> Vec<String> {
        self.inner.requests().into_iter().map(|r| r.head).collect()
    }

    /// Connections accepted (also those that never sent a complete head).
    fn connections(&self) -> usize {
        self.inner.connections()
    }
}

/// Blocks until the client closes the connection (or it breaks): "stalls
/// forever" from the downloader's point of view, without outliving it.
fn hold(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes `bytes` in 4 KiB pieces until the client goes away.
fn write_forever(stream: &mut TcpStream, bytes: &[u8]) {
    let piece = &bytes[..bytes.len().min(4096)];
    while stream.write_all(piece).is_ok() {}
}

/// The `N` of a `Range: bytes=N-` request header, if any.
fn range_start(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("range").then(|| value.trim())
        })?
        .strip_prefix("bytes=")?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

/// `200 OK` head with the given extra header lines (each ending in CRLF).
fn ok_head(content: &[u8], extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\n{extra}\r\n",
        content.len(),
        sha256_hex(content)
    )
}

/// The shared world of one test: a registry, an honest peer sharing
/// [`GOOD_NAME`], and the content both agree on.
struct World {
    registry: Registry,
    content: Vec<u8>,
    /// The fallback source; killed when the world is dropped.
    _honest: Peer,
}

/// The name the honest peer shares (and fakes claim to share too).
const GOOD_NAME: &str = "holiday photos.bin";

impl World {
    fn start(seed: u64) -> World {
        let registry = Registry::start();
        let content = pseudo_random_bytes(SIZE, seed);
        let honest = Peer::serve(&registry, &[(GOOD_NAME, &content)], &[]);
        World {
            registry,
            content,
            _honest: honest,
        }
    }

    /// Registers `fake` as a source of `name` with the honest size and
    /// digest, and checks that the registry now lists it first.
    fn register_fake(&self, fake: &FakeSource, name: &str) {
        let mut client = self.registry.client();
        client
            .register(
                fake.addr.port(),
                self.content.len() as u64,
                &sha256_hex(&self.content),
                name,
            )
            .expect("register the fake source");
        let sources = client.search(name).expect("search");
        assert_eq!(
            sources[0].port,
            fake.addr.port(),
            "the fake source must be the first one tried: {sources:?}"
        );
    }

    fn unregister_fake(&self, fake: &FakeSource, name: &str) {
        assert!(self
            .registry
            .client()
            .unregister(fake.addr.port(), name)
            .expect("unregister the fake source"));
    }

    /// Runs `peer get name` in a fresh home; `seed_part` writes a `.part`
    /// holding that many correct leading bytes first.
    fn get(&self, name: &str, seed_part: Option<usize>, timeout: Duration) -> Download {
        let download = Download::prepare(name);
        if let Some(len) = seed_part {
            std::fs::write(download.part(), &self.content[..len]).expect("write .part");
        }
        download.run(&self.registry.addr_string(), timeout)
    }
}

/// One `peer get` run in its own directory tree.
struct Download {
    name: String,
    /// `<tmp>`: walked for stray files afterwards.
    root: TempDir,
    /// `<tmp>/home/user`: the working directory of the run.
    home: PathBuf,
    downloads: PathBuf,
    output: Option<Output>,
    elapsed: Duration,
}

impl Download {
    fn prepare(name: &str) -> Download {
        let root = tempfile::tempdir().expect("temp dir");
        let home = root.path().join("home").join("user");
        let downloads = home.join("downloads");
        std::fs::create_dir_all(&downloads).expect("create downloads/");
        std::fs::create_dir_all(home.join("shared")).expect("create shared/");
        Download {
            name: name.to_owned(),
            root,
            home,
            downloads,
            output: None,
            elapsed: Duration::ZERO,
        }
    }

    fn part(&self) -> PathBuf {
        self.downloads.join(format!("{}.part", self.name))
    }

    fn target(&self) -> PathBuf {
        self.downloads.join(&self.name)
    }

    /// Runs `peer get` against the registry at `server`.
    fn run(mut self, server: &str, timeout: Duration) -> Download {
        let args = [
            "--server",
            server,
            "--downloads",
            self.downloads.to_str().expect("UTF-8 temp path"),
            "--shared",
            "shared",
            "get",
            &self.name,
        ];
        let started = Instant::now();
        // `run_with` panics when the deadline passes: that is the bound.
        let scale = TIME_SCALE.to_string();
        let output = run_with(
            &bin("peer"),
            &args,
            Some(&self.home),
            &[("P2P_TEST_TIMEOUT_SCALE", &scale)],
            timeout,
        );
        self.elapsed = started.elapsed();
        self.output = Some(output);
        self
    }

    fn output(&self) -> &Output {
        self.output.as_ref().expect("the download ran")
    }

    fn describe(&self) -> String {
        let output = self.output();
        format!(
            "peer get {:?}: exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            output.status.code(),
            self.elapsed,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Nothing anywhere under `<tmp>` but the folders set up by
    /// [`Download::prepare`] and, inside `downloads/`, entries for which
    /// `allowed` holds.
    fn assert_no_stray_files(&self, allowed: impl Fn(&str) -> bool) {
        let mut stray = Vec::new();
        let mut stack = vec![self.root.path().to_owned()];
        let expected_dirs: BTreeSet<PathBuf> = [
            self.root.path().join("home"),
            self.home.clone(),
            self.home.join("shared"),
            self.downloads.clone(),
        ]
        .into();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let entry = entry.expect("entry");
                let path = entry.path();
                let kind = entry.file_type().expect("file type");
                if dir == self.downloads {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !kind.is_file() || !allowed(&name) {
                        stray.push(path);
                    }
                } else if kind.is_dir() && expected_dirs.contains(&path) {
                    stack.push(path);
                } else {
                    stray.push(path);
                }
            }
        }
        assert!(
            stray.is_empty(),
            "files the download had no business creating: {stray:?}\n{}",
            self.describe()
        );
    }

    /// Exit 0, the final file byte-identical, nothing else left anywhere.
    fn assert_identical(&self, content: &[u8]) {
        assert!(self.output().status.success(), "{}", self.describe());
        let got = std::fs::read(self.target())
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", self.target().display(), self.describe()));
        assert!(
            got == content,
            "the downloaded file differs ({} bytes, want {})\n{}",
            got.len(),
            content.len(),
            self.describe()
        );
        self.assert_no_stray_files(|name| name == self.name);
    }

    /// Exit 2 with one line on stderr; no file under the final name; at
    /// most the download's own `.part` (and what belongs to it) left.
    fn assert_failed(&self) {
        let output = self.output();
        assert_eq!(output.status.code(), Some(2), "{}", self.describe());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{}", self.describe());
        assert!(
            !self.target().exists(),
            "a failed download left its final name\n{}",
            self.describe()
        );
        let part = format!("{}.part", self.name);
        self.assert_no_stray_files(|name| name.starts_with(&part));
    }
}

/// Runs `case` (a fake source answering GOOD_NAME) with the honest peer as
/// fallback and checks the file arrives intact; returns the fake so the
/// caller can look at what it was asked.
fn with_fallback(
    world: &World,
    seed_part: Option<usize>,
    behaviour: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> FakeSource {
    let fake = FakeSource::start(behaviour);
    world.register_fake(&fake, GOOD_NAME);
    let download = world.get(GOOD_NAME, seed_part, RUN_TIMEOUT);
    download.assert_identical(&world.content);
    assert!(
        fake.connections() >= 1,
        "the fake source was never tried\n{}",
        download.describe()
    );
    world.unregister_fake(&fake, GOOD_NAME);
    fake
}

/// Runs a fake source as the only source of a name of its own: the
/// download must fail cleanly.
fn alone(
    world: &World,
    name: &str,
    seed_part: Option<usize>,
    timeout: Duration,
    behaviour: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> (FakeSource, Download) {
    let fake = FakeSource::start(behaviour);
    world.register_fake(&fake, name);
    let download = world.get(name, seed_part, timeout);
    download.assert_failed();
    assert!(fake.connections() >= 1, "{}", download.describe());
    (fake, download)
}

#[test]
fn sources_that_send_more_than_announced_never_overfill_the_file() {
    let world = World::start(1);
    let c = world.content.clone();
    let mut runs = 0;

    // A Content-Length beyond the registered size, and a body to match.
    let body = [c.as_slice(), &[0xAA; 5000]].concat();
    let long_length = move |_: &str, s: &mut TcpStream| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    };
    with_fallback(&world, None, long_length.clone());
    alone(&world, "long length.bin", None, RUN_TIMEOUT, long_length);
    runs += 2;

    // No Content-Length: the body runs until the close, past the size.
    let body = [c.as_slice(), b"EXTRA"].concat();
    let no_length = move |_: &str, s: &mut TcpStream| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(&body);
    };
    with_fallback(&world, None, no_length.clone());
    alone(&world, "no length.bin", None, RUN_TIMEOUT, no_length);
    runs += 2;

    // No Content-Length and a body that never ends: the peer must stop
    // reading at size + 1, not fill the disk.
    let body = c.clone();
    let endless = move |_: &str, s: &mut TcpStream| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        if s.write_all(&body).is_ok() {
            write_forever(s, &[0x55; 4096]);
        }
    };
    with_fallback(&world, None, endless.clone());
    let (_, download) = alone(&world, "endless.bin", None, RUN_TIMEOUT, endless);
    if let Ok(meta) = std::fs::metadata(download.part()) {
        assert!(
            meta.len() <= SIZE as u64,
            "{} bytes in the .part",
            meta.len()
        );
    }
    runs += 2;

    // The right Content-Length, then trailing garbage on the connection:
    // only the announced bytes are read, so the download may succeed.
    let body = [c.as_slice(), &[0xBB; 3000]].concat();
    let content = c.clone();
    with_fallback(&world, None, move |_, s| {
        let _ = s.write_all(ok_head(&content, "").as_bytes());
        let _ = s.write_all(&body);
    });
    runs += 1;

    // A response head that never ends: refused after a bounded amount.
    let endless_head = |_: &str, s: &mut TcpStream| {
        if s.write_all(b"HTTP/1.1 200 OK\r\nX-Filler: ").is_ok() {
            write_forever(s, &[b'a'; 4096]);
        }
    };
    with_fallback(&world, None, endless_head);
    alone(&world, "endless head.bin", None, RUN_TIMEOUT, endless_head);
    runs += 2;

    println!("more bytes than announced: 5 hostile sources, {runs} downloads checked");
}

#[test]
fn a_source_that_closes_early_is_resumed_elsewhere() {
    let world = World::start(2);
    let half = SIZE / 2;
    let c = world.content.clone();
    let cut = move |_: &str, s: &mut TcpStream| {
        let _ = s.write_all(ok_head(&c, "").as_bytes());
        let _ = s.write_all(&c[..half]);
        // Dropping the stream closes the connection mid-body.
    };
    with_fallback(&world, None, cut.clone());

    // Alone, it fails; the .part keeps only the true bytes received.
    let name = "cut short.bin";
    let (_, download) = alone(&world, name, None, RUN_TIMEOUT, cut);
    let part = std::fs::read(download.part()).unwrap_or_default();
    assert!(part.len() <= half, "{} bytes kept", part.len());
    assert!(
        part == world.content[..part.len()],
        "the .part is not a prefix"
    );

    // An honest source of that name appears: the next run resumes the
    // .part and ends with the whole file.
    let _late = Peer::serve(&world.registry, &[(name, &world.content)], &[]);
    let resumed = download.run(&world.registry.addr_string(), RUN_TIMEOUT);
    resumed.assert_identical(&world.content);
    println!(
        "fewer bytes then close: 3 downloads checked ({} bytes kept and resumed)",
        part.len()
    );
}

/// From the first byte asked for and the file size: a `Content-Range`
/// value, and the span of the true content sent as the body.
type ContentRange = fn(usize, usize) -> (String, usize, usize);

#[test]
fn a_wrong_content_range_on_resume_is_refused() {
    let world = World::start(3);
    let have = 100_000;
    let size = SIZE;
    let mut runs = 0;
    // Each answers a resume with a 206 that does not fit the request; the
    // body sent is what the header claims, taken from the true content.
    let cases: [(&str, ContentRange); 5] = [
        ("starts at 0", |_, size| {
            (format!("bytes 0-{}/{size}", size - 1), 0, size)
        }),
        ("starts after the requested byte", |have, size| {
            (
                format!("bytes {}-{}/{size}", have + 10, size - 1),
                have + 10,
                size,
            )
        }),
        ("another total size", |have, size| {
            (
                format!("bytes {have}-{}/{}", size + 99, size + 100),
                have,
                size,
            )
        }),
        ("stops short of the end", |have, size| {
            (format!("bytes {have}-{}/{size}", size - 2), have, size - 1)
        }),
        ("garbage", |have, size| {
            ("bytes x-y/z".to_owned(), have, size)
        }),
    ];
    for (what, header) in cases {
        let c = world.content.clone();
        let fake = with_fallback(&world, Some(have), move |head, s| {
            let Some(first) = range_start(head) else {
                // A retry without Range: answer it like a bad peer too.
                let _ = s.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
                return;
            };
            let (range, from, to) = header(first, size);
            let body = &c[from.min(c.len())..to.min(c.len())];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: {range}\r\n\
                 Content-Length: {}\r\nETag: \"{}\"\r\n\r\n",
                body.len(),
                sha256_hex(&c)
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        });
        assert!(
            fake.requests().iter().any(|r| range_start(r).is_some()),
            "{what}: the resume never asked for a range: {:?}",
            fake.requests()
        );
        runs += 1;
    }

    // A 206 without Content-Range, and a 206 with a correct header but
    // bytes that are not the file's.
    let c = world.content.clone();
    with_fallback(&world, Some(have), move |_, s| {
        let body = &c[have..];
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
    });
    let c = world.content.clone();
    with_fallback(&world, Some(have), move |head, s| {
        let first = range_start(head).unwrap_or(0);
        let body = vec![0x5A; c.len() - first];
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Range: bytes {first}-{}/{}\r\nContent-Length: {}\r\n\r\n",
            if first > 0 { 206 } else { 200 },
            c.len() - 1,
            c.len(),
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    });
    runs += 2;
    println!("wrong Content-Range on resume: 7 hostile sources, {runs} downloads checked");
}

#[test]
fn a_200_that_ignores_the_range_restarts_the_file() {
    let world = World::start(4);
    let have = 120_000;

    // An honest server without range support: the whole file again. It
    // can deliver the file itself.
    let c = world.content.clone();
    let fake = FakeSource::start(move |_, s| {
        let _ = s.write_all(ok_head(&c, "Accept-Ranges: none\r\n").as_bytes());
        let _ = s.write_all(&c);
    });
    world.register_fake(&fake, GOOD_NAME);
    let download = world.get(GOOD_NAME, Some(have), RUN_TIMEOUT);
    download.assert_identical(&world.content);
    assert!(
        fake.requests()
            .first()
            .is_some_and(|r| range_start(r).is_some()),
        "the resume did not ask for a range: {:?}",
        fake.requests()
    );
    world.unregister_fake(&fake, GOOD_NAME);

    // The same, but with other bytes of the right length: the honest peer
    // delivers, and nothing of the liar's is kept.
    let c = world.content.clone();
    with_fallback(&world, Some(have), move |_, s| {
        let _ = s.write_all(ok_head(&c, "").as_bytes());
        let _ = s.write_all(&vec![0x33; c.len()]);
    });
    println!("200 ignoring Range: 2 downloads checked");
}

/// Runs a stalling fake twice at the same time: once with the honest peer
/// as fallback (the download must move on) and once alone (it must fail),
/// both within [`stall_bound`].
fn check_stall(
    world: &World,
    what: &str,
    behaviour: impl Fn(&str, &mut TcpStream) + Send + Sync + Clone + 'static,
) {
    let with_good = FakeSource::start(behaviour.clone());
    world.register_fake(&with_good, GOOD_NAME);
    let lonely = format!("{what} alone.bin");
    let without = FakeSource::start(behaviour);
    world.register_fake(&without, &lonely);

    let bound = stall_bound();
    let server = world.registry.addr_string();
    // Both at once, so the test waits for one stall, not two. (The
    // registry handle cannot cross threads; its address can.)
    let (moved_on, failed) = thread::scope(|scope| {
        let moved_on = scope.spawn(|| Download::prepare(GOOD_NAME).run(&server, bound));
        let failed = scope.spawn(|| Download::prepare(&lonely).run(&server, bound));
        (
            moved_on.join().expect("download thread"),
            failed.join().expect("download thread"),
        )
    });
    moved_on.assert_identical(&world.content);
    failed.assert_failed();
    for (fake, download) in [(&with_good, &moved_on), (&without, &failed)] {
        assert!(fake.connections() >= 1, "{}", download.describe());
        assert!(
            download.elapsed < bound,
            "{what}: took {:?}, bound {bound:?}",
            download.elapsed
        );
    }
    println!(
        "{what}: moved to the next source after {:?}, failed alone after {:?} \
         (bound {bound:?} = 2 x the scaled read timeout {:?} + {SLACK:?})",
        moved_on.elapsed,
        failed.elapsed,
        read_timeout()
    );
}

#[test]
fn a_source_that_stalls_after_the_headers_is_abandoned_in_bounded_time() {
    let world = World::start(5);
    let c = world.content.clone();
    check_stall(&world, "stall after headers", move |_, s| {
        let _ = s.write_all(ok_head(&c, "").as_bytes());
        let _ = s.write_all(&c[..10_000]);
        hold(s);
    });
}

#[test]
fn a_source_that_never_answers_is_abandoned_in_bounded_time() {
    let world = World::start(6);
    check_stall(&world, "never answers", |_, s| hold(s));
}

/// Sends one byte a second until the client goes away: never silent for
/// a whole [`READ_TIMEOUT`], never done. The read timeout is the pace.
fn trickle(stream: &mut TcpStream, bytes: &[u8]) {
    if stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_err()
    {
        return;
    }
    let mut scratch = [0u8; 64];
    for byte in bytes {
        if stream.write_all(&[*byte]).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_source_that_trickles_is_abandoned_in_bounded_time() {
    let world = World::start(12);
    let c = world.content.clone();
    let fake = FakeSource::start(move |_, s| {
        let _ = s.write_all(ok_head(&c, "").as_bytes());
        trickle(s, &c);
    });
    world.register_fake(&fake, GOOD_NAME);
    // `run_in` fails the test when the bound passes.
    let download = world.get(GOOD_NAME, None, stall_bound());
    download.assert_identical(&world.content);
}

#[test]
fn content_disposition_cannot_choose_where_the_file_goes() {
    let world = World::start(7);
    let mut runs = 0;
    let escapes = [
        "attachment; filename=\"../../escaped.bin\"".to_owned(),
        "attachment; filename*=UTF-8''..%2F..%2F..%2Fescaped.bin".to_owned(),
        "attachment; filename=\"/tmp/escaped-by-a-peer.bin\"".to_owned(),
        "attachment; filename=\"downloads/../../x.bin\"; filename*=UTF-8''%2E%2E%2Fy.bin"
            .to_owned(),
    ];
    for disposition in escapes {
        // The bytes are right: the download may well come from this source,
        // but only ever to <downloads>/<name>.
        let c = world.content.clone();
        let header = format!("Content-Disposition: {disposition}\r\n");
        with_fallback(&world, None, move |_, s| {
            let _ = s.write_all(ok_head(&c, &header).as_bytes());
            let _ = s.write_all(&c);
        });
        runs += 1;
    }
    assert!(!Path::new("/tmp/escaped-by-a-peer.bin").exists());
    println!("Content-Disposition escapes: {runs} downloads checked");
}

#[test]
fn redirects_are_not_followed() {
    let world = World::start(8);
    // Where the redirects point: it would even serve the right bytes, so
    // the only way to notice a followed redirect is that it was contacted.
    let c = world.content.clone();
    let target = FakeSource::start(move |_, s| {
        let _ = s.write_all(ok_head(&c, "").as_bytes());
        let _ = s.write_all(&c);
    });
    let elsewhere = target.addr;
    let locations = [
        format!("http://{elsewhere}/files/..%2F..%2Fescaped.bin"),
        format!("http://{elsewhere}/files/holiday%20photos.bin"),
        "/files/..%2F..%2Fescaped.bin".to_owned(),
        "file:///etc/passwd".to_owned(),
        "../../escaped.bin".to_owned(),
    ];
    let mut runs = 0;
    for (status, location) in [301, 302, 303, 307, 308].into_iter().zip(locations) {
        with_fallback(&world, None, move |_, s| {
            let head = format!(
                "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes());
        });
        runs += 1;
    }
    assert_eq!(
        target.connections(),
        0,
        "a redirect was followed: {:?}",
        target.requests()
    );
    println!("redirects (301, 302, 303, 307, 308): {runs} downloads checked, none followed");
}

#[test]
fn names_that_break_the_rules_write_nothing() {
    let world = World::start(9);
    let mut runs = 0;
    for name in [
        "../escaped.bin",
        "..",
        ".",
        "a/b.bin",
        "/tmp/escaped-by-a-name.bin",
        "..\\escaped.bin",
        "",
        " leading space",
        "tab\tin the name",
    ] {
        let download = Download::prepare(name).run(&world.registry.addr_string(), RUN_TIMEOUT);
        let output = download.output();
        assert_eq!(output.status.code(), Some(2), "{}", download.describe());
        download.assert_no_stray_files(|_| false);
        runs += 1;
    }
    assert!(!Path::new("/tmp/escaped-by-a-name.bin").exists());
    println!("names that break the rules: {runs} downloads refused, nothing written");
}

#[test]
#[ignore = "known limitation (docs/reliability.md): `downloads/X.part` is taken to be the partial download of X"]
fn a_file_that_happens_to_be_named_like_the_part_is_not_destroyed() {
    let world = World::start(10);
    // An earlier, finished download whose name ends in `.part`.
    let theirs = b"a finished download that is really called holiday photos.bin.part".to_vec();
    let download = Download::prepare(GOOD_NAME);
    std::fs::write(download.part(), &theirs).expect("write the other file");
    let download = download.run(&world.registry.addr_string(), RUN_TIMEOUT);
    assert!(
        download.output().status.success(),
        "{}",
        download.describe()
    );
    assert!(std::fs::read(download.target()).expect("file") == world.content);
    assert!(
        std::fs::read(download.part()).ok() == Some(theirs),
        "the file named like the .part was overwritten or removed\n{}",
        download.describe()
    );
}

#[test]
fn a_part_that_is_a_symlink_is_not_written_through() {
    let world = World::start(11);
    let download = Download::prepare(GOOD_NAME);
    let outside = download.root.path().join("outside.bin");
    std::fs::write(&outside, b"not yours").expect("write the outside file");
    std::os::unix::fs::symlink(&outside, download.part()).expect("symlink");
    let download = download.run(&world.registry.addr_string(), RUN_TIMEOUT);
    assert!(
        std::fs::read(&outside).expect("outside file") == b"not yours",
        "the download wrote through the symlink\n{}",
        download.describe()
    );
    let final_is_link = std::fs::symlink_metadata(download.target())
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    assert!(
        !final_is_link,
        "the final name is a symlink\n{}",
        download.describe()
    );
}
