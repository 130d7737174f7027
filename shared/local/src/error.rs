//! Errors of the SQLite adapter. Each one reaches callers as the source of
//! [`StoreError::Backend`](taskexec_core::error::StoreError::Backend), so the cause (a
//! `rusqlite::Error`, a `serde_json::Error`) stays reachable through `source()`.

use std::sync::Arc;

use taskexec_core::error::StoreError;

/// What went wrong inside the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    /// The database was written by a newer taskexec.
    #[error("database schema version {found} is newer than this taskexec supports ({supported}); upgrade taskexec")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The transaction that held this command could not begin or commit, so the command did not
    /// take effect. Every command of the batch reports the same cause.
    #[error("the transaction holding this command failed to {stage}")]
    Batch {
        /// `begin` or `commit`.
        stage: &'static str,
        /// What SQLite said.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A stored JSON column does not decode.
    #[error("task {task_id}: column {column} holds invalid JSON")]
    BadJson {
        /// The task.
        task_id: String,
        /// The column.
        column: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored column holds a value this build does not know.
    #[error("task {task_id}: column {column} holds unknown value {value:?}")]
    BadValue {
        /// The task.
        task_id: String,
        /// The column.
        column: &'static str,
        /// What it holds.
        value: String,
    },
    /// The store's connection thread has stopped (it panicked, or could not be started).
    #[error("the SQLite {0} thread has stopped")]
    WorkerGone(&'static str),
}

impl From<SqliteStoreError> for StoreError {
    fn from(e: SqliteStoreError) -> Self {
        StoreError::backend(e)
    }
}

/// Wrap a SQLite error as a store error, keeping it as the source.
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}
