//! Read-side cases: the audit trail, pending work, run summaries and exports, control state and
//! breaker snapshots.

use std::collections::{BTreeMap, BTreeSet};

use super::{Store, T0, claimed, completed, error, failed, finish_of, get, submit_new, task, task_for};
use crate::breaker::{BreakerSnapshot, BreakerState};
use crate::error::ErrorClass;
use crate::ports::{AuditEvent, ControlState, Delivery, GroupSummary, LimitOverride, Outcome, PauseScope, Route};
use crate::task::{TaskPriority, TaskRecord};
use crate::time::Millis;

/// Events come back oldest first, and only the asked task's.
pub async fn events_are_per_task_in_order<S: Store>(store: S) {
    submit_new(&store, vec![task("a", "r1"), task("b", "r1")]).await;
    let deferred = |id: &str, at: Millis, detail: &str| AuditEvent {
        task_id: id.into(),
        at,
        kind: "deferred".into(),
        epoch: 0,
        detail: Some(detail.into()),
    };
    store.note(deferred("a", T0 + 1, "paused")).await.unwrap();
    store.note(deferred("b", T0 + 2, "breaker open")).await.unwrap();
    store.note(deferred("a", T0 + 3, "limit reached")).await.unwrap();

    let a = store.events("a").await.unwrap();
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a[0].kind, "submitted");
    assert_eq!(a[1..], [deferred("a", T0 + 1, "paused"), deferred("a", T0 + 3, "limit reached")]);
    let b = store.events("b").await.unwrap();
    assert_eq!(b.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["submitted", "deferred"]);
    assert!(b.iter().all(|e| e.task_id == "b"));
    assert!(store.events("nope").await.unwrap().is_empty());
}

/// For a store without [`Capabilities::FULL_AUDIT_TRAIL`](super::Capabilities): notes are
/// accepted but need not come back; transition events still come back oldest first, with their
/// time and epoch, and only the asked task's.
pub async fn transition_events_are_per_task_in_order<S: Store>(store: S) {
    submit_new(&store, vec![task("a", "r1"), task("b", "r1")]).await;
    let deferred = AuditEvent { task_id: "a".into(), at: T0 + 1, kind: "deferred".into(), epoch: 0, detail: None };
    store.note(deferred).await.unwrap();
    let running = claimed(&store, "a", T0 + 2).await;
    store.finish(finish_of(&running, completed(1.0), T0 + 3)).await.unwrap();
    store.cancel("b", T0 + 4).await.unwrap();

    let a = store.events("a").await.unwrap();
    let a: Vec<_> = a.into_iter().filter(|e| e.kind != "deferred").map(|e| (e.kind, e.at, e.epoch)).collect();
    assert_eq!(a, [("submitted".into(), T0, 0), ("claimed".into(), T0 + 2, 1), ("completed".into(), T0 + 3, 1)]);
    let b = store.events("b").await.unwrap();
    assert_eq!(b.iter().map(|e| (e.kind.as_str(), e.epoch)).collect::<Vec<_>>(), [("submitted", 0), ("cancelled", 1)]);
    assert!(b.iter().all(|e| e.task_id == "b"));
    assert!(store.events("nope").await.unwrap().is_empty());
}

/// Pending lists queued and running tasks in submission order, due at their retry time or at
/// submission, each with its priority and fail-fast choice.
pub async fn pending_lists_unfinished_tasks<S: Store>(store: S) {
    let mut high = task_for("a", "r1", "p1", "m1", T0);
    high.task.priority = TaskPriority::High;
    high.task.fail_fast = true;
    let high = TaskRecord::new(high.task, T0);
    submit_new(&store, vec![high]).await;
    let later: Vec<_> = ["b", "c", "d", "e"].iter().map(|id| task_for(id, "r2", "p2", "m2", T0 + 10)).collect();
    submit_new(&store, later).await;
    claimed(&store, "b", T0 + 20).await;
    let c = claimed(&store, "c", T0 + 20).await;
    let retry = Outcome::Retry { error: error(ErrorClass::Transient), next_attempt_at: T0 + 500 };
    store.finish(finish_of(&c, retry, T0 + 30)).await.unwrap();
    let d = claimed(&store, "d", T0 + 20).await;
    store.finish(finish_of(&d, completed(1.0), T0 + 30)).await.unwrap();
    store.cancel("e", T0 + 30).await.unwrap();

    let (pending, next) = store.pending(0, 100).await.unwrap();
    assert_eq!(next, None, "one page holds everything");
    // Pages of two: the same tasks in the same order, never more than two at a time.
    let (mut paged, mut cursor) = (Vec::new(), Some(0));
    while let Some(at) = cursor {
        let (page, next) = store.pending(at, 2).await.unwrap();
        assert!(page.len() <= 2);
        paged.extend(page);
        cursor = next;
    }
    assert_eq!(paged, pending);

    let entry = |id: &str, priority, run: &str, p: &str, m: &str, ready_at| {
        let route = Route { provider_id: p.into(), model_id: m.into(), run_id: run.into() };
        Delivery::new(id, std::sync::Arc::new(route), priority, ready_at)
    };
    let fail_fast = |mut d: Delivery| {
        d.fail_fast = true;
        d
    };
    assert_eq!(
        pending,
        [
            fail_fast(entry("a", TaskPriority::High, "r1", "p1", "m1", T0)),
            entry("b", TaskPriority::Normal, "r2", "p2", "m2", T0 + 10),
            entry("c", TaskPriority::Normal, "r2", "p2", "m2", T0 + 500),
        ]
    );
}

/// Build the summary scenario: run `r1` over three groups, plus one task of run `r2`.
async fn summary_scenario<S: Store>(store: &S) {
    let records = vec![
        task_for("ok1", "r1", "p1", "m1", T0),
        task_for("ok2", "r1", "p1", "m1", T0),
        task_for("dead", "r1", "p1", "m1", T0),
        task_for("perm", "r1", "p1", "m1", T0),
        task_for("gone", "r1", "p1", "m1", T0),
        task_for("wait", "r1", "p1", "m1", T0),
        task_for("busy", "r1", "p1", "m1", T0),
        task_for("solo", "r1", "p0", "m9", T0),
        task_for("other", "r1", "p1", "m2", T0),
        task_for("r2task", "r2", "p1", "m1", T0),
    ];
    submit_new(store, records).await;
    let finish = |id: &'static str, start: Millis, outcome: Outcome, attempt: u32, throttles: u32| async move {
        let running = claimed(store, id, start).await;
        let mut request = finish_of(&running, outcome, start + 100);
        (request.attempt, request.throttles) = (attempt, throttles);
        store.finish(request).await.unwrap();
    };
    finish("ok1", T0 + 5, completed(200.0), 2, 1).await;
    finish("ok2", T0 + 10, completed(100.0), 1, 0).await;
    let dead = Outcome::Failed { error: error(ErrorClass::Transient), dead_letter_reason: Some("exhausted".into()) };
    finish("dead", T0 + 20, dead, 3, 0).await;
    finish("perm", T0 + 30, failed(ErrorClass::Permanent), 1, 0).await;
    finish("other", T0 + 40, completed(7.0), 1, 5).await;
    store.cancel("gone", T0 + 900).await.unwrap();
    claimed(store, "busy", T0 + 50).await;
}

/// The expected figures of `p1`/`m1` in run `r1` of [`summary_scenario`].
fn p1_m1_of_r1() -> GroupSummary {
    GroupSummary {
        provider_id: "p1".into(),
        model_id: "m1".into(),
        queued: 1,
        running: 1,
        completed: 2,
        failed_by_class: BTreeMap::from([("permanent".into(), 1), ("transient".into(), 1)]),
        cancelled: 1,
        dead_lettered: 1,
        retries: 3,
        throttles: 1,
        latencies_ms: vec![100.0, 200.0],
        first_start: Some(T0 + 5),
        last_end: Some(T0 + 900),
    }
}

/// Sort latencies so the comparison does not depend on the order a store lists them in.
fn sorted(mut groups: Vec<GroupSummary>) -> Vec<GroupSummary> {
    for g in &mut groups {
        g.latencies_ms.sort_by(f64::total_cmp);
    }
    groups
}

/// A run's summary: per group (ordered by provider, model) counts per state, failures by class,
/// dead letters, retries, throttles, latencies and the time span.
pub async fn summary_counts_per_group<S: Store>(store: S) {
    summary_scenario(&store).await;

    let groups = sorted(store.summary(Some("r1")).await.unwrap());

    let solo = GroupSummary { provider_id: "p0".into(), model_id: "m9".into(), queued: 1, ..GroupSummary::default() };
    let other = GroupSummary {
        provider_id: "p1".into(),
        model_id: "m2".into(),
        completed: 1,
        throttles: 5,
        latencies_ms: vec![7.0],
        first_start: Some(T0 + 40),
        last_end: Some(T0 + 140),
        ..GroupSummary::default()
    };
    assert_eq!(groups, [solo, p1_m1_of_r1(), other]);
    assert!(store.summary(Some("nope")).await.unwrap().is_empty());
}

/// Without a run, the summary covers every run.
pub async fn summary_without_run_covers_all_runs<S: Store>(store: S) {
    summary_scenario(&store).await;

    let groups = sorted(store.summary(None).await.unwrap());

    let keys: Vec<_> = groups.iter().map(|g| (g.provider_id.as_str(), g.model_id.as_str())).collect();
    assert_eq!(keys, [("p0", "m9"), ("p1", "m1"), ("p1", "m2")]);
    assert_eq!(groups[1], GroupSummary { queued: 2, ..p1_m1_of_r1() });
}

/// A run's records come back whole, in submission order, and only that run's.
pub async fn run_tasks_in_submission_order<S: Store>(store: S) {
    submit_new(&store, vec![task("c", "r1"), task("a", "r1")]).await;
    submit_new(&store, vec![task("b", "r2")]).await;
    submit_new(&store, vec![task_for("d", "r1", "p", "m", T0 + 1)]).await;
    claimed(&store, "a", T0 + 2).await;

    let records = store.run_tasks("r1").await.unwrap();

    let ids: Vec<_> = records.iter().map(|r| r.task.id.as_str()).collect();
    assert_eq!(ids, ["c", "a", "d"]);
    assert_eq!(records[1], get(&store, "a").await);
    assert!(store.run_tasks("nope").await.unwrap().is_empty());
}

/// Control starts unpaused; pauses and resumes, global and per run, are reflected as set.
pub async fn control_pause_and_resume<S: Store>(store: S) {
    assert_eq!(store.control().await.unwrap(), ControlState::default());

    store.set_paused(PauseScope::Global, true).await.unwrap();
    store.set_paused(PauseScope::Global, true).await.unwrap();
    store.set_paused(PauseScope::Run("r1".into()), true).await.unwrap();
    store.set_paused(PauseScope::Run("r2".into()), true).await.unwrap();
    let paused = store.control().await.unwrap();
    assert!(paused.paused);
    assert_eq!(paused.paused_runs, BTreeSet::from(["r1".to_owned(), "r2".to_owned()]));

    store.set_paused(PauseScope::Run("r1".into()), false).await.unwrap();
    store.set_paused(PauseScope::Global, false).await.unwrap();
    let resumed = store.control().await.unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.paused_runs, BTreeSet::from(["r2".to_owned()]));
    assert!(resumed.is_paused("r2") && !resumed.is_paused("r1"));
}

/// Limits set at run time round-trip per deployment, a set replaces the whole override, an
/// empty or removed override leaves no trace, and pause flags are untouched.
pub async fn control_limits_set_replace_and_remove<S: Store>(store: S) {
    let a = LimitOverride { rpm: Some(60), tpm: Some(90_000), ..LimitOverride::default() };
    let b = LimitOverride {
        concurrency: Some(4),
        input_tpm: Some(1_000),
        output_tpm: Some(500),
        rpd: Some(10_000),
        ..LimitOverride::default()
    };
    store.set_paused(PauseScope::Run("r1".into()), true).await.unwrap();
    store.set_limits("d1", Some(a)).await.unwrap();
    store.set_limits("d2", Some(b)).await.unwrap();
    let control = store.control().await.unwrap();
    assert_eq!(control.limits, BTreeMap::from([("d1".to_owned(), a), ("d2".to_owned(), b)]));
    assert!(control.is_paused("r1"));

    let replaced = LimitOverride { concurrency: Some(2), ..LimitOverride::default() };
    store.set_limits("d1", Some(replaced)).await.unwrap();
    store.set_limits("d2", None).await.unwrap();
    store.set_limits("d3", Some(LimitOverride::default())).await.unwrap();
    store.set_limits("never-set", None).await.unwrap();
    let control = store.control().await.unwrap();
    assert_eq!(control.limits, BTreeMap::from([("d1".to_owned(), replaced)]));
    assert!(control.is_paused("r1"));
}

/// Breaker snapshots round-trip per deployment; a save replaces the previous one.
pub async fn breaker_snapshot_round_trips<S: Store>(store: S) {
    assert_eq!(store.load("d1").await.unwrap(), None);
    let open = BreakerSnapshot { state: BreakerState::Open, opens: 2, open_until: Some(T0 + 10_000), changed_at: T0 };
    store.save("d1", open.clone()).await.unwrap();
    assert_eq!(store.load("d1").await.unwrap(), Some(open));

    let closed = BreakerSnapshot { state: BreakerState::Closed, opens: 0, open_until: None, changed_at: T0 + 20_000 };
    store.save("d1", closed.clone()).await.unwrap();
    assert_eq!(store.load("d1").await.unwrap(), Some(closed));
    assert_eq!(store.load("d2").await.unwrap(), None);
}
