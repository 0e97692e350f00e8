//! `p2p-admin stats`: how big the registry is and how fresh: files, peers,
//! registrations (live and expired), database and write-ahead-log size,
//! oldest and newest heartbeat, and the names with the most sources.
//!
//! Opens the database read-only; all counts come from one read
//! transaction, so they agree with each other even while the server writes.

use std::io::Write;

use dht_server::store::admin::{self as queries, Stats};
use serde::Serialize;

use crate::render::{ago, align_right, human_size, new_table, rfc3339};
use crate::{AdminError, Clock, Settings, STDOUT};

/// How `stats` is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    /// Tables for people.
    Table,
    /// One JSON object for programs.
    Json,
}

/// The counts, plus what only the file system knows.
#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Stats,
    /// Bytes of the database file.
    pub db_bytes: u64,
    /// Bytes of its write-ahead log (`0` when there is none).
    pub wal_bytes: u64,
}

/// Reads the counts and prints them to `out`.
pub fn stats<W: Write>(
    settings: &Settings,
    format: StatsFormat,
    mut out: W,
) -> Result<Report, AdminError> {
    let conn = settings.open_read()?;
    let clock = settings.clock();
    let stats =
        queries::stats(&conn, clock.live_since_ms).map_err(|e| AdminError::sql(&settings.db, e))?;
    drop(conn);
    let (db_bytes, wal_bytes) =
        queries::file_sizes(&settings.db).map_err(|source| AdminError::FileSize {
            path: settings.db.clone(),
            source,
        })?;
    let report = Report {
        stats,
        db_bytes,
        wal_bytes,
    };
    let text = match format {
        StatsFormat::Table => as_tables(&report, settings, &clock),
        StatsFormat::Json => as_json(&report, settings),
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| AdminError::Output {
            what: "the statistics",
            target: STDOUT.to_owned(),
            source,
        })?;
    Ok(report)
}

fn heartbeat(ms: Option<i64>, clock: &Clock) -> String {
    match ms {
        Some(ms) => format!("{} ({})", rfc3339(ms), ago(clock.now_ms, ms)),
        None => "none".to_owned(),
    }
}

fn as_tables(report: &Report, settings: &Settings, clock: &Clock) -> String {
    let s = &report.stats;
    let mut table = new_table(&[]);
    table.add_row(vec!["database".to_owned(), settings.db.clone()]);
    table.add_row(vec![
        "size".to_owned(),
        format!(
            "{} (+ {} write-ahead log)",
            human_size(report.db_bytes),
            human_size(report.wal_bytes)
        ),
    ]);
    table.add_row(vec!["files".to_owned(), s.files.to_string()]);
    table.add_row(vec!["peers".to_owned(), s.peers.to_string()]);
    table.add_row(vec![
        "registrations".to_owned(),
        s.registrations.to_string(),
    ]);
    table.add_row(vec![
        "live".to_owned(),
        format!(
            "{} (seen within the last {}; --ttl)",
            s.live,
            humantime::format_duration(settings.ttl)
        ),
    ]);
    table.add_row(vec!["expired".to_owned(), s.expired.to_string()]);
    table.add_row(vec![
        "oldest heartbeat".to_owned(),
        heartbeat(s.oldest_seen_ms, clock),
    ]);
    table.add_row(vec![
        "newest heartbeat".to_owned(),
        heartbeat(s.newest_seen_ms, clock),
    ]);
    let mut text = format!("{table}\n");
    if !s.top_names.is_empty() {
        let mut top = new_table(&["MOST SHARED NAME", "SOURCES", "LIVE"]);
        for name in &s.top_names {
            top.add_row(vec![
                name.name.clone(),
                name.sources.to_string(),
                name.live.to_string(),
            ]);
        }
        align_right(&mut top, 1);
        align_right(&mut top, 2);
        text.push_str(&format!("{top}\n"));
    }
    text
}

#[derive(Serialize)]
struct JsonReport<'a> {
    database: &'a str,
    db_bytes: u64,
    wal_bytes: u64,
    files: u64,
    peers: u64,
    registrations: u64,
    live: u64,
    expired: u64,
    ttl_seconds: u64,
    oldest_heartbeat: Option<String>,
    newest_heartbeat: Option<String>,
    top_names: Vec<JsonTopName<'a>>,
}

#[derive(Serialize)]
struct JsonTopName<'a> {
    name: &'a str,
    sources: u64,
    live: u64,
}

fn as_json(report: &Report, settings: &Settings) -> String {
    let s = &report.stats;
    let json = JsonReport {
        database: &settings.db,
        db_bytes: report.db_bytes,
        wal_bytes: report.wal_bytes,
        files: s.files,
        peers: s.peers,
        registrations: s.registrations,
        live: s.live,
        expired: s.expired,
        ttl_seconds: settings.ttl.as_secs(),
        oldest_heartbeat: s.oldest_seen_ms.map(rfc3339),
        newest_heartbeat: s.newest_seen_ms.map(rfc3339),
        top_names: s
            .top_names
            .iter()
            .map(|t| JsonTopName {
                name: &t.name,
                sources: t.sources,
                live: t.live,
            })
            .collect(),
    };
    // Plain structs of strings and numbers always serialize.
    let mut text = serde_json::to_string_pretty(&json).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::with_rows;

    #[test]
    fn counts_and_prints_both_formats() {
        let now = dht_server::store::now_ms();
        let db = with_rows(&[
            ("10.0.0.1", 9000, "popular", now),
            ("10.0.0.2", 9000, "popular", now),
            ("10.0.0.2", 9000, "forgotten", 1_000),
        ]);
        let mut out = Vec::new();
        let report = stats(&db.settings, StatsFormat::Table, &mut out).unwrap();
        assert_eq!(
            (
                report.stats.files,
                report.stats.peers,
                report.stats.registrations
            ),
            (2, 2, 3)
        );
        assert_eq!((report.stats.live, report.stats.expired), (2, 1));
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "registrations",
            "oldest heartbeat",
            "1970-01-01T00:00:01.000Z",
            "popular",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }

        let mut out = Vec::new();
        stats(&db.settings, StatsFormat::Json, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["registrations"], 3);
        assert_eq!(json["expired"], 1);
        assert_eq!(json["top_names"][0]["name"], "popular");
        assert_eq!(json["top_names"][0]["sources"], 2);
        assert_eq!(json["ttl_seconds"], crate::DEFAULT_TTL.as_secs());
    }

    #[test]
    fn an_empty_registry_has_no_heartbeats() {
        let db = with_rows(&[]);
        let mut out = Vec::new();
        stats(&db.settings, StatsFormat::Json, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["registrations"], 0);
        assert!(json["oldest_heartbeat"].is_null());
    }
}
