//! Finish cases: each [`Outcome`] and the fencing that keeps stale attempts from writing.

use super::{
    Store, T0, attempt_record, claimed, completed, error, failed, finish_of, get, kinds, result, submit_new, task,
};
use crate::error::ErrorClass;
use crate::ports::{FinishRequest, Outcome, WriteOutcome};
use crate::task::TaskState;

/// Completed: result, end time, the request's counters and history entry; lease cleared.
pub async fn finish_completed_records_result<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0 + 10).await;
    let mut request = finish_of(&running, completed(42.0), T0 + 50);
    request.throttles = 2;

    assert_eq!(store.finish(request).await.unwrap(), WriteOutcome::Applied);

    let done = get(&store, "t1").await;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.result, Some(result(42.0)));
    assert_eq!((done.ended_at, done.lease.clone()), (Some(T0 + 50), None));
    assert_eq!((done.epoch, done.attempt, done.throttles), (1, 1, 2));
    assert_eq!(done.history, [attempt_record(1, 1)]);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "completed"]);
}

/// Retry: queued again with the error and the next attempt time; lease cleared, not ended.
pub async fn finish_retry_schedules_next_attempt<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    let retry = Outcome::Retry { error: error(ErrorClass::Transient), next_attempt_at: T0 + 2_000 };

    assert_eq!(store.finish(finish_of(&running, retry, T0 + 20)).await.unwrap(), WriteOutcome::Applied);

    let waiting = get(&store, "t1").await;
    assert_eq!(waiting.state, TaskState::Queued);
    assert_eq!(waiting.error, Some(error(ErrorClass::Transient)));
    assert_eq!(waiting.next_attempt_at, Some(T0 + 2_000));
    assert_eq!((waiting.lease.clone(), waiting.ended_at), (None, None));
    assert_eq!((waiting.epoch, waiting.attempt), (1, 1));
    assert_eq!(waiting.history, [attempt_record(1, 1)]);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "retryScheduled"]);
}

/// Failed without a reason: failed, ended, error kept, not dead-lettered.
pub async fn finish_failed_records_error<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;

    let applied = store.finish(finish_of(&running, failed(ErrorClass::Permanent), T0 + 30)).await.unwrap();

    assert_eq!(applied, WriteOutcome::Applied);
    let done = get(&store, "t1").await;
    assert_eq!((done.state, done.ended_at, done.lease.clone()), (TaskState::Failed, Some(T0 + 30), None));
    assert_eq!(done.error, Some(error(ErrorClass::Permanent)));
    assert_eq!(done.dead_letter_reason, None);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "failed"]);
}

/// Failed with a dead-letter reason: the reason is stored and a `deadLettered` event follows.
pub async fn finish_failed_with_reason_dead_letters<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    let outcome =
        Outcome::Failed { error: error(ErrorClass::Transient), dead_letter_reason: Some("attempts exhausted".into()) };

    assert_eq!(store.finish(finish_of(&running, outcome, T0 + 30)).await.unwrap(), WriteOutcome::Applied);

    let done = get(&store, "t1").await;
    assert_eq!((done.state, done.ended_at), (TaskState::Failed, Some(T0 + 30)));
    assert_eq!(done.error, Some(error(ErrorClass::Transient)));
    assert_eq!(done.dead_letter_reason.as_deref(), Some("attempts exhausted"));
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "failed", "deadLettered"]);
}

/// Released: queued, no lease, no retry time, the counters the request gives back.
pub async fn finish_released_requeues_without_outcome<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    let mut request = finish_of(&running, Outcome::Released, T0 + 5);
    request.attempt = 0;
    request.record = None;

    assert_eq!(store.finish(request).await.unwrap(), WriteOutcome::Applied);

    let queued = get(&store, "t1").await;
    assert_eq!(queued.state, TaskState::Queued);
    assert_eq!((queued.lease.clone(), queued.next_attempt_at, queued.ended_at), (None, None, None));
    assert_eq!((queued.epoch, queued.attempt), (1, 0));
    assert!(queued.history.is_empty());
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "released"]);
}

/// Every outcome written with an epoch other than the claim's is rejected and changes nothing.
pub async fn finish_with_stale_epoch_changes_nothing<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    let outcomes = [
        completed(1.0),
        Outcome::Retry { error: error(ErrorClass::Transient), next_attempt_at: T0 + 10 },
        failed(ErrorClass::Permanent),
        Outcome::Released,
    ];
    for outcome in outcomes {
        for epoch in [0, 2] {
            let request = FinishRequest { epoch, ..finish_of(&running, outcome.clone(), T0 + 5) };
            assert_eq!(store.finish(request).await.unwrap(), WriteOutcome::Stale, "{outcome:?} at epoch {epoch}");
        }
    }
    assert_eq!(get(&store, "t1").await, running);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed"]);
}

/// A cancelled task keeps its cancellation when the attempt that was running reports.
pub async fn finish_after_cancel_is_stale<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    store.cancel("t1", T0 + 1).await.unwrap();
    let cancelled = get(&store, "t1").await;

    let late = store.finish(finish_of(&running, completed(3.0), T0 + 2)).await.unwrap();

    assert_eq!(late, WriteOutcome::Stale);
    assert_eq!(get(&store, "t1").await, cancelled);
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert_eq!(cancelled.result, None);
}

/// After a completion, any further finish with the same epoch is stale: no task has two
/// recorded completions.
pub async fn second_finish_is_stale<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    assert_eq!(store.finish(finish_of(&running, completed(1.0), T0 + 1)).await.unwrap(), WriteOutcome::Applied);
    let done = get(&store, "t1").await;

    for outcome in [completed(2.0), failed(ErrorClass::Transient), Outcome::Released] {
        let again = store.finish(finish_of(&running, outcome, T0 + 2)).await.unwrap();
        assert_eq!(again, WriteOutcome::Stale);
    }
    assert_eq!(get(&store, "t1").await, done);
    let completions = kinds(&store, "t1").await.into_iter().filter(|k| k == "completed").count();
    assert_eq!(completions, 1);
}

/// Fenced writes about an id the store does not know are stale (there is no epoch to match).
pub async fn fenced_writes_to_unknown_task_are_stale<S: Store>(store: S) {
    let ghost = {
        let mut record = task("ghost", "r1");
        record.state = TaskState::Running;
        record.epoch = 1;
        record.attempt = 1;
        record
    };
    assert_eq!(store.renew_lease("ghost", 1, T0 + 10).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(store.finish(finish_of(&ghost, completed(1.0), T0)).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(store.redrive("ghost", T0).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(store.get("ghost").await.unwrap(), None);
}
