//! `p2p-admin list`: the registrations that match the filters, sorted by
//! name then peer, in any [`Format`].
//!
//! Opens the database read-only and streams rows from the query to the
//! output; it must not hold the whole registry in memory or write to it.

use std::io::Write;

use dht_server::store::admin::{Filter, PeerAddr, RegistrationQuery};
use rusqlite::Connection;

use crate::render::{Format, RowWriter};
use crate::{AdminError, Settings, STDOUT};

/// What `list` shows.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Only this peer's registrations.
    pub peer: Option<PeerAddr>,
    /// Only names containing this text.
    pub name: Option<String>,
    /// Only live registrations (seen within the TTL).
    pub live_only: bool,
    /// At most this many rows.
    pub limit: Option<u64>,
    pub format: Format,
}

/// Writes the matching registrations to `out`; returns how many.
pub fn list<W: Write>(settings: &Settings, opts: &ListOptions, out: W) -> Result<u64, AdminError> {
    let conn = settings.open_read()?;
    let clock = settings.clock();
    let filter = Filter {
        peer: opts.peer.clone(),
        name_contains: opts.name.clone(),
        seen_since_ms: opts.live_only.then_some(clock.live_since_ms),
        seen_before_ms: None,
        limit: opts.limit,
    };
    let output_err = |source| AdminError::Output {
        what: "the listing",
        target: STDOUT.to_owned(),
        source,
    };
    let mut writer = RowWriter::new(opts.format, out, clock).map_err(output_err)?;
    stream(
        &conn,
        &settings.db,
        &filter,
        &mut writer,
        "the listing",
        STDOUT,
    )?;
    let rows = writer.rows();
    let mut out = writer.finish().map_err(output_err)?;
    if opts.format == Format::Table {
        match rows {
            0 => writeln!(out, "no registrations match"),
            1 => writeln!(out, "1 registration"),
            n => writeln!(out, "{n} registrations"),
        }
        .and_then(|()| out.flush())
        .map_err(output_err)?;
    }
    Ok(rows)
}

/// Feeds every row of `filter` to `writer`, one at a time.
pub(crate) fn stream<W: Write>(
    conn: &Connection,
    db: &str,
    filter: &Filter,
    writer: &mut RowWriter<W>,
    what: &'static str,
    target: &str,
) -> Result<(), AdminError> {
    let mut query = RegistrationQuery::prepare(conn, filter).map_err(|e| AdminError::sql(db, e))?;
    let rows = query.rows().map_err(|e| AdminError::sql(db, e))?;
    for row in rows {
        let row = row.map_err(|e| AdminError::sql(db, e))?;
        writer.write(&row).map_err(|source| AdminError::Output {
            what,
            target: target.to_owned(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::with_rows;

    fn opts(format: Format) -> ListOptions {
        ListOptions {
            peer: None,
            name: None,
            live_only: false,
            limit: None,
            format,
        }
    }

    #[test]
    fn lists_every_row_and_filters() {
        let now = dht_server::store::now_ms();
        let db = with_rows(&[
            ("10.0.0.1", 9000, "report.pdf", now),
            ("[::1]", 9001, "report.pdf", now),
            ("10.0.0.1", 9000, "old song.mp3", 1_000),
        ]);
        let mut out = Vec::new();
        assert_eq!(
            list(&db.settings, &opts(Format::Table), &mut out).unwrap(),
            3
        );
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "report.pdf",
            "old song.mp3",
            "[::1]:9001",
            "10.0.0.1:9000",
            "expired",
            "live",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }

        let live = ListOptions {
            live_only: true,
            ..opts(Format::Jsonl)
        };
        assert_eq!(list(&db.settings, &live, Vec::new()).unwrap(), 2);
        let by_peer = ListOptions {
            peer: Some(crate::peer::parse_peer("[::1]:9001").unwrap()),
            ..opts(Format::Csv)
        };
        assert_eq!(list(&db.settings, &by_peer, Vec::new()).unwrap(), 1);
        let by_name = ListOptions {
            name: Some("SONG".into()),
            ..opts(Format::Json)
        };
        assert_eq!(list(&db.settings, &by_name, Vec::new()).unwrap(), 1);
        let limited = ListOptions {
            limit: Some(2),
            ..opts(Format::Table)
        };
        assert_eq!(list(&db.settings, &limited, Vec::new()).unwrap(), 2);

        let mut out = Vec::new();
        let nobody = ListOptions {
            name: Some("nothing like it".into()),
            ..opts(Format::Table)
        };
        assert_eq!(list(&db.settings, &nobody, &mut out).unwrap(), 0);
        assert_eq!(String::from_utf8(out).unwrap(), "no registrations match\n");
    }

    #[test]
    fn a_missing_database_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nope.db");
        let settings = Settings {
            db: db.to_str().unwrap().to_owned(),
            ttl: crate::DEFAULT_TTL,
        };
        let err = list(&settings, &opts(Format::Table), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!db.exists());
    }
}
