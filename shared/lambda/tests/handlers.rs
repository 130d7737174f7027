//! The worker and DLQ handlers on in-memory ports with a recording SQS: each decision does the
//! right thing to its message, poison goes to the DLQ under its message id, duplicates complete
//! once, deferrals past the refresh threshold are re-sent fresh.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use common::{Stub, TestEngine, engine, topology};
use taskexec_core::engine::EngineConfig;
use taskexec_core::memory::{CountingSink, MemoryStore};
use taskexec_core::message::PoisonNote;
use taskexec_core::ports::QueuePair;
use taskexec_core::ports::{ControlStore, PauseScope, TaskStore};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::task::TaskState;
use taskexec_core::time::TokioClock;
use taskexec_lambda::actions::{Op, RecordingQueue};
use taskexec_lambda::dlq::{DlqHandler, DlqOutcome, MemoryPoisonLog};
use taskexec_lambda::window::MemoryWindow;
use taskexec_lambda::worker::{Worker, WorkerSettings};

type TestWorker = Worker<Arc<TestEngine>, Arc<RecordingQueue>, MemoryWindow>;

fn worker(settings: WorkerSettings) -> (TestWorker, Arc<Stub>, Arc<RecordingQueue>) {
    let config =
        EngineConfig { retry: RetryPolicy::default().with_max_attempts(2), seed: Some(1), ..EngineConfig::default() };
    let (engine, stub) = engine(config);
    let queue = Arc::new(RecordingQueue::default());
    (Worker::new(engine, queue.clone(), MemoryWindow::default(), topology(), settings), stub, queue)
}

fn message(id: &str, queue: &str, body: &str, receives: u32) -> serde_json::Value {
    serde_json::json!({
        "messageId": id,
        "receiptHandle": format!("rh-{id}"),
        "body": body,
        "attributes": {"ApproximateReceiveCount": receives.to_string()},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:taskexec-{queue}"),
        "awsRegion": "us-east-1"
    })
}

fn event(messages: Vec<serde_json::Value>) -> SqsEvent {
    serde_json::from_value(serde_json::json!({ "Records": messages })).unwrap()
}

fn raw(id: &str) -> String {
    format!(r#"{{"id":"{id}","providerId":"sim","modelId":"m","prompt":"hello","runId":"r"}}"#)
}

fn envelope(id: &str) -> String {
    format!(r#"{{"taskId":"{id}","providerId":"sim","modelId":"m","runId":"r","priority":"normal","readyAt":0}}"#)
}

fn failed_ids(r: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    r.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_raw_tasks_completes_and_is_acknowledged() {
    let (w, stub, actions) = worker(WorkerSettings::default());
    let batch = event((0..3).map(|i| message(&format!("m{i}"), "normal", &raw(&format!("t{i}")), 1)).collect());
    let response = w.handle(batch, None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(stub.calls.load(Ordering::SeqCst), 3);
    assert!(actions.ops().is_empty(), "success needs no SQS call: Lambda deletes the batch");
    let store = &w.executor().ports().store;
    for i in 0..3 {
        assert_eq!(store.get(&format!("t{i}")).await.unwrap().unwrap().state, TaskState::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn duplicate_delivery_while_running_makes_one_call_and_keeps_the_message() {
    let (w, stub, actions) = worker(WorkerSettings::default());
    let first = event(vec![message("m1", "normal", &raw("slow-1"), 1)]);
    let w = Arc::new(w);
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.handle(first, None).await }
    });
    while stub.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The same task arrives again (another message) while the first attempt runs.
    let duplicate = w.handle(event(vec![message("m2", "normal", &envelope("slow-1"), 1)]), None).await;
    assert_eq!(failed_ids(&duplicate), ["m2"], "not acknowledged: it must survive until the task is terminal");
    let Op::RetryAfter(copy, delay) = &actions.ops()[0] else { panic!("{:?}", actions.ops()) };
    assert_eq!(copy.receipt.handle(), Some("rh-m2"));
    let lease = Duration::from_secs(30);
    assert!(
        *delay > lease - Duration::from_secs(5) && *delay <= lease,
        "invisible for the lease's remaining time, got {delay:?}"
    );
    assert!(running.await.unwrap().batch_item_failures.is_empty());
    // Later the duplicate comes back, finds the task terminal, and is acknowledged.
    let again = w.handle(event(vec![message("m2", "normal", &envelope("slow-1"), 2)]), None).await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1, "one provider call");
}

#[tokio::test(start_paused = true)]
async fn poison_goes_to_the_dlq_under_its_message_id_and_is_acknowledged() {
    let (w, _, actions) = worker(WorkerSettings::default());
    let response = w.handle(event(vec![message("bad-1", "high", "{not json", 1)]), None).await;
    assert!(response.batch_item_failures.is_empty());
    let Op::Poison(receipt, note) = &actions.ops()[0] else { panic!("{:?}", actions.ops()) };
    assert!(receipt.source().unwrap().ends_with("taskexec-high"), "to the DLQ of the queue it came from");
    assert_eq!((note.message_id.as_str(), note.body.as_str()), ("bad-1", "{not json"));
}

#[tokio::test(start_paused = true)]
async fn retries_use_visibility_and_exhaustion_dead_letters_to_the_dlq() {
    let (w, _, actions) = worker(WorkerSettings::default());
    let first = w.handle(event(vec![message("m1", "low", &raw("flaky-1"), 1)]), None).await;
    assert_eq!(failed_ids(&first), ["m1"]);
    assert!(matches!(&actions.ops()[0], Op::RetryAfter(d, delay)
        if d.receipt.source().unwrap().ends_with("taskexec-low") && *delay <= Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = w.handle(event(vec![message("m1", "low", &raw("flaky-1"), 2)]), None).await;
    assert!(second.batch_item_failures.is_empty(), "dead-lettered: acknowledged");
    let Op::DeadLetter(dead) = &actions.ops()[1] else { panic!("{:?}", actions.ops()) };
    assert_eq!(dead.task_id, "flaky-1");
    assert!(dead.receipt.source().unwrap().ends_with("taskexec-low"), "to the DLQ of the queue it came from");
    let r = w.executor().ports().store.get("flaky-1").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempt), (TaskState::Failed, 2));
    assert!(r.dead_letter_reason.unwrap().starts_with("attempts exhausted: 2 of 2"));
}

#[tokio::test(start_paused = true)]
async fn a_long_deferral_is_refreshed_not_dead_lettered() {
    let (w, stub, actions) = worker(WorkerSettings { refresh_after_receives: 500, ..WorkerSettings::default() });
    w.executor().ports().store.set_paused(PauseScope::Global, true).await.unwrap();
    let early = w.handle(event(vec![message("m1", "normal", &raw("t1"), 3)]), None).await;
    assert_eq!(failed_ids(&early), ["m1"], "deferred by visibility while young");
    let late = w.handle(event(vec![message("m1", "normal", &envelope("t1"), 501)]), None).await;
    assert!(late.batch_item_failures.is_empty(), "reported done, so the mapping deletes the old message…");
    let log = actions.ops();
    // Paused 500 times already: the backoff is at its cap (150–300 s with jitter), and the fresh
    // copy carries the count on, so its backoff does not start again from 1 s.
    let secs = |d: &Duration| d.as_secs_f64();
    assert!(
        matches!(&log[1], Op::Send(fresh, delay) if fresh.task_id == "t1" && fresh.deferrals == 501
            && fresh.receipt == taskexec_core::ports::Receipt::default() && (150.0..=300.0).contains(&secs(delay))),
        "…after a fresh copy was sent: {log:?}"
    );
    let Op::RetryAfter(_, first) = &log[0] else { panic!("{log:?}") };
    assert!((2.0..=4.0).contains(&secs(first)), "receive 3 of a young message: 2 earlier deferrals, 2–4 s: {log:?}");
    assert_eq!(log.len(), 2, "no delete of its own: {log:?}");
    let r = w.executor().ports().store.get("t1").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempt), (TaskState::Queued, 0), "deferrals used no attempt");
    assert_eq!(stub.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_invocation_deadline_bounds_each_attempt() {
    let (w, _, _) = worker(WorkerSettings { safety_margin: Duration::from_secs(1), ..WorkerSettings::default() });
    let deadline = Instant::now() + Duration::from_secs(3);
    let response = w.handle(event(vec![message("m1", "normal", &raw("slow-2"), 1)]), Some(deadline)).await;
    assert_eq!(failed_ids(&response), ["m1"], "timed out: retried");
    let r = w.executor().ports().store.get("slow-2").await.unwrap().unwrap();
    let message = r.error.unwrap().message;
    assert!(message.starts_with("attempt timed out after 1"), "≈ 2 s cap: {message}");
}

fn task(id: &str) -> taskexec_core::task::TaskRecord {
    let t = serde_json::from_str(&raw(id)).unwrap();
    taskexec_core::task::TaskRecord::new(t, 1_700_000_000_000)
}

async fn claim(store: &MemoryStore, id: &str, now: i64) -> taskexec_core::task::TaskRecord {
    use taskexec_core::ports::{ClaimOutcome, ClaimRequest};
    let req = ClaimRequest { task_id: id.into(), owner: "dead".into(), now, lease_until: now + 1_000 };
    let ClaimOutcome::Claimed(r) = store.claim(req).await.unwrap() else { panic!("claim {id}") };
    *r
}

async fn finish(store: &MemoryStore, r: &taskexec_core::task::TaskRecord, outcome: taskexec_core::ports::Outcome) {
    let req = taskexec_core::ports::FinishRequest {
        task_id: r.task.id.clone(),
        epoch: r.epoch,
        outcome,
        attempt: r.attempt,
        throttles: 0,
        record: None,
        now: 1_700_000_000_500,
    };
    store.finish(req).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dlq_records_poison_analyses_dead_letters_and_requeues_crash_victims() {
    use taskexec_core::error::{ErrorClass, TaskError};
    use taskexec_core::ports::Outcome;
    let store = MemoryStore::default();
    let ids = ["dead", "victim-left", "victim-done", "done"];
    store.submit(ids.iter().map(|id| task(id)).collect()).await.unwrap();
    let t0 = 1_700_000_000_000;
    let dead = claim(&store, "dead", t0).await;
    let error = TaskError::new(ErrorClass::Transient, "reset");
    finish(&store, &dead, Outcome::Failed { error, dead_letter_reason: Some("attempts exhausted".into()) }).await;
    claim(&store, "victim-left", t0).await;
    claim(&store, "victim-done", t0).await;
    claim(&store, "victim-done", t0 + 5_000).await; // the lease lapsed once: a second claim, attempt 2
    let done = claim(&store, "done", t0).await;
    finish(&store, &done, Outcome::Released).await;
    store.cancel("done", t0).await.unwrap();

    let actions = Arc::new(RecordingQueue::default());
    let clock = TokioClock::starting_at(t0 + 10_000);
    let sink = Arc::new(CountingSink::default());
    let dlq = DlqHandler::new(store, MemoryPoisonLog::default(), actions.clone(), sink.clone(), clock, 2);
    let note = PoisonNote { message_id: "orig".into(), reason: "bad".into(), body: "x".into() };
    let batch = event(vec![
        message("p1", "normal-dlq", &note.to_body(), 1),
        message("p2", "normal-dlq", "garbage", 1001),
        message("d1", "normal-dlq", &envelope("dead"), 1),
        message("v1", "normal-dlq", &envelope("victim-left"), 1001),
        message("v2", "normal-dlq", &envelope("victim-done"), 1001),
        message("c1", "normal-dlq", &envelope("done"), 1),
        message("u1", "normal-dlq", &envelope("nobody"), 1),
    ]);
    let (response, outcomes) = dlq.handle(batch).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        outcomes,
        [
            DlqOutcome::Poison("orig".into()),
            DlqOutcome::Poison("p2".into()),
            DlqOutcome::Analysed("dead".into()),
            DlqOutcome::Requeued("victim-left".into()),
            DlqOutcome::Finalised("victim-done".into()),
            DlqOutcome::AlreadyDone("done".into()),
            DlqOutcome::Poison("u1".into()),
        ]
    );
    let notes = dlq.poison_log().notes.lock().unwrap().clone();
    assert_eq!(notes.iter().map(|n| n.message_id.as_str()).collect::<Vec<_>>(), ["orig", "p2", "u1"]);
    assert_eq!(actions.ops().len(), 1, "only the re-queue sends");
    assert!(
        matches!(&actions.ops()[0], Op::Send(d, delay) if d.task_id == "victim-left" && d.priority == taskexec_core::task::TaskPriority::Normal && delay.is_zero()),
        "{:?}",
        actions.ops()
    );
    assert_eq!(
        taskexec_core::memory::Counters::get(&sink.counters.dead_lettered),
        1,
        "only the finalised one: the engine counted the analysed one when it gave up"
    );
}

/// Serves each queued message once, as SQS would to one consumer.
#[derive(Default)]
struct FakeSource {
    pending: std::sync::Mutex<Vec<(String, aws_lambda_events::event::sqs::SqsMessage)>>,
}

impl taskexec_lambda::poller::MessageSource for FakeSource {
    async fn receive(
        &self,
        queue: &QueuePair,
        max: i32,
        _wait: Duration,
    ) -> Result<Vec<aws_lambda_events::event::sqs::SqsMessage>, taskexec_lambda::actions::ActionError> {
        let now: Vec<_> = {
            let mut pending = self.pending.lock().unwrap();
            let (mine, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(url, _)| *url == queue.url);
            *pending = rest;
            let (now, later) = mine.split_at(mine.len().min(max as usize));
            pending.extend(later.iter().cloned());
            now.iter().map(|(_, m)| m.clone()).collect()
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(now)
    }
}

#[tokio::test(start_paused = true)]
async fn the_local_poller_feeds_batches_and_deletes_only_successes() {
    use taskexec_lambda::poller::{PollerSettings, PollerStats, run};
    let (w, _, actions) = worker(WorkerSettings::default());
    let source = Arc::new(FakeSource::default());
    let normal = topology().queues[1].url.clone();
    let mut batch = event((0..12).map(|i| message(&format!("m{i}"), "normal", &raw(&format!("t{i}")), 1)).collect());
    batch.records.push(serde_json::from_value(message("bad", "normal", "{oops", 1)).unwrap());
    batch.records.push(serde_json::from_value(message("f1", "normal", &raw("flaky-x"), 1)).unwrap());
    source.pending.lock().unwrap().extend(batch.records.into_iter().map(|m| (normal.clone(), m)));
    let stats = Arc::new(PollerStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let settings = PollerSettings { concurrency: [1, 1, 1], ..PollerSettings::default() };
    let task = tokio::spawn(run(
        source,
        Arc::new(w),
        Arc::new(actions.clone()),
        topology(),
        settings,
        stats.clone(),
        stop.clone(),
    ));
    while stats.deletes.load(Ordering::SeqCst) + stats.failures.load(Ordering::SeqCst) < 14 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(stats.batches.load(Ordering::SeqCst), 2, "10 + 4: batches of at most ten");
    assert_eq!(
        stats.deletes.load(Ordering::SeqCst),
        13,
        "12 completed + 1 poison (sent to the DLQ, then acknowledged)"
    );
    assert_eq!(stats.failures.load(Ordering::SeqCst), 1, "the flaky task comes back by visibility");
    let acks: Vec<_> = actions.ops().into_iter().filter(|a| matches!(a, Op::Ack(..))).collect();
    assert_eq!(acks.len(), 13);
    assert!(acks.iter().all(|a| matches!(a, Op::Ack(r) if r.source() == Some(normal.as_str()))), "{acks:?}");
}

#[tokio::test(start_paused = true)]
async fn each_batch_adds_its_finished_tasks_to_the_run_counters_once_per_run() {
    let (w, _, _) = worker(WorkerSettings::default());
    let counter = Arc::new(taskexec_lambda::executor::MemoryRunCounter::default());
    let w = w.with_run_counter(counter.clone());
    let mut records: Vec<_> = (0..3).map(|i| message(&format!("m{i}"), "normal", &raw(&format!("t{i}")), 1)).collect();
    records.push(message("f", "normal", &raw("flaky-c"), 1));
    w.handle(event(records), None).await;
    let run = |c: &taskexec_lambda::executor::MemoryRunCounter| {
        c.runs.lock().unwrap().get("r").map(|(d, calls)| (d.completed, d.failed, *calls))
    };
    assert_eq!(run(&counter), Some((3, 0, 1)), "3 completed, one write for the run");
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.handle(event(vec![message("f", "normal", &raw("flaky-c"), 2)]), None).await;
    assert_eq!(run(&counter), Some((3, 1, 2)), "the dead-lettered task counts as failed");
    w.handle(event(vec![message("m0", "normal", &raw("t0"), 2)]), None).await;
    assert_eq!(run(&counter), Some((3, 1, 2)), "a duplicate finishes nothing: no write");
}

/// A task that panics its handler costs only its own message: the batch's other tasks complete.
/// Each crash is an attempt (counted at the claim); the claim after the last allowed one fails
/// the task with the reason and dead-letters it, so the crash loop ends.
#[tokio::test(start_paused = true)]
async fn a_task_that_crashes_its_handler_ends_failed_after_its_budget_while_its_siblings_complete() {
    let (w, _, actions) = worker(WorkerSettings::default());
    let batch = vec![
        message("m0", "normal", &raw("crash-1"), 1),
        message("m1", "normal", &raw("ok-1"), 1),
        message("m2", "normal", &raw("ok-2"), 1),
    ];
    let response = w.handle(event(batch), None).await;
    assert_eq!(failed_ids(&response), ["m0"], "only the crashing message fails");
    for id in ["ok-1", "ok-2"] {
        let r = w.executor().ports().store.get(id).await.unwrap().unwrap();
        assert_eq!(r.state, TaskState::Completed, "{id}");
    }
    let lease = EngineConfig::default().lease;
    assert!(
        matches!(&actions.ops()[0], Op::RetryAfter(d, delay) if d.receipt.handle() == Some("rh-m0") && *delay == lease),
        "the crashed message comes back after the claim's lease: {:?}",
        actions.ops()
    );
    // Delivered again after the lease: a second crash (attempt 2 of 2), then the budget check.
    tokio::time::advance(EngineConfig::default().lease + Duration::from_secs(1)).await;
    let again = w.handle(event(vec![message("m0", "normal", &envelope("crash-1"), 2)]), None).await;
    assert_eq!(failed_ids(&again), ["m0"]);
    tokio::time::advance(EngineConfig::default().lease + Duration::from_secs(1)).await;
    let last = w.handle(event(vec![message("m0", "normal", &envelope("crash-1"), 3)]), None).await;
    assert!(last.batch_item_failures.is_empty(), "dead-lettered and acknowledged");
    let r = w.executor().ports().store.get("crash-1").await.unwrap().unwrap();
    assert_eq!((r.state, r.attempt), (TaskState::Failed, 2));
    let reason = r.dead_letter_reason.unwrap();
    assert!(reason.starts_with("handler crashed during attempt 2"), "{reason}");
    let log = actions.ops();
    assert!(matches!(log.last(), Some(Op::DeadLetter(d)) if d.task_id == "crash-1"), "{log:?}");
}
