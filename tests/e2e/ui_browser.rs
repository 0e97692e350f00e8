//! The control UI end to end in a real browser: headless Chromium driven
//! through WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run`
//! installs them). A registry and two real peers: type a word into peer B's
//! search box, see peer A's file, click Download, watch it reach
//! "verified", check the bytes in B's downloads folder; then a source that
//! cannot be reached shows its failure in the page. Screenshots at 360 and
//! 1280 px go to `target/ui-screenshots/` (not committed).
//!
//! The WebDriver client is the small blocking one below (HTTP/1.1 over a
//! `TcpStream`, JSON with serde_json): the crates for it (fantoccini,
//! thirtyfour) are async and pull tokio and hyper into a workspace that is
//! blocking by design, for the dozen commands this test needs.
//!
//! Without Chromium or chromedriver the test says why and returns.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ui_common::{http, ui_addr};
use p2p_tests::{pseudo_random_bytes, sha256_hex, wait_until, Peer, Registry, WAIT_TIMEOUT};
use serde_json::{json, Value};

/// How long the browser may take to start and answer.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The key WebDriver names an element by.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Flags for a quiet, self-contained headless Chromium: no sandbox (CI runs
/// as root), no network of its own (no updates, sync, QUIC), a fresh profile.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (with the reason printed) when Chromium or chromedriver is missing.
    fn start() -> Option<Browser> {
        let Some(chromium) = find_program(&["chromium", "chromium-browser", "google-chrome"])
        else {
            eprintln!("skipping: no chromium (apt-get install chromium chromium-driver)");
            return None;
        };
        let Some(chromedriver) = find_program(&["chromedriver"]) else {
            eprintln!("skipping: no chromedriver (apt-get install chromium-driver)");
            return None;
        };
        // chromedriver cannot report a port it picked itself: take a free one.
        let port = p2p_tests::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: tempfile::tempdir().unwrap(),
        };
        wait_until("chromedriver to be ready", BROWSER_TIMEOUT, || {
            std::net::TcpStream::connect(addr).is_ok()
                && browser.call("GET", "/status", None)["ready"] == true
        });
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium, "args": args },
            }}})),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(browser)
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let host = self.addr.to_string();
        let mut headers = vec![("Host", host.as_str())];
        if method == "POST" {
            headers.push(("Content-Type", "application/json"));
        }
        let reply = http(self.addr, method, path, &headers, &body);
        let value = reply.json()["value"].clone();
        assert!(
            reply.status == 200,
            "WebDriver {method} {path} answered {}: {value}",
            reply.status
        );
        value
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css:?}: {found}"))
            .to_owned()
    }

    fn type_into(&self, element: &str, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        );
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Sends keys to an element without clearing it first.
    fn keys(&self, element: &str, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, element: &str) {
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    fn window(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    fn screenshot(&self, path: &Path) {
        let png = self.session_call("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(
                    self.addr,
                    "DELETE",
                    &path,
                    &[("Host", &self.addr.to_string())],
                    "",
                )
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot's encoding), padding ignored.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `target/ui-screenshots/`, next to the test binaries' profile directory.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/ui-screenshots
    exe.ancestors().nth(3).unwrap().join("ui-screenshots")
}

/// Every download row of the page: name, state, message.
const ROWS_SCRIPT: &str = "return [...document.querySelectorAll('#downloads .download')]\
    .map(r => [r.querySelector('.name').textContent, r.dataset.state, \
               r.querySelector('.message').textContent, r.querySelector('.facts').textContent]);";

/// The names of the search results shown.
const RESULTS_SCRIPT: &str =
    "return [...document.querySelectorAll('#results .result .name')].map(e => e.textContent);";

fn row_of(browser: &Browser, name: &str) -> Option<Vec<String>> {
    let rows = browser.script(ROWS_SCRIPT, json!([]));
    rows.as_array()?.iter().find_map(|row| {
        let row: Vec<String> = row
            .as_array()?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        (row[0] == name).then_some(row)
    })
}

/// How the Download button is pressed.
#[derive(Clone, Copy, PartialEq)]
enum Press {
    Click,
    /// Tab from the search box to the button, then Enter: no mouse.
    Keyboard,
}

/// WebDriver's codes for the Tab and Enter keys.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

fn search_and_download(browser: &Browser, word: &str, name: &str, press: Press) {
    let q = browser.find("#q");
    browser.type_into(&q, word);
    wait_until(
        &format!("{name:?} among the results for {word:?}"),
        WAIT_TIMEOUT,
        || {
            let names = browser.script(RESULTS_SCRIPT, json!([]));
            names
                .as_array()
                .is_some_and(|n| n.len() == 1 && n[0] == name)
        },
    );
    let button = browser.find("#results .result button");
    let label = browser.script(
        "return arguments[0].getAttribute('aria-label');",
        json!([{ ELEMENT_KEY: button }]),
    );
    assert_eq!(label, format!("Download {name}"));
    match press {
        Press::Click => browser.click(&button),
        Press::Keyboard => {
            browser.keys(&q, TAB);
            let focused = browser.script(
                "return document.activeElement.getAttribute('aria-label');",
                json!([]),
            );
            assert_eq!(
                focused,
                format!("Download {name}"),
                "Tab from the search box"
            );
            let active = browser.session_call("GET", "/element/active", None);
            let active = active[ELEMENT_KEY].as_str().unwrap().to_owned();
            browser.keys(&active, ENTER);
        }
    }
}

#[test]
fn search_download_and_watch_it_verify_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let registry = Registry::start();
    let name = "holiday photos <i>é &amp;.bin";
    let content = pseudo_random_bytes(5 * 1024 * 1024 + 3, 11);
    // A sends at most 2 MiB/s, so the transfer lasts a few seconds and its
    // live progress can be seen in the page.
    let a = Peer::serve(
        &registry,
        &[(name, &content), ("notes.txt", b"some notes")],
        &["--ui", "off", "--max-upload-rate", "2MiB"],
    );
    let b = Peer::serve(
        &registry,
        &[("mine.txt", b"b's own file")],
        &["--ui", "127.0.0.1:0"],
    );
    let ui = ui_addr(&b);
    let _ = &a;

    browser.goto(&format!("http://{ui}/"));
    wait_until("the page to list B's shared file", WAIT_TIMEOUT, || {
        browser.script(
            "return document.querySelector('#shared .name')?.textContent || '';",
            json!([]),
        ) == "mine.txt"
    });

    // The page shows sizes as the terminal does (its script's `human`
    // against p2p_proto::units::human_size), ties and unit edges included.
    let mut sizes: Vec<u64> = vec![0, 1, 1023, 1024, 1280, 1536, 1792, 1_048_575, 1_048_576];
    sizes.extend([1_310_720, 1_048_524, 1_073_689_395, (1 << 53) - 1]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for shift in [12, 22, 32, 42, 52] {
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sizes.push(x >> (64 - shift));
        }
    }
    for k in 1..=4u32 {
        for quarter in [1u64, 3, 5, 7] {
            sizes.push(quarter * 1024u64.pow(k) / 4);
        }
    }
    let shown = browser.script("return arguments[0].map((n) => human(n));", json!([sizes]));
    for (size, shown) in sizes.iter().zip(shown.as_array().expect("an array")) {
        assert_eq!(
            shown.as_str(),
            Some(p2p_proto::units::human_size(*size).as_str()),
            "{size} bytes"
        );
    }

    search_and_download(&browser, "holi", name, Press::Click);
    let mut live = None;
    wait_until(
        "live progress (bytes, rate) in the page",
        WAIT_TIMEOUT,
        || {
            live = row_of(&browser, name);
            live.as_ref()
                .is_some_and(|r| r[1] == "running" && r[3].contains(" of ") && r[3].contains("/s"))
        },
    );
    eprintln!("live progress: {:?}", live.unwrap());
    browser.screenshot(&screenshot_dir().join("ui-progress-1280.png"));
    let mut last = None;
    wait_until(
        "the download to show \"verified\" in the page",
        WAIT_TIMEOUT,
        || {
            last = row_of(&browser, name);
            let row = last.as_ref();
            assert!(row.is_none_or(|r| r[1] != "failed"), "{last:?}");
            row.is_some_and(|r| r[1] == "verified")
        },
    );
    let row = last.unwrap();
    assert!(row[2].starts_with("verified"), "{row:?}");
    // The name was shown as text, not markup.
    assert_eq!(
        browser.script(
            "return document.querySelectorAll('#downloads i, #results i').length;",
            json!([])
        ),
        0
    );
    assert_eq!(std::fs::read(b.downloads.join(name)).unwrap(), content);
    assert_eq!(
        sha256_hex(&std::fs::read(b.downloads.join(name)).unwrap()),
        sha256_hex(&content)
    );

    // A source that cannot be reached: the failure shows in the page.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let ghost = "ghost report.pdf";
    registry
        .client()
        .register(port, 1000, &sha256_hex(b"ghost"), ghost)
        .unwrap();
    search_and_download(&browser, "ghost", ghost, Press::Keyboard);
    let mut failed = None;
    wait_until("the failure to show in the page", WAIT_TIMEOUT, || {
        failed = row_of(&browser, ghost);
        failed.as_ref().is_some_and(|r| r[1] == "failed")
    });
    let failed = failed.unwrap();
    assert!(
        failed[2].contains(&format!("127.0.0.1:{port}")),
        "{failed:?}"
    );
    let retry_shown = browser.script(
        "return [...document.querySelectorAll('#downloads .download')]\
           .filter(r => r.dataset.state === 'failed')\
           .map(r => !r.querySelector('button[aria-label^=\"Retry\"]').hidden);",
        json!([]),
    );
    assert_eq!(retry_shown, json!([true]));

    // The search box is labelled (the ghost download above was started with Tab and Enter).
    let label = browser.script(
        "return document.querySelector('label[for=q]').textContent;",
        json!([]),
    );
    assert!(label.as_str().unwrap().contains("Search"), "{label}");

    let dir = screenshot_dir();
    browser.script("window.scrollTo(0, 0);", json!([]));
    browser.window(1280, 1000);
    browser.screenshot(&dir.join("ui-1280.png"));
    browser.window(360, 1400);
    wait_until("the page to fit 360 px", WAIT_TIMEOUT, || {
        browser.script(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            json!([]),
        ) == true
    });
    browser.screenshot(&dir.join("ui-360.png"));
    browser.window(1920, 1080);
    browser.screenshot(&dir.join("ui-1920.png"));
}
