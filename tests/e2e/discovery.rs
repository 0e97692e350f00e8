//! Registry discovery by mDNS/DNS-SD, for real: two network namespaces joined
//! by a veth pair (made by this test, so no multicast reaches a real
//! interface), `dht-server` announcing in one, `peer` without `--server`
//! browsing in the other.
//!
//! Needs root and iproute2's `ip`; where namespaces cannot be created the
//! tests print why and pass without checking anything.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use p2p_tests::{bin, run, Running};

/// Deadline for one `peer` command (browsing alone takes at most 2 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Addresses of the two ends of the veth pair (a private /24 used only inside the namespaces).
const REGISTRY_IP: &str = "10.77.0.1";
const PEER_IP: &str = "10.77.0.2";

/// Two namespaces and the veth pair between them; deleted on drop (which
/// also deletes the veth ends inside them).
struct Lan {
    registry_ns: String,
    peer_ns: String,
    /// The registry's end of the veth pair (gone with its namespace; deleted
    /// explicitly in case creation stopped before it was moved there).
    veth: String,
}

impl Lan {
    /// Creates the namespaces, or says why it cannot.
    fn create(tag: &str) -> Result<Lan, String> {
        if !Path::new("/proc/self/ns/net").exists() {
            return Err("no network namespaces here".into());
        }
        let id = std::process::id();
        // Interface names are at most 15 bytes.
        let veth_r = format!("v{id}{}r", &tag[..1]);
        let veth_p = format!("v{id}{}p", &tag[..1]);
        // Built first, so that a failing step below still deletes what the
        // steps before it made.
        let lan = Lan {
            registry_ns: format!("p2p-{tag}-{id}-r"),
            peer_ns: format!("p2p-{tag}-{id}-p"),
            veth: veth_r.clone(),
        };
        let (r, p) = (lan.registry_ns.as_str(), lan.peer_ns.as_str());
        let cidr_r = format!("{REGISTRY_IP}/24");
        let cidr_p = format!("{PEER_IP}/24");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", r],
            vec!["netns", "add", p],
            vec![
                "link", "add", &veth_r, "type", "veth", "peer", "name", &veth_p,
            ],
            vec!["link", "set", &veth_r, "netns", r],
            vec!["link", "set", &veth_p, "netns", p],
            vec!["-n", r, "addr", "add", &cidr_r, "dev", &veth_r],
            vec!["-n", p, "addr", "add", &cidr_p, "dev", &veth_p],
            vec!["-n", r, "link", "set", &veth_r, "multicast", "on", "up"],
            vec!["-n", p, "link", "set", &veth_p, "multicast", "on", "up"],
            vec!["-n", r, "link", "set", "lo", "up"],
            vec!["-n", p, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let output = Command::new("ip")
                .args(&step)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "`ip {}` failed (root needed): {}",
                    step.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
        Ok(lan)
    }

    /// `ip netns exec NS program args...`, prepared for [`Running::spawn`].
    fn command(ns: &str, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env_remove("P2P_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `peer args...` in the peer's namespace without `P2P_SERVER`.
    fn peer(&self, args: &[&str], env: &[&str]) -> Output {
        let peer = bin("peer");
        let mut full = vec!["netns", "exec", &self.peer_ns, "env", "-u", "P2P_SERVER"];
        full.extend_from_slice(env);
        full.push(peer.to_str().expect("UTF-8 path"));
        full.extend_from_slice(args);
        run(Path::new("ip"), &full, RUN_TIMEOUT)
    }

    /// Starts `dht-server` on the registry's end of the veth pair.
    fn registry(&self, db: &Path, extra: &[&str]) -> (std::net::SocketAddr, Running) {
        self.registry_on(&format!("{REGISTRY_IP}:0"), db, extra)
    }

    /// Starts `dht-server --listen listen` in the registry's namespace.
    fn registry_on(
        &self,
        listen: &str,
        db: &Path,
        extra: &[&str],
    ) -> (std::net::SocketAddr, Running) {
        let mut args = vec!["--db", db.to_str().expect("UTF-8"), "--listen", listen];
        args.extend_from_slice(extra);
        // `ip netns exec` execs the program: the PID killed on drop is dht-server's.
        let command = Lan::command(&self.registry_ns, &bin("dht-server"), &args);
        Running::spawn(command, &bin("dht-server")).wait_for_address("listening on ")
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let steps = [
            ["netns", "del", &self.registry_ns],
            ["netns", "del", &self.peer_ns],
            ["link", "del", &self.veth],
        ];
        for step in steps {
            let _ = Command::new("ip")
                .args(step)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_peer_without_server_finds_the_registry_on_the_lan() {
    let lan = match Lan::create("d") {
        Ok(lan) => lan,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("lan file.txt"), b"found over mDNS\n").unwrap();
    let shared = shared.to_str().unwrap();
    let (registry_addr, registry) = lan.registry(&dir.path().join("r.db"), &[]);

    // Registered and searched without --server or P2P_SERVER: both find it.
    let out = lan.peer(
        &[
            "register",
            "lan file.txt",
            "--port",
            "4100",
            "--shared",
            shared,
        ],
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "register failed: {stderr}");
    assert!(
        stderr.contains(&format!("registry {registry_addr} found by mDNS")),
        "says which registry it found: {stderr}"
    );
    let out = lan.peer(&["search", "lan file.txt"], &[]);
    assert!(out.status.success(), "search: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("{PEER_IP}:4100 16 ")),
        "search answer: {}",
        text(&out.stdout)
    );

    // P2P_SERVER wins over the LAN (here: an address where nothing listens).
    let env = format!("P2P_SERVER={PEER_IP}:1");
    let out = lan.peer(&["search", "lan file.txt"], &[&env]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("found by mDNS"));
    drop(registry);

    // Bound to 0.0.0.0 it announces its interface address (not loopback).
    let (any, registry) = lan.registry_on("0.0.0.0:0", &dir.path().join("r.db"), &[]);
    let out = lan.peer(&["search", "lan file.txt"], &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "search: {stderr}");
    assert!(
        stderr.contains(&format!(
            "registry {REGISTRY_IP}:{} found by mDNS",
            any.port()
        )),
        "{stderr}"
    );
    drop(registry);

    // With --no-mdns nothing is announced: the peer falls back to 127.0.0.1:9000.
    let (_, _quiet) = lan.registry(&dir.path().join("r.db"), &["--no-mdns"]);
    let out = lan.peer(&["search", "lan file.txt"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("found by mDNS"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9000"), "{stderr}");
}
