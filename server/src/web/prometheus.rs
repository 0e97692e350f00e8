//! Renders [`Metrics`] (and the registration counts) in the Prometheus text
//! exposition format, version 0.0.4: `# HELP` and `# TYPE` before each
//! family, histogram buckets cumulative and ending with `le="+Inf"`.

use std::fmt::Write as _;

use crate::metrics::{Histogram, Metrics, CODES, COMMANDS, UNSET};
use crate::store::admin::Stats;

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric family, `stats` included when it could be read.
pub fn render(m: &Metrics, stats: Option<&Stats>) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "p2p_registry_requests_total",
        "counter",
        "Requests received, by command.",
    );
    for (command, count) in COMMANDS.iter().zip(&m.requests) {
        let _ = writeln!(
            out,
            "p2p_registry_requests_total{{command=\"{command}\"}} {}",
            load(count)
        );
    }
    family(
        &mut out,
        "p2p_registry_errors_total",
        "counter",
        "ERR replies sent, by code.",
    );
    for (code, count) in CODES.iter().zip(&m.errors) {
        let _ = writeln!(
            out,
            "p2p_registry_errors_total{{code=\"{}\"}} {}",
            code.as_str(),
            load(count)
        );
    }
    simple(
        &mut out,
        "p2p_registry_connections_total",
        "counter",
        "Connections accepted and served.",
        load(&m.connections),
    );
    simple(
        &mut out,
        "p2p_registry_open_connections",
        "gauge",
        "Connections being served now.",
        load(&m.open_connections),
    );
    simple(
        &mut out,
        "p2p_registry_busy_refusals_total",
        "counter",
        "Connections refused with ERR busy at the connection limit.",
        load(&m.busy_refusals),
    );
    histogram(
        &mut out,
        "p2p_registry_commit_batch_size",
        "Writes committed per transaction (group commit).",
        &m.batch_size,
        plain,
    );
    histogram(
        &mut out,
        "p2p_registry_commit_seconds",
        "Time of one commit batch, from its first statement until its writes are answered.",
        &m.commit_us,
        seconds,
    );
    histogram(
        &mut out,
        "p2p_registry_fsync_seconds",
        "Time of the COMMIT statement: the WAL write and, with --sync full, the fsync.",
        &m.fsync_us,
        seconds,
    );
    let reported = |gauge: &std::sync::atomic::AtomicU64| Some(load(gauge)).filter(|v| *v != UNSET);
    if let Some(entries) = reported(&m.index_entries) {
        simple(
            &mut out,
            "p2p_registry_index_entries",
            "gauge",
            "Registrations held in the in-memory index (live or not yet swept).",
            entries,
        );
    }
    if let Some(lag) = reported(&m.change_log_lag) {
        simple(
            &mut out,
            "p2p_registry_change_log_lag",
            "gauge",
            "How far the in-memory index is behind the database: 1 while it loads or reloads, 0 in step.",
            lag,
        );
    }
    if let Some(stats) = stats {
        simple(
            &mut out,
            "p2p_registry_live_registrations",
            "gauge",
            "Registrations within the TTL (what SEARCH and FIND return).",
            stats.live,
        );
        simple(
            &mut out,
            "p2p_registry_registrations",
            "gauge",
            "Registrations in the database, live or expired.",
            stats.registrations,
        );
        simple(
            &mut out,
            "p2p_registry_files",
            "gauge",
            "Distinct file names in the database.",
            stats.files,
        );
        simple(
            &mut out,
            "p2p_registry_peers",
            "gauge",
            "Distinct peers (host and port) in the database.",
            stats.peers,
        );
    }
    out
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// `unit` writes a value of the histogram's unit as the exported one.
fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    h: &Histogram<N>,
    unit: fn(u64) -> String,
) {
    family(out, name, "histogram", help);
    let (buckets, count, sum) = h.snapshot();
    for (bound, cumulative) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", unit(bound));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", unit(sum));
    let _ = writeln!(out, "{name}_count {count}");
}

fn plain(value: u64) -> String {
    value.to_string()
}

/// Microseconds as exact decimal seconds (`2500` → `0.0025`), no float rounding.
fn seconds(micros: u64) -> String {
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(100), "0.0001");
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(5_000_000), "5");
        assert_eq!(seconds(1_234_567), "1.234567");
        assert_eq!(seconds(0), "0");
    }
}
