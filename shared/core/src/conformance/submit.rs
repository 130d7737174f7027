//! Submission cases: idempotency by id and content hash, batches, the `submitted` event.

use super::{Store, T0, claimed, get, kinds, submit_new, task};
use crate::ports::SubmitOutcome;
use crate::task::{TaskPriority, TaskState};

/// A new task is stored as given (the whole record round-trips) with one `submitted` event.
pub async fn submit_creates_queued_task<S: Store>(store: S) {
    let mut record = task("t1", "r1");
    record.task.priority = TaskPriority::High;
    record.task.timeout = Some(5_000);
    record.task.deadline = Some(60_000);
    record.task.parameters.system = Some("be brief".into());
    record.task.parameters.temperature = Some(0.7);
    record.task.metadata.insert("suite".into(), serde_json::json!({"case": 3, "tags": ["a"]}));
    let record = crate::task::TaskRecord::new(record.task, T0);

    assert_eq!(store.submit(vec![record.clone()]).await.unwrap(), [SubmitOutcome::Created]);

    assert_eq!(get(&store, "t1").await, record);
    let events = store.events("t1").await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].task_id.as_str(), events[0].kind.as_str()), ("t1", "submitted"));
    assert_eq!((events[0].at, events[0].epoch), (T0, 0));
}

/// The same id with the same content is a duplicate reporting the current state; the stored
/// record and the audit trail do not change.
pub async fn submit_same_content_is_duplicate_and_changes_nothing<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0 + 1).await;

    let mut again = task("t1", "r1");
    again.submitted_at = T0 + 50;
    let out = store.submit(vec![again]).await.unwrap();

    assert_eq!(out, [SubmitOutcome::Duplicate(TaskState::Running)]);
    assert_eq!(get(&store, "t1").await, running);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed"]);
}

/// The same id with different content is a conflict; the stored task is untouched.
pub async fn submit_different_content_is_conflict<S: Store>(store: S) {
    let original = task("t1", "r1");
    submit_new(&store, vec![original.clone()]).await;
    let mut changed = task("t1", "r1");
    changed.task.prompt.push_str(" (edited)");
    let changed = crate::task::TaskRecord::new(changed.task, T0 + 5);

    assert_eq!(store.submit(vec![changed]).await.unwrap(), [SubmitOutcome::Conflict]);
    assert_eq!(get(&store, "t1").await, original);
    assert_eq!(kinds(&store, "t1").await, ["submitted"]);
}

/// A batch answers one outcome per record, in order, including repeats inside the batch.
pub async fn submit_batch_keeps_order_of_mixed_outcomes<S: Store>(store: S) {
    submit_new(&store, vec![task("a", "r1")]).await;
    let mut conflicting = task("a", "r1");
    conflicting.task.prompt = "another prompt".into();
    let conflicting = crate::task::TaskRecord::new(conflicting.task, T0);

    let batch = vec![task("b", "r1"), task("a", "r1"), conflicting, task("c", "r1"), task("b", "r1")];
    let out = store.submit(batch).await.unwrap();

    use SubmitOutcome::{Conflict, Created, Duplicate};
    let queued = Duplicate(TaskState::Queued);
    assert_eq!(out, [Created, queued.clone(), Conflict, Created, queued]);
    for id in ["a", "b", "c"] {
        assert_eq!(kinds(&store, id).await, ["submitted"], "task {id}");
    }
    assert_eq!(get(&store, "a").await.task.prompt, "prompt of a");
}
