//! `dht-bench`: the load generator. Optionally preloads registrations, then
//! runs a closed-loop load for a warm-up and a measured window, and prints
//! throughput, latency percentiles, errors and one `SUMMARY {json}` line.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use p2p_bench::load::{self, LoadConfig, LoadReport, Mode};
use p2p_bench::preload;
use p2p_bench::target::Target;
use p2p_bench::workload::Mix;
use serde_json::json;

/// Load generator for the registry, and for the echo and Redis baselines
/// with the very same client loop.
#[derive(Debug, Parser)]
#[command(
    name = "dht-bench",
    after_help = "Examples:\n  \
      dht-bench --addr 127.0.0.1:9000 --preload 100000 --conns 16 --mix search=100\n  \
      dht-bench --addr 127.0.0.1:9000 --names 100000 --conns 64 --mix register=100\n  \
      dht-bench --target echo  --addr 127.0.0.1:7000 --conns 16 --mode per-request\n  \
      dht-bench --target redis --addr 127.0.0.1:6379 --preload 100000 --duration 0\n\n\
      The last line printed is `SUMMARY {json}` (one line, for scripts)."
)]
struct Args {
    /// Address of the server under test.
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// Kind of server: the registry, a line-echo server, or Redis.
    #[arg(long, value_enum, default_value_t = Target::Dht)]
    target: Target,
    /// Concurrent connections (one thread each).
    #[arg(long, value_name = "N", default_value_t = 16)]
    conns: usize,
    /// Length of the measured window (0: only preload).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time under load before the window opens.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Relative weights of search, register, find, heartbeat, ping.
    #[arg(long, value_name = "OP=W,...", default_value = "search=100")]
    mix: Mix,
    /// Keep one connection per thread, or open one per request.
    #[arg(long, value_enum, default_value_t = Mode::Persistent)]
    mode: Mode,
    /// Register files 0..N (over many peer ports, pipelined) before measuring.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preload: u64,
    /// Connections the preload uses (the registry batches commits across them).
    #[arg(long, value_name = "N", default_value_t = 64)]
    preload_conns: usize,
    /// Files 0..N exist (default: the --preload count, or 1000).
    #[arg(long, value_name = "N")]
    names: Option<u64>,
    /// Connect, read and write timeout of each request.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Seed of the random choices (same seed, same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Process id of the server, when local: its CPU use in the window is reported.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// A label copied into the summary line.
    #[arg(long, default_value = "")]
    label: String,
}

/// Default number of existing files when neither --names nor --preload says.
const DEFAULT_NAMES: u64 = 1_000;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dht-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut summary = json!({
        "label": args.label,
        "target": args.target.word(),
        "addr": args.addr,
    });
    let mut failed = false;
    if args.preload > 0 {
        let report = preload::preload(
            args.target,
            &args.addr,
            args.preload,
            args.preload_conns,
            args.timeout,
        )?;
        let secs = report.elapsed.as_secs_f64();
        emit(&format!(
            "preloaded {} registrations in {secs:.2} s ({:.0}/s), {} errors",
            report.count,
            report.count as f64 / secs.max(f64::MIN_POSITIVE),
            report.errors
        ))?;
        if let Some(e) = &report.first_error {
            eprintln!("dht-bench: first preload error: {e}");
            failed = true;
        }
        summary["preload"] = json!(report.count);
        summary["preload_s"] = json!(round(secs, 3));
        summary["preload_errors"] = json!(report.errors);
    }
    if !args.duration.is_zero() {
        let config = LoadConfig {
            target: args.target,
            addr: args.addr.clone(),
            conns: args.conns,
            warmup: args.warmup,
            duration: args.duration,
            mix: args.mix.clone(),
            mode: args.mode,
            names: args.names.unwrap_or(if args.preload > 0 {
                args.preload
            } else {
                DEFAULT_NAMES
            }),
            timeout: args.timeout,
            seed: args.seed,
            server_pid: args.server_pid,
        };
        let report = load::run(&config)?;
        emit(&report_text(&config, &report))?;
        if let Some(e) = &report.first_error {
            eprintln!("dht-bench: first error: {e}");
        }
        let fields = json!({
            "mode": config.mode.word(),
            "conns": config.conns,
            "mix": config.mix.to_string(),
            "names": config.names,
            "duration_s": round(report.elapsed.as_secs_f64(), 3),
            "ops": report.ops,
            "ops_per_s": round(report.ops_per_sec(), 1),
            "hits": report.hits,
            "misses": report.misses,
            "errors": report.errors,
            "p50_us": round(report.quantile_us(0.50), 1),
            "p99_us": round(report.quantile_us(0.99), 1),
            "p999_us": round(report.quantile_us(0.999), 1),
            "max_us": round(report.max_us(), 1),
            "client_cores": report.client_cores.map(|c| round(c, 2)),
            "server_cores": report.server_cores.map(|c| round(c, 2)),
            "server_us_per_op": report.server_cores.map(|c| {
                round(c * 1e6 / report.ops_per_sec().max(f64::MIN_POSITIVE), 1)
            }),
        });
        if let (Some(out), Some(fields)) = (summary.as_object_mut(), fields.as_object()) {
            out.extend(fields.clone());
        }
    }
    emit(&format!("SUMMARY {summary}"))?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The human-readable lines of a report.
fn report_text(config: &LoadConfig, report: &LoadReport) -> String {
    let mut text = format!(
        "{} {} x{} mix {}: {:.0} ops/s over {:.2} s ({} ops: {} hits, {} misses), {} errors\n\
         latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        config.target.word(),
        config.mode.word(),
        config.conns,
        config.mix,
        report.ops_per_sec(),
        report.elapsed.as_secs_f64(),
        report.ops,
        report.hits,
        report.misses,
        report.errors,
        report.quantile_us(0.50),
        report.quantile_us(0.99),
        report.quantile_us(0.999),
        report.max_us(),
    );
    if let Some(cores) = report.client_cores {
        text.push_str(&format!("\nload generator CPU: {cores:.2} cores"));
    }
    if let Some(cores) = report.server_cores {
        let per_op = cores * 1e6 / report.ops_per_sec().max(f64::MIN_POSITIVE);
        text.push_str(&format!(
            "\nserver CPU: {cores:.2} cores, {per_op:.1} us per request"
        ));
    }
    text
}

/// Writes one or more lines to stdout; a closed stdout is an error, not a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// `x` rounded to `digits` decimals, for a readable summary line.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
