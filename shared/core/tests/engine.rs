//! Engine behaviour with in-memory ports, a fake clock and a scripted provider: no sleeps
//! (tokio's paused clock drives timeouts and heartbeats).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Scripted, Step, rate_limited, transient};

use taskexec_core::breaker::{BreakerPolicy, BreakerState};
use taskexec_core::engine::{Decision, Engine, EngineConfig, Limits, Ports};
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::memory::{Counters, CountingSink, MemoryLimiter, MemoryStore};
use taskexec_core::ports::{
    BreakerStore, ClaimOutcome, ClaimRequest, ControlStore, DeferReason, Delivery, LimitKey, LimiterStore as _,
    PauseScope, Route, TaskStore,
};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::{Clock, FakeClock, duration_ms};

type TestEngine = Engine<MemoryStore, MemoryStore, MemoryLimiter, Arc<CountingSink>, Arc<Scripted>, FakeClock>;

struct Harness {
    engine: Arc<TestEngine>,
    provider: Arc<Scripted>,
    clock: FakeClock,
    sink: Arc<CountingSink>,
}

fn harness(config: EngineConfig) -> Harness {
    let provider = Arc::new(Scripted::default());
    let clock = FakeClock::at(1_000_000);
    let sink = Arc::new(CountingSink::default());
    let ports = Ports {
        store: MemoryStore::default(),
        breakers: MemoryStore::default(),
        limiter: MemoryLimiter::default(),
        metrics: sink.clone(),
        provider: provider.clone(),
        clock: clock.clone(),
    };
    Harness { engine: Arc::new(Engine::new(ports, config)), provider, clock, sink }
}

fn config() -> EngineConfig {
    EngineConfig {
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1_000, throttle_budget: 2 },
        breaker: BreakerPolicy {
            consecutive_failures: 3,
            min_calls: 100,
            cooldown_ms: 5_000,
            half_open_probes: 1,
            ..BreakerPolicy::default()
        },
        seed: Some(42),
        ..EngineConfig::default()
    }
}

impl Harness {
    fn store(&self) -> &MemoryStore {
        &self.engine.ports().store
    }

    fn breakers(&self) -> &MemoryStore {
        &self.engine.ports().breakers
    }

    async fn submit(&self, id: &str, extra: &str) -> Delivery {
        let task: BenchmarkTask = serde_json::from_str(&format!(
            r#"{{"id":"{id}","providerId":"dep","modelId":"m","prompt":"p","runId":"run"{extra}}}"#
        ))
        .unwrap();
        self.store().submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
        Delivery::new(
            id,
            std::sync::Arc::new(Route { provider_id: "dep".into(), model_id: "m".into(), run_id: "run".into() }),
            Default::default(),
            0,
        )
    }

    async fn record(&self, id: &str) -> TaskRecord {
        self.store().get(id).await.unwrap().unwrap()
    }

    async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.store().events(id).await.unwrap().into_iter().map(|e| e.kind).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn success_completes_with_result_and_timings() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    let r = h.record("t1").await;
    assert_eq!(r.state, TaskState::Completed);
    assert_eq!((r.attempt, r.throttles, r.epoch), (1, 0, 1));
    let result = r.result.unwrap();
    assert_eq!(result.text, "answer to t1");
    assert_eq!(result.deployment, "dep");
    assert_eq!(result.attempts.len(), 1);
    assert_eq!(result.attempts[0].queue_wait_ms, 1_000_000, "queue wait counted from ready_at, apart from latency");
    assert_eq!(result.latency_ms, 10.0);
    assert_eq!(h.event_kinds("t1").await, ["submitted", "claimed", "completed"]);
    // A duplicate delivery of a finished task is acknowledged without a call.
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limits_raise_throttles_only_and_honour_retry_after() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [rate_limited(5_000)]);
    assert_eq!(h.engine.process(&d).await, Decision::Retry { delay: Duration::from_millis(5_000) });
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Queued, 0, 1));
    assert_eq!(r.next_attempt_at, Some(1_005_000));
    assert_eq!(r.error.unwrap().class, ErrorClass::RateLimited);
    // Not due yet: deferred, no call, nothing counted.
    assert!(matches!(h.engine.process(&d).await, Decision::Defer { reason: DeferReason::NotDue, .. }));
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
    h.clock.advance(Duration::from_secs(5));
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Completed, 1, 1));
    assert_eq!(r.result.unwrap().attempts.len(), 2, "the 429 attempt keeps its own timing entry");
}

#[tokio::test(start_paused = true)]
async fn throttle_budget_exhaustion_dead_letters() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [rate_limited(10), rate_limited(10), rate_limited(10)]);
    for _ in 0..2 {
        assert!(matches!(h.engine.process(&d).await, Decision::Retry { .. }));
        h.clock.advance(Duration::from_secs(2));
    }
    let Decision::DeadLetter { reason } = h.engine.process(&d).await else { panic!("expected dead letter") };
    assert!(reason.starts_with("throttle budget exhausted: 3 rate-limit answers"), "{reason}");
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Failed, 0, 3));
    assert_eq!(r.error.unwrap().class, ErrorClass::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_with_backoff_then_dead_letter_with_reason() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [transient(), transient(), transient()]);
    for n in 1..=2u32 {
        let Decision::Retry { delay } = h.engine.process(&d).await else { panic!("expected retry") };
        assert!(delay <= Duration::from_millis(100 * 2u64.pow(n - 1)), "full jitter under the ceiling");
        assert_eq!(h.record("t1").await.attempt, n);
        h.clock.advance(Duration::from_secs(1));
    }
    let Decision::DeadLetter { reason } = h.engine.process(&d).await else { panic!("expected dead letter") };
    assert_eq!(reason, "attempts exhausted: 3 of 3 used; last error: unavailable");
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt), (TaskState::Failed, 3));
    assert_eq!(r.dead_letter_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(r.history.len(), 3);
    assert!(h.event_kinds("t1").await.ends_with(&["failed".into(), "deadLettered".into()]));
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_fail_at_once_and_never_open_the_breaker() {
    let h = harness(config());
    for i in 0..5 {
        let id = format!("t{i}");
        let d = h.submit(&id, "").await;
        h.provider.script(
            &id,
            [Step::Fail(ProviderError::Permanent {
                status: Some(400),
                code: None,
                detail: "bad".into(),
                limits: Default::default(),
            })],
        );
        assert_eq!(h.engine.process(&d).await, Decision::Ack);
        let r = h.record(&id).await;
        assert_eq!((r.state, r.attempt), (TaskState::Failed, 1));
        assert_eq!(r.error.unwrap().provider_status, Some(400));
    }
    assert_eq!(h.breakers().load("dep").await.unwrap(), None, "breaker never changed state");
}

#[tokio::test(start_paused = true)]
async fn deferrals_leave_attempt_and_throttles_unchanged() {
    let h = harness(EngineConfig {
        limits: Limits { deployments: [("dep".to_owned(), 1)].into(), ..Limits::default() },
        ..config()
    });
    let d = h.submit("t1", "").await;
    // Paused: no attempt starts.
    h.store().set_paused(PauseScope::Run("run".into()), true).await.unwrap();
    assert!(matches!(h.engine.process(&d).await, Decision::Defer { reason: DeferReason::Paused, .. }));
    h.store().set_paused(PauseScope::Run("run".into()), false).await.unwrap();
    h.store().set_paused(PauseScope::Global, true).await.unwrap();
    assert!(matches!(h.engine.process(&d).await, Decision::Defer { reason: DeferReason::Paused, .. }));
    h.store().set_paused(PauseScope::Global, false).await.unwrap();
    // Limit reached: the only permit is held by someone else.
    let key = LimitKey::Deployment("dep".into());
    use taskexec_core::ports::LimiterStore;
    assert!(h.engine.ports().limiter.try_acquire(&key, 1).await.unwrap());
    assert_eq!(
        h.engine.process(&d).await,
        Decision::Defer { delay: Duration::from_millis(50), reason: DeferReason::LimitReached(key.clone()) }
    );
    h.engine.ports().limiter.release(&key).await.unwrap();
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt, r.throttles, r.epoch), (TaskState::Queued, 0, 0, 0));
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 0);
    // Breaker open: trip it with three failing tasks, then t1 is deferred.
    trip_breaker(&h).await;
    let Decision::Defer { delay, reason } = h.engine.process(&d).await else { panic!("expected defer") };
    assert_eq!((delay, reason), (Duration::from_secs(5), DeferReason::BreakerOpen("dep".into())));
    let r = h.record("t1").await;
    assert_eq!((r.state, r.attempt, r.throttles, r.epoch), (TaskState::Queued, 0, 0, 0));
    let kinds = h.event_kinds("t1").await;
    assert_eq!(kinds.iter().filter(|k| *k == "deferred").count(), 3, "pause ×2 and breaker audited: {kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_probes_and_closes_through_the_engine() {
    let h = harness(config());
    trip_breaker(&h).await;
    assert_eq!(h.breakers().load("dep").await.unwrap().unwrap().state, BreakerState::Open);
    let d = h.submit("t1", "").await;
    assert!(matches!(h.engine.process(&d).await, Decision::Defer { .. }));
    h.clock.advance(Duration::from_secs(5));
    // The cool-down is over: t1 goes through as the probe and its success closes the breaker.
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    assert_eq!(h.breakers().load("dep").await.unwrap().unwrap().state, BreakerState::Closed);
    assert_eq!(taskexec_core::memory::Counters::get(&h.sink.counters.breaker_opens), 1);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_transient_and_the_call_is_dropped() {
    let h = harness(config());
    let d = h.submit("t1", r#","timeout":200"#).await;
    h.provider.script("t1", [Step::Hang]);
    assert!(matches!(h.engine.process(&d).await, Decision::Retry { .. }));
    let r = h.record("t1").await;
    assert_eq!(r.error.as_ref().unwrap().class, ErrorClass::Transient);
    assert_eq!(r.error.unwrap().message, "attempt timed out after 200 ms");
    assert_eq!(h.provider.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn overall_deadline_fails_the_task() {
    let h = harness(config());
    // Submitted at 0 with a 10 s deadline; the clock reads 1000 s.
    let d = h.submit("t1", r#","deadline":10000"#).await;
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    let r = h.record("t1").await;
    assert_eq!(r.state, TaskState::Failed);
    assert_eq!(r.error.unwrap().class, ErrorClass::DeadlineExceeded);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_running_task_drops_its_call_and_discards_nothing_twice() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [Step::Hang]);
    let engine = h.engine.clone();
    let running = tokio::spawn(async move { engine.process(&d).await });
    while h.engine.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    h.engine.cancel("t1").await.unwrap();
    assert_eq!(running.await.unwrap(), Decision::Ack);
    let r = h.record("t1").await;
    assert_eq!(r.state, TaskState::Cancelled);
    assert_eq!(r.error.unwrap().class, ErrorClass::Cancelled);
    assert_eq!(h.provider.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(h.engine.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_from_elsewhere_is_noticed_by_check_control() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [Step::Hang]);
    let engine = h.engine.clone();
    let running = tokio::spawn(async move { engine.process(&d).await });
    while h.engine.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.engine.check_control().await.unwrap(), 0);
    // Another process cancels through the store directly.
    h.store().cancel("t1", 5).await.unwrap();
    assert_eq!(h.engine.check_control().await.unwrap(), 1);
    assert_eq!(running.await.unwrap(), Decision::Ack);
    assert_eq!(h.provider.dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn long_calls_renew_their_lease() {
    let h = harness(EngineConfig { lease: Duration::from_secs(3), ..config() });
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [Step::Hang]);
    let engine = h.engine.clone();
    let running = tokio::spawn(async move { engine.process(&d).await });
    while h.engine.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let first = h.record("t1").await.lease.unwrap().until;
    h.clock.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let renewed = h.record("t1").await.lease.unwrap().until;
    assert!(renewed > first, "lease renewed: {first} → {renewed}");
    h.engine.cancel("t1").await.unwrap();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn limits_are_never_exceeded_under_concurrency() {
    let h = harness(EngineConfig {
        limits: Limits {
            deployments: [("dep".to_owned(), 3)].into(),
            models: [(("dep".to_owned(), "m".to_owned()), 2)].into(),
            ..Limits::default()
        },
        limit_recheck: Duration::from_millis(1),
        ..config()
    });
    let mut handles = Vec::new();
    for i in 0..40 {
        let d = h.submit(&format!("t{i}"), "").await;
        let engine = h.engine.clone();
        handles.push(tokio::spawn(async move {
            loop {
                match engine.process(&d).await {
                    Decision::Defer { delay, .. } => tokio::time::sleep(delay).await,
                    other => return other,
                }
            }
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap(), Decision::Ack);
    }
    assert_eq!(h.provider.peak.load(Ordering::SeqCst), 2, "the model limit (2) is the tighter one");
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 40);
}

#[tokio::test(start_paused = true)]
async fn unknown_task_is_dead_lettered_as_poison() {
    let h = harness(config());
    let mut d = h.submit("t1", "").await;
    d.task_id = "nope".into();
    assert_eq!(h.engine.process(&d).await, Decision::DeadLetter { reason: "no task with id nope".into() });
}

#[tokio::test(start_paused = true)]
async fn stale_outcome_after_reclaim_is_discarded() {
    let h = harness(EngineConfig { lease: Duration::from_secs(3), ..config() });
    let d = h.submit("t1", "").await;
    // First attempt claims, then the worker "dies" (lease lapses) and another claims.
    use taskexec_core::ports::{ClaimOutcome, ClaimRequest, FinishRequest, Outcome, WriteOutcome};
    let claim =
        |owner: &str, now| ClaimRequest { task_id: "t1".into(), owner: owner.into(), now, lease_until: now + 3_000 };
    let ClaimOutcome::Claimed(first) = h.store().claim(claim("a", 0)).await.unwrap() else { panic!() };
    let ClaimOutcome::Claimed(second) = h.store().claim(claim("b", 5_000)).await.unwrap() else { panic!() };
    assert_eq!(second.epoch, first.epoch + 1);
    let late = FinishRequest {
        task_id: "t1".into(),
        epoch: first.epoch,
        outcome: Outcome::Released,
        attempt: 1,
        throttles: 0,
        record: None,
        now: 6_000,
    };
    assert_eq!(h.store().finish(late).await.unwrap(), WriteOutcome::Stale);
    assert_eq!(h.record("t1").await.epoch, second.epoch);
    drop(d);
}

#[tokio::test(start_paused = true)]
async fn an_invocation_cap_bounds_the_attempt() {
    let h = harness(config());
    let d = h.submit("t1", r#","timeout":60000"#).await;
    h.provider.script("t1", [Step::Hang]);
    assert!(matches!(h.engine.process_within(&d, Some(Duration::from_millis(300))).await, Decision::Retry { .. }));
    let r = h.record("t1").await;
    assert_eq!(r.error.unwrap().message, "attempt timed out after 300 ms");
}

type SharedEngine = Engine<MemoryStore, Arc<MemoryStore>, MemoryLimiter, Arc<CountingSink>, Arc<Scripted>, FakeClock>;

#[tokio::test(start_paused = true)]
async fn workers_sharing_a_breaker_store_adopt_each_others_opens() {
    let shared = Arc::new(MemoryStore::default());
    let make = || {
        let ports = Ports {
            store: MemoryStore::default(),
            breakers: shared.clone(),
            limiter: MemoryLimiter::default(),
            metrics: Arc::new(CountingSink::default()),
            provider: Arc::new(Scripted::default()),
            clock: FakeClock::at(1_000_000),
        };
        Engine::new(ports, config())
    };
    let (a, b) = (make(), make());
    async fn submit(e: &SharedEngine, id: &str) {
        let task: BenchmarkTask = serde_json::from_str(&format!(
            r#"{{"id":"{id}","providerId":"dep","modelId":"m","prompt":"p","runId":"run"}}"#
        ))
        .unwrap();
        e.ports().store.submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
    }
    let delivery = |id: &str| {
        Delivery::new(
            id,
            Arc::new(Route { provider_id: "dep".into(), model_id: "m".into(), run_id: "run".into() }),
            Default::default(),
            0,
        )
    };
    // b has seen the deployment while its breaker was closed.
    submit(&b, "b0").await;
    assert_eq!(b.process(&delivery("b0")).await, Decision::Ack);
    // a trips the breaker with three transient failures.
    for i in 0..3 {
        let id = format!("a{i}");
        submit(&a, &id).await;
        a.ports().provider.script(&id, [transient()]);
        a.process(&delivery(&id)).await;
    }
    submit(&b, "b1").await;
    assert_eq!(b.process(&delivery("b1")).await, Decision::Ack, "before syncing, b still sees it closed");
    assert_eq!(b.sync_breakers().await.unwrap(), 1);
    submit(&b, "b2").await;
    assert!(
        matches!(b.process(&delivery("b2")).await, Decision::Defer { reason: DeferReason::BreakerOpen(_), .. }),
        "after syncing, b honours a's open"
    );
    assert_eq!(b.sync_breakers().await.unwrap(), 0, "nothing newer the second time");
}

#[tokio::test(start_paused = true)]
async fn process_reporting_says_which_call_finished_the_task() {
    let h = harness(config());
    let ok = h.submit("ok", "").await;
    assert_eq!(h.engine.process_reporting(&ok, None).await, (Decision::Ack, Some(TaskState::Completed)));
    assert_eq!(h.engine.process_reporting(&ok, None).await, (Decision::Ack, None), "a duplicate finishes nothing");
    let bad = h.submit("bad", "").await;
    h.provider.script(
        "bad",
        [Step::Fail(ProviderError::Permanent {
            status: Some(400),
            code: None,
            detail: "x".into(),
            limits: Default::default(),
        })],
    );
    assert_eq!(h.engine.process_reporting(&bad, None).await, (Decision::Ack, Some(TaskState::Failed)));
    let flaky = h.submit("flaky", "").await;
    h.provider.script("flaky", [transient()]);
    let (decision, finished) = h.engine.process_reporting(&flaky, None).await;
    assert!(matches!(decision, Decision::Retry { .. }));
    assert_eq!(finished, None, "a retry finishes nothing");
}

#[tokio::test(start_paused = true)]
async fn outcomes_drain_once_and_a_shared_window_opens_the_breaker() {
    let h = harness(EngineConfig {
        breaker: BreakerPolicy { consecutive_failures: 100, min_calls: 4, ..config().breaker },
        ..config()
    });
    assert!(h.engine.drain_outcomes().is_empty(), "nothing before any call");
    let d1 = h.submit("t1", "").await;
    let d2 = h.submit("t2", "").await;
    h.provider.script("t2", [transient()]);
    h.engine.process(&d1).await;
    h.engine.process(&d2).await;
    assert_eq!(h.engine.drain_outcomes(), [("dep".to_owned(), 2, 1)]);
    assert!(h.engine.drain_outcomes().is_empty(), "drained once");
    h.engine.restore_outcomes("dep", 2, 1);
    assert_eq!(h.engine.drain_outcomes(), [("dep".to_owned(), 2, 1)], "given back after a failed share");
    let now = h.clock.now();
    assert_eq!(h.engine.breaker_windows(now), [("dep".to_owned(), now - 30_000)]);
    // Below min_calls, or below the rate: nothing changes, nothing is written.
    assert_eq!(h.engine.judge_shared("dep", 3, 3, now).await.unwrap(), None);
    assert_eq!(h.engine.judge_shared("dep", 10, 4, now).await.unwrap(), None);
    assert_eq!(h.breakers().load("dep").await.unwrap(), None);
    // Every worker's outcomes together cross the rule: open, counted and saved once.
    assert_eq!(h.engine.judge_shared("dep", 10, 5, now).await.unwrap(), Some(BreakerState::Open));
    assert_eq!(h.breakers().load("dep").await.unwrap().unwrap().state, BreakerState::Open);
    assert_eq!(h.sink.counters.breaker_opens.load(Ordering::SeqCst), 1);
    assert_eq!(h.engine.judge_shared("dep", 10, 10, now).await.unwrap(), None, "already open");
    assert_eq!(h.sink.counters.breaker_opens.load(Ordering::SeqCst), 1);
    assert_eq!(h.engine.breaker_windows(now + 1_000), [("dep".to_owned(), now)], "not before the open");
    let d3 = h.submit("t3", "").await;
    assert!(matches!(h.engine.process(&d3).await, Decision::Defer { reason: DeferReason::BreakerOpen(_), .. }));
}

#[tokio::test(start_paused = true)]
async fn each_attempt_keeps_its_own_timing_apart_from_queue_wait() {
    let h = harness(config());
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [transient(), Step::Ok]);
    assert!(matches!(h.engine.process(&d).await, Decision::Retry { .. }));
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    let result = h.record("t1").await.result.unwrap();
    let [failed, succeeded] = result.attempts.as_slice() else { panic!("two attempts: {:?}", result.attempts) };
    assert_eq!((failed.attempt, failed.outcome.as_str()), (1, "transient"));
    assert_eq!((succeeded.attempt, succeeded.outcome.as_str()), (2, "ok"));
    // The failed call's 10 ms (virtual) are measured on tokio's clock, like the answered one's.
    assert!(failed.latency_ms >= 10.0, "failed attempt latency {}", failed.latency_ms);
    assert_eq!(succeeded.latency_ms, 10.0, "the provider's own latency, not a sum over attempts");
    assert_eq!(result.latency_ms, succeeded.latency_ms);
    // Queue wait is counted from the delivery's ready_at on the engine's clock, never inside latency.
    assert_eq!((failed.queue_wait_ms, succeeded.queue_wait_ms), (1_000_000, 1_001_000));
}

/// A task whose attempts never record an outcome (its handler crashes: a panic, out of memory,
/// the process killed) uses its budget all the same: each claim counts, and the claim after the
/// last allowed attempt fails the task with the reason instead of calling the provider again.
#[tokio::test(start_paused = true)]
async fn a_task_that_crashes_its_handler_is_dead_lettered_after_its_attempt_budget() {
    let h = harness(config());
    let d = h.submit("crasher", "").await;
    let lease = h.engine.config().lease;
    for n in 1..=3u32 {
        // A worker claims and dies before recording anything.
        let now = h.clock.now();
        let lease_until = now + duration_ms(lease);
        let request = ClaimRequest { task_id: "crasher".into(), owner: "doomed".into(), now, lease_until };
        let ClaimOutcome::Claimed(record) = h.store().claim(request).await.unwrap() else { panic!("claim {n}") };
        assert_eq!(record.attempt, n, "every claim counts an attempt");
        h.clock.advance(lease + Duration::from_millis(1));
    }
    let decision = h.engine.process(&d).await;
    let Decision::DeadLetter { reason } = decision else { panic!("dead-lettered, got {decision:?}") };
    assert!(reason.starts_with("handler crashed during attempt 3"), "{reason}");
    assert!(reason.contains("3 of 3 used"), "{reason}");
    let r = h.record("crasher").await;
    assert_eq!(r.state, TaskState::Failed);
    assert_eq!(r.attempt, 3, "the refused claim made no call and is not counted");
    assert_eq!(r.dead_letter_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(r.error.as_ref().map(|e| e.class), Some(ErrorClass::Transient));
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 0, "no provider call after the budget was spent");
}

/// The same claim-time check leaves a task alone while it has attempts left: a crash in
/// attempt 1 of 3 is followed by a normal attempt 2.
#[tokio::test(start_paused = true)]
async fn a_crashed_attempt_with_budget_left_is_followed_by_a_normal_attempt() {
    let h = harness(config());
    let d = h.submit("once", "").await;
    let lease = h.engine.config().lease;
    let now = h.clock.now();
    let lease_until = now + duration_ms(lease);
    let request = ClaimRequest { task_id: "once".into(), owner: "doomed".into(), now, lease_until };
    assert!(matches!(h.store().claim(request).await.unwrap(), ClaimOutcome::Claimed(_)));
    h.clock.advance(lease + Duration::from_millis(1));
    assert_eq!(h.engine.process(&d).await, Decision::Ack);
    let r = h.record("once").await;
    assert_eq!((r.state, r.attempt), (TaskState::Completed, 2));
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1);
}

/// Open the breaker of `dep`: three tasks whose calls fail with a transient error.
async fn trip_breaker(h: &Harness) {
    for i in 0..3 {
        let id = format!("f{i}");
        let f = h.submit(&id, "").await;
        h.provider.script(&id, [transient()]);
        h.engine.process(&f).await;
    }
}

fn with_quota(quota: taskexec_core::rate::Quota) -> EngineConfig {
    let mut config = config();
    config.quotas.insert("dep".into(), quota);
    config
}

/// A full requests-per-minute window defers before the claim (no attempt, no store write) until
/// it frees; the deferral's end is the window's.
#[tokio::test(start_paused = true)]
async fn a_full_request_window_defers_without_an_attempt_until_it_frees() {
    let h = harness(with_quota(taskexec_core::rate::Quota { rpm: Some(2), ..Default::default() }));
    let (a, b, c) = (h.submit("a", "").await, h.submit("b", "").await, h.submit("c", "").await);
    assert_eq!(h.engine.process(&a).await, Decision::Ack);
    h.clock.advance(Duration::from_secs(10));
    assert_eq!(h.engine.process(&b).await, Decision::Ack);
    let Decision::Defer { delay, reason } = h.engine.process(&c).await else { panic!("deferred") };
    assert_eq!(reason, DeferReason::RateLimited("dep".into()));
    assert_eq!(delay, Duration::from_secs(51), "until the first call leaves the minute (and its arrival margin)");
    let r = h.record("c").await;
    assert_eq!((r.state, r.attempt, r.epoch), (TaskState::Queued, 0, 0), "not even claimed");
    h.clock.advance(delay);
    assert_eq!(h.engine.process(&c).await, Decision::Ack);
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 3);
}

/// A task whose tokens do not fit the token window is claimed, then given back with its attempt.
#[tokio::test(start_paused = true)]
async fn a_task_whose_tokens_do_not_fit_is_released_with_its_attempt() {
    let h = harness(with_quota(taskexec_core::rate::Quota { tpm: Some(1_000), ..Default::default() }));
    let big = h.submit("big", r#","parameters":{"maxTokens":900}"#).await;
    let other = h.submit("other", r#","parameters":{"maxTokens":900}"#).await;
    assert_eq!(h.engine.process(&big).await, Decision::Ack, "901 of 1,000 reserved, then 8 used");
    h.clock.advance(Duration::from_secs(1));
    // The answer used 8 tokens (3 + 5): the rest came back, so the second fits too.
    assert_eq!(h.engine.process(&other).await, Decision::Ack);
    let third = h.submit("third", r#","parameters":{"maxTokens":990}"#).await;
    let Decision::Defer { reason, delay } = h.engine.process(&third).await else { panic!("deferred") };
    assert_eq!(reason, DeferReason::RateLimited("dep".into()));
    assert!(delay <= Duration::from_secs(60), "{delay:?}");
    let r = h.record("third").await;
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Queued, 0, 0), "the claim's attempt was given back");
    assert_eq!(h.event_kinds("third").await, ["submitted", "claimed", "released"]);
}

/// A 429 halves the deployment's concurrency limit and holds new calls for its Retry-After;
/// successes grow the limit back, never above the configured value.
#[tokio::test(start_paused = true)]
async fn a_429_halves_the_concurrency_and_holds_calls_for_its_retry_after() {
    let mut config = config();
    config.limits.deployments.insert("dep".into(), 8);
    let h = harness(config);
    let d = h.submit("t1", "").await;
    h.provider.script("t1", [rate_limited(3_000)]);
    assert!(matches!(h.engine.process(&d).await, Decision::Retry { .. }));
    assert_eq!(Counters::get(&h.sink.counters.concurrency_decreases), 1, "8 → 4");
    assert!(h.event_kinds("t1").await.contains(&"concurrencyChanged".to_owned()), "audited on the task");
    // Another task of the deployment waits for the Retry-After before any claim.
    let other = h.submit("t2", "").await;
    let Decision::Defer { reason, delay } = h.engine.process(&other).await else { panic!("held") };
    assert_eq!((reason, delay), (DeferReason::RateLimited("dep".into()), Duration::from_secs(3)));
    h.clock.advance(Duration::from_secs(3));
    assert_eq!(h.engine.process(&other).await, Decision::Ack);
    // Four permits now, not eight.
    let key = LimitKey::Deployment("dep".into());
    let limiter = &h.engine.ports().limiter;
    for _ in 0..4 {
        assert!(taskexec_core::ports::LimiterStore::try_acquire(limiter, &key, 4).await.unwrap());
    }
    let blocked = h.submit("t3", "").await;
    assert!(matches!(h.engine.process(&blocked).await, Decision::Defer { reason: DeferReason::LimitReached(_), .. }));
}

/// Limits set at run time reach the engine through the control state: a lowered RPM defers
/// the next call at once (the minute's calls count against it), a concurrency set for a
/// deployment without one is enforced, and removing the override restores the configuration.
#[tokio::test(start_paused = true)]
async fn limits_set_at_run_time_apply_at_the_next_control_check_and_can_be_removed() {
    use taskexec_core::ports::{ControlStore, LimitOverride};
    let h = harness(with_quota(taskexec_core::rate::Quota { rpm: Some(10), ..Default::default() }));
    let (a, b) = (h.submit("a", "").await, h.submit("b", "").await);
    assert_eq!(h.engine.process(&a).await, Decision::Ack);
    let lowered = LimitOverride { rpm: Some(1), concurrency: Some(2), ..LimitOverride::default() };
    h.store().set_limits("dep", Some(lowered)).await.unwrap();
    // Not applied before the engine reads the control state.
    assert_eq!(h.engine.limits().deployments.get("dep"), None);
    h.engine.check_control().await.unwrap();
    assert_eq!(h.engine.limits().deployments.get("dep"), Some(&2));
    let Decision::Defer { reason, delay } = h.engine.process(&b).await else { panic!("deferred by the new RPM") };
    assert_eq!((reason, delay), (DeferReason::RateLimited("dep".into()), Duration::from_secs(61)));
    let key = LimitKey::Deployment("dep".into());
    assert_eq!(h.engine.limit_keys_for(&b), [(key, 2)]);
    h.store().set_limits("dep", None).await.unwrap();
    h.engine.check_control().await.unwrap();
    assert!(h.engine.limit_keys_for(&b).is_empty(), "back to the configuration: no concurrency limit");
    assert_eq!(h.engine.process(&b).await, Decision::Ack, "10 per minute again");
}

/// A quota the provider counts per model holds that model to it on top of the deployment's
/// quota, and leaves the deployment's other models alone; a refusal by the model's window gives
/// the deployment's reservation back.
#[tokio::test(start_paused = true)]
async fn a_models_own_quota_holds_that_model_only_and_gives_the_deployments_reservation_back() {
    use taskexec_core::rate::Quota;
    let mut config = with_quota(Quota { rpm: Some(3), ..Default::default() });
    config.model_quotas.insert(("dep".into(), "m".into()), Quota { tpm: Some(1_000), ..Default::default() });
    let h = harness(config);
    let a = h.submit("a", "").await;
    let b = h.submit("b", r#","parameters":{"maxTokens":995}"#).await;
    assert_eq!(h.engine.process(&a).await, Decision::Ack, "8 of the model's 1,000 tokens used");
    // `b` passes the gate (a token is free), is claimed, and its 996 tokens do not fit.
    let Decision::Defer { reason, delay } = h.engine.process(&b).await else { panic!("deferred by the model's TPM") };
    assert_eq!(reason, DeferReason::RateLimited("dep".into()));
    assert!(delay <= Duration::from_secs(61), "{delay:?}");
    assert_eq!(h.event_kinds("b").await, ["submitted", "claimed", "released"]);
    // Two calls of another model fit the deployment's 3 per minute: `b` gave its request back.
    for id in ["x1", "x2"] {
        let task: BenchmarkTask =
            serde_json::from_str(&format!(r#"{{"id":"{id}","providerId":"dep","modelId":"other","prompt":"p"}}"#))
                .unwrap();
        h.store().submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
        let route = Route { provider_id: "dep".into(), model_id: "other".into(), run_id: "run".into() };
        let d = Delivery::new(id, std::sync::Arc::new(route), Default::default(), 0);
        assert_eq!(h.engine.process(&d).await, Decision::Ack, "{id}");
    }
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 3);
}

/// A task that opts into fail-fast fails at once, without a provider call and without using an
/// attempt, when its deployment's quota is spent (`rateLimited`) or its breaker open
/// (`transient`); a task that does not waits, deferred.
#[tokio::test(start_paused = true)]
async fn a_fail_fast_task_fails_without_a_call_when_no_deployment_has_capacity() {
    let h = harness(with_quota(taskexec_core::rate::Quota { rpm: Some(1), ..Default::default() }));
    let first = h.submit("first", "").await;
    assert_eq!(h.engine.process(&first).await, Decision::Ack);
    let waits = h.submit("waits", "").await;
    assert!(matches!(h.engine.process(&waits).await, Decision::Defer { reason: DeferReason::RateLimited(_), .. }));
    let mut fast = h.submit("fast", r#","failFast":true"#).await;
    fast.fail_fast = true;
    assert_eq!(h.engine.process(&fast).await, Decision::Ack);
    let r = h.record("fast").await;
    let error = r.error.as_ref().expect("failed with an error");
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Failed, 0, 0), "no attempt used");
    assert_eq!(error.class, ErrorClass::RateLimited);
    assert!(error.message.contains("fail-fast: no deployment has capacity (the quota of dep is spent)"), "{error:?}");
    assert_eq!(h.provider.calls.load(Ordering::SeqCst), 1, "only the first task called the provider");
    assert_eq!(h.record("waits").await.state, TaskState::Queued);

    // An open breaker: transient.
    let h = harness(config());
    trip_breaker(&h).await;
    let mut fast = h.submit("fast", r#","failFast":true"#).await;
    fast.fail_fast = true;
    assert_eq!(h.engine.process(&fast).await, Decision::Ack);
    let r = h.record("fast").await;
    assert_eq!((r.state, r.attempt), (TaskState::Failed, 0));
    assert_eq!(r.error.as_ref().unwrap().class, ErrorClass::Transient);
}

/// Permits in memory and the one newest shared change of the adaptive limit, as the DynamoDB
/// limiter keeps them on a deployment's counter item: what two Lambda containers share.
#[derive(Clone, Default)]
struct SharedAdaptive {
    permits: Arc<MemoryLimiter>,
    adapted: Arc<std::sync::Mutex<Option<taskexec_core::ports::Adapted>>>,
}

impl taskexec_core::ports::LimiterStore for SharedAdaptive {
    async fn try_acquire(&self, key: &LimitKey, limit: u32) -> taskexec_core::ports::StoreResult<bool> {
        self.permits.try_acquire(key, limit).await
    }
    async fn release(&self, key: &LimitKey) -> taskexec_core::ports::StoreResult<()> {
        self.permits.release(key).await
    }
    async fn in_use(&self, key: &LimitKey) -> taskexec_core::ports::StoreResult<u32> {
        self.permits.in_use(key).await
    }
    async fn waiting_front(
        &self,
        _: &LimitKey,
        _: usize,
        _: taskexec_core::time::Millis,
    ) -> taskexec_core::ports::StoreResult<Option<taskexec_core::ports::Line>> {
        let adapted = *self.adapted.lock().unwrap();
        Ok(Some(taskexec_core::ports::Line { adapted, ..Default::default() }))
    }
    async fn share_adapted(
        &self,
        _: &LimitKey,
        adapted: taskexec_core::ports::Adapted,
    ) -> taskexec_core::ports::StoreResult<()> {
        let mut shared = self.adapted.lock().unwrap();
        if shared.is_none_or(|s| s.at < adapted.at) {
            *shared = Some(adapted);
        }
        Ok(())
    }
}

/// A 429 seen by one worker halves the deployment's limit and holds its calls in every worker
/// sharing the limiter: the other worker waits out the Retry-After before its next claim and
/// then takes at most the halved limit.
#[tokio::test(start_paused = true)]
async fn a_429_seen_by_one_worker_halves_the_limit_and_holds_calls_in_every_worker() {
    let mut config = config();
    config.limits.deployments.insert("dep".into(), 8);
    let shared = SharedAdaptive::default();
    let clock = FakeClock::at(1_000_000);
    let worker = |owner: &str| {
        let provider = Arc::new(Scripted::default());
        let ports = Ports {
            store: MemoryStore::default(),
            breakers: MemoryStore::default(),
            limiter: shared.clone(),
            metrics: Arc::new(CountingSink::default()),
            provider: provider.clone(),
            clock: clock.clone(),
        };
        (Arc::new(Engine::new(ports, EngineConfig { owner: owner.into(), ..config.clone() })), provider)
    };
    let ((a, a_provider), (b, _)) = (worker("a"), worker("b"));
    let submit = |engine: &Arc<Engine<MemoryStore, MemoryStore, SharedAdaptive, _, _, FakeClock>>, id: &str| {
        let task: BenchmarkTask = serde_json::from_str(&format!(
            r#"{{"id":"{id}","providerId":"dep","modelId":"m","prompt":"p","runId":"run"}}"#
        ))
        .unwrap();
        let engine = engine.clone();
        let id = id.to_owned();
        async move {
            engine.ports().store.submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
            let route = Route { provider_id: "dep".into(), model_id: "m".into(), run_id: "run".into() };
            Delivery::new(id, Arc::new(route), Default::default(), 0)
        }
    };
    let t1 = submit(&a, "t1").await;
    a_provider.script("t1", [rate_limited(3_000)]);
    assert!(matches!(a.process(&t1).await, Decision::Retry { .. }));
    // b never saw a 429, and holds its next call until the Retry-After all the same.
    let u1 = submit(&b, "u1").await;
    let Decision::Defer { reason, delay } = b.process(&u1).await else { panic!("held by the shared Retry-After") };
    assert_eq!((reason, delay), (DeferReason::RateLimited("dep".into()), Duration::from_secs(3)));
    clock.advance(Duration::from_secs(3));
    assert_eq!(b.process(&u1).await, Decision::Ack);
    // Four permits now in b too, not eight.
    let key = LimitKey::Deployment("dep".into());
    for _ in 0..4 {
        assert!(shared.permits.try_acquire(&key, 4).await.unwrap());
    }
    let u2 = submit(&b, "u2").await;
    let blocked = b.process(&u2).await;
    assert!(
        matches!(blocked, Decision::Defer { reason: DeferReason::LimitReached(_) | DeferReason::InLine(_), .. }),
        "{blocked:?}"
    );
}
