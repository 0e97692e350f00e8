//! The library's one error type. Every message says what failed and on
//! what (the database path, the peer, the output file).
//!
//! Only `main.rs` turns these into exit codes; nothing here exits.

use std::io;

use dht_server::store::StoreError;

/// Everything that can go wrong in a command after its arguments parsed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Opening or checking the database, or a query on it.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {what} to {target}: {source}")]
    Output {
        what: &'static str,
        target: String,
        source: io::Error,
    },
    #[error("cannot create a temporary file in {dir} for the export: {source}")]
    TempFile { dir: String, source: io::Error },
    #[error("cannot move the finished export into place as {path}: {source}")]
    Persist { path: String, source: io::Error },
    #[error("cannot read the size of database {path}: {source}")]
    FileSize { path: String, source: io::Error },
}

impl AdminError {
    /// The reader of our output went away (`p2p-admin export | head`): not
    /// a failure of the tool, so `main` exits quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, AdminError::Output { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    pub(crate) fn sql(path: &str, source: rusqlite::Error) -> AdminError {
        AdminError::Store(StoreError::Sql {
            path: path.to_owned(),
            source,
        })
    }
}
