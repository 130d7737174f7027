//! Throughput of the SQLite store under the engine's hot path: submit 100,000 tasks, then claim
//! and finish every one of them from 100 concurrent tokio tasks, and print operations per second.
//!
//! `cargo run --release -p taskexec-local --example store_throughput [tasks] [workers]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use taskexec_core::ports::{ClaimOutcome, ClaimRequest, FinishRequest, Outcome, TaskStore, WriteOutcome};
use taskexec_core::task::{AttemptRecord, BenchmarkTask, TaskRecord, TaskResult, Usage};
use taskexec_local::SqliteStore;

const NOW: i64 = 1_700_000_000_000;

fn record(i: usize) -> TaskRecord {
    let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
        "id": format!("task-{i:06}"),
        "providerId": "sim",
        "modelId": format!("model-{}", i % 4),
        "prompt": "Explain the difference between a mutex and a semaphore in two sentences.",
        "parameters": {"temperature": 0.2, "maxTokens": 256},
        "runId": "bench"
    }))
    .expect("a valid task");
    TaskRecord::new(task, NOW)
}

fn completion(claimed: &TaskRecord) -> FinishRequest {
    let attempt = AttemptRecord {
        attempt: claimed.attempt,
        epoch: claimed.epoch,
        started_at: "2023-11-14T22:13:20.000Z".into(),
        latency_ms: 5.0,
        ttft_ms: None,
        queue_wait_ms: 0,
        outcome: "ok".into(),
        provider_status: Some(200),
        deployment: None,
        model: None,
    };
    let result = TaskResult {
        text: "A mutex admits one holder; a semaphore admits up to N.".into(),
        finish_reason: "stop".into(),
        usage: Usage { input_tokens: 20, output_tokens: 15, cached_tokens: None },
        deployment: "sim".into(),
        model: claimed.task.model_id.clone(),
        request_id: None,
        latency_ms: 5.0,
        ttft_ms: None,
        attempts: vec![attempt.clone()],
        raw_response: None,
    };
    FinishRequest {
        task_id: claimed.task.id.clone(),
        epoch: claimed.epoch,
        outcome: Outcome::Completed(result),
        attempt: claimed.attempt,
        throttles: 0,
        record: Some(attempt),
        now: NOW + 10,
    }
}

/// Claim and finish tasks taken from a shared cursor until none is left.
async fn drive(store: Arc<SqliteStore>, next: Arc<AtomicUsize>, tasks: usize) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        let request = ClaimRequest {
            task_id: format!("task-{i:06}"),
            owner: "bench".into(),
            now: NOW,
            lease_until: NOW + 60_000,
        };
        let ClaimOutcome::Claimed(claimed) = store.claim(request).await.expect("claim") else { panic!("not claimed") };
        let written = store.finish(completion(&claimed)).await.expect("finish");
        assert_eq!(written, WriteOutcome::Applied);
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let tasks = args.next().unwrap_or(100_000);
    let workers = args.next().unwrap_or(100);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(SqliteStore::open(dir.path().join("bench.db")).expect("open"));

    let started = Instant::now();
    store.submit((0..tasks).map(record).collect()).await.expect("submit");
    let submit_s = started.elapsed().as_secs_f64();
    println!("submit: {tasks} tasks in {submit_s:.2} s = {:.0} tasks/s", tasks as f64 / submit_s);

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let drivers: Vec<_> =
        (0..workers).map(|_| tokio::spawn(drive(Arc::clone(&store), Arc::clone(&next), tasks))).collect();
    for driver in drivers {
        driver.await.expect("driver");
    }
    let run_s = started.elapsed().as_secs_f64();
    println!(
        "claim+finish: {tasks} tasks with {workers} concurrent workers in {run_s:.2} s = {:.0} tasks/s, {:.0} ops/s",
        tasks as f64 / run_s,
        2.0 * tasks as f64 / run_s
    );

    let summary = store.summary(Some("bench")).await.expect("summary");
    let completed: u64 = summary.iter().map(|g| g.completed).sum();
    assert_eq!(completed, tasks as u64);
}
