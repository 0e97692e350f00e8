//! `p2p-admin`: the operator's tool over the registry database. It lists
//! who shares what, removes departed peers, exports the registry and
//! counts it, beside a running `dht-server`.
//!
//! # Layout
//! - [`list`]: `list`, the filtered registrations as a table, CSV or JSON.
//! - [`prune`]: `prune --peer` / `prune --stale`, in bounded transactions, with a dry run.
//! - [`export`]: `export`, the whole registry streamed to stdout or to a file
//!   that appears only when complete.
//! - [`stats`]: `stats`, counts, sizes, heartbeats and the most shared names.
//! - [`render`]: tables, CSV, JSON and JSON Lines; sizes, times and ages for people.
//! - [`peer`]: parses `HOST:PORT` into the form the registry stores.
//! - [`error`]: [`AdminError`], the one error type of this library.
//!
//! Every SQL statement lives in `dht_server::store::admin`; this crate
//! opens the database through `dht_server::store::open_connection`, so it
//! makes the same checks as the server (missing file, not SQLite, schema
//! version) and never creates or migrates a database. Read-only commands
//! (`list`, `export`, `stats`, `prune --dry-run`) open it read-only.
//!
//! `main.rs` only parses the command line and maps errors to exit codes.

pub mod error;
pub mod export;
pub mod list;
pub mod peer;
pub mod prune;
pub mod render;
pub mod stats;

use std::time::Duration;

use dht_server::store::{self, OpenMode, SyncMode};
use rusqlite::Connection;

pub use error::AdminError;

/// The database `--db` names when not given: the server's default too.
pub const DEFAULT_DB: &str = "registry.db";

/// How long a registration lives without a heartbeat when `--ttl` is not
/// given: the server's own default, so the two cannot drift apart. The
/// admin tool cannot ask the server for its `--ttl`, so an operator who
/// runs the server with another value passes the same one here; it only
/// decides what is shown as live.
pub const DEFAULT_TTL: Duration = dht_server::store::DEFAULT_TTL;

/// What every command needs: which database, and which TTL judges liveness.
#[derive(Debug, Clone)]
pub struct Settings {
    pub db: String,
    pub ttl: Duration,
}

impl Settings {
    /// Opens the database for reading only; nothing can be written through it.
    pub fn open_read(&self) -> Result<Connection, AdminError> {
        Ok(store::open_connection(
            &self.db,
            OpenMode::ExistingReadOnly,
            SyncMode::Full,
        )?)
    }

    /// Opens the database for a change; commits are durable (fsync).
    pub fn open_write(&self) -> Result<Connection, AdminError> {
        Ok(store::open_connection(
            &self.db,
            OpenMode::ExistingReadWrite,
            SyncMode::Full,
        )?)
    }

    /// The time now and the liveness cutoff, read once per command so every
    /// row of one output is judged against the same instant.
    pub fn clock(&self) -> Clock {
        let now_ms = store::now_ms();
        Clock {
            now_ms,
            live_since_ms: store::live_since(now_ms, self.ttl),
        }
    }
}

/// One command's notion of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix milliseconds when the command started.
    pub now_ms: i64,
    /// Registrations seen at or after this (unix ms) are live, as the server judges them.
    pub live_since_ms: i64,
}

impl Clock {
    pub fn is_live(&self, last_seen_ms: i64) -> bool {
        last_seen_ms >= self.live_since_ms
    }
}

/// Where command output goes, named in error messages.
pub const STDOUT: &str = "standard output";

#[cfg(test)]
pub(crate) mod testdb {
    //! A temporary registry filled through the server's own write functions.

    use dht_server::store::{self, writes, OpenMode, SyncMode};
    use p2p_proto::protocol::name_key;

    use crate::Settings;

    pub const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub struct TestDb {
        pub dir: tempfile::TempDir,
        pub settings: Settings,
    }

    /// A fresh database with `rows` (host, port, name, last_seen_ms).
    pub fn with_rows(rows: &[(&str, u16, &str, i64)]) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("registry.db").to_str().unwrap().to_owned();
        let mut conn =
            store::open_connection(&db, OpenMode::CreateOrMigrate, SyncMode::Normal).unwrap();
        let tx = conn.transaction().unwrap();
        for (host, port, name, seen) in rows {
            writes::register(
                &tx,
                host,
                *port,
                &name_key(name),
                name,
                100,
                HASH,
                writes::Stamp::at(*seen),
            )
            .unwrap();
        }
        writes::commit(tx).unwrap();
        drop(conn);
        TestDb {
            dir,
            settings: Settings {
                db,
                ttl: crate::DEFAULT_TTL,
            },
        }
    }
}
