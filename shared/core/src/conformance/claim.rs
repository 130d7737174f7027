//! Claim and lease cases: the outcomes of a claim, reclaiming expired leases, pauses, renewals.

use super::{LEASE_MS, Store, T0, claim_at, claimed, completed, failed, finish_of, get, kinds, submit_new, task};
use crate::error::{ErrorClass, TaskError};
use crate::ports::{ClaimOutcome, ClaimRequest, Outcome, PauseScope, WriteOutcome};
use crate::task::{Lease, TaskState};

/// A queued task is claimed: running, epoch and attempt + 1, lease and first start set,
/// `claimed` event; the returned record is the stored one.
pub async fn claim_takes_queued_task<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;

    let record = claimed(&store, "t1", T0 + 10).await;

    assert_eq!(record.state, TaskState::Running);
    assert_eq!((record.epoch, record.attempt), (1, 1));
    assert_eq!(record.lease, Some(Lease { owner: "w1".into(), until: T0 + 10 + LEASE_MS }));
    assert_eq!(record.started_at, Some(T0 + 10));
    assert_eq!(record.next_attempt_at, None);
    assert_eq!(get(&store, "t1").await, record);
    let events = store.events("t1").await.unwrap();
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed"]);
    assert_eq!((events[1].at, events[1].epoch), (T0 + 10, 1));
}

/// Claiming an unknown id says so.
pub async fn claim_unknown_task_is_not_found<S: Store>(store: S) {
    assert_eq!(store.claim(claim_at("nope", T0)).await.unwrap(), ClaimOutcome::NotFound);
}

/// Completed, failed and cancelled tasks are never claimed again.
pub async fn claim_finished_task_is_terminal<S: Store>(store: S) {
    submit_new(&store, vec![task("done", "r1"), task("bad", "r1"), task("gone", "r1")]).await;
    let done = claimed(&store, "done", T0 + 1).await;
    store.finish(finish_of(&done, completed(5.0), T0 + 2)).await.unwrap();
    let bad = claimed(&store, "bad", T0 + 1).await;
    store.finish(finish_of(&bad, failed(ErrorClass::Permanent), T0 + 2)).await.unwrap();
    store.cancel("gone", T0 + 2).await.unwrap();

    for (id, state) in [("done", TaskState::Completed), ("bad", TaskState::Failed), ("gone", TaskState::Cancelled)] {
        let before = get(&store, id).await;
        assert_eq!(store.claim(claim_at(id, T0 + 3)).await.unwrap(), ClaimOutcome::Terminal(state), "{id}");
        assert_eq!(get(&store, id).await, before, "{id}");
    }
}

/// A scheduled retry is not claimed before `next_attempt_at`, and is claimed from then on.
pub async fn claim_before_retry_is_due_is_not_due<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let first = claimed(&store, "t1", T0).await;
    let retry = Outcome::Retry { error: TaskError::new(ErrorClass::Transient, "reset"), next_attempt_at: T0 + 1_000 };
    assert_eq!(store.finish(finish_of(&first, retry, T0 + 10)).await.unwrap(), WriteOutcome::Applied);
    let waiting = get(&store, "t1").await;

    let early = store.claim(claim_at("t1", T0 + 999)).await.unwrap();

    assert_eq!(early, ClaimOutcome::NotDue { at: T0 + 1_000 });
    assert_eq!(get(&store, "t1").await, waiting);
    let second = claimed(&store, "t1", T0 + 1_000).await;
    assert_eq!((second.epoch, second.attempt, second.next_attempt_at), (2, 2, None));
}

/// A running task whose lease is live is not claimed; nothing changes.
pub async fn claim_with_live_lease_is_held<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let request = ClaimRequest { task_id: "t1".into(), owner: "w1".into(), now: T0, lease_until: T0 + 100 };
    store.claim(request).await.unwrap();
    let running = get(&store, "t1").await;

    let other = ClaimRequest { task_id: "t1".into(), owner: "w2".into(), now: T0 + 99, lease_until: T0 + 200 };
    assert_eq!(store.claim(other).await.unwrap(), ClaimOutcome::LeaseHeld { until: T0 + 100 });
    assert_eq!(get(&store, "t1").await, running);
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed"]);
}

/// A lease with `until <= now` has expired: the task is reclaimed with a new epoch, and the old
/// attempt's writes become stale.
pub async fn claim_after_lease_expiry_reclaims<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let request = ClaimRequest { task_id: "t1".into(), owner: "w1".into(), now: T0, lease_until: T0 + 100 };
    let ClaimOutcome::Claimed(old) = store.claim(request).await.unwrap() else { panic!("first claim") };

    let takeover = ClaimRequest { task_id: "t1".into(), owner: "w2".into(), now: T0 + 100, lease_until: T0 + 500 };
    let ClaimOutcome::Claimed(new) = store.claim(takeover).await.unwrap() else { panic!("reclaim") };

    assert_eq!((new.state, new.epoch, new.attempt), (TaskState::Running, 2, 2));
    assert_eq!(new.lease, Some(Lease { owner: "w2".into(), until: T0 + 500 }));
    assert_eq!(new.started_at, Some(T0));
    assert_eq!(kinds(&store, "t1").await, ["submitted", "claimed", "reclaimed"]);
    assert_eq!(store.finish(finish_of(&old, completed(1.0), T0 + 101)).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(get(&store, "t1").await, *new);
}

/// `started_at` is the first attempt's start and survives later claims.
pub async fn claim_keeps_first_started_at<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let first = claimed(&store, "t1", T0 + 10).await;
    let retry = Outcome::Retry { error: TaskError::new(ErrorClass::Transient, "503"), next_attempt_at: T0 + 100 };
    store.finish(finish_of(&first, retry, T0 + 20)).await.unwrap();

    let second = claimed(&store, "t1", T0 + 100).await;

    assert_eq!(second.started_at, Some(T0 + 10));
    assert_eq!(get(&store, "t1").await.started_at, Some(T0 + 10));
}

/// A global pause stops every claim without changing the task; resume lets claims through.
pub async fn claim_respects_global_pause<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    store.set_paused(PauseScope::Global, true).await.unwrap();
    let queued = get(&store, "t1").await;

    assert_eq!(store.claim(claim_at("t1", T0 + 1)).await.unwrap(), ClaimOutcome::Paused);
    assert_eq!(get(&store, "t1").await, queued);
    assert_eq!(kinds(&store, "t1").await, ["submitted"]);

    store.set_paused(PauseScope::Global, false).await.unwrap();
    assert_eq!(claimed(&store, "t1", T0 + 2).await.epoch, 1);
}

/// A run's pause stops that run's claims only.
pub async fn claim_respects_run_pause<S: Store>(store: S) {
    submit_new(&store, vec![task("a", "r1"), task("b", "r2")]).await;
    store.set_paused(PauseScope::Run("r1".into()), true).await.unwrap();

    assert_eq!(store.claim(claim_at("a", T0 + 1)).await.unwrap(), ClaimOutcome::Paused);
    assert_eq!(get(&store, "a").await.state, TaskState::Queued);
    assert_eq!(claimed(&store, "b", T0 + 1).await.state, TaskState::Running);

    store.set_paused(PauseScope::Run("r1".into()), false).await.unwrap();
    assert_eq!(claimed(&store, "a", T0 + 2).await.state, TaskState::Running);
}

/// A lease is renewed only by the epoch that holds it, and only while the task runs.
pub async fn renew_lease_is_fenced<S: Store>(store: S) {
    submit_new(&store, vec![task("t1", "r1")]).await;
    let running = claimed(&store, "t1", T0).await;

    assert_eq!(store.renew_lease("t1", 1, T0 + 90_000).await.unwrap(), WriteOutcome::Applied);
    assert_eq!(get(&store, "t1").await.lease, Some(Lease { owner: "w1".into(), until: T0 + 90_000 }));
    assert_eq!(store.renew_lease("t1", 0, T0 + 99_000).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(store.renew_lease("t1", 2, T0 + 99_000).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(get(&store, "t1").await.lease.map(|l| l.until), Some(T0 + 90_000));

    store.finish(finish_of(&running, completed(2.0), T0 + 5)).await.unwrap();
    assert_eq!(store.renew_lease("t1", 1, T0 + 99_000).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(get(&store, "t1").await.lease, None);
}
