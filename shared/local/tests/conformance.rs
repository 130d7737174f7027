//! The store conformance suite, run against [`SqliteStore`] on a fresh file per case.

use taskexec_local::SqliteStore;

async fn fresh_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("tasks.db")).expect("open store");
    (store, dir)
}

taskexec_core::conformance_tests!(fresh_store);
