//! The interactive menu, driven through its standard input as a person (or a
//! script used to the original design) would: register, search and
//! download, list, exit; wrong input; and end of input at every prompt.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use p2p_tests::{bin, run, Peer, Registry, WAIT_TIMEOUT};

/// A `peer` menu process whose stdin the test writes, killed when dropped.
struct Menu {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line seen so far, for failure messages.
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Menu {
    fn start(args: &[&str]) -> Menu {
        let mut child = Command::new(bin("peer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start peer");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().map(|mut err| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                text
            })
        });
        Menu {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Starts the menu with `folders`' shared and downloads folders.
    fn for_folders(registry: &str, shared: &Path, downloads: &Path, extra: &[&str]) -> Menu {
        let mut args = vec![
            "--server",
            registry,
            "--shared",
            shared.to_str().expect("UTF-8"),
            "--downloads",
            downloads.to_str().expect("UTF-8"),
        ];
        args.extend_from_slice(extra);
        Menu::start(&args)
    }

    fn send(&mut self, input: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(input.as_bytes())
            .expect("write to the menu");
        stdin.flush().expect("flush the menu's stdin");
    }

    /// Closes stdin: end of input.
    fn close(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn expect_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line containing {needle:?} ({e:?}); stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit; returns its status and stderr.
    fn wait_exit(mut self) -> (ExitStatus, String) {
        self.close();
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the menu did not exit");
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Menu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn search_exit_code(registry: &Registry, name: &str) -> Option<i32> {
    let server = registry.addr_string();
    run(
        &bin("peer"),
        &["--server", &server, "search", name],
        WAIT_TIMEOUT,
    )
    .status
    .code()
}

#[test]
fn register_download_list_and_exit() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let content = p2p_tests::pseudo_random_bytes(2 * 1024 * 1024, 3);
    let name = "menu file ä.bin";

    let (_a_dir, a_shared, a_downloads) = Peer::folders();
    std::fs::write(a_shared.join(name), &content).expect("write shared file");
    std::fs::write(a_shared.join("unregistered.txt"), b"x").expect("write");
    let mut a = Menu::for_folders(&server, &a_shared, &a_downloads, &[]);
    a.expect_line("Enter port");
    a.send("0\n");
    a.expect_line("listening on ");
    a.send(&format!("1\n{name}\n"));
    a.expect_line(&format!("registered {name}"));
    assert_eq!(search_exit_code(&registry, name), Some(0));

    let (_b_dir, b_shared, b_downloads) = Peer::folders();
    let mut b = Menu::for_folders(&server, &b_shared, &b_downloads, &["--port", "0"]);
    b.expect_line("listening on ");
    b.send(&format!("2\n{name}\n"));
    b.expect_line("found 1 source");
    b.expect_line("sha256 verified");
    assert!(std::fs::read(b_downloads.join(name)).expect("downloaded") == content);

    a.send("4\n");
    let row = a.expect_line(name);
    assert!(row.contains("yes"), "{row}");
    let row = a.expect_line("unregistered.txt");
    assert!(row.contains("no"), "{row}");

    a.send("3\n");
    let line = a.expect_line("unregistered 1 file");
    assert_eq!(line.trim_end(), "unregistered 1 file");
    let (status, stderr) = a.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(search_exit_code(&registry, name), Some(1));

    let (status, stderr) = b.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn end_of_input_at_each_prompt_exits_cleanly() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(shared.join("kept.txt"), b"k").expect("write");
    let cases = [
        ("", "Enter port"),
        ("0\n", "Choose 1-4"),
        ("0\n1\n", "File name"),
        ("0\n2\n", "File name"),
        ("0\n1\nkept.txt\n", "registered kept.txt"),
        ("0\n1\nkept.txt\n1\n", "File name"),
    ];
    for (input, last_prompt) in cases {
        let mut menu = Menu::for_folders(&server, &shared, &downloads, &[]);
        menu.send(input);
        menu.close();
        menu.expect_line(last_prompt);
        let (status, stderr) = menu.wait_exit();
        assert!(status.success(), "input {input:?}: {status}: {stderr}");
        // Whatever was registered before the end of input is withdrawn.
        assert_eq!(
            search_exit_code(&registry, "kept.txt"),
            Some(1),
            "{input:?}"
        );
    }
}

#[test]
fn wrong_input_is_answered_and_the_menu_goes_on() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let (_dir, shared, downloads) = Peer::folders();
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();

    let mut menu = Menu::for_folders(&server, &shared, &downloads, &["--port", &port]);
    menu.expect_line(&format!("port {port} is in use"));
    menu.send("eighty\n");
    menu.expect_line("\"eighty\" is not a port number");
    menu.send("0\n");
    menu.expect_line("listening on ");
    menu.send("7\n");
    menu.expect_line("\"7\" is not a choice");
    menu.send("1\nnot here.txt\n");
    menu.expect_line("no file named \"not here.txt\"");
    menu.send("2\nnobody shares this\n");
    menu.expect_line("no peer shares \"nobody shares this\"");
    menu.send("4\n");
    menu.expect_line("has no files to share");
    menu.send("3\n");
    let (status, stderr) = menu.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn a_registry_that_is_down_is_one_line_and_the_menu_goes_on() {
    let mut registry = Registry::start();
    let server = registry.addr_string();
    registry.stop();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(shared.join("f.txt"), b"f").expect("write");

    let mut menu = Menu::for_folders(&server, &shared, &downloads, &["--port", "0"]);
    menu.expect_line("listening on ");
    menu.send("1\nf.txt\n");
    let line = menu.expect_line("cannot connect to the registry");
    assert!(line.contains(&server), "{line}");
    menu.send("2\nf.txt\n");
    menu.expect_line("cannot search the registry");
    menu.send("4\n");
    menu.expect_line("f.txt");
    menu.send("3\n");
    let (status, stderr) = menu.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn a_name_without_exact_source_lists_find_matches_to_choose_from() {
    let registry = Registry::start();
    let server = registry.addr_string();
    let content = b"photos of the holiday".as_slice();
    let _source = Peer::serve(
        &registry,
        &[("Holiday Photos.zip", content), ("holiday notes.txt", b"n")],
        &[],
    );
    let (_dir, shared, downloads) = Peer::folders();
    let mut menu = Menu::for_folders(&server, &shared, &downloads, &["--port", "0"]);
    menu.expect_line("listening on ");

    // A number out of range is asked again; empty input cancels.
    menu.send("2\nholi pho\n");
    menu.expect_line("no peer shares \"holi pho\"; 1 file matches:");
    let row = menu.expect_line("1) Holiday Photos.zip");
    assert!(row.contains("21 B") && row.contains("1 source"), "{row}");
    menu.expect_line("Download which (1-1, empty cancels)");
    menu.send("7\n");
    menu.expect_line("\"7\" is not one of the numbers 1 to 1");
    menu.send("\n");
    menu.expect_line("cancelled");
    menu.expect_line("Choose 1-4");
    assert!(!downloads.join("Holiday Photos.zip").exists());

    // Both hits of one word; the number typed is downloaded, verified.
    menu.send("2\nHOLIDAY\n");
    menu.expect_line("2 files match:");
    let second = menu.expect_line("2) ");
    menu.expect_line("Download which (1-2, empty cancels)");
    menu.send("2\n");
    menu.expect_line("sha256 verified");
    let chosen = if second.contains("Holiday Photos.zip") {
        ("Holiday Photos.zip", content)
    } else {
        ("holiday notes.txt", b"n".as_slice())
    };
    assert_eq!(std::fs::read(downloads.join(chosen.0)).unwrap(), chosen.1);

    // An exact name still downloads directly; nothing matching is one line.
    menu.send("2\nholiday notes.txt\n");
    menu.expect_line("found 1 source of holiday notes.txt");
    menu.expect_line("holiday notes.txt");
    menu.send("2\nzzz-nothing\n");
    menu.expect_line("no peer shares \"zzz-nothing\"");
    menu.send("3\n");
    let (status, stderr) = menu.wait_exit();
    assert!(status.success(), "{status}: {stderr}");
}

/// The menu on a terminal: `script` (util-linux) gives it a pseudo-terminal,
/// so the line editor runs: Tab completes a shared name at `1`, Up recalls
/// it, `q` exits. Skipped, saying why, where `script` is missing.
#[test]
fn on_a_terminal_tab_completes_shared_names_and_q_exits() {
    let Ok(script) = which("script") else {
        println!(
            "skipped: `script` (util-linux) is not installed, no pseudo-terminal to test with"
        );
        return;
    };
    let registry = Registry::start();
    let (_dir, shared, downloads) = Peer::folders();
    std::fs::write(shared.join("alpha-unique.txt"), b"alpha").unwrap();
    std::fs::write(shared.join("beta.txt"), b"beta").unwrap();
    let command = format!(
        "exec '{}' --server {} --shared '{}' --downloads '{}' --port 0",
        bin("peer").display(),
        registry.addr_string(),
        shared.display(),
        downloads.display()
    );
    let mut child = Command::new(script)
        .args(["-q", "-e", "-f", "-c", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    // Killed however the test ends: the pseudo-terminal closes and the menu
    // gets SIGHUP (it unregisters and exits).
    let mut child = KillOnDrop(child);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = std::sync::Arc::clone(&seen);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |needle: &str, count: usize| {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let text = seen.lock().unwrap().clone();
            if text.matches(needle).count() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!("no {count} × {needle:?} on the terminal; so far:\n{text}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("Choose 1-4: ", 1);
    stdin.write_all(b"1\r").unwrap();
    wait_for("File name: ", 1);
    stdin.write_all(b"alp\t\r").unwrap();
    wait_for("registered alpha-unique.txt", 1);
    assert_eq!(search_exit_code(&registry, "alpha-unique.txt"), Some(0));
    wait_for("Choose 1-4: ", 2);
    stdin.write_all(b"q\r").unwrap();
    wait_for("unregistered 1 file", 1);
    assert!(!seen.lock().unwrap().contains("unregistered 1 files"));
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the menu did not exit on q");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", seen.lock().unwrap());
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of `program` on PATH.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
        .ok_or(())
}
