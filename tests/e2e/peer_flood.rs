//! The peer's file server (the real `peer serve`) under floods: more
//! connections than its limit, a burst of 1,000 short connections, a
//! descriptor limit far below what the flood needs, and slow-loris clients
//! trickling a request head. It must answer `503` and close when full,
//! never crash, free every slot and descriptor once the flood goes, and
//! keep serving others while some clients crawl.
//! Each test prints what it checked; `docs/reliability.md` sums them up.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_peer::http::{DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT};
use p2p_tests::{bin, wait_until, Peer, Registry, Running, WAIT_TIMEOUT};

/// How long a test client waits for any one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

const NAME: &str = "small.txt";
const CONTENT: &[u8] = b"a small file, served again and again\n";

/// A `peer serve` sharing [`NAME`] on 127.0.0.1.
fn serve(registry: &Registry) -> (Peer, SocketAddr) {
    let peer = Peer::serve(registry, &[(NAME, CONTENT)], &["--bind", "127.0.0.1"]);
    let addr = peer.addr;
    (peer, addr)
}

/// One client connection speaking just enough HTTP/1.1.
struct Conn {
    reader: BufReader<TcpStream>,
}

/// Status and body of one response.
struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// `GET /files/NAME`, keeping the connection open unless `close`.
    fn get(&mut self, close: bool) -> std::io::Result<Response> {
        let connection = if close { "close" } else { "keep-alive" };
        let request =
            format!("GET /files/{NAME} HTTP/1.1\r\nHost: peer\r\nConnection: {connection}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        self.response()
    }

    /// Reads a status line, headers, and a `Content-Length` body.
    fn response(&mut self) -> std::io::Result<Response> {
        let bad = |what: String| std::io::Error::new(ErrorKind::InvalidData, what);
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let mut length = 0u64;
        loop {
            let mut header = String::new();
            if self.reader.read_line(&mut header)? == 0 {
                return Err(bad("the head ended early".to_owned()));
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| bad(header.to_owned()))?;
                }
            }
        }
        let mut body = Vec::new();
        (&mut self.reader).take(length).read_to_end(&mut body)?;
        Ok(Response { status, body })
    }

    /// Reads until the server closes; true when it did (EOF or reset).
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

/// A fresh connection that asks for the file and gets it whole.
fn served(addr: SocketAddr) -> bool {
    Conn::open(addr)
        .and_then(|mut c| c.get(true))
        .is_ok_and(|r| r.status == 200 && r.body == CONTENT)
}

/// Opens `n` connections, each proven to be owned by a worker by one
/// keep-alive request answered `200`; `None` if any is not.
fn try_hold(addr: SocketAddr, n: usize) -> Option<Vec<Conn>> {
    (0..n)
        .map(|_| {
            let mut conn = Conn::open(addr).ok()?;
            let response = conn.get(false).ok()?;
            (response.status == 200 && response.body == CONTENT).then_some(conn)
        })
        .collect()
}

/// A connection over the limit: `503` and closed, without sending anything.
fn expect_503(addr: SocketAddr) {
    let mut conn = Conn::open(addr).expect("connect");
    let response = conn.response().expect("a 503 response");
    assert_eq!(response.status, 503);
    assert!(conn.closed_by_server(), "a refused connection stays open");
}

#[test]
fn connections_over_the_limit_get_503_and_are_served_again() {
    let registry = Registry::start();
    let (_peer, addr) = serve(&registry);
    let limit = DEFAULT_MAX_CONNECTIONS;

    let mut held = try_hold(addr, limit).expect("the peer serves up to its limit");
    const REFUSED: usize = 20;
    for _ in 0..REFUSED {
        expect_503(addr);
    }
    // The held connections are unharmed by the refusals.
    for conn in held.iter_mut().step_by(7) {
        let response = conn.get(false).expect("a held connection still works");
        assert_eq!(response.status, 200);
    }

    // One goes: its slot is free again for exactly one newcomer.
    drop(held.pop());
    wait_until("a freed slot is served", WAIT_TIMEOUT, || served(addr));
    drop(held);

    // No slot leaked: the full limit can be held again. (Slots free up
    // as the workers notice the closes, so this may take a few tries.)
    wait_until("every slot is free again", WAIT_TIMEOUT, || {
        try_hold(addr, limit).is_some()
    });
    println!(
        "peer over its limit: {limit} held, {REFUSED} refused with 503, \
         then {limit} held again"
    );
}

#[test]
fn a_burst_of_1000_short_connections_is_all_answered() {
    let registry = Registry::start();
    let (_peer, addr) = serve(&registry);
    const THREADS: usize = 100;
    const EACH: usize = 10;
    let ok = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let reset = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ok, busy, reset) = (Arc::clone(&ok), Arc::clone(&busy), Arc::clone(&reset));
            thread::spawn(move || {
                for _ in 0..EACH {
                    match Conn::open(addr).and_then(|mut c| c.get(true)) {
                        Ok(r) if r.status == 200 && r.body == CONTENT => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(r) if r.status == 503 => busy.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => panic!("unexpected status {}", r.status),
                        // A refusal can reach us as a reset: the server
                        // closed without reading our request.
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                            reset.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("a connection was neither served nor refused: {e}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let (ok, busy, reset) = (
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed),
        reset.load(Ordering::Relaxed),
    );
    assert_eq!(ok + busy + reset, THREADS * EACH);
    assert!(ok > 0);
    assert!(served(addr), "the server serves after the burst");
    println!(
        "peer burst: {} connections from {THREADS} threads: {ok} served, {busy} 503, {reset} reset",
        THREADS * EACH
    );
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn running_out_of_file_descriptors_does_not_kill_the_peer() {
    let registry = Registry::start();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(shared.join(NAME), CONTENT).expect("write shared file");
    let peer = bin("peer");
    let server = registry.addr_string();
    let args = [
        "-c",
        "ulimit -n 128; exec \"$0\" \"$@\"",
        peer.to_str().expect("UTF-8 path"),
        "--server",
        &server,
        "--shared",
        shared.to_str().expect("UTF-8 temp path"),
        "--downloads",
        downloads.to_str().expect("UTF-8 temp path"),
        "--bind",
        "127.0.0.1",
        "serve",
        "--port",
        "0",
        "--read-timeout",
        "3s",
    ];
    let (addr, process) = Running::start(Path::new("/bin/sh"), &args, "listening on ", &[]);
    let pid = process.pid();
    assert!(served(addr));
    let baseline = open_fds(pid);

    // Each admitted connection costs the peer two descriptors (the socket
    // and the clone kept to close it at shutdown), plus one for the file:
    // 200 connections, each asking for the file, need far more than 128.
    let mut flood = Vec::new();
    let mut answered = 0;
    for _ in 0..200 {
        if let Ok(mut conn) = Conn::open(addr) {
            let request = format!("GET /files/{NAME} HTTP/1.1\r\nHost: peer\r\n\r\n");
            if conn.reader.get_mut().write_all(request.as_bytes()).is_ok() {
                flood.push(conn);
            }
        }
    }
    let opened = flood.len();
    wait_until(
        "the peer reaches its descriptor limit",
        WAIT_TIMEOUT,
        || open_fds(pid) >= 120,
    );
    let peak = open_fds(pid);
    assert!(alive(pid), "the peer died at its descriptor limit");
    // Whatever each connection got (200, 500, 503, a close, or nothing yet),
    // it is an answer the client can handle; the peer itself must stay up.
    for conn in flood.iter_mut() {
        let _ = conn
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)));
        let mut byte = [0u8; 1];
        if matches!(conn.reader.read(&mut byte), Ok(1)) {
            answered += 1;
        }
    }
    drop(flood);

    wait_until("the peer serves again", WAIT_TIMEOUT, || served(addr));
    assert!(alive(pid));
    wait_until(
        "every descriptor of the flood is closed",
        WAIT_TIMEOUT,
        || open_fds(pid) <= baseline + 4,
    );
    // And the registry side still works: the file is still registered.
    let sources = registry.client().search(NAME).expect("search");
    assert_eq!(sources.len(), 1);
    println!(
        "peer fd limit 128: {opened} connections opened, {peak} descriptors at the peak, \
         {answered} answered at once, recovered to {} descriptors (baseline {baseline})",
        open_fds(pid)
    );
    drop(process);
}

/// What happened to one slow-loris client.
struct Crawl {
    /// The server closed the connection after this long (None: the client
    /// gave up first).
    closed_after: Option<Duration>,
    /// The first bytes the server sent, if any.
    answer: String,
}

/// Sends a request head one byte per second, never finishing it, until the
/// server closes the connection or `give_up` passes. The read timeout of
/// one second is the pace; no sleeping.
fn crawl(addr: SocketAddr, give_up: Duration, connected: &AtomicUsize) -> Crawl {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    connected.fetch_add(1, Ordering::SeqCst);
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut answer = Vec::new();
    let head = b"GET /files/small.txt HTTP/1.1\r\nHost: peer\r\nX-Slow: ";
    let mut sent = 0usize;
    while started.elapsed() < give_up {
        let byte = head.get(sent).copied().unwrap_or(b'z');
        if stream.write_all(&[byte]).is_err() {
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) => {
                return Crawl {
                    closed_after: Some(started.elapsed()),
                    answer: String::from_utf8_lossy(&answer).into_owned(),
                }
            }
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let closed = started.elapsed() < give_up;
    Crawl {
        closed_after: closed.then(|| started.elapsed()),
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

#[test]
fn slow_loris_clients_cannot_block_others() {
    let registry = Registry::start();
    // The head deadline shortened from its default (30 s) with the hidden
    // --read-timeout, so the test waits seconds, not half a minute.
    let read_timeout = Duration::from_secs(3);
    let peer = Peer::serve(
        &registry,
        &[(NAME, CONTENT)],
        &["--bind", "127.0.0.1", "--read-timeout", "3s"],
    );
    let addr = peer.addr;
    // Half the connection limit crawls; the rest must stay usable.
    let crawlers = DEFAULT_MAX_CONNECTIONS / 2;
    // The server's head deadline counts from the first byte, so a crawler
    // is cut after the read timeout however it trickles.
    let bound = read_timeout * 2 + Duration::from_secs(10);
    let connected = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..crawlers)
        .map(|_| {
            let connected = Arc::clone(&connected);
            thread::spawn(move || crawl(addr, bound, &connected))
        })
        .collect();
    wait_until("the crawlers are connected", WAIT_TIMEOUT, || {
        connected.load(Ordering::SeqCst) == crawlers
    });

    // Meanwhile others come and go, each answered promptly.
    const OTHERS: usize = 200;
    let mut slowest = Duration::ZERO;
    for _ in 0..OTHERS {
        let started = Instant::now();
        assert!(served(addr), "a client was not served beside the crawlers");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < CLIENT_TIMEOUT,
        "a request took {slowest:?} beside the crawlers"
    );

    let mut cut_after = Duration::ZERO;
    for t in slow {
        let crawl = t.join().expect("crawler thread");
        let closed_after = crawl
            .closed_after
            .unwrap_or_else(|| panic!("a crawler was still connected after {bound:?}"));
        assert!(
            crawl.answer.is_empty() || crawl.answer.starts_with("HTTP/1.1 408"),
            "a crawler got {:?}",
            crawl.answer
        );
        cut_after = cut_after.max(closed_after);
    }
    assert!(served(addr));
    println!(
        "slow loris: {crawlers} crawlers cut after at most {cut_after:?} (head deadline \
         {read_timeout:?}, default {DEFAULT_READ_TIMEOUT:?}); {OTHERS} other clients served \
         meanwhile, slowest {slowest:?}"
    );
}
