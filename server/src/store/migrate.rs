//! Schema migrations: the numbered SQL files of `migrations/`, embedded at
//! build time and applied in order inside one transaction. The schema
//! version is SQLite's `user_version`, so it travels with the file.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Every migration, in order; entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_init.sql"),
    include_str!("../../../migrations/0002_host_counts.sql"),
    include_str!("../../../migrations/0003_narrow_rows.sql"),
    include_str!("../../../migrations/0004_fts_fed_per_batch.sql"),
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Reads the schema version without writing anything. Fails on a file that
/// is not a SQLite database (SQLite reads the header here).
pub fn version_of(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// The first version whose migration copies the big tables (0003): the old
/// ones' pages are left free in the file, which a `VACUUM` gives back.
const COPYING_MIGRATION: u32 = 3;

/// Brings the schema up to [`SCHEMA_VERSION`], all pending steps in one
/// transaction: a crash in the middle leaves the old version intact.
/// After a migration that copied the tables of an existing database, the
/// file is compacted (`VACUUM`, its own transaction: a crash during it
/// leaves the migrated file as committed). A compaction that fails (no
/// room for the copy) is logged and the server goes on: the free pages are
/// then reused by later writes.
pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    let found = migrate_in_one_transaction(conn, path)?;
    if found > 0 && found < COPYING_MIGRATION && SCHEMA_VERSION >= COPYING_MIGRATION {
        let started = std::time::Instant::now();
        match conn.execute_batch("VACUUM") {
            Ok(()) => tracing::info!(
                path,
                from = found,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "schema migrated; database compacted"
            ),
            Err(e) => {
                tracing::warn!(path, error = %e, "schema migrated; compacting the database failed")
            }
        }
    }
    Ok(())
}

/// The migration proper; returns the version found before it.
fn migrate_in_one_transaction(conn: &mut Connection, path: &str) -> Result<u32, StoreError> {
    let migrate_err = |source| StoreError::Migrate {
        path: path.to_owned(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(migrate_err)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let found = version_of(&tx).map_err(migrate_err)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)
            .map_err(migrate_err)?;
    }
    tx.commit().map_err(migrate_err)?;
    Ok(found)
}
