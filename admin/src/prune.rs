//! `p2p-admin prune`: removes every registration of one peer, or every
//! registration not seen for a while, then the files and peers left
//! without any; prints what it removed (or, with `--dry-run`, would remove).
//!
//! A prune runs in transactions of at most `PRUNE_CHUNK` (1,000) rows in
//! `dht_server::store::admin`, so a concurrent server's writes wait
//! milliseconds, not the whole prune; each chunk deletes exactly the rows it
//! selected, and the rows printed are exactly those removed. A dry run opens
//! the database read-only: it must never be able to change anything.

use std::io::Write;
use std::time::Duration;

use dht_server::store::admin::{self as queries, PeerAddr, Registration};

use crate::render::{Format, RowWriter};
use crate::{AdminError, Settings, STDOUT};

/// Which registrations go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneTarget {
    /// Every registration of this peer.
    Peer(PeerAddr),
    /// Every registration not seen (registered or heartbeat) for this long.
    Stale(Duration),
}

impl PruneTarget {
    fn describe(&self) -> String {
        match self {
            PruneTarget::Peer(peer) => format!("of peer {peer}"),
            PruneTarget::Stale(age) => {
                format!("not seen for {}", humantime::format_duration(*age))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub target: PruneTarget,
    /// Show what would go; change nothing.
    pub dry_run: bool,
    /// How the removed rows are printed.
    pub format: Format,
}

/// Prunes, prints the removed rows to `out` and a one-line summary after
/// them (to `out` for a table, to `note` otherwise, so that CSV or JSON on
/// `out` stays parseable). Returns the removed registrations.
pub fn prune<W: Write, N: Write>(
    settings: &Settings,
    opts: &PruneOptions,
    out: W,
    mut note: N,
) -> Result<Vec<Registration>, AdminError> {
    let mut conn = if opts.dry_run {
        settings.open_read()?
    } else {
        settings.open_write()?
    };
    let clock = settings.clock();
    let removed = match &opts.target {
        PruneTarget::Peer(peer) => queries::prune_peer(&mut conn, peer, opts.dry_run),
        PruneTarget::Stale(age) => {
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let cutoff = clock.now_ms.saturating_sub(age_ms);
            queries::prune_stale(&mut conn, cutoff, opts.dry_run)
        }
    }
    .map_err(|e| AdminError::sql(&settings.db, e))?;
    // Close now: a close failure (a checkpoint) is reported, not lost in Drop.
    conn.close()
        .map_err(|(_, e)| AdminError::sql(&settings.db, e))?;

    let output_err = |source| AdminError::Output {
        what: "the pruned registrations",
        target: STDOUT.to_owned(),
        source,
    };
    let mut writer = RowWriter::new(opts.format, out, clock).map_err(output_err)?;
    for r in &removed {
        writer.write(r).map_err(output_err)?;
    }
    let mut out = writer.finish().map_err(output_err)?;
    let summary = summary(opts, removed.len());
    if opts.format == Format::Table {
        writeln!(out, "{summary}").and_then(|()| out.flush())
    } else {
        writeln!(note, "{summary}").and_then(|()| note.flush())
    }
    .map_err(output_err)?;
    Ok(removed)
}

fn summary(opts: &PruneOptions, count: usize) -> String {
    let noun = if count == 1 {
        "registration"
    } else {
        "registrations"
    };
    let what = opts.target.describe();
    if opts.dry_run {
        format!("would remove {count} {noun} {what} (dry run: nothing was changed)")
    } else {
        format!("removed {count} {noun} {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::{list, ListOptions};
    use crate::peer::parse_peer;
    use crate::testdb::with_rows;

    fn count(settings: &Settings) -> u64 {
        let opts = ListOptions {
            peer: None,
            name: None,
            live_only: false,
            limit: None,
            format: Format::Jsonl,
        };
        list(settings, &opts, Vec::new()).unwrap()
    }

    fn run(settings: &Settings, target: PruneTarget, dry_run: bool) -> (usize, String) {
        let opts = PruneOptions {
            target,
            dry_run,
            format: Format::Table,
        };
        let mut out = Vec::new();
        let removed = prune(settings, &opts, &mut out, Vec::new()).unwrap();
        (removed.len(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn prunes_a_peer_and_a_dry_run_changes_nothing() {
        let now = dht_server::store::now_ms();
        let db = with_rows(&[
            ("10.0.0.1", 9000, "a", now),
            ("10.0.0.1", 9000, "b", now),
            ("10.0.0.2", 9000, "a", now),
        ]);
        let peer = PruneTarget::Peer(parse_peer("10.0.0.1:9000").unwrap());
        let before = std::fs::read(&db.settings.db).unwrap();
        let (n, text) = run(&db.settings, peer.clone(), true);
        assert_eq!(n, 2);
        assert!(
            text.contains("would remove 2 registrations of peer 10.0.0.1:9000"),
            "{text}"
        );
        assert_eq!(std::fs::read(&db.settings.db).unwrap(), before);
        assert_eq!(count(&db.settings), 3);

        let (n, text) = run(&db.settings, peer.clone(), false);
        assert_eq!(n, 2);
        assert!(
            text.contains("removed 2 registrations of peer 10.0.0.1:9000"),
            "{text}"
        );
        assert_eq!(count(&db.settings), 1);
        let (n, _) = run(&db.settings, peer, false);
        assert_eq!(n, 0);
    }

    #[test]
    fn prunes_only_stale_rows_and_keeps_csv_clean() {
        let now = dht_server::store::now_ms();
        let db = with_rows(&[
            ("10.0.0.1", 9000, "old", now - 3_600_000),
            ("10.0.0.2", 9000, "new", now),
        ]);
        let opts = PruneOptions {
            target: PruneTarget::Stale(Duration::from_secs(600)),
            dry_run: false,
            format: Format::Csv,
        };
        let (mut out, mut note) = (Vec::new(), Vec::new());
        let removed = prune(&db.settings, &opts, &mut out, &mut note).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].name, "old");
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert_eq!(
            String::from_utf8(note).unwrap(),
            "removed 1 registration not seen for 10m\n"
        );
        assert_eq!(count(&db.settings), 1);
    }
}
