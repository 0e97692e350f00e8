//! Opening the registry that the command layer ([`crate::command`]) works
//! on: the database (created or migrated), its read pools and the writer
//! thread. It sits beside the command layer so the network layer
//! ([`crate::server`]) keeps to sockets; it must not open a socket.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::command::Registry;
use crate::index::Index;
use crate::store::{self, OpenMode, Store, StoreError, SyncMode};
use crate::writer::{self, WriterConfig};

/// Shortest and longest pause between two expiry sweeps (a quarter of the
/// TTL, within these bounds).
const SWEEP_EVERY_MIN: Duration = Duration::from_secs(1);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(60);

/// Why the registry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the writer thread: {0}")]
    Writer(io::Error),
}

impl Registry {
    /// Opens (or creates) the database at `db`, its `readers` read
    /// connections, loads the in-memory index from it when `memory_index`
    /// (`--memory-index`), and starts the writer, which keeps the index in
    /// step. The writer thread ends, after
    /// committing what is queued, once every handle on the returned
    /// registry's writer is dropped: join it then.
    pub fn open(
        db: &str,
        sync: SyncMode,
        readers: u32,
        ttl: Duration,
        max_per_host: u64,
        memory_index: bool,
    ) -> Result<(Registry, JoinHandle<()>), OpenError> {
        let conn = store::open_connection(db, OpenMode::CreateOrMigrate, sync)?;
        let index = Arc::new(if memory_index {
            Index::new()
        } else {
            Index::disabled()
        });
        // SEARCH and FIND from the index once it is loaded (both from
        // SQLite without --memory-index, and while it loads).
        let store = Store::open_readers(db, readers)?.with_index(Arc::clone(&index));
        let (writer, writer_thread) = writer::spawn(
            conn,
            WriterConfig {
                path: db.to_owned(),
                ttl,
                sweep_every: (ttl / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX),
                max_per_host,
            },
            Arc::clone(&index),
        )
        .map_err(|e| match e {
            writer::SpawnError::Load(e) => OpenError::Store(e),
            writer::SpawnError::Thread(e) => OpenError::Writer(e),
        })?;
        Ok((
            Registry {
                store,
                index,
                writer,
                ttl,
            },
            writer_thread,
        ))
    }
}
