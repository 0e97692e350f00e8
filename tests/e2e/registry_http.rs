//! `dht-server --http ADDR`: the read-only page and `GET /metrics`, over the
//! wire against the real binary. The metrics text is parsed by a small
//! strict parser of the Prometheus text format 0.0.4 written here, and the
//! counters are checked to move with the requests sent.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use p2p_tests::{Registry, Wire, WAIT_TIMEOUT};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A registry with `--http 127.0.0.1:0` and the HTTP address it printed.
fn start(extra: &[&str]) -> (Registry, SocketAddr) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let registry = Registry::start_with(&args);
    let line = registry
        .process
        .as_ref()
        .expect("running")
        .wait_for_line(|l| l.starts_with("http on "), WAIT_TIMEOUT);
    let addr = line
        .strip_prefix("http on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("bad http line {line:?}"))
        .parse()
        .expect("an address");
    (registry, addr)
}

struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `raw` as the whole request and reads the response to its close.
fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("a response, then close");
    let text = String::from_utf8(bytes).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .map(|l| {
            let (name, value) = l.split_once(':').expect("a header");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    if let Some(len) = headers.get("content-length") {
        if !raw.starts_with(b"HEAD ") {
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "Content-Length");
        }
    }
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    http_raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

// ---------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format 0.0.4
// ---------------------------------------------------------------------------

/// Parsed exposition: `TYPE` per family, and every sample by its name and
/// its labels (sorted), in order of appearance.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

/// `k="v",k2="v2"` (with `\\`, `\"`, `\n` escapes) → map.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or(format!("bad labels {text:?}"))?;
        if !valid_name(key) || labels.contains_key(key) {
            return Err(format!("bad or repeated label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("bad escape in {text:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &after[end + 1..];
        if let Some(more) = rest.strip_prefix(',') {
            rest = more;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label in {text:?}"));
        }
    }
    Ok(labels)
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return Some(base);
            }
        }
    }
    None
}

fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("the text must end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut helped = HashMap::new();
    let mut seen_samples_of = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|n| valid_name(n))
                .ok_or(format!("bad comment {line:?}"))?;
            match kind {
                Some("HELP") => {
                    if helped.insert(name.to_owned(), ()).is_some() {
                        return Err(format!("second HELP for {name}"));
                    }
                }
                Some("TYPE") => {
                    let kind = rest.ok_or(format!("TYPE without a type: {line:?}"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("unknown type {kind:?}"));
                    }
                    if seen_samples_of.contains(name) {
                        return Err(format!("TYPE of {name} after its samples"));
                    }
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                }
                _ => return Err(format!("unexpected comment {line:?}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("unexpected line {line:?}"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line:?}"))?;
        let value = parse_value(value)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line:?}"))?;
                (name, parse_labels(labels)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let family = family_of(name, &out.types).ok_or(format!("{name} has no TYPE before it"))?;
        seen_samples_of.insert(family.to_owned());
        if out.types[family] == "counter" && (value < 0.0 || !name.ends_with("_total")) {
            return Err(format!("counter {name} must be >= 0 and end in _total"));
        }
        out.samples.push((name.to_owned(), labels, value));
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Buckets of every histogram: `le` increasing, counts cumulative, the last
/// `+Inf` and equal to `_count`.
fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let buckets: Vec<(f64, f64)> = exp
            .samples
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .map(|(_, labels, v)| {
                let le = labels.get("le").ok_or(format!("{bucket} without le"))?;
                Ok((parse_value(le)?, *v))
            })
            .collect::<Result<_, String>>()?;
        let last = buckets.last().ok_or(format!("{family} has no buckets"))?;
        if last.0 != f64::INFINITY {
            return Err(format!("{family}'s buckets must end with le=\"+Inf\""));
        }
        for pair in buckets.windows(2) {
            if pair[1].0 <= pair[0].0 || pair[1].1 < pair[0].1 {
                return Err(format!("{family}'s buckets are not cumulative: {pair:?}"));
            }
        }
        let count = exp.value(&format!("{family}_count"), &[]);
        exp.value(&format!("{family}_sum"), &[]);
        if count != last.1 {
            return Err(format!("{family}_count {count} != +Inf bucket {}", last.1));
        }
    }
    Ok(())
}

fn scrape(addr: SocketAddr) -> Exposition {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse_exposition(&response.body)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{}", response.body))
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    parse_exposition(good).unwrap();
    for bad in [
        "a 1\n",                                                          // no TYPE
        "# TYPE a gauge\na 1",                                            // no final newline
        "# TYPE a gauge\na{k=\"v} 1\n",                                   // unterminated label
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE a counter\na 1\n", // counter without _total
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn metrics_move_with_the_requests_sent() {
    let (registry, http) = start(&[]);
    let before = scrape(http);
    let requests = |e: &Exposition, command: &str| {
        e.value("p2p_registry_requests_total", &[("command", command)])
    };
    let errors =
        |e: &Exposition, code: &str| e.value("p2p_registry_errors_total", &[("code", code)]);

    let mut wire = Wire::connect(registry.addr);
    for (port, name) in [
        (4001, "alpha one.txt"),
        (4002, "alpha two.txt"),
        (4003, "beta.bin"),
    ] {
        assert_eq!(wire.ask(&format!("REGISTER {port} 10 {HASH} {name}")), "OK");
    }
    assert_eq!(wire.call("SEARCH alpha one.txt")[0], "FOUND 1");
    assert_eq!(wire.ask("SEARCH nothing here"), "NOT_FOUND");
    assert_eq!(wire.call("FIND alpha")[0], "RESULTS 2");
    assert!(wire.ask("BOGUS").starts_with("ERR unknown_command"));
    assert!(wire
        .ask(&format!("REGISTER 4004 1 {HASH} a/b"))
        .starts_with("ERR bad_name"));
    wire.ping();

    // `wire` is still open: it is counted.
    let after = scrape(http);
    let delta = |f: &dyn Fn(&Exposition) -> f64| f(&after) - f(&before);
    // Requests that parse are counted by command; the bad name is an error only.
    assert_eq!(delta(&|e| requests(e, "register")), 3.0);
    assert_eq!(delta(&|e| requests(e, "search")), 2.0);
    assert_eq!(delta(&|e| requests(e, "find")), 1.0);
    assert_eq!(delta(&|e| requests(e, "ping")), 1.0);
    assert_eq!(delta(&|e| errors(e, "unknown_command")), 1.0);
    assert_eq!(delta(&|e| errors(e, "bad_name")), 1.0);
    assert_eq!(delta(&|e| errors(e, "busy")), 0.0);
    assert!(after.value("p2p_registry_open_connections", &[]) >= 1.0);
    // Three acknowledged REGISTERs: at least one commit, at most three.
    let commits = delta(&|e| e.value("p2p_registry_commit_batch_size_count", &[]));
    assert!((1.0..=3.0).contains(&commits), "{commits} commits");
    assert_eq!(
        delta(&|e| e.value("p2p_registry_commit_batch_size_sum", &[])),
        3.0
    );
    assert_eq!(
        delta(&|e| e.value("p2p_registry_commit_seconds_count", &[])),
        commits
    );
    assert_eq!(
        delta(&|e| e.value("p2p_registry_fsync_seconds_count", &[])),
        commits
    );
    // The live count is read from the database by a fresh connection per
    // scrape. Under a loaded CI machine it once read 2 of the 3 acknowledged
    // registrations, never reproduced since: wait for it (with a deadline),
    // and should it never come, fail with what the file holds.
    let deadline = std::time::Instant::now() + WAIT_TIMEOUT;
    let mut live = after.value("p2p_registry_live_registrations", &[]);
    while live != 3.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        live = scrape(http).value("p2p_registry_live_registrations", &[]);
    }
    if live != 3.0 {
        let conn = rusqlite::Connection::open(&registry.db).expect("open the database");
        let rows: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT file_id, peer_id, last_seen FROM registrations")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("read the registrations");
        panic!("live registrations {live}, the file holds {rows:?}");
    }
    assert_eq!(after.value("p2p_registry_peers", &[]), 3.0);

    drop(wire);
    p2p_tests::wait_until(
        "the closed connection to be counted out",
        WAIT_TIMEOUT,
        || scrape(http).value("p2p_registry_open_connections", &[]) == 0.0,
    );
}

#[test]
fn busy_refusals_are_counted() {
    let (registry, http) = start(&["--max-connections", "1"]);
    let mut holder = Wire::connect(registry.addr);
    holder.ping(); // served: it holds the only slot
    let mut refused = Wire::connect(registry.addr);
    assert!(refused.line().starts_with("ERR busy"));
    let metrics = scrape(http);
    assert_eq!(metrics.value("p2p_registry_busy_refusals_total", &[]), 1.0);
    assert_eq!(
        metrics.value("p2p_registry_errors_total", &[("code", "busy")]),
        1.0
    );
}

#[test]
fn the_page_searches_the_registry() {
    let (registry, http) = start(&[]);
    let mut wire = Wire::connect(registry.addr);
    assert_eq!(
        wire.ask(&format!(
            "REGISTER 4001 1536 {HASH} holiday <b>photos<i>.zip"
        )),
        "OK"
    );
    assert_eq!(
        wire.ask(&format!(
            "REGISTER 4002 1536 {HASH} holiday <b>photos<i>.zip"
        )),
        "OK"
    );
    assert_eq!(
        wire.ask(&format!("REGISTER 4001 20 {HASH} notes.txt")),
        "OK"
    );

    let page = get(http, "/?q=holi");
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        page.body.contains("holiday &lt;b&gt;photos&lt;i&gt;.zip"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<b>photos"), "names are escaped");
    assert!(page.body.contains("1.5 KiB"), "human sizes: {}", page.body);
    assert!(
        !page.body.contains("notes.txt</td>"),
        "only FIND's hits are listed"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external resources"
    );

    let page = get(http, "/?q=notes+nothing");
    assert!(page.body.contains("No live file matches"), "{}", page.body);
    let page = get(http, "/?q=note");
    assert!(page.body.contains("notes.txt"), "{}", page.body);
    let page = get(http, "/");
    assert!(
        page.body.contains("3 live registration(s)"),
        "{}",
        page.body
    );

    let head = http_raw(http, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(get(http, "/nowhere").status, 404);
    let post = http_raw(
        http,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(get(http, "/?q=%FF").status, 400);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(http_raw(http, huge.as_bytes()).status, 431);
    // The registry itself still answers.
    wire.ping();
}

#[test]
fn the_http_listener_has_its_own_connection_limit() {
    let (registry, http) = start(&[]);
    // 16 silent connections take every HTTP slot (dht_server::web::MAX_CONNECTIONS)...
    let held: Vec<TcpStream> = (0..dht_server::web::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(http).unwrap())
        .collect();
    // ...so one more is answered 503 at once, and the registry is untouched.
    let refused = get(http, "/metrics");
    assert_eq!(refused.status, 503);
    Wire::connect(registry.addr).ping();
    drop(held);
    p2p_tests::wait_until("an HTTP slot to be free again", WAIT_TIMEOUT, || {
        get(http, "/metrics").status == 200
    });
}
