//! The operator's queries behind `p2p-admin`: listing, pruning, exporting
//! and counting registrations. Runs on a connection from
//! [`open_connection`](super::open_connection), beside a running server.
//!
//! This module builds the SQL and returns typed rows; it must not print,
//! format for people, or decide policy: what counts as live or stale is a
//! cutoff the caller passes in. Listing is an iterator over a prepared
//! statement, so a registry of millions of rows is never held in memory.
//! A prune runs in `BEGIN IMMEDIATE` transactions of at most [`PRUNE_CHUNK`]
//! registrations each, so it never holds the write lock for long: the
//! server's writer waits for one chunk (milliseconds, well inside its busy
//! timeout) and its clients' writes go on between chunks.

use std::fmt;
use std::io;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, Row, Statement, TransactionBehavior};

use super::writes;

/// One registration, joined with its file's name and its peer's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    /// Byte count the peer announced.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content the peer announced.
    pub sha256: String,
    /// As written on the wire: `1.2.3.4` or `[::1]`.
    pub host: String,
    pub port: u16,
    /// Unix milliseconds of the first registration of this content.
    pub registered_at_ms: i64,
    /// Unix milliseconds of the last registration or heartbeat.
    pub last_seen_ms: i64,
}

impl Registration {
    /// `host:port`, the same form `--peer` takes.
    pub fn peer(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A peer as the registry records it: the host exactly as stored
/// (`1.2.3.4` or `[::1]`) and the port it announced.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which registrations a listing returns; every field that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this peer's registrations.
    pub peer: Option<PeerAddr>,
    /// Only names containing this text (ASCII letters match either case).
    pub name_contains: Option<String>,
    /// Only registrations seen at or after this time (unix ms): the live ones.
    pub seen_since_ms: Option<i64>,
    /// Only registrations last seen strictly before this time (unix ms): the stale ones.
    pub seen_before_ms: Option<i64>,
    /// At most this many rows.
    pub limit: Option<u64>,
}

const SELECT_REGISTRATIONS: &str = "SELECT f.name, r.size, r.sha256, p.host, p.port,
        r.registered_at, r.last_seen
 FROM registrations r
 JOIN files f ON f.id = r.file_id
 JOIN peers p ON p.id = r.peer_id";

/// Name, then peer: the order an operator scans a listing in. SQLite sorts
/// through its external sorter, which spills to temporary files past its
/// cache size, so even an unfiltered export runs in bounded memory.
const ORDER_REGISTRATIONS: &str = " ORDER BY f.name, p.host, p.port";

/// Most registrations one prune transaction deletes. A chunk of 1,000 takes
/// a few milliseconds, so the server's writes wait at most that long.
pub const PRUNE_CHUNK: usize = 1000;

/// Pause between two prune chunks, with the write lock free: long enough
/// for the server's writer, which retries every [`super::BUSY_POLL`], to
/// take it (SQLite's locks are not fair: without the pause a prune that
/// begins its next chunk at once kept the writer out for seconds on a
/// loaded machine). 1,000,000 rows cost 1,000 pauses, 3 s.
pub const PRUNE_PAUSE: std::time::Duration = std::time::Duration::from_millis(3);

/// [`SELECT_REGISTRATIONS`] with the primary key first, for deleting.
const SELECT_KEYED: &str = "SELECT f.name, r.size, r.sha256, p.host, p.port,
        r.registered_at, r.last_seen, r.file_id, r.peer_id
 FROM registrations r
 JOIN files f ON f.id = r.file_id
 JOIN peers p ON p.id = r.peer_id";

/// The `SELECT` for `filter` and its parameters, in order.
fn registrations_sql(filter: &Filter) -> (String, Vec<Value>) {
    filtered_sql(SELECT_REGISTRATIONS, filter, true)
}

/// `select` with the clauses of `filter`, sorted for people when `ordered`.
fn filtered_sql(select: &str, filter: &Filter, ordered: bool) -> (String, Vec<Value>) {
    let mut sql = String::from(select);
    let mut values = Vec::new();
    let mut clauses: Vec<&str> = Vec::new();
    if let Some(peer) = &filter.peer {
        clauses.push("p.host = ? AND p.port = ?");
        values.push(Value::Text(peer.host.clone()));
        values.push(Value::Integer(i64::from(peer.port)));
    }
    if let Some(text) = &filter.name_contains {
        clauses.push("f.name LIKE ? ESCAPE '\\'");
        values.push(Value::Text(format!("%{}%", escape_like(text))));
    }
    if let Some(since) = filter.seen_since_ms {
        clauses.push("r.last_seen >= ?");
        values.push(Value::Integer(since));
    }
    if let Some(before) = filter.seen_before_ms {
        clauses.push("r.last_seen < ?");
        values.push(Value::Integer(before));
    }
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    if ordered {
        sql.push_str(ORDER_REGISTRATIONS);
    }
    if let Some(limit) = filter.limit {
        sql.push_str(" LIMIT ?");
        values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    }
    (sql, values)
}

/// Makes `text` match literally inside a `LIKE … ESCAPE '\'` pattern.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn registration_from_row(row: &Row<'_>) -> rusqlite::Result<Registration> {
    let size: i64 = row.get(1)?;
    Ok(Registration {
        name: row.get(0)?,
        // The schema's CHECK keeps sizes non-negative.
        size: u64::try_from(size).unwrap_or(0),
        sha256: super::hex_column(row, 2)?,
        host: row.get(3)?,
        port: row.get(4)?,
        registered_at_ms: row.get(5)?,
        last_seen_ms: row.get(6)?,
    })
}

/// A prepared listing. Iterate with [`RegistrationQuery::rows`]; rows are
/// read from SQLite one at a time as the iterator advances.
pub struct RegistrationQuery<'conn> {
    stmt: Statement<'conn>,
    values: Vec<Value>,
}

impl<'conn> RegistrationQuery<'conn> {
    pub fn prepare(conn: &'conn Connection, filter: &Filter) -> rusqlite::Result<Self> {
        let (sql, values) = registrations_sql(filter);
        let stmt = conn.prepare(&sql)?;
        Ok(RegistrationQuery { stmt, values })
    }

    /// The matching registrations, sorted by name then peer.
    pub fn rows(
        &mut self,
    ) -> rusqlite::Result<impl Iterator<Item = rusqlite::Result<Registration>> + '_> {
        self.stmt
            .query_map(params_from_iter(self.values.iter()), registration_from_row)
    }
}

/// Removes every registration of `peer` (then the files and peers left
/// without any) in transactions of at most [`PRUNE_CHUNK`], and returns
/// what it removed, sorted by name then peer. With `dry_run` it only reads
/// what would go and writes nothing.
pub fn prune_peer(
    conn: &mut Connection,
    peer: &PeerAddr,
    dry_run: bool,
) -> rusqlite::Result<Vec<Registration>> {
    let filter = Filter {
        peer: Some(peer.clone()),
        ..Filter::default()
    };
    prune(conn, &filter, dry_run)
}

/// Removes every registration last seen before `seen_before_ms` (unix ms),
/// then the files and peers left without any, in transactions of at most
/// [`PRUNE_CHUNK`], and returns what it removed. With `dry_run` it writes
/// nothing.
pub fn prune_stale(
    conn: &mut Connection,
    seen_before_ms: i64,
    dry_run: bool,
) -> rusqlite::Result<Vec<Registration>> {
    let filter = Filter {
        seen_before_ms: Some(seen_before_ms),
        ..Filter::default()
    };
    prune(conn, &filter, dry_run)
}

/// Selects up to [`PRUNE_CHUNK`] rows that `filter` matches and deletes
/// exactly those, with their orphans, in one `BEGIN IMMEDIATE` transaction
/// (nobody writes between the select and the delete), until none is left.
/// A row the server refreshes between two chunks no longer matches and
/// stays. A dry run reads everything in one read transaction, takes no
/// write lock.
fn prune(
    conn: &mut Connection,
    filter: &Filter,
    dry_run: bool,
) -> rusqlite::Result<Vec<Registration>> {
    if dry_run {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let doomed = {
            let mut query = RegistrationQuery::prepare(&tx, filter)?;
            let rows = query.rows()?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.rollback()?;
        return Ok(doomed);
    }
    let chunk_filter = Filter {
        limit: Some(PRUNE_CHUNK as u64),
        ..filter.clone()
    };
    let (sql, values) = filtered_sql(SELECT_KEYED, &chunk_filter, false);
    let mut removed = Vec::new();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let chunk = {
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(values.iter()), |row| {
                Ok((
                    registration_from_row(row)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, i64>(8)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        for (_, file_id, peer_id) in &chunk {
            tx.prepare_cached("DELETE FROM registrations WHERE file_id = ?1 AND peer_id = ?2")?
                .execute(params![file_id, peer_id])?;
        }
        for (_, file_id, peer_id) in &chunk {
            writes::delete_if_orphan(&tx, *file_id, *peer_id)?;
        }
        tx.commit()?;
        let done = chunk.len() < PRUNE_CHUNK;
        removed.extend(chunk.into_iter().map(|(r, _, _)| r));
        if done {
            break;
        }
        std::thread::sleep(PRUNE_PAUSE);
    }
    removed.sort_by(|a, b| (&a.name, &a.host, a.port).cmp(&(&b.name, &b.host, b.port)));
    Ok(removed)
}

/// A name among those with the most sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopName {
    pub name: String,
    /// Registrations of this name, live or not.
    pub sources: u64,
    /// Of those, the live ones.
    pub live: u64,
}

/// How many names [`stats`] ranks by sources.
pub const TOP_NAMES: usize = 10;

/// The registry's counts, read from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub peers: u64,
    pub registrations: u64,
    /// Registrations seen at or after the `live_since` passed to [`stats`].
    pub live: u64,
    pub expired: u64,
    /// Oldest `last_seen` (unix ms), `None` when the registry is empty.
    pub oldest_seen_ms: Option<i64>,
    /// Newest `last_seen` (unix ms), `None` when the registry is empty.
    pub newest_seen_ms: Option<i64>,
    /// The [`TOP_NAMES`] names with the most registrations, most first.
    pub top_names: Vec<TopName>,
}

/// Counts files, peers and registrations, live (seen at or after
/// `live_since`) and expired, all within one read transaction.
pub fn stats(conn: &Connection, live_since: i64) -> rusqlite::Result<Stats> {
    let tx = conn.unchecked_transaction()?;
    let count = |sql: &str| -> rusqlite::Result<u64> {
        tx.query_row(sql, [], |row| row.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
    };
    let files = count("SELECT count(*) FROM files")?;
    let peers = count("SELECT count(*) FROM peers")?;
    let (registrations, live, oldest_seen_ms, newest_seen_ms) = tx.query_row(
        "SELECT count(*), coalesce(sum(last_seen >= ?1), 0), min(last_seen), max(last_seen)
         FROM registrations",
        params![live_since],
        |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        },
    )?;
    let registrations = u64::try_from(registrations).unwrap_or(0);
    let live = u64::try_from(live).unwrap_or(0);
    let top_names = {
        let mut stmt = tx.prepare(
            "SELECT f.name, count(*), coalesce(sum(r.last_seen >= ?1), 0)
             FROM registrations r JOIN files f ON f.id = r.file_id
             GROUP BY r.file_id
             ORDER BY count(*) DESC, f.name
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![live_since, TOP_NAMES as i64], |row| {
            Ok(TopName {
                name: row.get(0)?,
                sources: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                live: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.finish()?;
    Ok(Stats {
        files,
        peers,
        registrations,
        live,
        expired: registrations.saturating_sub(live),
        oldest_seen_ms,
        newest_seen_ms,
        top_names,
    })
}

/// Bytes on disk of the database file and of its write-ahead log (`0` when
/// there is no log, e.g. after a clean shutdown).
pub fn file_sizes(path: &str) -> io::Result<(u64, u64)> {
    let db = std::fs::metadata(path)?.len();
    let wal = match std::fs::metadata(Path::new(&format!("{path}-wal"))) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok((db, wal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open_connection, OpenMode, SyncMode};
    use p2p_proto::protocol::name_key;

    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn db() -> (tempfile::TempDir, String, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db").to_str().unwrap().to_owned();
        let conn = open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
        (dir, path, conn)
    }

    fn register(conn: &Connection, host: &str, port: u16, name: &str, hash: &str, now: i64) {
        writes::register(
            conn,
            host,
            port,
            &name_key(name),
            name,
            10,
            hash,
            writes::Stamp::at(now),
        )
        .unwrap();
    }

    fn list(conn: &Connection, filter: &Filter) -> Vec<(String, String)> {
        let mut query = RegistrationQuery::prepare(conn, filter).unwrap();
        let rows = query.rows().unwrap();
        rows.map(|r| {
            let r = r.unwrap();
            (r.name.clone(), r.peer())
        })
        .collect()
    }

    fn pair(name: &str, peer: &str) -> (String, String) {
        (name.to_owned(), peer.to_owned())
    }

    #[test]
    fn lists_sorted_and_filtered() {
        let (_dir, _path, conn) = db();
        register(&conn, "10.0.0.2", 9000, "b.txt", HASH_A, 1_000);
        register(&conn, "10.0.0.1", 9000, "b.txt", HASH_A, 2_000);
        register(&conn, "[::1]", 7000, "a 100%_x.txt", HASH_B, 3_000);

        assert_eq!(
            list(&conn, &Filter::default()),
            vec![
                pair("a 100%_x.txt", "[::1]:7000"),
                pair("b.txt", "10.0.0.1:9000"),
                pair("b.txt", "10.0.0.2:9000"),
            ]
        );
        let by_peer = Filter {
            peer: Some(PeerAddr {
                host: "[::1]".into(),
                port: 7000,
            }),
            ..Filter::default()
        };
        assert_eq!(
            list(&conn, &by_peer),
            vec![pair("a 100%_x.txt", "[::1]:7000")]
        );
        // LIKE wildcards in the text are literal; ASCII case does not matter.
        for text in ["%_", "100%", "A 1"] {
            let filter = Filter {
                name_contains: Some(text.into()),
                ..Filter::default()
            };
            assert_eq!(list(&conn, &filter).len(), 1, "{text}");
        }
        let pct = Filter {
            name_contains: Some("%".into()),
            ..Filter::default()
        };
        assert_eq!(list(&conn, &pct).len(), 1);
        let live = Filter {
            seen_since_ms: Some(2_000),
            limit: Some(1),
            ..Filter::default()
        };
        assert_eq!(list(&conn, &live), vec![pair("a 100%_x.txt", "[::1]:7000")]);
    }

    #[test]
    fn prune_peer_removes_rows_and_orphans() {
        let (_dir, _path, mut conn) = db();
        register(&conn, "10.0.0.1", 9000, "only-mine", HASH_A, 1_000);
        register(&conn, "10.0.0.1", 9000, "shared", HASH_A, 1_000);
        register(&conn, "10.0.0.2", 9000, "shared", HASH_A, 1_000);
        let peer = PeerAddr {
            host: "10.0.0.1".into(),
            port: 9000,
        };

        let would = prune_peer(&mut conn, &peer, true).unwrap();
        assert_eq!(would.len(), 2);
        assert_eq!(stats(&conn, 0).unwrap().registrations, 3);

        let gone = prune_peer(&mut conn, &peer, false).unwrap();
        assert_eq!(gone, would);
        let s = stats(&conn, 0).unwrap();
        assert_eq!((s.files, s.peers, s.registrations), (1, 1, 1));
        assert!(prune_peer(&mut conn, &peer, false).unwrap().is_empty());
    }

    #[test]
    fn prune_stale_removes_only_old_rows() {
        let (_dir, _path, mut conn) = db();
        register(&conn, "10.0.0.1", 9000, "old", HASH_A, 1_000);
        register(&conn, "10.0.0.2", 9000, "new", HASH_A, 5_000);
        assert_eq!(prune_stale(&mut conn, 5_000, true).unwrap().len(), 1);
        let gone = prune_stale(&mut conn, 5_000, false).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, "old");
        assert_eq!(
            list(&conn, &Filter::default()),
            vec![pair("new", "10.0.0.2:9000")]
        );
        let s = stats(&conn, 0).unwrap();
        assert_eq!((s.files, s.peers), (1, 1));
    }

    #[test]
    fn stats_counts_live_and_ranks_names() {
        let (_dir, path, conn) = db();
        let empty = stats(&conn, 0).unwrap();
        assert_eq!(empty.registrations, 0);
        assert_eq!(empty.oldest_seen_ms, None);
        register(&conn, "10.0.0.1", 9000, "popular", HASH_A, 1_000);
        register(&conn, "10.0.0.2", 9000, "popular", HASH_A, 3_000);
        register(&conn, "10.0.0.2", 9000, "rare", HASH_B, 2_000);
        let s = stats(&conn, 2_000).unwrap();
        assert_eq!((s.files, s.peers, s.registrations), (2, 2, 3));
        assert_eq!((s.live, s.expired), (2, 1));
        assert_eq!(
            (s.oldest_seen_ms, s.newest_seen_ms),
            (Some(1_000), Some(3_000))
        );
        assert_eq!(
            s.top_names[0],
            TopName {
                name: "popular".into(),
                sources: 2,
                live: 1
            }
        );
        assert_eq!(s.top_names.len(), 2);
        let (db_bytes, _wal) = file_sizes(&path).unwrap();
        assert!(db_bytes > 0);
    }
}
