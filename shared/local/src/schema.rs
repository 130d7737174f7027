//! The database file: connection settings (WAL, `synchronous=NORMAL`, busy timeout) and the
//! schema, created on open and versioned with `PRAGMA user_version`.
//!
//! Tasks keep their small, often-written state in plain columns (so a claim or a finish rewrites
//! a few integers) and the large, rarely-written parts (the task, its result, error and attempt
//! history) as JSON text. Events are an append-only table indexed by task.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use taskexec_core::ports::StoreResult;

use crate::error::{SqliteStoreError, sql};

/// The schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// How long a connection waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection (more than the store uses, so none is evicted).
const STATEMENT_CACHE: usize = 64;

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
CREATE TABLE tasks (
    seq                INTEGER PRIMARY KEY,   -- submission order
    id                 TEXT    NOT NULL UNIQUE,
    run_id             TEXT    NOT NULL,
    provider_id        TEXT    NOT NULL,
    model_id           TEXT    NOT NULL,
    priority           TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    epoch              INTEGER NOT NULL,
    attempt            INTEGER NOT NULL,
    throttles          INTEGER NOT NULL,
    next_attempt_at    INTEGER,
    lease_owner        TEXT,
    lease_until        INTEGER,
    submitted_at       INTEGER NOT NULL,
    started_at         INTEGER,
    ended_at           INTEGER,
    content_hash       TEXT    NOT NULL,
    error_class        TEXT,
    latency_ms         REAL,
    dead_letter_reason TEXT,
    task_json          TEXT    NOT NULL,
    result_json        TEXT,
    error_json         TEXT,
    history_json       TEXT    NOT NULL DEFAULT '[]'
);
-- rowid order inside each run: run exports and summaries need no sort.
CREATE INDEX tasks_run ON tasks (run_id);
-- Unfinished tasks only, in submission order: what a restarting runner scans.
CREATE INDEX tasks_unfinished ON tasks (seq) WHERE state IN ('queued', 'running');

CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,
    task_id TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    epoch   INTEGER NOT NULL,
    detail  TEXT
);
CREATE INDEX events_task ON events (task_id);

CREATE TABLE control (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    paused     INTEGER NOT NULL DEFAULT 0,
    cancel_seq INTEGER NOT NULL DEFAULT 0
);
INSERT INTO control (id) VALUES (0);
CREATE TABLE paused_runs (run_id TEXT PRIMARY KEY) WITHOUT ROWID;

CREATE TABLE breakers (
    deployment    TEXT PRIMARY KEY,
    snapshot_json TEXT NOT NULL
) WITHOUT ROWID;
";

/// Version 2: limits set at run time (`taskexec limits set`), one JSON object per deployment;
/// a task's `failFast` as a column (recovery builds deliveries from columns only).
const SCHEMA_V2: &str = "
ALTER TABLE tasks ADD COLUMN fail_fast INTEGER NOT NULL DEFAULT 0;
CREATE TABLE limit_overrides (
    deployment  TEXT PRIMARY KEY,
    limits_json TEXT NOT NULL
) WITHOUT ROWID;
";

/// Open the read-write connection, creating the file and the schema if missing.
pub(crate) fn open_writer(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(sql)?;
    configure(&conn)?;
    // WAL is a property of the file: set once, kept by every later connection.
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Open a read-only connection to a file [`open_writer`] has prepared.
pub(crate) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(sql)?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    // With WAL, NORMAL syncs at checkpoints only: a commit survives a killed process (not a
    // power cut), which is the durability the runner promises.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Bring the schema to [`SCHEMA_VERSION`]. Runs under the write lock, so two processes opening
/// a new file at once create the schema once.
fn migrate(conn: &Connection) -> StoreResult<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(sql)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(SqliteStoreError::SchemaTooNew { found, supported: SCHEMA_VERSION }.into());
    }
    // Each step brings a file of the version before it one version up; a new file takes them all.
    for (version, step) in [(1, SCHEMA_V1), (2, SCHEMA_V2)] {
        if found < version {
            tx.execute_batch(step).map_err(sql)?;
        }
    }
    if found < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql)?;
    }
    tx.commit().map_err(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_schema_once_and_sets_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open_writer(&path).unwrap());
        let conn = open_writer(&path).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!((version, mode.as_str()), (SCHEMA_VERSION, "wal"));
        let rows: i64 = conn.query_row("SELECT count(*) FROM control", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn a_version_1_file_is_brought_to_version_2_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute("UPDATE control SET paused = 1", []).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let conn = open_writer(&path).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        let paused: bool = conn.query_row("SELECT paused FROM control", [], |r| r.get(0)).unwrap();
        let overrides: i64 = conn.query_row("SELECT count(*) FROM limit_overrides", [], |r| r.get(0)).unwrap();
        assert_eq!((version, paused, overrides), (2, true, 0));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        open_writer(&path).unwrap().pragma_update(None, "user_version", 7).unwrap();
        let err = open_writer(&path).unwrap_err();
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("version 7 is newer"), "{cause}");
    }
}
