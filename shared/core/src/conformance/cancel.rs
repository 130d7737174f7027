//! Cancel, redrive and lease-release cases: the transitions a user or a restarting runner makes.

use super::{Store, T0, claimed, completed, error, finish_of, get, kinds, submit_new, task};
use crate::error::ErrorClass;
use crate::ports::{CancelOutcome, ClaimOutcome, Outcome, WriteOutcome};
use crate::task::TaskState;

/// Cancelling a queued task finalises it at once: epoch bumped, class `cancelled`, ended.
pub async fn cancel_queued_task<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;

    let out = store.cancel("t1", T0 + 5).await.unwrap();

    assert_eq!(out, CancelOutcome::Cancelled { was: TaskState::Queued });
    let gone = get(&store, "t1").await;
    assert_eq!((gone.state, gone.epoch, gone.ended_at), (TaskState::Cancelled, 1, Some(T0 + 5)));
    assert_eq!(gone.error.map(|e| e.class), Some(ErrorClass::Cancelled));
    assert_eq!(kinds(&store, "t1").await, ["submitted", "cancelled"]);
    assert_eq!(store.control().await.unwrap().cancel_seq, 1);
}

/// Cancelling a running task bumps the epoch past the attempt's and drops the lease.
pub async fn cancel_running_task<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    claimed(&store, "t1", T0).await;
    let before = store.control().await.unwrap().cancel_seq;

    let out = store.cancel("t1", T0 + 5).await.unwrap();

    assert_eq!(out, CancelOutcome::Cancelled { was: TaskState::Running });
    let gone = get(&store, "t1").await;
    assert_eq!((gone.state, gone.epoch, gone.lease.clone()), (TaskState::Cancelled, 2, None));
    assert_eq!((gone.ended_at, gone.error.map(|e| e.class)), (Some(T0 + 5), Some(ErrorClass::Cancelled)));
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "cancelled"]);
    let events = store.events("t1").await.unwrap();
    assert_eq!(events[2].epoch, 2);
    assert_eq!(store.control().await.unwrap().cancel_seq, before + 1);
}

/// Finished tasks report their state, unknown ids say so, and neither moves `cancel_seq`.
pub async fn cancel_finished_or_unknown_task<S: Store>(store: S) {
    submit_new(&store, vec![task("done", "r1"), task("gone", "r1")]).await;
    let running = claimed(&store, "done", T0).await;
    store.finish(finish_of(&running, completed(1.0), T0 + 1)).await.unwrap();
    store.cancel("gone", T0 + 1).await.unwrap();
    let seq = store.control().await.unwrap().cancel_seq;
    let done = get(&store, "done").await;

    assert_eq!(store.cancel("done", T0 + 2).await.unwrap(), CancelOutcome::AlreadyTerminal(TaskState::Completed));
    assert_eq!(store.cancel("gone", T0 + 2).await.unwrap(), CancelOutcome::AlreadyTerminal(TaskState::Cancelled));
    assert_eq!(store.cancel("nope", T0 + 2).await.unwrap(), CancelOutcome::NotFound);
    assert_eq!(get(&store, "done").await, done);
    assert_eq!(store.control().await.unwrap().cancel_seq, seq);
}

/// Redrive gives a failed task a fresh budget: queued, epoch + 1, counters and reason cleared.
pub async fn redrive_requeues_failed_task<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;
    let outcome = Outcome::Failed { error: error(ErrorClass::Transient), dead_letter_reason: Some("exhausted".into()) };
    let mut request = finish_of(&running, outcome, T0 + 10);
    (request.attempt, request.throttles) = (3, 4);
    store.finish(request).await.unwrap();

    assert_eq!(store.redrive("t1", T0 + 100).await.unwrap(), WriteOutcome::Applied);

    let again = get(&store, "t1").await;
    assert_eq!(again.state, TaskState::Queued);
    assert_eq!((again.epoch, again.attempt, again.throttles), (2, 0, 0));
    assert_eq!((again.dead_letter_reason.clone(), again.ended_at, again.lease.clone()), (None, None, None));
    assert_eq!(kinds(&store, "t1").await.last().map(String::as_str), Some("redriven"));
    let next = claimed(&store, "t1", T0 + 101).await;
    assert_eq!((next.epoch, next.attempt), (3, 1));
}

/// Only failed tasks can be redriven; other states are left alone.
pub async fn redrive_other_states_is_stale<S: Store>(store: S) {
    submit_new(&store, vec![task("q", "r1"), task("run", "r1"), task("done", "r1"), task("gone", "r1")]).await;
    claimed(&store, "run", T0).await;
    let done = claimed(&store, "done", T0).await;
    store.finish(finish_of(&done, completed(1.0), T0 + 1)).await.unwrap();
    store.cancel("gone", T0 + 1).await.unwrap();

    for id in ["q", "run", "done", "gone"] {
        let before = get(&store, id).await;
        assert_eq!(store.redrive(id, T0 + 2).await.unwrap(), WriteOutcome::Stale, "{id}");
        assert_eq!(get(&store, id).await, before, "{id}");
    }
}

/// Releasing all leases requeues every running task (and only those) without touching counters;
/// the released attempts can no longer write.
pub async fn release_all_leases_requeues_running_tasks<S: Store>(store: S) {
    let ids = ["a", "b", "c", "d"];
    submit_new(&store, ids.iter().map(|id| task(id, "r1")).collect()).await;
    let a = claimed(&store, "a", T0).await;
    claimed(&store, "b", T0).await;
    let d = claimed(&store, "d", T0).await;
    store.finish(finish_of(&d, completed(1.0), T0 + 1)).await.unwrap();
    let (c_before, d_before) = (get(&store, "c").await, get(&store, "d").await);

    assert_eq!(store.release_all_leases(T0 + 50).await.unwrap(), 2);

    for id in ["a", "b"] {
        let released = get(&store, id).await;
        assert_eq!((released.state, released.lease.clone(), released.next_attempt_at), (TaskState::Queued, None, None));
        assert_eq!((released.epoch, released.attempt), (1, 1), "{id}");
        assert_eq!(kinds(&store, id).await, ["submitted", "claimed", "released"]);
    }
    assert_eq!((get(&store, "c").await, get(&store, "d").await), (c_before, d_before));
    assert_eq!(store.finish(finish_of(&a, completed(1.0), T0 + 51)).await.unwrap(), WriteOutcome::Stale);
    assert!(matches!(store.claim(super::claim_at("a", T0 + 52)).await.unwrap(), ClaimOutcome::Claimed(_)));
    assert_eq!(store.release_all_leases(T0 + 60).await.unwrap(), 1);
}
