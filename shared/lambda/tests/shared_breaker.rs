//! Breakers judged on every container's outcomes: two workers (two engines, each with its own
//! breaker store, so each must reach the open by itself) share one outcome window.

mod common;

use common::{Stub, TestEngine, engine, topology};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_lambda_events::event::sqs::SqsEvent;
use taskexec_core::breaker::{BreakerPolicy, BreakerState};
use taskexec_core::engine::EngineConfig;
use taskexec_core::ports::{BreakerStore, TaskStore};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::task::TaskState;
use taskexec_lambda::actions::RecordingQueue;
use taskexec_lambda::window::{MemoryWindow, OutcomeWindow};
use taskexec_lambda::worker::{Worker, WorkerSettings};

type TestWorker = Worker<Arc<TestEngine>, Arc<RecordingQueue>, Arc<MemoryWindow>>;

fn worker(window: &Arc<MemoryWindow>, owner: &str) -> (TestWorker, Arc<Stub>) {
    let config = EngineConfig {
        retry: RetryPolicy::default().with_max_attempts(5),
        // Judged on the failure rate only: 4 calls at least, half of them failed.
        breaker: BreakerPolicy {
            min_calls: 4,
            failure_rate: 0.5,
            consecutive_failures: 100,
            ..BreakerPolicy::default()
        },
        owner: owner.into(),
        seed: Some(1),
        ..EngineConfig::default()
    };
    let (engine, stub) = engine(config);
    let w =
        Worker::new(engine, Arc::new(RecordingQueue::default()), window.clone(), topology(), WorkerSettings::default());
    (w, stub)
}

fn batch(ids: &[&str]) -> SqsEvent {
    let records: Vec<_> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "messageId": format!("m-{id}"),
                "receiptHandle": format!("rh-{id}"),
                "body": format!(r#"{{"id":"{id}","providerId":"sim","modelId":"m","prompt":"hello","runId":"r"}}"#),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:taskexec-normal",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

async fn state(w: &TestWorker, id: &str) -> TaskState {
    w.executor().ports().store.get(id).await.unwrap().unwrap().state
}

async fn breaker(w: &TestWorker) -> Option<BreakerState> {
    w.executor().ports().breakers.load("sim").await.unwrap().map(|s| s.state)
}

#[tokio::test(start_paused = true)]
async fn failures_split_between_workers_open_the_breaker_in_both() {
    let window = Arc::new(MemoryWindow::default());
    let (a, a_calls) = worker(&window, "a");
    let (b, b_calls) = worker(&window, "b");
    let now = 1_700_000_000_000;

    // a: 2 calls, 2 failures; b: 2 calls, 1 failure. Each is below min_calls on its own.
    a.handle(batch(&["flaky-a1", "flaky-a2"]), None).await;
    assert_eq!(window.window("sim", now - 30_000).await.unwrap(), (2, 2), "a shared its outcomes at its batch end");
    b.handle(batch(&["flaky-b1", "ok-b2"]), None).await;
    assert_eq!(state(&b, "ok-b2").await, TaskState::Completed, "b judged (2, 2) at its start: closed");
    assert_eq!(window.window("sim", now - 30_000).await.unwrap(), (4, 3));
    assert_eq!((breaker(&a).await, breaker(&b).await), (None, None), "neither opened on its own outcomes");
    let calls = (a_calls.calls.load(Ordering::SeqCst), b_calls.calls.load(Ordering::SeqCst));

    // Together 3 failures in 4 calls: each opens at its next batch start, before any call.
    a.handle(batch(&["ok-a3"]), None).await;
    b.handle(batch(&["ok-b4"]), None).await;
    assert_eq!((breaker(&a).await, breaker(&b).await), (Some(BreakerState::Open), Some(BreakerState::Open)));
    assert_eq!((state(&a, "ok-a3").await, state(&b, "ok-b4").await), (TaskState::Queued, TaskState::Queued));
    assert_eq!((a_calls.calls.load(Ordering::SeqCst), b_calls.calls.load(Ordering::SeqCst)), calls, "no call made");
    assert_eq!(window.window("sim", now - 30_000).await.unwrap(), (4, 3), "deferred tasks add nothing");
}

#[tokio::test(start_paused = true)]
async fn a_batch_with_no_outcomes_writes_nothing_and_old_buckets_leave_the_window() {
    let window = Arc::new(MemoryWindow::default());
    let (a, _) = worker(&window, "a");
    a.handle(batch(&[]), None).await;
    assert_eq!(window.window("sim", 0).await.unwrap(), (0, 0));
    // Failures a minute old do not count against a breaker with a 30 s window.
    window.add("sim", 1_700_000_000_000 - 60_000, 10, 10).await.unwrap();
    a.handle(batch(&["ok-1"]), None).await;
    a.handle(batch(&["ok-2"]), None).await;
    assert_eq!(state(&a, "ok-2").await, TaskState::Completed);
    assert_eq!(breaker(&a).await, None);
}
