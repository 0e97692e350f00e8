//! `dht-lookup`: the DHT lookup benchmark (issue 17). On a local testnet of
//! `--nodes` Mainline DHT nodes (in this process, on 127.0.0.1) it starts a
//! registry (`dht-server`) and `--peers` real `peer serve --dht` processes
//! that share `--files` files between them (registered with the registry
//! and announced on the DHT), then measures:
//!
//! - lookup: `get_peers` on the name's key until the first source confirmed
//!   by `HEAD` (one warm client node, one lookup per file), and until the
//!   query ends (all sources);
//! - end to end: `peer get NAME --dht` (no registry) against `peer get NAME`
//!   through the registry, each a fresh process, interleaved.
//!
//! Prints a Markdown table (p50/p99). Binaries (`peer`, `dht-server`) are
//! taken from this program's own directory unless `--bin-dir` says
//! otherwise. See BENCHMARKS.md ("DHT lookups") and bench/dht-lookup.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use p2p_dht::{DhtNode, LocalTestnet, NodeConfig};
use p2p_peer::dht::{find_sources, Wait};

/// How long one lookup may take before it counts as failed.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(30);

/// How long every file may take to become findable after the peers started.
const ANNOUNCE_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Parser)]
#[command(
    name = "dht-lookup",
    about = "DHT lookup benchmark: get_peers p50/p99, peer get --dht vs the registry"
)]
struct Args {
    /// DHT nodes of the local testnet
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// `peer serve --dht` processes
    #[arg(long, default_value_t = 5)]
    peers: usize,
    /// Files shared in all (spread over the peers, one peer each)
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Size of each file in KiB
    #[arg(long, default_value_t = 64)]
    file_kib: usize,
    /// End-to-end downloads of each kind
    #[arg(long, default_value_t = 20)]
    gets: usize,
    /// DHT request timeout of every client (default: mainline's 2 s)
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Where `peer` and `dht-server` are (default: next to this program)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Children killed when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `program args` and returns it with the address of its first
/// stdout line starting with `prefix`.
fn start(program: &Path, args: &[&str], prefix: &str) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix(prefix) {
            let addr = addr.trim().to_owned();
            // Keep draining stdout so the child never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, addr));
        }
    }
    bail!("{} exited before printing {prefix:?}", program.display())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn row(what: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "| {what} | {} | {} | {} | {} |",
        samples.len(),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

/// Pseudo-random bytes (xorshift), so no two files share content.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program has a directory")?
            .to_owned(),
    };
    let peer = bin_dir.join("peer");
    let registry_bin = bin_dir.join("dht-server");
    let tmp = std::env::temp_dir().join(format!("dht-lookup-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let timeout_text = args
        .request_timeout
        .map(|t| humantime::format_duration(t).to_string());

    let started = Instant::now();
    let testnet = LocalTestnet::start(args.nodes)?;
    let bootstrap = testnet.bootstrap()[..3.min(args.nodes)].join(",");
    eprintln!(
        "testnet of {} nodes up in {:?}",
        args.nodes,
        started.elapsed()
    );

    let mut children = Children(Vec::new());
    let db = tmp.join("registry.db");
    let (child, registry) = start(
        &registry_bin,
        &[
            "--db",
            db.to_str().context("UTF-8 temp path")?,
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
        ],
        "listening on ",
    )
    .or_else(|_| {
        // Before the registry learned --no-mdns.
        start(
            &registry_bin,
            &[
                "--db",
                db.to_str().unwrap_or("registry.db"),
                "--listen",
                "127.0.0.1:0",
            ],
            "listening on ",
        )
    })?;
    children.0.push(child);

    let names: Vec<String> = (0..args.files)
        .map(|i| format!("file-{i:03}.bin"))
        .collect();
    let peers_started = Instant::now();
    for p in 0..args.peers {
        let shared = tmp.join(format!("peer-{p}/shared"));
        std::fs::create_dir_all(&shared)?;
        for (i, name) in names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % args.peers == p)
        {
            std::fs::write(shared.join(name), bytes(args.file_kib * 1024, i as u64 + 1))?;
        }
        let downloads = tmp.join(format!("peer-{p}/downloads"));
        let mut serve_args = vec![
            "--server",
            &registry,
            "--shared",
            shared.to_str().context("UTF-8 temp path")?,
            "--downloads",
            downloads.to_str().context("UTF-8 temp path")?,
            "serve",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--ui",
            "off",
            "--dht",
            "--bootstrap",
            &bootstrap,
        ];
        if let Some(t) = &timeout_text {
            serve_args.extend(["--dht-request-timeout", t]);
        }
        let (child, _) = start(&peer, &serve_args, "listening on ")?;
        children.0.push(child);
    }

    let node = DhtNode::start(&NodeConfig {
        bind: Ipv4Addr::LOCALHOST,
        request_timeout: args.request_timeout,
        ..NodeConfig::client(testnet.bootstrap())
    })?;
    // Every file findable (announcements done).
    for name in &names {
        loop {
            let found = find_sources(&node, name, Instant::now() + LOOKUP_DEADLINE, Wait::First)?;
            if !found.sources.is_empty() {
                break;
            }
            if peers_started.elapsed() > ANNOUNCE_DEADLINE {
                bail!("{name} was not findable within {ANNOUNCE_DEADLINE:?}");
            }
        }
    }
    let announced = peers_started.elapsed();
    eprintln!(
        "{} files announced by {} peers and findable after {announced:?}",
        args.files, args.peers
    );

    let mut first = Vec::new();
    let mut all = Vec::new();
    let mut missed = 0;
    for name in &names {
        let t = Instant::now();
        let found = find_sources(&node, name, t + LOOKUP_DEADLINE, Wait::First)?;
        match found.first_after {
            Some(after) => first.push(after),
            None => missed += 1,
        }
        let t = Instant::now();
        let found = find_sources(&node, name, t + LOOKUP_DEADLINE, Wait::All)?;
        if !found.sources.is_empty() {
            all.push(t.elapsed());
        }
    }

    let mut via_dht = Vec::new();
    let mut via_registry = Vec::new();
    for (i, name) in names.iter().take(args.gets).enumerate() {
        for dht in [true, false] {
            let downloads = tmp.join(format!("get-{i}-{dht}"));
            let downloads = downloads.to_str().context("UTF-8 temp path")?;
            let mut get_args = vec!["--downloads", downloads];
            if dht {
                get_args.extend([
                    "--server",
                    "127.0.0.1:1",
                    "get",
                    name,
                    "--dht",
                    "--bootstrap",
                    &bootstrap,
                ]);
                if let Some(t) = &timeout_text {
                    get_args.extend(["--dht-request-timeout", t]);
                }
            } else {
                get_args.extend(["--server", &registry, "get", name]);
            }
            let t = Instant::now();
            let status = Command::new(&peer)
                .args(&get_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            let took = t.elapsed();
            if !status.success() {
                bail!("peer {get_args:?} failed: {status}");
            }
            if dht {
                via_dht.push(took);
            } else {
                via_registry.push(took);
            }
        }
    }

    let timeout = timeout_text.unwrap_or_else(|| "2s (mainline's default)".into());
    println!(
        "DHT lookups: {} nodes, {} peers, {} files of {} KiB, request timeout {timeout}; \
         announced and findable {:.1} s after the peers started; {missed} lookups found nothing\n",
        args.nodes,
        args.peers,
        args.files,
        args.file_kib,
        announced.as_secs_f64()
    );
    println!("| measure | n | p50 | p99 | max |\n|---|---|---|---|---|");
    println!(
        "{}",
        row("get_peers until the first confirmed source", &mut first)
    );
    println!(
        "{}",
        row("get_peers until the query ends (all sources)", &mut all)
    );
    println!(
        "{}",
        row(
            "`peer get --dht` (no registry), whole process",
            &mut via_dht
        )
    );
    println!(
        "{}",
        row(
            "`peer get` through the registry, whole process",
            &mut via_registry
        )
    );

    drop(children);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
