//! The control UI's JSON API and safety rules, without a browser, against
//! real processes: a registry and `peer serve` with `--ui 127.0.0.1:0`.
//! Also the public file port's `?inline`, `Content-Disposition` and index.

use std::time::Duration;

use crate::ui_common::{http, start_download, token_of, ui_addr, HttpReply};
use p2p_tests::{pseudo_random_bytes, sha256_hex, wait_until, Peer, Registry, WAIT_TIMEOUT};
use serde_json::Value;

#[test]
fn safety_rules_refuse_what_they_must_and_accept_what_they_must() {
    let registry = Registry::start();
    let peer = Peer::serve(&registry, &[], &["--ui", "127.0.0.1:0"]);
    let ui = ui_addr(&peer);
    let own = ui.to_string();
    let token = token_of(ui);

    // Reading: only the UI's own Host.
    assert_eq!(
        http(ui, "GET", "/api/downloads", &[("Host", &own)], "").status,
        200
    );
    for host in [
        "evil.example",
        "evil.example:80",
        &format!("localhost:{}", ui.port()),
        "127.0.0.1",
    ] {
        let reply = http(ui, "GET", "/", &[("Host", host)], "");
        assert_eq!(reply.status, 403, "Host {host}: {reply:?}");
        assert!(
            !reply.body.contains(&token),
            "the token leaked to Host {host}"
        );
        // The refusal says where the UI answers.
        assert!(
            reply.body.contains(&format!("http://{own}/")),
            "Host {host}: {reply:?}"
        );
    }
    let no_host = HttpReply::raw(ui, "GET /api/downloads HTTP/1.0\r\n\r\n");
    assert_eq!(no_host.status, 403, "{no_host:?}");

    // Changing state: the token, and an Origin (when sent) that is the UI's own.
    let body = r#"{"name":"nothing-here.txt"}"#;
    let own_origin = format!("http://{own}");
    let refused: [&[(&str, &str)]; 6] = [
        &[("Host", &own)],
        &[("Host", &own), ("X-P2P-Token", "0000")],
        &[("Host", &own), ("X-P2P-Token", &token[1..])],
        &[
            ("Host", &own),
            ("X-P2P-Token", &token),
            ("Origin", "http://evil.example"),
        ],
        &[("Host", &own), ("X-P2P-Token", &token), ("Origin", "null")],
        &[
            ("Host", "evil.example"),
            ("X-P2P-Token", &token),
            ("Origin", &own_origin),
        ],
    ];
    for headers in refused {
        let reply = http(ui, "POST", "/api/downloads", headers, body);
        assert_eq!(reply.status, 403, "{headers:?}: {reply:?}");
    }
    for method in ["DELETE", "PUT", "PATCH"] {
        let reply = http(ui, method, "/api/downloads/1", &[("Host", &own)], "");
        assert_eq!(reply.status, 403, "{method} without token: {reply:?}");
    }
    let none = http(ui, "GET", "/api/downloads", &[("Host", &own)], "").json();
    assert_eq!(
        none["downloads"].as_array().unwrap().len(),
        0,
        "a refused request started a download"
    );

    let with_origin = http(
        ui,
        "POST",
        "/api/downloads",
        &[
            ("Host", &own),
            ("X-P2P-Token", &token),
            ("Origin", &own_origin),
        ],
        body,
    );
    assert_eq!(with_origin.status, 202, "{with_origin:?}");
    let without_origin = http(
        ui,
        "POST",
        "/api/downloads",
        &[("Host", &own), ("X-P2P-Token", &token)],
        r#"{"name":"other.txt"}"#,
    );
    assert_eq!(without_origin.status, 202, "{without_origin:?}");
    let listed = http(ui, "GET", "/api/downloads", &[("Host", &own)], "").json();
    assert_eq!(listed["downloads"].as_array().unwrap().len(), 2);

    // With the token, bad input is a clear 4xx, never a crash.
    let auth = [("Host", own.as_str()), ("X-P2P-Token", token.as_str())];
    assert_eq!(
        http(ui, "POST", "/api/downloads", &auth, "not json").status,
        400
    );
    assert_eq!(
        http(ui, "POST", "/api/downloads", &auth, r#"{"name":"a/b"}"#).status,
        400
    );
    assert_eq!(
        http(ui, "POST", "/api/downloads/999/cancel", &auth, "").status,
        404
    );
    assert_eq!(http(ui, "DELETE", "/api/downloads", &auth, "").status, 405);
    assert_eq!(
        http(ui, "GET", "/view/shared/..", &[("Host", &own)], "").status,
        400
    );
    assert_eq!(
        http(ui, "GET", "/nothing", &[("Host", &own)], "").status,
        404
    );
}

#[test]
fn a_download_started_over_the_api_is_byte_identical() {
    let registry = Registry::start();
    let content = pseudo_random_bytes(3 * 1024 * 1024 + 17, 7);
    let name = "holiday photos é.bin";
    let a = Peer::serve(&registry, &[(name, &content)], &["--ui", "127.0.0.1:0"]);
    let b = Peer::serve(&registry, &[], &["--ui", "127.0.0.1:0"]);
    let ui = ui_addr(&b);
    let own = ui.to_string();

    let found = http(ui, "GET", "/api/find?q=holi", &[("Host", &own)], "").json();
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{found}");
    assert_eq!(results[0]["name"], name);
    assert_eq!(results[0]["size"], content.len() as u64);
    assert_eq!(results[0]["sha256"], sha256_hex(&content));
    assert_eq!(results[0]["sources"], 1);

    let job = start_download(ui, name, Some(&sha256_hex(&content)));
    let id = job["id"].as_u64().unwrap();
    let mut last = Value::Null;
    wait_until("the download to be verified", WAIT_TIMEOUT, || {
        last = http(
            ui,
            "GET",
            &format!("/api/downloads/{id}"),
            &[("Host", &own)],
            "",
        )
        .json();
        assert_ne!(last["state"], "failed", "{last}");
        last["state"] == "verified"
    });
    assert_eq!(last["done"], content.len() as u64, "{last}");
    assert_eq!(last["total"], content.len() as u64, "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("verified"),
        "{last}"
    );
    assert_eq!(std::fs::read(b.downloads.join(name)).unwrap(), content);

    // The downloaded file is listed and can be viewed.
    let shared = http(ui, "GET", "/api/shared", &[("Host", &own)], "").json();
    assert_eq!(shared["downloaded"][0]["name"], name, "{shared}");
    let view = shared["downloaded"][0]["view"].as_str().unwrap().to_owned();
    let viewed = http(ui, "GET", &view, &[("Host", &own)], "");
    assert_eq!(viewed.status, 200);
    assert_eq!(viewed.bytes, content);
    assert!(viewed
        .header("content-security-policy")
        .unwrap()
        .contains("sandbox"));

    // Peer A's UI shows its file as registered.
    let a_ui = ui_addr(&a);
    let a_shared = http(
        a_ui,
        "GET",
        "/api/shared",
        &[("Host", &a_ui.to_string())],
        "",
    )
    .json();
    assert_eq!(a_shared["shared"][0]["name"], name, "{a_shared}");
    assert_eq!(a_shared["shared"][0]["state"], "registered", "{a_shared}");

    // Starting it again while nothing runs: already there, verified.
    let again = start_download(ui, name, None);
    let again_id = again["id"].as_u64().unwrap();
    let mut job = serde_json::Value::Null;
    wait_until("the second download to end", WAIT_TIMEOUT, || {
        job = http(
            ui,
            "GET",
            &format!("/api/downloads/{again_id}"),
            &[("Host", &own)],
            "",
        )
        .json();
        job["state"] == "verified"
    });
    // Its size is the file's, though nothing was fetched.
    assert_eq!(job["total"], content.len() as u64, "{job}");
    assert_eq!(job["done"], content.len() as u64, "{job}");
    assert!(
        job["message"].as_str().unwrap().contains("already"),
        "{job}"
    );
}

#[test]
fn a_failing_source_is_reported_and_can_be_retried() {
    let registry = Registry::start();
    let b = Peer::serve(&registry, &[], &["--ui", "127.0.0.1:0"]);
    let ui = ui_addr(&b);
    let own = ui.to_string();
    // A source whose port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let sha = sha256_hex(b"never served");
    registry
        .client()
        .register(port, 12, &sha, "ghost file.txt")
        .unwrap();

    let job = start_download(ui, "ghost file.txt", Some(&sha));
    let id = job["id"].as_u64().unwrap();
    let mut last = Value::Null;
    wait_until("the download to fail", WAIT_TIMEOUT, || {
        last = http(
            ui,
            "GET",
            &format!("/api/downloads/{id}"),
            &[("Host", &own)],
            "",
        )
        .json();
        last["state"] == "failed"
    });
    let message = last["message"].as_str().unwrap();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{last}");
    assert!(!b.downloads.join("ghost file.txt").exists());

    let token = token_of(ui);
    let auth = [("Host", own.as_str()), ("X-P2P-Token", token.as_str())];
    // An ended download cannot be cancelled; it can be retried.
    assert_eq!(
        http(
            ui,
            "POST",
            &format!("/api/downloads/{id}/cancel"),
            &auth,
            ""
        )
        .status,
        409
    );
    let retried = http(ui, "POST", &format!("/api/downloads/{id}/retry"), &auth, "");
    assert_eq!(retried.status, 202, "{retried:?}");
    wait_until("the retry to fail again", WAIT_TIMEOUT, || {
        let job = http(
            ui,
            "GET",
            &format!("/api/downloads/{id}"),
            &[("Host", &own)],
            "",
        )
        .json();
        job["state"] == "failed"
    });
}

#[test]
fn ui_off_prints_no_ui_line_and_a_non_loopback_ui_warns() {
    let registry = Registry::start();
    let off = Peer::serve(&registry, &[], &["--ui", "off"]);
    // The line after `listening on` would be `ui on`; with --ui off the
    // process prints nothing more, so a short wait times out.
    let printed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        off.process
            .as_ref()
            .unwrap()
            .wait_for_line(|l| l.starts_with("ui on"), Duration::from_millis(500))
    }));
    assert!(printed.is_err(), "--ui off still started a UI");

    // Not loopback: a warning, and the UI answers at its own address only.
    let mut open = Peer::serve(&registry, &[], &["--ui", "0.0.0.0:0"]);
    let any = ui_addr(&open);
    let local: std::net::SocketAddr = format!("127.0.0.1:{}", any.port()).parse().unwrap();
    let host = local.to_string();
    assert_eq!(
        http(local, "GET", "/api/downloads", &[("Host", &host)], "").status,
        200
    );
    assert_eq!(
        http(
            local,
            "GET",
            "/api/downloads",
            &[("Host", &format!("evil.example:{}", any.port()))],
            ""
        )
        .status,
        403
    );
    let process = open.process.take().unwrap();
    process.signal("TERM");
    let (_, stderr) = process.wait_exit(WAIT_TIMEOUT);
    assert!(
        stderr.contains("anyone who can reach it can make this peer download files"),
        "{stderr}"
    );
}

#[test]
fn public_file_port_inline_disposition_and_index() {
    let registry = Registry::start();
    let name = "my notes é.txt";
    let peer = Peer::serve(
        &registry,
        &[(name, b"hello"), ("big.bin", &[0u8; 3 * 1024 * 1024])],
        &["--ui", "off"],
    );
    std::fs::write(peer.shared.join("half.iso.part"), b"partial").unwrap();
    let addr = peer.addr;
    let host = addr.to_string();
    let url = "/files/my%20notes%20%C3%A9.txt";

    let inline = http(
        addr,
        "GET",
        &format!("{url}?inline"),
        &[("Host", &host)],
        "",
    );
    assert_eq!(inline.status, 200);
    assert_eq!(
        inline.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let disposition = inline.header("content-disposition").unwrap();
    assert!(disposition.starts_with("inline;"), "{disposition}");
    assert_eq!(inline.bytes, b"hello");

    let attachment = http(addr, "GET", url, &[("Host", &host)], "");
    assert_eq!(attachment.status, 200);
    let disposition = attachment.header("content-disposition").unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''my%20notes%20%C3%A9.txt"),
        "{disposition}"
    );
    assert_eq!(
        attachment.header("etag"),
        Some(format!("\"{}\"", sha256_hex(b"hello")).as_str())
    );
    let head = http(
        addr,
        "HEAD",
        &format!("{url}?inline"),
        &[("Host", &host)],
        "",
    );
    assert_eq!(head.status, 200);
    assert!(head.bytes.is_empty());
    let range = http(
        addr,
        "GET",
        &format!("{url}?inline"),
        &[("Host", &host), ("Range", "bytes=1-2")],
        "",
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.bytes, b"el");

    let index = http(addr, "GET", "/", &[("Host", &host)], "");
    assert!(index.body.contains("3.0 MiB"), "{}", index.body);
    assert!(
        index.body.contains(&format!("{url}?inline")),
        "{}",
        index.body
    );
    assert!(!index.body.contains("half.iso"), "{}", index.body);

    // curl -OJ saves the real name.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("curl")
            .args(["-s", "-f", "-O", "-J", &format!("http://{addr}{url}")])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"hello");
    }
}

#[test]
fn cancel_stops_a_queued_download_and_a_running_one() {
    let registry = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("slow part {i}.bin"),
                pseudo_random_bytes(384 * 1024, i + 1),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    // 384 KiB/s for all: the first three take about 3 s together, the fourth waits.
    let _a = Peer::serve(
        &registry,
        &refs,
        &["--ui", "off", "--max-upload-rate", "384KiB"],
    );
    let b = Peer::serve(&registry, &[], &["--ui", "127.0.0.1:0"]);
    let ui = ui_addr(&b);
    let own = ui.to_string();
    let token = token_of(ui);
    let auth = [("Host", own.as_str()), ("X-P2P-Token", token.as_str())];
    let ids: Vec<u64> = files
        .iter()
        .map(|(name, _)| start_download(ui, name, None)["id"].as_u64().unwrap())
        .collect();
    let job = |id: u64| {
        http(
            ui,
            "GET",
            &format!("/api/downloads/{id}"),
            &[("Host", &own)],
            "",
        )
        .json()
    };
    wait_until("three downloads running", WAIT_TIMEOUT, || {
        ids[..3].iter().all(|&id| job(id)["state"] == "running")
    });
    assert_eq!(job(ids[3])["state"], "queued");

    // The same name cannot start twice at once.
    let twice = http(
        ui,
        "POST",
        "/api/downloads",
        &auth,
        &serde_json::json!({ "name": files[0].0 }).to_string(),
    );
    assert_eq!(twice.status, 409, "{twice:?}");

    let queued = http(
        ui,
        "POST",
        &format!("/api/downloads/{}/cancel", ids[3]),
        &auth,
        "",
    );
    assert_eq!(queued.status, 200, "{queued:?}");
    assert_eq!(queued.json()["state"], "cancelled");
    assert_eq!(queued.json()["running"], false);
    let running = http(
        ui,
        "POST",
        &format!("/api/downloads/{}/cancel", ids[0]),
        &auth,
        "",
    );
    assert_eq!(running.status, 200);
    assert_eq!(running.json()["state"], "cancelled");
    // The transfer under way stops within a chunk: no final file, the .part
    // kept for a retry, which then resumes it to the right bytes.
    wait_until("the cancelled transfer to stop", WAIT_TIMEOUT, || {
        job(ids[0])["running"] == false
    });
    let stopped = job(ids[0]);
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert!(
        stopped["message"].as_str().unwrap().contains(".part stays"),
        "{stopped}"
    );
    assert!(!b.downloads.join(&files[0].0).exists());
    assert!(b.downloads.join(format!("{}.part", files[0].0)).exists());
    let retry = http(
        ui,
        "POST",
        &format!("/api/downloads/{}/retry", ids[0]),
        &auth,
        "",
    );
    assert_eq!(retry.status, 202, "{retry:?}");
    wait_until("the retried download to verify", WAIT_TIMEOUT, || {
        job(ids[0])["state"] == "verified"
    });
    assert_eq!(
        std::fs::read(b.downloads.join(&files[0].0)).unwrap(),
        files[0].1
    );

    // The cancelled queued one never starts, even after the others end.
    wait_until("the three transfers to end", WAIT_TIMEOUT, || {
        ids[..3].iter().all(|&id| job(id)["running"] == false)
    });
    assert_eq!(job(ids[3])["state"], "cancelled");
    assert!(!b.downloads.join(&files[3].0).exists());
    assert!(!b.downloads.join(format!("{}.part", files[3].0)).exists());
    assert_eq!(
        std::fs::read(b.downloads.join(&files[1].0)).unwrap(),
        files[1].1
    );
}

/// Cancel also stops a download fetched piece by piece from several
/// sources: the coordinator stops its workers, no final file appears, the
/// `.part` stays, and Retry resumes it to the right bytes.
#[test]
fn cancel_stops_a_multi_source_download() {
    let registry = Registry::start();
    let name = "big from two.bin";
    // Three pieces and a bit, from two sources at 1 MiB/s each: seconds.
    let content = pseudo_random_bytes(3 * 4 * 1024 * 1024 + 4321, 41);
    let throttled = ["--ui", "off", "--max-upload-rate", "1MiB"];
    let _a = Peer::serve(&registry, &[(name, &content)], &throttled);
    let _b = Peer::serve(&registry, &[(name, &content)], &throttled);
    let c = Peer::serve(&registry, &[], &["--ui", "127.0.0.1:0"]);
    let ui = ui_addr(&c);
    let own = ui.to_string();
    let token = token_of(ui);
    let auth = [("Host", own.as_str()), ("X-P2P-Token", token.as_str())];
    let id = start_download(ui, name, None)["id"].as_u64().unwrap();
    let job = || {
        http(
            ui,
            "GET",
            &format!("/api/downloads/{id}"),
            &[("Host", &own)],
            "",
        )
        .json()
    };
    wait_until("bytes arriving", WAIT_TIMEOUT, || {
        let j = job();
        j["state"] == "running" && j["done"].as_u64().unwrap_or(0) > 0
    });
    let part = c.downloads.join(format!("{name}.part"));
    assert!(part.exists(), "{}", job());

    let cancel = http(
        ui,
        "POST",
        &format!("/api/downloads/{id}/cancel"),
        &auth,
        "",
    );
    assert_eq!(cancel.status, 200, "{cancel:?}");
    wait_until("the cancelled transfer to stop", WAIT_TIMEOUT, || {
        job()["running"] == false
    });
    let stopped = job();
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert!(
        stopped["sources"]
            .as_str()
            .unwrap()
            .contains("from 2 sources"),
        "not the multi-source path: {stopped}"
    );
    assert!(!c.downloads.join(name).exists());
    assert!(part.exists());
    assert!(
        stopped["done"].as_u64().unwrap() < content.len() as u64,
        "{stopped}"
    );

    let retry = http(ui, "POST", &format!("/api/downloads/{id}/retry"), &auth, "");
    assert_eq!(retry.status, 202, "{retry:?}");
    wait_until(
        "the retried download to verify",
        Duration::from_secs(60),
        || job()["state"] == "verified",
    );
    assert_eq!(std::fs::read(c.downloads.join(name)).unwrap(), content);
    println!("multi-source cancel: {stopped}\nafter retry: {}", job());
}
