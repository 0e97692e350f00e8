//! The registry's writes, one function per kind of change.
//!
//! Each runs on the writer thread's connection inside the transaction the
//! writer opened for its batch; none of them begins or commits anything.

use rusqlite::{params, Connection, OptionalExtension};

/// When a write happened: wall-clock time for expiry, and a sequence number
/// that orders writes even within one millisecond (SEARCH lists the most
/// recently seen first). The writer thread hands out the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Unix milliseconds.
    pub ms: i64,
    /// Strictly increasing across writes.
    pub seq: i64,
}

impl Stamp {
    /// A stamp whose order is its time: for bulk loads and tests whose
    /// rows have distinct, increasing times.
    pub fn at(ms: i64) -> Stamp {
        Stamp { ms, seq: ms }
    }
}

/// The highest sequence number in use, so a restarted writer continues after it.
pub fn last_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(max(seen_seq), 0) FROM registrations",
        [],
        |row| row.get(0),
    )
}

/// `REGISTER`: adds or refreshes the registration of `name` by `host:port`.
/// Registering the same name again from the same address replaces its size
/// and hash (the peer's file changed) and counts as a heartbeat.
#[allow(clippy::too_many_arguments)]
pub fn register(
    conn: &Connection,
    host: &str,
    port: u16,
    name_key: &str,
    name: &str,
    size: u64,
    sha256: &str,
    stamp: Stamp,
) -> rusqlite::Result<()> {
    let file_id = match file_id(conn, name_key)? {
        Some(id) => id,
        None => conn
            .prepare_cached("INSERT INTO files (name_key, name) VALUES (?1, ?2) RETURNING id")?
            .query_row(params![name_key, name], |row| row.get(0))?,
    };
    let peer_id = upsert_peer(conn, host, port)?;
    let size = i64::try_from(size).map_err(|_| {
        rusqlite::Error::ToSqlConversionFailure("size does not fit SQLite's INTEGER".into())
    })?;
    conn.prepare_cached(
        "INSERT INTO registrations
             (file_id, peer_id, size, sha256, registered_at, last_seen, seen_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
         ON CONFLICT (file_id, peer_id) DO UPDATE SET
             registered_at = CASE WHEN sha256 = excluded.sha256 AND size = excluded.size
                                  THEN registered_at ELSE excluded.registered_at END,
             size = excluded.size,
             sha256 = excluded.sha256,
             last_seen = excluded.last_seen,
             seen_seq = excluded.seen_seq",
    )?
    .execute(params![file_id, peer_id, size, sha256, stamp.ms, stamp.seq])?;
    Ok(())
}

/// The id of peer `host:port`, created when new. Looked up first: most
/// writes come from known peers, and a plain read does not dirty a page.
fn upsert_peer(conn: &Connection, host: &str, port: u16) -> rusqlite::Result<i64> {
    if let Some(id) = peer_id(conn, host, port)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO peers (host, port) VALUES (?1, ?2) RETURNING id")?
        .query_row(params![host, port], |row| row.get(0))
}

fn file_id(conn: &Connection, name_key: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM files WHERE name_key = ?1")?
        .query_row(params![name_key], |row| row.get(0))
        .optional()
}

fn peer_id(conn: &Connection, host: &str, port: u16) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM peers WHERE host = ?1 AND port = ?2")?
        .query_row(params![host, port], |row| row.get(0))
        .optional()
}

/// How many registrations `host` holds (all ports, live or not yet swept).
pub fn host_registrations(conn: &Connection, host: &str) -> rusqlite::Result<u64> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT registrations FROM host_counts WHERE host = ?1")?
        .query_row(params![host], |row| row.get(0))
        .optional()?;
    Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Whether `host:port` already has a registration of the name keyed `name_key`.
pub fn is_registered(
    conn: &Connection,
    host: &str,
    port: u16,
    name_key: &str,
) -> rusqlite::Result<bool> {
    let (Some(peer_id), Some(file_id)) = (peer_id(conn, host, port)?, file_id(conn, name_key)?)
    else {
        return Ok(false);
    };
    conn.prepare_cached("SELECT 1 FROM registrations WHERE file_id = ?1 AND peer_id = ?2")?
        .query_row(params![file_id, peer_id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// `UNREGISTER`: removes one registration; `false` when there was none.
/// A file or peer left with no registration is removed with it.
pub fn unregister(
    conn: &Connection,
    host: &str,
    port: u16,
    name_key: &str,
) -> rusqlite::Result<bool> {
    let Some(peer_id) = peer_id(conn, host, port)? else {
        return Ok(false);
    };
    let Some(file_id) = file_id(conn, name_key)? else {
        return Ok(false);
    };
    let removed = conn
        .prepare_cached("DELETE FROM registrations WHERE file_id = ?1 AND peer_id = ?2")?
        .execute(params![file_id, peer_id])?;
    if removed == 0 {
        return Ok(false);
    }
    delete_if_orphan(conn, file_id, peer_id)?;
    Ok(true)
}

/// Removes file `file_id` and peer `peer_id` if no registration refers to
/// them any more (index lookups, unlike [`delete_orphans`]).
pub fn delete_if_orphan(conn: &Connection, file_id: i64, peer_id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM files WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM registrations WHERE file_id = ?1)",
    )?
    .execute(params![file_id])?;
    conn.prepare_cached(
        "DELETE FROM peers WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM registrations WHERE peer_id = ?1)",
    )?
    .execute(params![peer_id])?;
    Ok(())
}

/// `HEARTBEAT`: marks every live registration of `host:port` as seen now.
/// Expired registrations stay expired: the peer learns from the count that
/// it must register again.
pub fn heartbeat(
    conn: &Connection,
    host: &str,
    port: u16,
    stamp: Stamp,
    live_since: i64,
) -> rusqlite::Result<u64> {
    let Some(peer_id) = peer_id(conn, host, port)? else {
        return Ok(0);
    };
    let refreshed = conn
        .prepare_cached(
            "UPDATE registrations SET last_seen = ?2, seen_seq = ?3
             WHERE peer_id = ?1 AND last_seen >= ?4",
        )?
        .execute(params![peer_id, stamp.ms, stamp.seq, live_since])?;
    Ok(refreshed as u64)
}

/// Deletes every registration not seen since `live_since`, then the files
/// and peers left without any; returns how many registrations went.
pub fn sweep_expired(conn: &Connection, live_since: i64) -> rusqlite::Result<u64> {
    let removed = conn
        .prepare_cached("DELETE FROM registrations WHERE last_seen < ?1")?
        .execute(params![live_since])?;
    if removed > 0 {
        delete_orphans(conn)?;
    }
    Ok(removed as u64)
}

/// Removes files and peers that no registration refers to any more.
pub fn delete_orphans(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM files WHERE NOT EXISTS
         (SELECT 1 FROM registrations r WHERE r.file_id = files.id)",
    )?
    .execute([])?;
    conn.prepare_cached(
        "DELETE FROM peers WHERE NOT EXISTS
         (SELECT 1 FROM registrations r WHERE r.peer_id = peers.id)",
    )?
    .execute([])?;
    Ok(())
}
