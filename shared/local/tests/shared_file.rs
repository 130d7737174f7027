//! Several stores on one file, as the runner and `taskexec status|cancel|pause` in other
//! processes use it: each sees the others' commits, and data survives reopening.

use taskexec_core::ports::{CancelOutcome, ClaimOutcome, ClaimRequest, ControlStore, PauseScope, TaskStore};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_local::SqliteStore;

fn record(id: &str) -> TaskRecord {
    let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
        "id": id, "providerId": "sim", "modelId": "m", "prompt": "hi", "runId": "r1"
    }))
    .unwrap();
    TaskRecord::new(task, 1_000)
}

fn claim(id: &str, now: i64) -> ClaimRequest {
    ClaimRequest { task_id: id.into(), owner: "runner".into(), now, lease_until: now + 30_000 }
}

#[tokio::test]
async fn a_second_handle_pauses_and_cancels_what_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let runner = SqliteStore::open(&path).unwrap();
    let cli = SqliteStore::open(&path).unwrap();
    runner.submit(vec![record("a"), record("b")]).await.unwrap();

    cli.set_paused(PauseScope::Run("r1".into()), true).await.unwrap();
    assert_eq!(runner.claim(claim("a", 2_000)).await.unwrap(), ClaimOutcome::Paused);
    cli.set_paused(PauseScope::Run("r1".into()), false).await.unwrap();
    assert!(matches!(runner.claim(claim("a", 2_001)).await.unwrap(), ClaimOutcome::Claimed(_)));

    assert_eq!(cli.cancel("a", 2_002).await.unwrap(), CancelOutcome::Cancelled { was: TaskState::Running });
    assert_eq!(runner.control().await.unwrap().cancel_seq, 1);
    assert_eq!(runner.get("a").await.unwrap().unwrap().state, TaskState::Cancelled);
}

#[tokio::test]
async fn committed_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).unwrap();
    store.submit(vec![record("a")]).await.unwrap();
    let ClaimOutcome::Claimed(claimed) = store.claim(claim("a", 2_000)).await.unwrap() else { panic!("claim") };
    drop(store);

    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.get("a").await.unwrap(), Some(*claimed));
    assert_eq!(reopened.release_all_leases(3_000).await.unwrap(), 1);
    assert_eq!(reopened.path(), path);
}

/// The deliveries recovery builds from the file (columns only, no task JSON) keep a task's
/// fail-fast choice, also after reopening.
#[tokio::test]
async fn recovered_deliveries_keep_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let mut task = record("fast").task;
    task.fail_fast = true;
    let fast = TaskRecord::new(task, 1_000);
    SqliteStore::open(&path).unwrap().submit(vec![record("waits"), fast]).await.unwrap();
    let (pending, _) = SqliteStore::open(&path).unwrap().pending(0, 10).await.unwrap();
    let flags: Vec<(&str, bool)> = pending.iter().map(|d| (d.task_id.as_str(), d.fail_fast)).collect();
    assert_eq!(flags, [("waits", false), ("fast", true)]);
}
