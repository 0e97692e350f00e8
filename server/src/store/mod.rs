//! The registry's storage: opening and checking the SQLite file, the schema
//! migrations, and every SQL statement of the system.
//!
//! Nothing outside this module builds SQL. Reads go through [`Store`], a
//! pool of read-only connections; writes are the functions of [`writes`],
//! which only the writer thread ([`crate::writer`]) calls, on its own
//! connection, inside its group-commit transaction. [`admin`] holds the
//! operator's queries used by `p2p-admin`.

pub mod admin;
mod migrate;
pub mod writes;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{params, Connection, OpenFlags};

pub use migrate::SCHEMA_VERSION;
use p2p_proto::protocol::{FindHit, Source, MAX_FIND_RESULTS};

/// How long a statement waits for another process's lock (`p2p-admin`
/// beside the server) before it reports the database busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the server's own connections retry a lock another process
/// holds, for up to [`BUSY_TIMEOUT`]. SQLite's busy timeout backs off to
/// 100 ms between tries, so a `p2p-admin prune` that takes the lock again
/// right after each of its chunks could keep the server's writer out past
/// the timeout (its clients then get `ERR internal database busy`); polling
/// every millisecond finds the pause between two chunks
/// ([`admin::PRUNE_PAUSE`]).
pub const BUSY_POLL: Duration = Duration::from_millis(1);

/// The busy handler of the server's writer: sleeps [`BUSY_POLL`] and tries
/// again, until [`BUSY_TIMEOUT`] has gone by in sleeps.
fn poll_for_lock(tries: i32) -> bool {
    poll_until(tries, BUSY_TIMEOUT)
}

/// The busy handler of another process's writer (`p2p-admin prune`): the
/// same polling, for up to [`EXTERNAL_WRITER_BUSY_TIMEOUT`], so the two
/// writers take turns instead of one backing off while the other commits.
fn poll_for_lock_external(tries: i32) -> bool {
    poll_until(tries, EXTERNAL_WRITER_BUSY_TIMEOUT)
}

fn poll_until(tries: i32, limit: Duration) -> bool {
    let polls = limit.as_millis() / BUSY_POLL.as_millis();
    if u128::try_from(tries).unwrap_or(u128::MAX) >= polls {
        return false;
    }
    std::thread::sleep(BUSY_POLL);
    true
}

/// How long a writer in another process (`p2p-admin prune`, opened with
/// [`OpenMode::ExistingReadWrite`]) waits for the write lock per
/// transaction before it fails with `database is locked`.
pub const EXTERNAL_WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time a registration lives without a heartbeat (`--ttl` of both
/// `dht-server` and `p2p-admin`). With the peer's 45 s heartbeat a live
/// peer survives two lost heartbeats, and a killed one is gone from SEARCH
/// within 150 s plus one sweep, under 3 minutes. Kept here, not in the
/// network layer, so `p2p-admin` shares it without depending on the server.
pub const DEFAULT_TTL: Duration = Duration::from_secs(150);

/// Most sources one SEARCH reply lists (the wire vocabulary's cap, which
/// the client enforces too).
pub use p2p_proto::protocol::MAX_SEARCH_SOURCES;

/// Read connections in the pool. Reads in WAL mode never block each other,
/// so a few per core is plenty; workers beyond that wait their turn briefly.
pub const DEFAULT_READERS: u32 = 8;

/// Most distinct words in one FIND (repeats count once): each word is one
/// more full-text term to evaluate, and a 4096-byte line could carry 2,000.
pub const MAX_FIND_WORDS: usize = 32;

/// Most names one FIND examines (full-text matches before liveness and
/// grouping): bounds the cost of one FIND to milliseconds however many names
/// match. When more match, the hits come from the first this many (in
/// index order), so a broad FIND is a sample and a narrower one is exact.
pub const MAX_FIND_EXAMINED: usize = 10_000;

/// Most names a FIND's narrowing word may match for the FIND to run on
/// those names alone (`Store::find_narrowed`): rows copied into a TEMP
/// table (about 3 µs each), where the full query over a broad prefix costs
/// a merge of its whole doclist (~100 ms for a million names). Below
/// [`MAX_FIND_EXAMINED`], so that cap never applies to a narrowed FIND.
/// (Its SQL says `LIMIT 4097`, this plus one, as a literal: see
/// `find_narrowed`.)
pub const FIND_NARROW_CANDIDATES: usize = 4096;
const _: () = assert!(FIND_NARROW_CANDIDATES + 1 == 4097);
const _: () = assert!(FIND_NARROW_CANDIDATES < MAX_FIND_EXAMINED);

/// A word whose exact term is in more names than this is not tried as the
/// narrowing word (its prefix is in at least as many); counting further
/// would cost every FIND more. (`LIMIT 257` in `narrow_driver`.)
pub const FIND_NARROW_PROBE: usize = 256;
const _: () = assert!(FIND_NARROW_PROBE + 1 == 257);

/// WAL pages after which a commit of the server's connection checkpoints
/// (SQLite's `wal_autocheckpoint`; its default is 1,000). The checkpoint runs
/// on the writer thread, inside a commit, and copies every page changed
/// since the last one back into the database file: a hot page (the tail of
/// an append-ordered index, `host_counts`) changed by a hundred commits is
/// copied once per checkpoint, so fewer, larger checkpoints copy less. With
/// 10,000 (a WAL of up to about 40 MiB) loading 300,000 registrations went
/// from 7.9k to 11.6-12.5k/s (BENCHMARKS.md, "less written per commit").
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// How durable a commit is (SQLite's `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged change survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the
    /// last commits on power loss; faster.
    Normal,
}

impl SyncMode {
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

/// How a program opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The server: create the file and its schema when missing, migrate an older one.
    CreateOrMigrate,
    /// An operator's write (prune): the file must exist with the current schema.
    ExistingReadWrite,
    /// An operator's read: the file must exist with the current schema; nothing is written.
    ExistingReadOnly,
}

/// Everything that can go wrong in storage. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path} does not exist (--db PATH names the registry's file)")]
    Missing { path: String },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{path} is not a SQLite database (or is corrupt): {source}")]
    NotSqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this program's {supported}; use a newer build")]
    NewerSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("database {path} has schema version {found}, but this program needs {supported}; start dht-server on it once to migrate it")]
    OlderSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("cannot migrate the schema of {path}: {source}")]
    Migrate {
        path: String,
        source: rusqlite::Error,
    },
    #[error("FIND takes at most {MAX_FIND_WORDS} distinct words")]
    TooManyWords,
    #[error("database {path} is read-only (check the permissions of the file and of its folder)")]
    ReadOnly { path: String },
    #[error("cannot create the read pool for {path}: {source}")]
    Pool { path: String, source: r2d2::Error },
    #[error("no read connection free for {path}: {source}")]
    PoolTimeout { path: String, source: r2d2::Error },
    #[error("database error on {path}: {source}")]
    Sql {
        path: String,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// What went wrong in a few words, without paths or SQLite's text: what
    /// a client is told (`ERR internal <reason>`); the log gets the rest.
    pub fn short_reason(&self) -> &'static str {
        match self {
            StoreError::PoolTimeout { .. } => OVERLOADED,
            StoreError::Sql { source, .. } => sqlite_reason(source),
            _ => "database error",
        }
    }
}

/// The short reason when no read connection came free in time.
pub const OVERLOADED: &str = "registry overloaded; try again";

/// The short reason for a SQLite error (see [`StoreError::short_reason`]).
pub fn sqlite_reason(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            "database busy; try again"
        }
        Some(rusqlite::ErrorCode::DiskFull) => "database disk full",
        Some(rusqlite::ErrorCode::ReadOnly) => "database is read-only",
        Some(rusqlite::ErrorCode::SystemIoFailure) => "database I/O error",
        _ => "database error",
    }
}

/// Opens one connection on `path` and checks it before anything is written:
/// a missing file (unless the mode creates it), a file that is not SQLite,
/// or a schema from another version is an error, and such a file is left
/// byte-for-byte as it was. The server's connection also gets WAL mode and
/// a migrated schema.
pub fn open_connection(
    path: &str,
    mode: OpenMode,
    sync: SyncMode,
) -> Result<Connection, StoreError> {
    let exists = Path::new(path).exists();
    if !exists && mode != OpenMode::CreateOrMigrate {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    let flags = match mode {
        OpenMode::CreateOrMigrate => {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
        }
        OpenMode::ExistingReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE,
        OpenMode::ExistingReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    // Another process's writer (`p2p-admin prune`) competes with a server
    // that commits without pause and, every `WAL_AUTOCHECKPOINT_PAGES`,
    // copies up to ~40 MiB back inside one commit: it gets longer to win
    // the lock than the server's own connections.
    match mode {
        OpenMode::ExistingReadWrite => conn.busy_handler(Some(poll_for_lock_external)),
        OpenMode::CreateOrMigrate => conn.busy_handler(Some(poll_for_lock)),
        OpenMode::ExistingReadOnly => conn.busy_timeout(BUSY_TIMEOUT),
    }
    .map_err(open_err)?;

    // The first read of the header: fails here for a file that is not SQLite.
    let found = match migrate::version_of(&conn) {
        Ok(found) => found,
        Err(e)
            if mode == OpenMode::ExistingReadOnly
                && e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen)
                && !Path::new(&format!("{path}-shm")).exists() =>
        {
            // A WAL database in a folder we cannot write: the shared-memory
            // file cannot be made. Nothing can be writing it then (a writer
            // needs that file too), so read the file as immutable. Never
            // while a `-shm` exists: a writer may be running, and an
            // immutable read would miss what is still in its WAL.
            tracing::debug!(path, error = %e, "opening the database as immutable");
            conn = Connection::open_with_flags(immutable_uri(path), flags).map_err(open_err)?;
            migrate::version_of(&conn).map_err(|source| classify_open_error(path, source))?
        }
        Err(e) => return Err(classify_open_error(path, e)),
    };
    if mode == OpenMode::CreateOrMigrate && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        // SQLite opens a file it may not write read-only without a word;
        // every write would then fail. Refuse now, as for any unusable file.
        return Err(StoreError::ReadOnly {
            path: path.to_owned(),
        });
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let sql_err = |source| StoreError::Sql {
        path: path.to_owned(),
        source,
    };
    match mode {
        OpenMode::CreateOrMigrate => {
            // WAL: readers never block the writer, and a commit is one append + fsync.
            let journal: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
                .map_err(sql_err)?;
            if !journal.eq_ignore_ascii_case("wal") {
                tracing::warn!(path, journal, "database did not switch to WAL mode");
            }
            conn.pragma_update(None, "synchronous", sync.pragma())
                .map_err(sql_err)?;
            migrate::migrate(&mut conn, path)?;
            writes::prepare(&conn).map_err(sql_err)?;
            conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
                .map_err(sql_err)?;
        }
        OpenMode::ExistingReadWrite | OpenMode::ExistingReadOnly => {
            if found != SCHEMA_VERSION {
                return Err(StoreError::OlderSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if mode == OpenMode::ExistingReadWrite {
                conn.pragma_update(None, "synchronous", sync.pragma())
                    .map_err(sql_err)?;
                writes::prepare(&conn).map_err(sql_err)?;
            }
        }
    }
    Ok(conn)
}

/// `file:` URI that opens `path` read-only and immutable (no locks, no
/// `-shm`). Characters special in a URI are percent-encoded.
fn immutable_uri(path: &str) -> String {
    let mut uri = String::from("file:");
    for c in path.chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}

fn classify_open_error(path: &str, source: rusqlite::Error) -> StoreError {
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::NotSqlite {
                path: path.to_owned(),
                source,
            }
        }
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    }
}

/// Milliseconds since the Unix epoch: the registry's clock for `last_seen`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The oldest `last_seen` that is still live at `now` for a time-to-live.
pub fn live_since(now: i64, ttl: Duration) -> i64 {
    now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// Read access to the registry through a pool of read-only connections.
///
/// FIND has a pool of its own (a quarter of the readers, at least one): a
/// flood of FIND waits for its own connections, never for SEARCH's.
#[derive(Clone)]
pub struct Store {
    path: String,
    pool: r2d2::Pool<SqliteConnectionManager>,
    find_pool: r2d2::Pool<SqliteConnectionManager>,
    /// The in-memory index that answers [`Store::find`] once it is ready
    /// (`--memory-index`; see [`Store::with_index`]).
    index: Option<std::sync::Arc<crate::index::Index>>,
}

impl Store {
    /// A pool of `readers` read-only connections on a database that
    /// [`open_connection`] has already checked (and, for the server, created).
    pub fn open_readers(path: &str, readers: u32) -> Result<Store, StoreError> {
        Ok(Store {
            path: path.to_owned(),
            pool: read_pool(path, readers.max(1))?,
            find_pool: read_pool(path, (readers / 4).max(1))?,
            index: None,
        })
    }

    /// This store, with FIND answered by `index` whenever it is ready
    /// (`Index::find`; the same answers, without SQL), by SQLite otherwise.
    /// Here rather than in the command layer so that every FIND (the
    /// protocol's, the web page's) takes the same path.
    pub fn with_index(mut self, index: std::sync::Arc<crate::index::Index>) -> Store {
        self.index = Some(index);
        self
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.pool.get().map_err(|source| StoreError::PoolTimeout {
            path: self.path.clone(),
            source,
        })
    }

    fn find_conn(&self) -> Result<r2d2::PooledConnection<SqliteConnectionManager>, StoreError> {
        self.find_pool
            .get()
            .map_err(|source| StoreError::PoolTimeout {
                path: self.path.clone(),
                source,
            })
    }

    fn sql_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Live sources of the file whose name hashes to `name_key`, most
    /// recently seen first, at most [`MAX_SEARCH_SOURCES`].
    pub fn search(&self, name_key: &str, live_since: i64) -> Result<Vec<Source>, StoreError> {
        // Not a key this program writes (64 lowercase hex digits): no such name.
        let Some(key) = p2p_proto::hex::from_hex_array::<32>(name_key) else {
            return Ok(Vec::new());
        };
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT p.host, p.port, r.size, r.sha256
                 FROM file_keys k
                 JOIN registrations r ON r.file_id = k.file_id
                 JOIN peers p ON p.id = r.peer_id
                 WHERE k.name_key = ?1 AND r.last_seen >= ?2
                 ORDER BY r.seen_seq DESC
                 LIMIT ?3",
            )
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(
                params![&key[..], live_since, MAX_SEARCH_SOURCES as i64],
                |row| {
                    Ok(Source {
                        host: row.get(0)?,
                        port: row.get(1)?,
                        size: row.get::<_, i64>(2)? as u64,
                        sha256: hex_column(row, 3)?,
                    })
                },
            )
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql_err(e))
    }

    /// Names of live files in which every word is a prefix of some word of
    /// the name (case-insensitive), one hit per distinct content, most
    /// shared first, at most [`MAX_FIND_RESULTS`], from at most
    /// [`MAX_FIND_EXAMINED`] matching names. Repeated words count once;
    /// more than [`MAX_FIND_WORDS`] distinct ones is [`StoreError::TooManyWords`].
    pub fn find(&self, words: &[&str], live_since: i64) -> Result<Vec<FindHit>, StoreError> {
        self.find_with(words, live_since, true)
    }

    /// [`Store::find`] without the narrowing by one word (see
    /// [`FIND_NARROW_CANDIDATES`]): the reference its answers must equal (tests).
    pub fn find_unnarrowed(
        &self,
        words: &[&str],
        live_since: i64,
    ) -> Result<Vec<FindHit>, StoreError> {
        self.find_with(words, live_since, false)
    }

    fn find_with(
        &self,
        words: &[&str],
        live_since: i64,
        narrow: bool,
    ) -> Result<Vec<FindHit>, StoreError> {
        let Some(distinct) = find_words(words)? else {
            return Ok(Vec::new());
        };
        let distinct: Vec<&str> = distinct.iter().map(String::as_str).collect();
        if narrow {
            if let Some(hits) = self
                .index
                .as_ref()
                .and_then(|i| i.find(&distinct, live_since))
            {
                return Ok(hits);
            }
        }
        let Some(query) = fts_prefix_query(&distinct) else {
            return Ok(Vec::new());
        };
        let conn = self.find_conn()?;
        if narrow && distinct.len() > 1 {
            if let Some(hits) = self
                .find_narrowed(&conn, &distinct, &query, live_since)
                .map_err(|e| self.sql_err(e))?
            {
                return Ok(hits);
            }
        }
        let mut stmt = conn
            .prepare_cached(
                "SELECT count(*), r.size, r.sha256, f.name
                 FROM (SELECT rowid AS id FROM files_fts WHERE files_fts MATCH (SELECT ?1)
                       LIMIT ?4) m
                 JOIN files f ON f.id = m.id
                 JOIN registrations r ON r.file_id = f.id
                 WHERE r.last_seen >= ?2
                 GROUP BY f.id, r.size, r.sha256
                 ORDER BY count(*) DESC, f.name, r.sha256
                 LIMIT ?3",
            )
            .map_err(|e| self.sql_err(e))?;
        let limits = (MAX_FIND_RESULTS as i64, MAX_FIND_EXAMINED as i64);
        let rows = stmt
            .query_map(params![query, live_since, limits.0, limits.1], find_hit)
            .map_err(|e| self.sql_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql_err(e))
    }

    /// FIND through the candidates of one of its words (see
    /// [`narrow_driver`]), when that word alone matches at most
    /// [`FIND_NARROW_CANDIDATES`] names: those names
    /// are copied into a TEMP FTS5 table with the same tokenizer, and the
    /// whole query runs there, then the same grouping as [`Store::find`].
    /// `None` when the word matches more (the caller runs the full query).
    ///
    /// Why: FTS5 evaluates a prefix term (`"file"*`) by merging the doclists
    /// of every matching term into memory first, whatever the other terms
    /// and the LIMIT, so `file 523417` over a million `bench-file-N` costs
    /// ~100 ms for `"file"*` alone. The answer is the same: every name the
    /// full query matches matches each of its words, so it is among the
    /// candidates; the tokenizer and the query are the same, so exactly
    /// those match in the TEMP table; and fewer than
    /// [`MAX_FIND_EXAMINED`] match, so that cap changes nothing. One read
    /// transaction makes it one snapshot, as the single statement was.
    ///
    /// `MATCH (SELECT ?1)` and literal limits, not `MATCH ?1 LIMIT ?2`:
    /// FTS5 looks at a bound right-hand side when it plans, and SQLite then
    /// prepares the statement again whenever the binding changes (15 % of
    /// the CPU of a FIND); a subquery's value is not shown to the planner.
    fn find_narrowed(
        &self,
        conn: &Connection,
        words: &[&str],
        query: &str,
        live_since: i64,
    ) -> rusqlite::Result<Option<Vec<FindHit>>> {
        let Some(driver) = narrow_driver(conn, words)? else {
            return Ok(None);
        };
        // The TEMP schema is the connection's own (in memory, writable on a
        // read-only connection); the table is made once per connection.
        let made: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM temp.sqlite_master WHERE name = 'find_candidates'",
            )?
            .query_row([], |r| r.get(0))?;
        if made == 0 {
            // Contentless: only rowids are read back, and 'delete-all'
            // empties it at once (a DELETE would write tombstones to merge).
            conn.execute_batch(
                "CREATE VIRTUAL TABLE temp.find_candidates
                 USING fts5 (name, content = '', tokenize = 'unicode61 remove_diacritics 0')",
            )?;
        }
        let tx = conn.unchecked_transaction()?;
        tx.prepare_cached("INSERT INTO find_candidates (find_candidates) VALUES ('delete-all')")?
            .execute([])?;
        let copied = tx
            .prepare_cached(
                "INSERT INTO temp.find_candidates (rowid, name)
                 SELECT f.id, f.name
                 FROM (SELECT rowid AS id FROM files_fts WHERE files_fts MATCH (SELECT ?1)
                       LIMIT 4097) m
                 JOIN files f ON f.id = m.id",
            )?
            .execute(params![driver])?;
        if copied > FIND_NARROW_CANDIDATES {
            tx.prepare_cached(
                "INSERT INTO find_candidates (find_candidates) VALUES ('delete-all')",
            )?
            .execute([])?;
            tx.commit()?;
            return Ok(None);
        }
        let hits = {
            let mut stmt = tx.prepare_cached(
                "SELECT count(*), r.size, r.sha256, f.name
                 FROM (SELECT rowid AS id FROM find_candidates
                       WHERE find_candidates MATCH (SELECT ?1)) m
                 JOIN files f ON f.id = m.id
                 JOIN registrations r ON r.file_id = f.id
                 WHERE r.last_seen >= ?2
                 GROUP BY f.id, r.size, r.sha256
                 ORDER BY count(*) DESC, f.name, r.sha256
                 LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![query, live_since, MAX_FIND_RESULTS as i64],
                find_hit,
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.prepare_cached("INSERT INTO find_candidates (find_candidates) VALUES ('delete-all')")?
            .execute([])?;
        tx.commit()?;
        Ok(Some(hits))
    }
}

/// Loads every registration of the database into `index`, replacing what
/// it held (one statement: one consistent snapshot). On error the index is
/// left as it was.
pub fn load_index(
    conn: &Connection,
    path: &str,
    index: &crate::index::Index,
) -> Result<usize, StoreError> {
    if !index.is_enabled() {
        return Ok(0);
    }
    index.begin_load();
    let built = build_index(conn, path)?;
    index.install(built, &[]);
    Ok(index.len())
}

/// Builds the content of an index from every registration of the database
/// (one statement: one snapshot, or the transaction's, see
/// [`begin_snapshot`]), without touching any index: the writer's load runs
/// it on a thread of its own.
///
/// Two statements, in one read transaction (the caller's, or one of its
/// own): the registrations by name key, then the names by id, a scan in
/// the order the word index keeps them (joining `files` to the first
/// costs a random B-tree lookup a name: the load of a million took 2.4x
/// as long).
pub fn build_index(conn: &Connection, path: &str) -> Result<crate::index::Built, StoreError> {
    let sql_err = |source| StoreError::Sql {
        path: path.to_owned(),
        source,
    };
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN").map_err(sql_err)?;
    }
    let built =
        with_index_rows(conn, path, |rows| crate::index::Index::build(rows)).and_then(|built| {
            let mut stmt = conn
                .prepare("SELECT id, name FROM files ORDER BY id")
                .map_err(sql_err)?;
            let names = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(sql_err)?;
            built.with_names(names).map_err(sql_err)
        });
    if own {
        conn.execute_batch("COMMIT").map_err(sql_err)?;
    }
    built
}

/// Runs `f` over the rows of every registration, one name's together.
fn with_index_rows<T>(
    conn: &Connection,
    path: &str,
    f: impl FnOnce(&mut dyn Iterator<Item = rusqlite::Result<crate::index::Row>>) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    let sql_err = |source| StoreError::Sql {
        path: path.to_owned(),
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT k.name_key, p.host, p.port, r.size, r.sha256, r.last_seen, r.seen_seq,
                    k.file_id
             FROM file_keys k
             JOIN registrations r ON r.file_id = k.file_id
             JOIN peers p ON p.id = r.peer_id
             ORDER BY k.name_key",
            // One name's rows together, as Index::rebuild needs: file_keys'
            // primary-key order, so SQLite scans it without sorting.
        )
        .map_err(sql_err)?;
    let mut rows = stmt
        .query_map([], |row| {
            Ok(crate::index::Row {
                name_key: hex_column(row, 0)?,
                host: row.get(1)?,
                port: row.get(2)?,
                size: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                sha256: hex_column(row, 4)?,
                last_seen: row.get(5)?,
                seen_seq: row.get(6)?,
                file_id: row.get(7)?,
                // From `files`, in a scan of its own (`build_index`).
                name: String::new(),
            })
        })
        .map_err(sql_err)?;
    f(&mut rows).map_err(sql_err)
}

/// Opens a read transaction on `conn` and reads once, so that its snapshot
/// is taken now: a commit made after this returns is not in what `conn`
/// reads until [`end_snapshot`].
pub fn begin_snapshot(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN")?;
    conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM registrations LIMIT 1)",
        [],
        |_| Ok(()),
    )
}

/// Ends the read transaction of [`begin_snapshot`].
pub fn end_snapshot(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("COMMIT")
}

/// Column `index` of `row`, a digest stored as a BLOB, in the lowercase hex
/// every surface shows.
/// One FIND hit from a row `count(*), r.size, r.sha256, f.name` (the
/// columns of both FIND queries).
fn find_hit(row: &rusqlite::Row<'_>) -> rusqlite::Result<FindHit> {
    Ok(FindHit {
        sources: row.get::<_, i64>(0)? as u64,
        size: row.get::<_, i64>(1)? as u64,
        sha256: hex_column(row, 2)?,
        name: row.get(3)?,
    })
}

pub(crate) fn hex_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<String> {
    Ok(p2p_proto::hex::to_hex(row.get_ref(index)?.as_blob()?))
}

/// SQLite's `PRAGMA data_version` on `conn`: it changes when another
/// connection (another process: `p2p-admin prune`) commits to the file,
/// never for `conn`'s own commits. One read of a counter in shared memory.
pub fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// A pool of `size` read-only connections on `path`.
fn read_pool(path: &str, size: u32) -> Result<r2d2::Pool<SqliteConnectionManager>, StoreError> {
    let manager = SqliteConnectionManager::file(path)
        .with_flags(
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .with_init(|conn| conn.busy_timeout(BUSY_TIMEOUT));
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(BUSY_TIMEOUT)
        // A pooled connection is a local file handle: checking it on each
        // checkout would cost a query per request for nothing.
        .test_on_check_out(false)
        .build(manager)
        .map_err(|source| StoreError::Pool {
            path: path.to_owned(),
            source,
        })
}

/// The word of a FIND to narrow by ([`Store::find_narrowed`]), as an FTS5
/// prefix query: the longest word whose exact term (cheap to count: no
/// doclists are merged for it) is in at most [`FIND_NARROW_PROBE`] names.
fn narrow_driver(conn: &Connection, words: &[&str]) -> rusqlite::Result<Option<String>> {
    let mut by_length: Vec<&str> = words.to_vec();
    by_length.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    let mut probe = conn.prepare_cached(
        "SELECT count(*) FROM (SELECT rowid FROM files_fts WHERE files_fts MATCH (SELECT ?1)
                               LIMIT 257)",
    )?;
    for word in by_length {
        let exact = format!("\"{}\"", word.replace('"', "\"\""));
        let names: i64 = probe.query_row(params![exact], |r| r.get(0))?;
        if names as usize <= FIND_NARROW_PROBE {
            return Ok(fts_prefix_query(&[word]));
        }
    }
    Ok(None)
}

/// The words of a FIND as both of its paths (SQL, `Index::find`) read
/// them: lowercased (Rust's `to_lowercase`), sorted, repeats dropped;
/// [`StoreError::TooManyWords`] past [`MAX_FIND_WORDS`]; `None` (no match)
/// when a word has no letter or digit by Rust's `is_alphanumeric` (which
/// is not FTS5's notion: a word of only FTS5 separators that Rust calls
/// alphanumeric, such as a combining vowel sign, passes here and then
/// matches nothing, as an FTS5 phrase without tokens does).
pub fn find_words(words: &[&str]) -> Result<Option<Vec<String>>, StoreError> {
    let mut distinct: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > MAX_FIND_WORDS {
        return Err(StoreError::TooManyWords);
    }
    if distinct.is_empty()
        || distinct
            .iter()
            .any(|w| !w.chars().any(char::is_alphanumeric))
    {
        return Ok(None);
    }
    Ok(Some(distinct))
}

/// Builds an FTS5 query in which each word is a quoted prefix term, so that
/// no user text is ever read as FTS syntax. A word with no letter or digit
/// (which the tokenizer would drop) cannot match any word: `None`.
fn fts_prefix_query(words: &[&str]) -> Option<String> {
    let mut query = String::new();
    for word in words {
        if !word.chars().any(char::is_alphanumeric) {
            return None;
        }
        if !query.is_empty() {
            query.push_str(" AND ");
        }
        query.push('"');
        query.push_str(&word.replace('"', "\"\""));
        query.push_str("\"*");
    }
    (!query.is_empty()).then_some(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    use writes::Stamp;

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn temp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.db").to_string_lossy().into_owned();
        (dir, path)
    }

    #[test]
    fn refuses_garbage_and_newer_files_without_touching_them() {
        let (_dir, path) = temp_db();
        let garbage = b"this is not a database, it is a shopping list\n".repeat(100);
        std::fs::write(&path, &garbage).unwrap();
        for mode in [OpenMode::CreateOrMigrate, OpenMode::ExistingReadOnly] {
            let err = open_connection(&path, mode, SyncMode::Full).unwrap_err();
            assert!(matches!(err, StoreError::NotSqlite { .. }), "{err}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), garbage);

        let (_dir, path) = temp_db();
        drop(open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Full).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        let err = open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Full).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn admin_modes_never_create_a_database() {
        let (_dir, path) = temp_db();
        let err = open_connection(&path, OpenMode::ExistingReadOnly, SyncMode::Full).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        assert!(!Path::new(&path).exists());
    }

    #[test]
    fn search_heartbeat_expiry_and_orphans() {
        let (_dir, path) = temp_db();
        let conn = open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
        let store = Store::open_readers(&path, 2).unwrap();
        let key = p2p_proto::protocol::name_key("a b");
        writes::register(
            &conn,
            "127.0.0.1",
            1,
            &key,
            "a b",
            5,
            HASH,
            Stamp::at(1_000),
        )
        .unwrap();
        writes::register(
            &conn,
            "127.0.0.1",
            2,
            &key,
            "a b",
            5,
            HASH,
            Stamp::at(2_000),
        )
        .unwrap();
        let ports = |since| -> Vec<u16> {
            store
                .search(&key, since)
                .unwrap()
                .iter()
                .map(|s| s.port)
                .collect()
        };
        assert_eq!(ports(0), [2, 1], "most recently seen first");
        assert_eq!(ports(1_500), [2], "expired rows are not shown");

        // A heartbeat refreshes live rows only.
        assert_eq!(
            writes::heartbeat(&conn, "127.0.0.1", 1, Stamp::at(3_000), 1_500).unwrap(),
            0
        );
        assert_eq!(
            writes::heartbeat(&conn, "127.0.0.1", 2, Stamp::at(3_000), 1_500).unwrap(),
            1
        );
        assert_eq!(
            writes::heartbeat(&conn, "127.0.0.2", 2, Stamp::at(3_000), 0).unwrap(),
            0
        );

        assert_eq!(writes::sweep_expired(&conn, 1_500).unwrap(), 1);
        assert!(writes::unregister(&conn, "127.0.0.1", 2, &key).unwrap());
        assert!(!writes::unregister(&conn, "127.0.0.1", 2, &key).unwrap());
        let left: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM files) + (SELECT count(*) FROM peers)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "files and peers without registrations are removed");
        assert!(store.find(&["a"], 0).unwrap().is_empty());
    }

    #[test]
    fn find_matches_word_prefixes_case_insensitively() {
        let (_dir, path) = temp_db();
        let conn = open_connection(&path, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
        let store = Store::open_readers(&path, 1).unwrap();
        for (port, name) in [
            (1, "Holiday Photos 2024.zip"),
            (2, "holiday.txt"),
            (3, "café menu"),
        ] {
            let key = p2p_proto::protocol::name_key(name);
            writes::register(&conn, "10.0.0.1", port, &key, name, 1, HASH, Stamp::at(10)).unwrap();
        }
        let names = |words: &[&str]| -> Vec<String> {
            let mut n: Vec<String> = store
                .find(words, 0)
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&["HOLI"]), ["Holiday Photos 2024.zip", "holiday.txt"]);
        assert_eq!(names(&["holi", "pho"]), ["Holiday Photos 2024.zip"]);
        assert_eq!(names(&["oliday"]), Vec::<String>::new());
        assert_eq!(names(&["caf"]), ["café menu"]);
        assert_eq!(names(&["cafe"]), Vec::<String>::new());
        assert_eq!(names(&["\"\""]), Vec::<String>::new());
    }

    #[test]
    fn fts_query_quotes_every_word() {
        assert_eq!(
            fts_prefix_query(&["a", "b\"c"]).as_deref(),
            Some("\"a\"* AND \"b\"\"c\"*")
        );
        assert_eq!(fts_prefix_query(&["-"]), None);
        assert_eq!(fts_prefix_query(&[]), None);
    }
}
