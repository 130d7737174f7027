//! The files in `events/` (the `sam local invoke -e` inputs) decoded and run through the worker
//! and DLQ handlers, so they can never rot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use taskexec_core::engine::{Engine, EngineConfig, Ports};
use taskexec_core::error::ProviderError;
use taskexec_core::memory::{CountingSink, MemoryLimiter, MemoryStore};
use taskexec_core::message::PoisonNote;
use taskexec_core::ports::TaskStore;
use taskexec_core::ports::{QueuePair, Topology};
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::{BenchmarkTask, TaskPriority, TaskRecord, TaskState, Usage};
use taskexec_core::time::TokioClock;
use taskexec_lambda::actions::{Op, RecordingQueue};
use taskexec_lambda::dlq::{DlqHandler, DlqOutcome, MemoryPoisonLog};
use taskexec_lambda::window::MemoryWindow;
use taskexec_lambda::worker::{Worker, WorkerSettings};

const NORMAL: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-NormalQueue-Xk3mZ8pQ2rTs";
const NORMAL_DLQ: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-NormalDeadLetterQueue-Jw7nB4vL9cHd";

fn topology() -> Topology {
    let other = |priority, name: &str| QueuePair {
        priority,
        url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}"),
        dlq_url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}-dlq"),
    };
    let normal = QueuePair { priority: TaskPriority::Normal, url: NORMAL.into(), dlq_url: NORMAL_DLQ.into() };
    Topology { queues: [other(TaskPriority::High, "HighQueue"), normal, other(TaskPriority::Low, "LowQueue")] }
}

#[derive(Default)]
struct Sim {
    calls: AtomicUsize,
}

impl Provider for Sim {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(ProviderResponse {
            text: "bonjour".into(),
            finish_reason: "stop".into(),
            usage: Usage::default(),
            model: request.model,
            request_id: None,
            latency: Duration::from_millis(100),
            ttft: None,
            limits: Default::default(),
            raw: None,
        })
    }
}

type TestWorker = Worker<
    Arc<Engine<MemoryStore, MemoryStore, MemoryLimiter, CountingSink, Arc<Sim>, TokioClock>>,
    Arc<RecordingQueue>,
    MemoryWindow,
>;

async fn worker_with_demo_tasks() -> (TestWorker, Arc<Sim>, Arc<RecordingQueue>) {
    let sim = Arc::new(Sim::default());
    let ports = Ports {
        store: MemoryStore::default(),
        breakers: MemoryStore::default(),
        limiter: MemoryLimiter::default(),
        metrics: CountingSink::default(),
        provider: sim.clone(),
        clock: TokioClock::starting_at(1_700_000_000_000),
    };
    let engine = Arc::new(Engine::new(ports, EngineConfig::default()));
    let records = ["t-1", "t-2", "t-3"]
        .iter()
        .map(|id| {
            let task: BenchmarkTask = serde_json::from_str(&format!(
                r#"{{"id":"{id}","providerId":"sim","modelId":"sim-small","prompt":"p","runId":"demo"}}"#
            ))
            .unwrap();
            TaskRecord::new(task, 1_700_000_000_000)
        })
        .collect();
    engine.ports().store.submit(records).await.unwrap();
    let actions = Arc::new(RecordingQueue::default());
    (Worker::new(engine, actions.clone(), MemoryWindow::default(), topology(), WorkerSettings::default()), sim, actions)
}

fn sqs(text: &str) -> SqsEvent {
    serde_json::from_str(text).expect("the event file decodes as an SqsEvent")
}

#[tokio::test(start_paused = true)]
async fn sqs_batch_completes_every_task() {
    let (w, sim, _) = worker_with_demo_tasks().await;
    let response = w.handle(sqs(include_str!("../../../events/sqs-batch.json")), None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(sim.calls.load(Ordering::SeqCst), 3);
    for id in ["t-1", "t-2", "t-3"] {
        assert_eq!(w.executor().ports().store.get(id).await.unwrap().unwrap().state, TaskState::Completed);
    }
}

#[tokio::test(start_paused = true)]
async fn sqs_duplicate_delivery_calls_once_and_keeps_the_second_message() {
    let (w, sim, actions) = worker_with_demo_tasks().await;
    let event = sqs(include_str!("../../../events/sqs-duplicate-delivery.json"));
    let ids: Vec<_> = event.records.iter().map(|r| r.message_id.clone().unwrap()).collect();
    let response = w.handle(event, None).await;
    let failed: Vec<_> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    // Both copies run concurrently: whichever claims first completes, the other is kept.
    assert_eq!(failed.len(), 1, "one copy claimed, the other kept for later");
    assert!(ids.contains(&failed[0]));
    assert!(matches!(&actions.ops()[0], Op::RetryAfter(d, _) if d.receipt.source() == Some(NORMAL)));
    assert_eq!(sim.calls.load(Ordering::SeqCst), 1);
    assert_eq!(w.executor().ports().store.get("t-1").await.unwrap().unwrap().state, TaskState::Completed);
}

#[tokio::test(start_paused = true)]
async fn sqs_poison_goes_to_the_dlq() {
    let (w, _, actions) = worker_with_demo_tasks().await;
    let event = sqs(include_str!("../../../events/sqs-poison.json"));
    let id = event.records[0].message_id.clone().unwrap();
    assert!(w.handle(event, None).await.batch_item_failures.is_empty());
    let Op::Poison(receipt, note) = &actions.ops()[0] else { panic!("{:?}", actions.ops()) };
    assert_eq!(receipt.source(), Some(NORMAL), "to the DLQ of the queue it came from ({NORMAL_DLQ} on SQS)");
    let body = note.to_body();
    assert_eq!(PoisonNote::from_body(&body).unwrap().message_id, id);
}

#[tokio::test(start_paused = true)]
async fn sqs_raw_external_task_is_created_and_run() {
    let (w, sim, _) = worker_with_demo_tasks().await;
    assert!(
        w.handle(sqs(include_str!("../../../events/sqs-raw-external.json")), None).await.batch_item_failures.is_empty()
    );
    assert_eq!(sim.calls.load(Ordering::SeqCst), 1);
    let (pending, _) = w.executor().ports().store.pending(0, 10).await.unwrap();
    assert_eq!(pending.len(), 3, "only the three demo tasks are still queued");
    let runs = w.executor().ports().store.summary(Some("external-demo")).await.unwrap();
    assert_eq!(runs[0].completed, 1, "the raw task ran in the run it named");
}

#[tokio::test(start_paused = true)]
async fn dlq_batch_is_analysed() {
    let store = MemoryStore::default();
    let task = |id: &str| {
        let t: BenchmarkTask = serde_json::from_str(&format!(
            r#"{{"id":"{id}","providerId":"sim","modelId":"sim-small","prompt":"p","runId":"demo"}}"#
        ))
        .unwrap();
        TaskRecord::new(t, 0)
    };
    store.submit(vec![task("t-crash"), task("t-exhausted")]).await.unwrap();
    let actions = Arc::new(RecordingQueue::default());
    let dlq = DlqHandler::new(
        store,
        MemoryPoisonLog::default(),
        actions.clone(),
        CountingSink::default(),
        TokioClock::starting_at(1_000),
        3,
    );
    let (response, outcomes) = dlq.handle(sqs(include_str!("../../../events/dlq-batch.json"))).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0], DlqOutcome::Requeued("t-crash".into()), "unfinished with attempts left");
    assert!(matches!(&outcomes[2], DlqOutcome::Poison(_)));
    assert!(
        matches!(&actions.ops()[0], Op::Send(d, delay) if d.task_id == "t-crash" && d.priority == TaskPriority::Normal && delay.is_zero())
    );
}

#[test]
fn schedule_event_decodes() {
    let event: EventBridgeEvent = serde_json::from_str(include_str!("../../../events/schedule.json")).unwrap();
    assert_eq!(event.detail_type, "Scheduled Event");
}
