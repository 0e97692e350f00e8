//! Test support for the end-to-end tests: start the real binaries on
//! `127.0.0.1:0`, read the address they bound from their output, wait on
//! conditions with deadlines, and always kill what was started.
//!
//! Nothing here sleeps as synchronisation: every wait polls a condition
//! until a deadline and fails with a message that says what it waited for.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// How long a started program may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Default deadline for a condition in a test.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of one of the workspace's binaries (`dht-server`, `peer`,
/// `p2p-admin`), built by `cargo test --workspace` into the same target
/// directory as this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A loopback port that is free now, for a program that must be given its
/// port before it starts (a registry a peer is already pointed at,
/// chromedriver). Taken from below the kernel's ephemeral range
/// (`ip_local_port_range`), so no `:0` listener or outgoing connection of a
/// test running beside it can take it before the program binds it, as a
/// port picked by binding `:0` and letting go could be. Skips the control
/// UI's default ports (8390-8489) and the DHT's (6881).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let (first, span) = (10_000u32, low - 10_000);
    // Processes running at once start at different places (pid), calls of
    // one process never repeat (the counter).
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = first + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if (8390..8490).contains(&port) || port == 6881 {
            continue;
        }
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {low}");
}

/// Polls `condition` until it holds or `timeout` passes; panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    p2p_proto::protocol::to_hex(&Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), so big test files need no RNG crate.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A started program, killed (SIGKILL) and reaped when dropped.
pub struct Running {
    child: Option<Child>,
    /// Lines the program printed on stdout after the address line.
    lines: mpsc::Receiver<String>,
    /// Its stderr, collected in the background (read it after it exits).
    stderr: Option<thread::JoinHandle<String>>,
    name: String,
}

impl Running {
    /// Starts `program args...` and waits for a stdout line
    /// `<prefix> HOST:PORT`, returning the address and the process.
    pub fn start(
        program: &Path,
        args: &[&str],
        prefix: &str,
        env: &[(&str, &str)],
    ) -> (SocketAddr, Running) {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let running = Running::spawn(command, program);
        running.wait_for_address(prefix)
    }

    /// Spawns a prepared command (stdout and stderr must be piped).
    pub fn spawn(mut command: Command, program: &Path) -> Running {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                text
            })
        });
        let lines = forward_lines(stdout);
        Running {
            child: Some(child),
            lines,
            stderr,
            name,
        }
    }

    /// Waits for the line `<prefix> HOST:PORT` on stdout.
    pub fn wait_for_address(self, prefix: &str) -> (SocketAddr, Running) {
        let line = self.wait_for_line(|line| line.starts_with(prefix), START_TIMEOUT);
        let addr = line[prefix.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad address line {line:?}: {e}", self.name));
        (addr, self)
    }

    /// Waits for a stdout line that satisfies `matches` and returns it;
    /// panics (with the program's stderr) if it exits or the time runs out.
    pub fn wait_for_line(&self, matches: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: timed out after {timeout:?} waiting for a line",
                        self.name
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited before printing the expected line", self.name)
                }
            }
        }
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("the kill command runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit on its own, up to `timeout`; returns
    /// its status and stderr. Panics if it does not exit in time.
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("not yet waited for");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait works") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, stderr)
    }

    /// SIGKILL now and reap.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_now();
    }
}

fn forward_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `dht-server` on `127.0.0.1:0` with its database in a temp dir.
pub struct Registry {
    pub addr: SocketAddr,
    pub db: PathBuf,
    /// The process; `None` after [`Registry::stop`] or [`Registry::crash`].
    pub process: Option<Running>,
    /// Keeps the database's directory alive as long as the registry value.
    pub dir: TempDir,
}

impl Registry {
    /// A fresh registry with default options.
    pub fn start() -> Registry {
        Registry::start_with(&[])
    }

    /// A fresh registry with extra command-line options.
    pub fn start_with(extra: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("registry.db");
        let (addr, process) = start_registry(&db, extra);
        Registry {
            addr,
            db,
            process: Some(process),
            dir,
        }
    }

    /// A fresh registry whose process gets the environment `env` (e.g. a
    /// debug build's `P2P_FAULT`, server/src/fault.rs).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("registry.db");
        let (addr, process) = start_registry_env(&db, "127.0.0.1:0", extra, env);
        Registry {
            addr,
            db,
            process: Some(process),
            dir,
        }
    }

    /// The `--http` address the running registry printed (started with
    /// `--http 127.0.0.1:0`).
    pub fn http_addr(&self) -> String {
        let line = self
            .process
            .as_ref()
            .expect("registry is running")
            .wait_for_line(|l| l.starts_with("http on "), WAIT_TIMEOUT);
        line.strip_prefix("http on http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("bad http line {line:?}"))
            .to_owned()
    }

    /// A fresh registry listening on `listen` (e.g. `0.0.0.0:0`).
    pub fn start_on(listen: &str, extra: &[&str]) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("registry.db");
        let (addr, process) = start_registry_at(&db, listen, extra);
        Registry {
            addr,
            db,
            process: Some(process),
            dir,
        }
    }

    /// `host:port` as a string, for `--server` and `Client::connect`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// A protocol client connected to this registry.
    pub fn client(&self) -> p2p_proto::client::Client {
        p2p_proto::client::Client::connect(&self.addr_string()).expect("connect to the registry")
    }

    /// SIGTERM and wait for a clean exit; returns stderr.
    pub fn stop(&mut self) -> String {
        let process = self.process.take().expect("registry is running");
        process.signal("TERM");
        let (status, stderr) = process.wait_exit(WAIT_TIMEOUT);
        assert!(
            status.success(),
            "dht-server exited with {status}: {stderr}"
        );
        stderr
    }

    /// SIGKILL, no chance to clean up.
    pub fn crash(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts again on the same database (on a new port).
    pub fn restart(&mut self, extra: &[&str]) {
        assert!(self.process.is_none(), "stop or crash the registry first");
        let (addr, process) = start_registry(&self.db, extra);
        self.addr = addr;
        self.process = Some(process);
    }
}

fn start_registry(db: &Path, extra: &[&str]) -> (SocketAddr, Running) {
    start_registry_at(db, "127.0.0.1:0", extra)
}

fn start_registry_at(db: &Path, listen: &str, extra: &[&str]) -> (SocketAddr, Running) {
    start_registry_env(db, listen, extra, &[])
}

fn start_registry_env(
    db: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (SocketAddr, Running) {
    let db = db.to_str().expect("temp paths are UTF-8");
    let mut args = vec!["--db", db, "--listen", listen, "--no-mdns"];
    args.extend_from_slice(extra);
    Running::start(&bin("dht-server"), &args, "listening on ", env)
}

/// The value of the metric `name` (a counter or gauge line, no labels) on
/// the registry's `GET /metrics` at `http` (`host:port`), if shown.
pub fn metric(http: &str, name: &str) -> Option<u64> {
    let mut stream = TcpStream::connect(http).expect("connect to --http");
    stream
        .set_read_timeout(Some(WAIT_TIMEOUT))
        .expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("read /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs a program to completion with a deadline; returns its output.
pub fn run(program: &Path, args: &[&str], timeout: Duration) -> Output {
    run_in(program, args, None, timeout)
}

/// Like [`run`], in a working directory.
pub fn run_in(program: &Path, args: &[&str], cwd: Option<&Path>, timeout: Duration) -> Output {
    run_with(program, args, cwd, &[], timeout)
}

/// Like [`run_in`], with environment variables set for the program (e.g.
/// `P2P_TEST_TIMEOUT_SCALE`, which shortens the downloader's time limits).
pub fn run_with(
    program: &Path,
    args: &[&str],
    cwd: Option<&Path>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within {timeout:?}",
                program.display()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A running `peer serve` on `127.0.0.1:0`, with its own shared and
/// downloads folders in a temp dir.
pub struct Peer {
    /// Where its file server listens.
    pub addr: SocketAddr,
    pub shared: PathBuf,
    pub downloads: PathBuf,
    pub process: Option<Running>,
    pub dir: TempDir,
}

impl Peer {
    /// A temp dir with empty `shared/` and `downloads/`; not started yet.
    pub fn folders() -> (TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let shared = dir.path().join("shared");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&shared).expect("create shared/");
        std::fs::create_dir_all(&downloads).expect("create downloads/");
        (dir, shared, downloads)
    }

    /// Starts `peer serve --port 0` against `registry`, sharing the files
    /// `files` (name, content) written into its shared folder first. Returns
    /// once the peer printed `listening on HOST:PORT`, i.e. its files are
    /// registered and served.
    pub fn serve(registry: &Registry, files: &[(&str, &[u8])], extra: &[&str]) -> Peer {
        let (dir, shared, downloads) = Peer::folders();
        for (name, content) in files {
            std::fs::write(shared.join(name), content).expect("write shared file");
        }
        let (addr, process) = start_peer(registry, &shared, &downloads, extra);
        Peer {
            addr,
            shared,
            downloads,
            process: Some(process),
            dir,
        }
    }

    /// The common options that point a `peer` command at this peer's folders.
    pub fn common_args<'a>(&'a self, registry: &'a str) -> Vec<&'a str> {
        vec![
            "--server",
            registry,
            "--shared",
            self.shared.to_str().expect("UTF-8 temp path"),
            "--downloads",
            self.downloads.to_str().expect("UTF-8 temp path"),
        ]
    }
}

fn start_peer(
    registry: &Registry,
    shared: &Path,
    downloads: &Path,
    extra: &[&str],
) -> (SocketAddr, Running) {
    let server = registry.addr_string();
    let mut args = vec![
        "--server",
        &server,
        "--shared",
        shared.to_str().expect("UTF-8 temp path"),
        "--downloads",
        downloads.to_str().expect("UTF-8 temp path"),
        "serve",
        "--port",
        "0",
    ];
    args.extend_from_slice(extra);
    Running::start(&bin("peer"), &args, "listening on ", &[])
}

/// How long a [`Wire`] waits for a reply line before the test fails.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A raw connection to the registry: bytes out, reply lines in, with a read
/// timeout on every read, so a server that does not answer fails the test
/// instead of hanging it. The wire format itself is what is tested.
pub struct Wire {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        Wire::connect_with_timeout(addr, WIRE_TIMEOUT)
    }

    pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> Wire {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(timeout)).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Wire { stream, reader }
    }

    /// Writes bytes exactly as given.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream
            .write_all(bytes.as_ref())
            .unwrap_or_else(|e| panic!("write to the registry: {e}"));
    }

    /// Reads one reply line, without its LF (a CR before it is kept, so a
    /// reply in CRLF shows up in comparisons). Panics on timeout or close.
    pub fn line(&mut self) -> String {
        match self.try_line() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the registry closed the connection instead of replying"),
            Err(e) => panic!("no reply line from the registry within {WIRE_TIMEOUT:?}: {e}"),
        }
    }

    /// One reply line; `None` when the server closed the connection.
    pub fn try_line(&mut self) -> io::Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        assert!(
            buf.ends_with(b"\n"),
            "reply line cut short or over-long: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.pop();
        Ok(Some(String::from_utf8(buf).expect("reply lines are UTF-8")))
    }

    /// Sends one request line (LF added) and returns the status line.
    pub fn ask(&mut self, request: &str) -> String {
        self.send(format!("{request}\n"));
        self.line()
    }

    /// Reads a whole reply: the status line and, for `FOUND n` and
    /// `RESULTS n`, the n item lines.
    pub fn reply(&mut self) -> Vec<String> {
        let status = self.line();
        let items = ["FOUND ", "RESULTS "]
            .iter()
            .find_map(|prefix| status.strip_prefix(prefix))
            .map(|n| {
                n.parse::<usize>()
                    .unwrap_or_else(|_| panic!("bad item count in {status:?}"))
            })
            .unwrap_or(0);
        let mut lines = vec![status];
        for _ in 0..items {
            lines.push(self.line());
        }
        lines
    }

    /// Sends one request line and reads its whole reply.
    pub fn call(&mut self, request: &str) -> Vec<String> {
        self.send(format!("{request}\n"));
        self.reply()
    }

    pub fn ping(&mut self) {
        assert_eq!(self.ask("PING"), "PONG", "the connection is still usable");
    }

    /// Asserts the server closes the connection without sending anything
    /// more. A reset counts as closed: a server that closes with unread
    /// input in its buffer makes the kernel send RST instead of FIN.
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "expected the server to close, got more bytes: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => assert!(
                rest.is_empty(),
                "expected the server to close, got more bytes: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => {
                panic!("the server did not close the connection within {WIRE_TIMEOUT:?}: {e}")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// One scripted fake HTTP source, for every download test that needs a source
// that lies, stalls or speaks HTTP differently from our peers.
// ---------------------------------------------------------------------------

/// How long a [`FakeSource`] waits for a request head before it gives up on
/// the connection (keeps its threads from outliving a test for long).
pub const FAKE_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One request a [`FakeSource`] received.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    /// The whole request head, CRLFs included.
    pub head: String,
    pub method: String,
    pub path: String,
    /// `Range: bytes=FIRST-[LAST]`, when sent.
    pub range: Option<(u64, Option<u64>)>,
}

impl FakeRequest {
    fn parse(head: String) -> FakeRequest {
        let mut words = head.split(' ');
        let method = words.next().unwrap_or_default().to_owned();
        let path = words.next().unwrap_or_default().to_owned();
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Range: bytes="))
            .and_then(|r| {
                let (first, last) = r.trim().split_once('-')?;
                let first = first.parse().ok()?;
                let last = if last.is_empty() {
                    None
                } else {
                    Some(last.parse().ok()?)
                };
                Some((first, last))
            });
        FakeRequest {
            head,
            method,
            path,
            range,
        }
    }

    /// Whether it asks for a file's piece list (`/pieces/...`).
    pub fn is_pieces(&self) -> bool {
        self.path.starts_with("/pieces/")
    }
}

/// What a script does with one request: answers it on the stream and says
/// whether the connection may carry another request.
pub type Script = dyn Fn(&FakeRequest, &mut TcpStream) -> bool + Send + Sync;

/// A raw HTTP server in the test process that answers with a script.
pub struct FakeSource {
    pub addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<FakeRequest>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeSource {
    /// Listens on `127.0.0.1:0`.
    pub fn start(
        script: impl Fn(&FakeRequest, &mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> FakeSource {
        FakeSource::start_on("127.0.0.1", script)
    }

    /// Listens on port 0 of `ip` (any 127.0.0.x works on Linux without
    /// setup, which lets a test play several hosts).
    pub fn start_on(
        ip: &str,
        script: impl Fn(&FakeRequest, &mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> FakeSource {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let script: Arc<Script> = Arc::new(script);
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind a fake source");
        let addr = listener.local_addr().expect("fake source address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (Arc::clone(&requests), Arc::clone(&connections));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
                thread::spawn(move || loop {
                    let Some(head) = read_request_head(&mut stream) else {
                        return;
                    };
                    let request = FakeRequest::parse(head);
                    seen.lock().expect("request log").push(request.clone());
                    let _ = stream.set_read_timeout(None);
                    if !script(&request, &mut stream) {
                        return;
                    }
                });
            }
        });
        FakeSource {
            addr,
            requests,
            connections,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().expect("request log").clone()
    }

    /// Connections accepted (also those that never sent a whole head).
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers this source with `registry` as holding `name` with this
    /// size and digest, from the fake's own IP (so the registry records it
    /// as the host); the registration is the most recent one.
    pub fn register(&self, registry: &Registry, name: &str, size: u64, sha256: &str) {
        let mut client = client_from(registry, self.addr.ip());
        client
            .register(self.addr.port(), size, sha256, name)
            .expect("register the fake source");
    }
}

/// A registry client whose connection comes from `ip` (one of 127.0.0.x),
/// so what it registers is recorded for that host.
pub fn client_from(registry: &Registry, ip: std::net::IpAddr) -> p2p_proto::client::Client {
    let stream = connect_from(ip, registry.addr);
    p2p_proto::client::Client::from_stream(&registry.addr_string(), stream, WAIT_TIMEOUT)
        .expect("registry client")
}

/// A TCP connection to `to` whose local end is `from:0` (std cannot bind
/// before connecting; socket2 can, and Linux lets any 127.0.0.x be a
/// source address).
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let domain = if from.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .expect("bind to a loopback address");
    socket
        .connect_timeout(&to.into(), WAIT_TIMEOUT)
        .expect("connect to the registry");
    socket.into()
}

/// Reads one request head, at most 64 KiB, within [`FAKE_HEAD_TIMEOUT`].
pub fn read_request_head(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(FAKE_HEAD_TIMEOUT)).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return None;
        }
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Answers as our file server does: `/files/...` with `200` or a `206` for
/// a range (with `ETag` of `content`), `/pieces/...` with `pieces` when
/// given (else `404`). Keeps the connection.
pub fn serve_content(
    request: &FakeRequest,
    stream: &mut TcpStream,
    content: &[u8],
    pieces: Option<&[u8]>,
) -> bool {
    serve_content_as(request, stream, content, &sha256_hex(content), pieces)
}

/// [`serve_content`] with `etag` in the `ETag` (a liar names the registered
/// digest while it serves other bytes).
pub fn serve_content_as(
    request: &FakeRequest,
    stream: &mut TcpStream,
    content: &[u8],
    etag: &str,
    pieces: Option<&[u8]>,
) -> bool {
    if request.is_pieces() {
        let reply = match pieces {
            Some(doc) => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                    doc.len()
                )
                .into_bytes();
                out.extend_from_slice(doc);
                out
            }
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        return stream.write_all(&reply).is_ok();
    }
    let len = content.len() as u64;
    let head_only = request.method == "HEAD";
    let (status, first, last) = match request.range {
        Some((first, last)) if first < len => {
            let last = last.map_or(len - 1, |l| l.min(len - 1));
            ("206 Partial Content", first, last)
        }
        Some(_) => {
            return stream
                .write_all(
                    format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .is_ok()
        }
        None => ("200 OK", 0, len.saturating_sub(1)),
    };
    let body: &[u8] = if len == 0 {
        &[]
    } else {
        &content[first as usize..=last as usize]
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\n",
        body.len()
    );
    if status.starts_with("206") {
        out.push_str(&format!("Content-Range: bytes {first}-{last}/{len}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).is_ok()
}

/// Blocks until the client closes the connection (or it breaks): "stalls
/// forever" from the downloader's point of view, without outliving it.
pub fn hold_open(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut scratch = [0u8; 1024];
    loop {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}
