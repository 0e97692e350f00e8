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
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Reads the schema version without writing anything. Fails on a file that
/// is not a SQLite database (SQLite reads the header here).
pub fn version_of(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Brings the schema up to [`SCHEMA_VERSION`], all pending steps in one
/// transaction: a crash in the middle leaves the old version intact.
pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
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
    tx.commit().map_err(migrate_err)
}
