//! The embedded runner with in-memory ports, a scripted provider and tokio's paused clock: every
//! task reaches a terminal state, limits park work instead of spinning, a pause parks a run until
//! it is resumed, recovery takes back a dead runner's leases.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Scripted, permanent, rate_limited, transient};
use taskexec_core::engine::{Engine, EngineConfig, Limits, Ports};
use taskexec_core::memory::{CountingSink, MemoryLimiter, MemoryQueue, MemoryStore};
use taskexec_core::ports::{
    ClaimOutcome, ClaimRequest, ControlStore, DeliveryBuilder, PauseScope, TaskStore, WorkQueue,
};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::runner::{Runner, RunnerConfig};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::TokioClock;
use tokio_util::sync::CancellationToken;

type TestRunner = Runner<
    MemoryStore,
    MemoryStore,
    MemoryLimiter,
    Arc<CountingSink>,
    Arc<Scripted>,
    TokioClock,
    MemoryQueue<TokioClock>,
>;

fn runner(limits: Limits, concurrency: usize) -> (Arc<TestRunner>, Arc<Scripted>) {
    let (runner, provider, _) = runner_and_queue(limits, concurrency);
    (runner, provider)
}

/// [`runner`], with the queue it pulls from (to send work while it runs).
fn runner_and_queue(
    limits: Limits,
    concurrency: usize,
) -> (Arc<TestRunner>, Arc<Scripted>, Arc<MemoryQueue<TokioClock>>) {
    let provider = Arc::new(Scripted::default());
    let clock = TokioClock::starting_at(1_000_000);
    let ports = Ports {
        store: MemoryStore::default(),
        breakers: MemoryStore::default(),
        limiter: MemoryLimiter::default(),
        metrics: Arc::new(CountingSink::default()),
        provider: provider.clone(),
        clock: clock.clone(),
    };
    let config = EngineConfig {
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1_000, throttle_budget: 5 },
        limits,
        seed: Some(3),
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::new(ports, config));
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), clock));
    let config = RunnerConfig { concurrency, poll: Duration::from_millis(50), ..RunnerConfig::default() };
    (Runner::new(engine, queue.clone(), config), provider, queue)
}

async fn submit(r: &TestRunner, ids: impl IntoIterator<Item = String>, run: &str) {
    let records = ids
        .into_iter()
        .map(|id| {
            let task: BenchmarkTask = serde_json::from_str(&format!(
                r#"{{"id":"{id}","providerId":"dep","modelId":"m","prompt":"p","runId":"{run}"}}"#
            ))
            .unwrap();
            TaskRecord::new(task, 1_000_000)
        })
        .collect();
    r.engine().ports().store.submit(records).await.unwrap();
}

async fn state(r: &TestRunner, id: &str) -> TaskState {
    r.engine().ports().store.get(id).await.unwrap().unwrap().state
}

#[tokio::test(start_paused = true)]
async fn every_task_reaches_a_terminal_state() {
    let (r, provider) = runner(Limits::default(), 8);
    submit(&r, (0..40).map(|i| format!("t{i}")), "run").await;
    provider.script("t1", [transient(), transient()]);
    provider.script("t2", [transient(), transient(), transient()]);
    provider.script("t3", [permanent()]);
    provider.script("t4", [rate_limited(500), rate_limited(500)]);
    assert_eq!(r.recover(|_| true).await.unwrap(), (0, 40));
    r.run(CancellationToken::new()).await.unwrap();
    assert_eq!(r.progress().finished, 40);
    assert_eq!(r.progress().waiting, 0);
    assert_eq!(state(&r, "t1").await, TaskState::Completed, "third attempt succeeds");
    assert_eq!(state(&r, "t2").await, TaskState::Failed, "dead-lettered after three");
    assert_eq!(state(&r, "t3").await, TaskState::Failed);
    let t4 = r.engine().ports().store.get("t4").await.unwrap().unwrap();
    assert_eq!((t4.state, t4.attempt, t4.throttles), (TaskState::Completed, 1, 2));
    assert_eq!(provider.calls.load(Ordering::SeqCst), 40 + 2 + 2 + 2);
    assert!(provider.peak.load(Ordering::SeqCst) <= 8, "global concurrency");
}

#[tokio::test(start_paused = true)]
async fn limited_work_is_parked_and_the_limit_holds() {
    let limits = Limits { deployments: [("dep".to_owned(), 3)].into(), ..Limits::default() };
    let (r, provider) = runner(limits, 16);
    submit(&r, (0..30).map(|i| format!("t{i}")), "run").await;
    r.recover(|_| true).await.unwrap();
    r.run(CancellationToken::new()).await.unwrap();
    assert_eq!(r.progress().finished, 30);
    assert_eq!(provider.peak.load(Ordering::SeqCst), 3);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 30, "deferrals made no calls");
}

#[tokio::test(start_paused = true)]
async fn a_paused_run_waits_until_resumed_while_others_go_on() {
    let (r, provider) = runner(Limits::default(), 4);
    submit(&r, (0..5).map(|i| format!("a{i}")), "paused-run").await;
    submit(&r, (0..5).map(|i| format!("b{i}")), "other-run").await;
    let store = &r.engine().ports().store;
    store.set_paused(PauseScope::Run("paused-run".into()), true).await.unwrap();
    r.recover(|_| true).await.unwrap();
    let running = tokio::spawn({
        let r = r.clone();
        async move { r.run(CancellationToken::new()).await }
    });
    while r.progress().finished < 5 || r.progress().paused < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(provider.calls.load(Ordering::SeqCst), 5, "only the other run's tasks ran");
    assert_eq!(state(&r, "a0").await, TaskState::Queued);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(provider.calls.load(Ordering::SeqCst), 5, "still nothing while paused");
    store.set_paused(PauseScope::Run("paused-run".into()), false).await.unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(r.progress().finished, 10);
    assert_eq!(state(&r, "a4").await, TaskState::Completed);
}

#[tokio::test(start_paused = true)]
async fn recovery_takes_back_a_dead_runners_leases_and_skips_finished_work() {
    let (r, provider) = runner(Limits::default(), 4);
    submit(&r, (0..6).map(|i| format!("t{i}")), "run").await;
    submit(&r, ["elsewhere".to_owned()], "not-mine").await;
    let store = &r.engine().ports().store;
    // A dead runner claimed t0 with a lease far in the future; t1 was cancelled.
    let claim = ClaimRequest { task_id: "t0".into(), owner: "dead".into(), now: 1_000_000, lease_until: 9_000_000 };
    assert!(matches!(store.claim(claim).await.unwrap(), ClaimOutcome::Claimed(_)));
    store.cancel("t1", 1_000_000).await.unwrap();
    let (released, queued) = r.recover(|d| d.run_id() == "run").await.unwrap();
    assert_eq!((released, queued), (1, 5), "t0 taken back at once; t1 finished; other run skipped");
    r.run(CancellationToken::new()).await.unwrap();
    assert_eq!(state(&r, "t0").await, TaskState::Completed);
    assert_eq!(state(&r, "elsewhere").await, TaskState::Queued);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_pulling_and_leaves_the_rest_queued() {
    let (r, provider) = runner(Limits::default(), 2);
    submit(&r, (0..50).map(|i| format!("t{i}")), "run").await;
    r.recover(|_| true).await.unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (r, stop) = (r.clone(), stop.clone());
        async move { r.run(stop).await }
    });
    while provider.calls.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    let finished = r.progress().finished;
    assert!(finished < 50, "stopped early ({finished})");
    assert_eq!(r.progress().active, 0, "attempts in flight were let finish");
    assert_eq!(provider.calls.load(Ordering::SeqCst) as u64, finished);
}

/// A deployment limited to two calls at once with a backlog of normal tasks parked behind it:
/// high tasks that arrive later start first when capacity frees (the backlog keeps its place by
/// aging: a task waiting longer than the aging outranks newer ones by a class).
#[tokio::test(start_paused = true)]
async fn priority_survives_a_full_limit() {
    let mut limits = Limits::default();
    limits.deployments.insert("dep".into(), 2);
    let (r, provider, queue) = runner_and_queue(limits, 16);
    submit(&r, (0..20).map(|i| format!("backlog{i}")), "run").await;
    r.recover(|_| true).await.unwrap();
    let runner = tokio::spawn({
        let r = r.clone();
        async move { r.run(CancellationToken::new()).await }
    });
    // The backlog has taken the limit's two slots (and the rest is parked) before the highs come.
    while provider.started.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(provider.in_flight.load(Ordering::SeqCst), 2, "two calls at once");
    let highs: Vec<TaskRecord> = (0..5)
        .map(|i| {
            let task: BenchmarkTask = serde_json::from_str(&format!(
                r#"{{"id":"high{i}","providerId":"dep","modelId":"m","prompt":"p","runId":"run","priority":"high"}}"#
            ))
            .unwrap();
            TaskRecord::new(task, 1_000_005)
        })
        .collect();
    let deliveries: Vec<_> =
        highs.iter().map(|t| (DeliveryBuilder::default().of_task(&t.task, "run", 1_000_005), Duration::ZERO)).collect();
    r.engine().ports().store.submit(highs).await.unwrap();
    queue.send(deliveries).await.unwrap();
    runner.await.unwrap().unwrap();
    let started = provider.started.lock().unwrap().clone();
    assert_eq!(started.len(), 25);
    let positions: Vec<usize> =
        started.iter().enumerate().filter(|(_, id)| id.starts_with("high")).map(|(i, _)| i).collect();
    assert!(positions.iter().all(|p| *p < 8), "the highs start right after the calls in flight: {started:?}");
}
