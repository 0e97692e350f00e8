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

/// A 64-digit lowercase hex digest (a name key or a content hash, as the
/// protocol spells them) as the 32 bytes the schema stores.
pub fn digest_bytes(hex: &str) -> rusqlite::Result<[u8; 32]> {
    p2p_proto::hex::from_hex_array(hex).ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("not a 64-digit lowercase hex digest: {hex:?}").into(),
        )
    })
}

/// The stored key of `name`: its SHA-256 (what `name_key` spells in hex).
pub fn key_of_name(name: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(name.as_bytes()).into()
}

/// `REGISTER`: adds or refreshes the registration of `name` by `host:port`.
/// Registering the same name again from the same address replaces its size
/// and hash (the peer's file changed) and counts as a heartbeat. Returns
/// the name's `files.id` (what the in-memory word index numbers it by).
///
/// Inside a transaction, a new name is FIND-able only once
/// [`index_new_names`] has run: end the transaction with [`commit`] (the
/// writer indexes once per batch before its `COMMIT`).
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
) -> rusqlite::Result<i64> {
    let key = digest_bytes(name_key)?;
    let sha256 = digest_bytes(sha256)?;
    let file_id = match file_id(conn, &key)? {
        Some(id) => id,
        None => {
            // A new name: the only time `files`, `file_keys` and the
            // full-text index are written. Its words are indexed at the end
            // of the transaction ([`index_new_names`]), at once when there
            // is none.
            let id: i64 = conn
                .prepare_cached("INSERT INTO files (name) VALUES (?1) RETURNING id")?
                .query_row(params![name], |row| row.get(0))?;
            conn.prepare_cached("INSERT INTO file_keys (name_key, file_id) VALUES (?1, ?2)")?
                .execute(params![&key[..], id])?;
            conn.prepare_cached("INSERT INTO temp.unindexed_names (id, name) VALUES (?1, ?2)")?
                .execute(params![id, name])?;
            if conn.is_autocommit() {
                index_new_names(conn)?;
            }
            id
        }
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
    .execute(params![
        file_id,
        peer_id,
        size,
        &sha256[..],
        stamp.ms,
        stamp.seq
    ])?;
    Ok(file_id)
}

/// Makes `conn` ready for [`register`]: the TEMP table where a
/// transaction notes its new names until [`index_new_names`] (in memory,
/// private to the connection, emptied by a rollback like the rest).
pub fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA temp_store = MEMORY;
         CREATE TEMP TABLE IF NOT EXISTS unindexed_names (
             id   INTEGER PRIMARY KEY,
             name TEXT NOT NULL
         );",
    )
}

/// Puts the words of the names registered since the last call into the
/// full-text index, in one statement. The writer calls it once per batch,
/// before `COMMIT`; [`register`] calls it itself outside a transaction, and
/// a delete calls it first (the delete trigger takes out of the index what
/// must already be in it).
///
/// Why not a trigger per name: FTS5 writes its in-memory data to disk at
/// every statement savepoint, which every statement with a trigger opens,
/// so a trigger made each new name a tiny FTS segment of its own
/// (migrations/0004_fts_fed_per_batch.sql).
pub fn index_new_names(conn: &Connection) -> rusqlite::Result<()> {
    // A plain read first: writing the FTS table, even no rows, opens it for
    // the transaction, and then every later statement savepoint flushes it
    // (what a prune's deletes, which register nothing, must not pay).
    let pending: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM temp.unindexed_names)")?
        .query_row([], |row| row.get(0))?;
    if !pending {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO files_fts (rowid, name) SELECT id, name FROM temp.unindexed_names",
    )?
    .execute([])?;
    conn.prepare_cached("DELETE FROM temp.unindexed_names")?
        .execute([])?;
    Ok(())
}

/// Commits `tx` after [`index_new_names`]: how every transaction that may
/// have called [`register`] must end (the writer does the same in two
/// steps, to time the commit alone). A transaction committed with names
/// still pending leaves them out of the full-text index, and a later
/// delete of one of them then fails as a corrupt index.
pub fn commit(tx: rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    index_new_names(&tx)?;
    tx.commit()
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

fn file_id(conn: &Connection, key: &[u8; 32]) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT file_id FROM file_keys WHERE name_key = ?1")?
        .query_row(params![&key[..]], |row| row.get(0))
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
    let key = digest_bytes(name_key)?;
    let (Some(peer_id), Some(file_id)) = (peer_id(conn, host, port)?, file_id(conn, &key)?) else {
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
    let key = digest_bytes(name_key)?;
    let Some(peer_id) = peer_id(conn, host, port)? else {
        return Ok(false);
    };
    let Some(file_id) = file_id(conn, &key)? else {
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
/// them any more (index lookups).
pub fn delete_if_orphan(conn: &Connection, file_id: i64, peer_id: i64) -> rusqlite::Result<()> {
    delete_file_if_orphan(conn, file_id)?;
    delete_peer_if_orphan(conn, peer_id)
}

fn delete_file_if_orphan(conn: &Connection, file_id: i64) -> rusqlite::Result<()> {
    let orphan: bool = conn
        .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM registrations WHERE file_id = ?1)")?
        .query_row(params![file_id], |row| row.get(0))?;
    if !orphan {
        return Ok(());
    }
    // The delete trigger removes the name's words from the index: they
    // must be in it first. (Only for a name that goes: indexing the
    // pending names here costs an FTS segment.)
    index_new_names(conn)?;
    let name: Option<String> = conn
        .prepare_cached(
            "DELETE FROM files WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM registrations WHERE file_id = ?1)
             RETURNING name",
        )?
        .query_row(params![file_id], |row| row.get(0))
        .optional()?;
    match name {
        Some(name) => delete_file_key(conn, file_id, &name),
        None => Ok(()),
    }
}

fn delete_peer_if_orphan(conn: &Connection, peer_id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "DELETE FROM peers WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM registrations WHERE peer_id = ?1)",
    )?
    .execute(params![peer_id])?;
    Ok(())
}

/// Removes the key of file `file_id`, whose `files` row (named `name`) was
/// just deleted. `file_keys` is keyed by the key, which is SHA-256(name):
/// one primary-key delete. Only a hand-made file whose key is not the
/// hash of its name falls back to a scan by id, so no key is left pointing
/// at a file that is gone.
fn delete_file_key(conn: &Connection, file_id: i64, name: &str) -> rusqlite::Result<()> {
    let removed = conn
        .prepare_cached("DELETE FROM file_keys WHERE name_key = ?1 AND file_id = ?2")?
        .execute(params![&key_of_name(name)[..], file_id])?;
    if removed == 0 {
        conn.prepare_cached("DELETE FROM file_keys WHERE file_id = ?1")?
            .execute(params![file_id])?;
    }
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
/// and peers left without any; returns how many registrations went. The
/// orphans are looked for among the deleted rows' files and peers only
/// (index lookups), not by scanning every file and peer.
pub fn sweep_expired(conn: &Connection, live_since: i64) -> rusqlite::Result<u64> {
    let gone: Vec<(i64, i64)> = conn
        .prepare_cached(
            "DELETE FROM registrations WHERE last_seen < ?1 RETURNING file_id, peer_id",
        )?
        .query_map(params![live_since], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    delete_orphans_of(conn, &gone)?;
    Ok(gone.len() as u64)
}

/// Removes, among the files and peers of the deleted registrations `gone`
/// (`(file_id, peer_id)` pairs), those that no registration refers to any more.
pub fn delete_orphans_of(conn: &Connection, gone: &[(i64, i64)]) -> rusqlite::Result<()> {
    let mut files: Vec<i64> = gone.iter().map(|&(f, _)| f).collect();
    let mut peers: Vec<i64> = gone.iter().map(|&(_, p)| p).collect();
    files.sort_unstable();
    files.dedup();
    peers.sort_unstable();
    peers.dedup();
    for file_id in files {
        delete_file_if_orphan(conn, file_id)?;
    }
    for peer_id in peers {
        delete_peer_if_orphan(conn, peer_id)?;
    }
    Ok(())
}
