//! The serverless shape end to end against the local AWS emulator (LocalStack, or moto with
//! `TASKEXEC_TEST_EMULATOR=moto`; started by `scripts/emulators` when `TASKEXEC_TEST_AWS_ENDPOINT`
//! is unset): the API router over
//! DynamoDB and SQS takes submissions, the local event-source poller feeds the queues' batches to
//! the worker handler exactly as Lambda would, the DLQ handler and the sweeper do their parts.
//! The provider is the built-in `sim` (no network).

#[path = "../../shared/aws/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use taskexec_api::{ApiSettings, ApiState, SystemSampler, router};
use taskexec_aws::{AwsBackend, BackendSettings, DynamoConfig, DynamoLimiter, DynamoStore, LimiterSettings};
use taskexec_core::error::ProviderError;
use taskexec_core::memory::{Counters, CountingSink};
use taskexec_core::ports::{ClaimOutcome, ClaimRequest, LimitKey, TaskStore};
use taskexec_core::ports::{QueuePair, Topology};
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::{TaskPriority, TaskRecord, TaskState};
use taskexec_core::time::{Clock, SystemClock};
use taskexec_e2e::Calls;
use taskexec_lambda::dlq::{DlqHandler, DlqOutcome};
use taskexec_lambda::poller::{MessageSource, PollerSettings, PollerStats};
use taskexec_lambda::worker::{DeferBackoff, WorkerSettings};
use taskexec_providers::Deployments;
use taskexec_providers::settings::RunConfig;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The production lease (30 s): an attempt here takes well under a second, but the emulator is
/// shared with other tests and has stalled a write for over 3 s, which let a duplicate copy
/// reclaim a live attempt (correct under fencing, but not the single call these tests count).
/// Tests that wait for a lease to lapse set a short one themselves.
const CONFIG: &str = r#"
[engine]
lease_ms = 30000
[retry]
max_attempts = 2
base_delay_ms = 100
max_delay_ms = 200
[deployments.sim]
kind = "sim"
# Never reached here (6 pollers × batches of 10: 60 tasks at once at most; at 50 a deferral for
# the limit could happen, which the two-hundred-task test's count of worker SQS calls, 0, does not
# allow): exercises the DynamoDB-leased limiter on every task.
concurrency = 100
[deployments.sim.sim]
latency = { median_ms = 20, p99_ms = 60 }
seed = 1
"#;

/// One deployment of the stack on the emulator: a fresh table and six fresh queues.
struct Stack<P = Deployments> {
    table: String,
    dynamo: aws_sdk_dynamodb::Client,
    backend: AwsBackend<Arc<CountingSink>, P>,
    topology: Topology,
    app: axum::Router,
    sink: Arc<CountingSink>,
}

fn store(stack_dynamo: &aws_sdk_dynamodb::Client, table: &str) -> DynamoStore {
    DynamoStore::new(stack_dynamo.clone(), DynamoConfig::new(table).with_unsent_shards(4))
}

async fn stack() -> Stack {
    stack_with(WorkerSettings { cancel_check_every: Duration::from_millis(500), ..WorkerSettings::default() }).await
}

async fn stack_with(worker: WorkerSettings) -> Stack {
    stack_on(CONFIG, common::dynamo_client(), common::sqs_client(), worker, None, |deployments| deployments).await
}

/// A stack whose AWS calls all go through `calls`.
async fn counted_stack(worker: WorkerSettings, calls: &Calls) -> Stack {
    let dynamo = common::dynamo_client();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(dynamo.config().to_builder().interceptor(calls.clone()).build());
    let sqs = common::sqs_client();
    let sqs = aws_sdk_sqs::Client::from_conf(sqs.config().to_builder().interceptor(calls.clone()).build());
    stack_on(CONFIG, dynamo, sqs, worker, None, |deployments| deployments).await
}

/// A stack on `config` whose provider is `provider(the configured deployments)`, with the
/// engine's lease `lease` if given (else the config's).
async fn stack_on<P: Provider>(
    config: &str,
    dynamo: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    worker: WorkerSettings,
    lease: Option<Duration>,
    provider: impl FnOnce(Deployments) -> P,
) -> Stack<P> {
    let table = common::unique_name("tasks");
    taskexec_aws::create_table(&dynamo, &table).await.unwrap();
    let topology = common::fresh_topology(&sqs).await;
    let sink = Arc::new(CountingSink::default());
    let backend = backend_on(config, "worker-e2e", (&dynamo, &sqs), &table, &topology, worker, lease, provider, &sink);
    let api = ApiSettings::new(["sim"], Arc::new(SystemSampler::new().unwrap()))
        .with_worker_timeout(Duration::from_secs(120))
        .with_run_counter(backend.store.clone())
        .without_global_metrics();
    let app = router(ApiState::new(backend.store.clone(), backend.queue.clone(), api));
    Stack { table, dynamo, backend, topology, app, sink }
}

/// One worker of a stack (a Lambda container): its own engine named `owner` over the stack's
/// table and queues.
#[allow(clippy::too_many_arguments)]
fn backend_on<P: Provider>(
    config: &str,
    owner: &str,
    (dynamo, sqs): (&aws_sdk_dynamodb::Client, &aws_sdk_sqs::Client),
    table: &str,
    topology: &Topology,
    worker: WorkerSettings,
    lease: Option<Duration>,
    provider: impl FnOnce(Deployments) -> P,
    sink: &Arc<CountingSink>,
) -> AwsBackend<Arc<CountingSink>, P> {
    let config = RunConfig::parse(config).unwrap();
    let mut engine = config.engine_config(owner.into());
    engine.lease = lease.unwrap_or(engine.lease);
    let settings = BackendSettings {
        table: DynamoConfig::new(table).with_unsent_shards(4),
        topology: topology.clone(),
        engine,
        worker,
        limiter: LimiterSettings::default(),
    };
    let deployments = Deployments::from_config(&config.deployments, |_| None).unwrap();
    AwsBackend::new(dynamo, sqs, settings, provider(deployments), sink.clone())
}

impl<P: Provider> Stack<P> {
    fn store(&self) -> DynamoStore {
        store(&self.dynamo, &self.table)
    }

    async fn call(&self, method: &str, uri: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Start the local event-source mapping; it stops when the returned token is cancelled.
    fn poll(&self) -> (CancellationToken, Arc<PollerStats>, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let stats = Arc::new(PollerStats::default());
        let settings =
            PollerSettings { wait: Duration::from_secs(1), concurrency: [2, 2, 2], ..PollerSettings::default() };
        let handle = self.backend.poll(settings, stats.clone(), stop.clone());
        (stop, stats, handle)
    }

    async fn run_status(&self, run: &str) -> serde_json::Value {
        self.call("GET", &format!("/runs/{run}"), None).await.1
    }

    async fn wait_run(&self, run: &str, field: &str, want: u64, limit: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let status = self.run_status(run).await;
            if status["counts"][field].as_u64() == Some(want) {
                return status;
            }
            if start.elapsed() >= limit {
                let stuck = self.unfinished(run).await;
                panic!("run {run} did not reach {field} = {want}: {status}\nunfinished tasks:\n{stuck}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The records and audit events of the run's tasks (ids `{run}-0..`) that are not terminal,
    /// for a failure message: the emulator's state is gone once the test ends.
    async fn unfinished(&self, run: &str) -> String {
        let mut text = String::new();
        for i in 0..1000 {
            let id = format!("{run}-{i}");
            let Ok(Some(record)) = self.store().get(&id).await else { break };
            if !record.state.is_terminal() {
                let events = self.store().events(&id).await;
                text.push_str(&format!("{id}: {record:?}\nevents: {events:?}\n"));
            }
        }
        text
    }

    async fn task(&self, id: &str) -> TaskRecord {
        self.store().get(id).await.unwrap().unwrap()
    }
}

fn tasks(run: &str, from: usize, n: usize, priority: &str) -> serde_json::Value {
    (from..from + n)
        .map(|i| {
            serde_json::json!({"id": format!("{run}-{i}"), "providerId": "sim", "modelId": "sim-small",
                "prompt": format!("question {i}"), "priority": priority, "runId": run})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tasks_submitted_through_the_api_all_complete_via_sqs() {
    let s = stack().await;
    let (stop, stats, handle) = s.poll();
    for batch in 0..20 {
        let priority = ["high", "normal", "low"][batch % 3];
        let (status, body) = s.call("POST", "/tasks", Some(tasks("e2e", batch * 10, 10, priority))).await;
        assert_eq!(status, 201, "{body}");
    }
    let status = s.wait_run("e2e", "completed", 200, Duration::from_secs(180)).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(status["totalTasks"], 200, "{status}");
    assert_eq!(status["progress"], 1.0);
    assert_eq!(Counters::get(&s.sink.counters.attempts), 200, "one attempt per task");
    let counts = s.backend.store.run_counts("e2e").await.unwrap();
    assert_eq!(
        (counts.submitted, counts.completed, counts.failed),
        (200, 200, 0),
        "the run counters: submissions added once per request, outcomes once per run per batch"
    );
    let probe = DynamoLimiter::new(s.dynamo.clone(), s.table.clone(), "probe", LimiterSettings::default());
    let leased = probe.leased_total(&LimitKey::Deployment("sim".into())).await.unwrap();
    assert_eq!(leased, 0, "every leased permit went back once the worker was idle");
    let lease = s
        .dynamo
        .get_item()
        .table_name(&s.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("LIMIT#D#sim".into()));
    let lease =
        lease.key("sk", aws_sdk_dynamodb::types::AttributeValue::S("HOLDER#worker-e2e".into())).send().await.unwrap();
    assert!(lease.item.is_some(), "the worker leased its permits from the table");
    let receives = stats.receives.load(Ordering::SeqCst);
    let deletes = stats.deletes.load(Ordering::SeqCst);
    let batches = stats.batches.load(Ordering::SeqCst);
    let submit_calls = s.backend.queue.api_calls();
    let worker_calls = s.backend.worker_queue.api_calls() - receives - deletes;
    eprintln!(
        "SQS per task: code {:.3} (submission {submit_calls}, worker {worker_calls}); mapping: {receives} receives \
         ({batches} non-empty), {deletes} deletes for 200 tasks",
        (submit_calls + worker_calls) as f64 / 200.0
    );
    assert_eq!(submit_calls, 20, "one SendMessageBatch per request of ten");
    assert_eq!(worker_calls, 0, "successes need no call from the worker: the mapping deletes them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_through_the_api_stops_new_attempts_and_resume_continues() {
    let s = stack().await;
    let (status, _) = s.call("POST", "/control/pause", None).await;
    assert_eq!(status, 200);
    assert_eq!(s.call("POST", "/tasks", Some(tasks("paused", 0, 10, "normal"))).await.0, 201);
    let (stop, _, handle) = s.poll();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(Counters::get(&s.sink.counters.attempts), 0, "no attempt starts while paused");
    assert!(Counters::get(&s.sink.counters.deferred) > 0, "the deliveries were deferred");
    for i in 0..10 {
        let r = s.task(&format!("paused-{i}")).await;
        assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Queued, 0, 0), "deferrals use no attempt");
    }
    assert_eq!(s.call("POST", "/control/resume", None).await.0, 200);
    s.wait_run("paused", "completed", 10, Duration::from_secs(60)).await;
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_whose_send_failed_is_resent_by_the_sweeper() {
    let s = stack().await;
    // The record was written, then the send failed: no message exists for it.
    let task = serde_json::from_value(tasks("lost", 0, 1, "low")[0].clone()).unwrap();
    s.store().submit(vec![TaskRecord::new(task, SystemClock.now() - 120_000)]).await.unwrap();
    let (stop, _, handle) = s.poll();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.task("lost-0").await.state, TaskState::Queued, "nothing delivers it");
    let settings = taskexec_lambda::sweeper::ResendSettings::default();
    let resend = taskexec_lambda::sweeper::resend::resend_missing;
    let queue: &taskexec_aws::SqsQueue = &s.backend.queue;
    let report = resend(&s.store(), queue, &SystemClock, settings).await.unwrap();
    assert_eq!(report.resent, 1);
    s.wait_run("lost", "completed", 1, Duration::from_secs(60)).await;
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_died_mid_task_leaves_a_lease_that_expires_then_the_task_completes_once() {
    let s = stack().await;
    assert_eq!(s.call("POST", "/tasks", Some(tasks("dies", 0, 1, "high"))).await.0, 201);
    // A worker claimed it and died without writing an outcome.
    let now = SystemClock.now();
    let claim = ClaimRequest { task_id: "dies-0".into(), owner: "dead".into(), now, lease_until: now + 3_000 };
    assert!(matches!(s.store().claim(claim).await.unwrap(), ClaimOutcome::Claimed(_)));
    let (stop, _, handle) = s.poll();
    s.wait_run("dies", "completed", 1, Duration::from_secs(60)).await;
    stop.cancel();
    handle.await.unwrap();
    let r = s.task("dies-0").await;
    assert_eq!(r.attempt, 2, "the dead worker's claim counted, then the real attempt");
    assert_eq!(Counters::get(&s.sink.counters.attempts), 1, "one provider call after the lease expired");
    assert!(r.started_at.unwrap() <= now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_and_exhausted_tasks_reach_the_dlq_and_redrive_gives_a_fresh_budget() {
    let s = stack().await;
    let normal = s.topology.queues[1].clone();
    s.backend.queue.send_raw(&normal.url, "this is not a task").await.unwrap();
    let mut failing = tasks("dead", 0, 1, "normal");
    failing[0]["parameters"] = serde_json::json!({"extra": {"sim_fault": "server_error"}});
    assert_eq!(s.call("POST", "/tasks", Some(failing)).await.0, 201);
    let mut rejected = tasks("permanent", 0, 1, "normal");
    rejected[0]["parameters"] = serde_json::json!({"extra": {"sim_fault": "bad_request"}});
    assert_eq!(s.call("POST", "/tasks", Some(rejected)).await.0, 201);
    let (stop, _, handle) = s.poll();
    s.wait_run("dead", "failed", 1, Duration::from_secs(60)).await;
    s.wait_run("permanent", "failed", 1, Duration::from_secs(60)).await;
    let permanent = s.task("permanent-0").await;
    assert_eq!(permanent.error.as_ref().unwrap().class.as_str(), "permanent");
    assert_eq!((permanent.attempt, permanent.dead_letter_reason.as_deref()), (1, None), "failed at once, no retry");
    let r = s.task("dead-0").await;
    assert_eq!((r.attempt, r.error.as_ref().unwrap().class.as_str()), (2, "transient"));
    assert!(r.dead_letter_reason.as_deref().unwrap().starts_with("attempts exhausted: 2 of 2"));

    // The DLQ function's view: the poison note and the dead-lettered envelope.
    let dlq =
        QueuePair { priority: TaskPriority::Normal, url: normal.dlq_url.clone(), dlq_url: normal.dlq_url.clone() };
    let mut messages = Vec::new();
    let start = Instant::now();
    while messages.len() < 2 && start.elapsed() < Duration::from_secs(30) {
        messages.extend(s.backend.worker_queue.receive(&dlq, 10, Duration::from_secs(1)).await.unwrap());
    }
    assert_eq!(messages.len(), 2, "poison and dead letter on the DLQ");
    let handler = DlqHandler::new(
        s.store(),
        s.store(),
        s.backend.queue.clone(),
        Arc::new(CountingSink::default()),
        SystemClock,
        2,
    );
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    event.records = messages;
    let (response, mut outcomes) = Box::pin(handler.handle(event)).await;
    assert!(response.batch_item_failures.is_empty());
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert!(matches!(&outcomes[0], DlqOutcome::Analysed(id) if id == "dead-0"), "{outcomes:?}");
    assert!(matches!(&outcomes[1], DlqOutcome::Poison(_)), "{outcomes:?}");
    let DlqOutcome::Poison(message_id) = &outcomes[1] else { unreachable!() };
    let item = s
        .dynamo
        .get_item()
        .table_name(&s.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("POISON#{message_id}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("POISON".into()))
        .send()
        .await
        .unwrap();
    assert!(item.item.is_some(), "the poison message is recorded under its message id");

    // Redrive: a fresh budget, and it runs again (and fails again: its fault is forced).
    let (status, body) = s.call("POST", "/tasks/dead-0/redrive", None).await;
    assert_eq!(status, 200, "{body}");
    let redriven = s.task("dead-0").await;
    assert_eq!((redriven.state, redriven.attempt), (TaskState::Queued, 0));
    s.wait_run("dead", "failed", 1, Duration::from_secs(60)).await;
    let start = Instant::now();
    while s.task("dead-0").await.history.len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(30), "the redriven task ran again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(s.task("dead-0").await.attempt, 2, "two more attempts after the redrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_messages_of_one_task_make_one_provider_call_and_one_completion() {
    let s = stack().await;
    assert_eq!(s.call("POST", "/tasks", Some(tasks("dup", 0, 1, "normal"))).await.0, 201);
    // The same envelope sent twice more, as an at-least-once producer might.
    let route =
        taskexec_core::ports::Route { provider_id: "sim".into(), model_id: "sim-small".into(), run_id: "dup".into() };
    let body = taskexec_core::ports::Delivery::new("dup-0", Arc::new(route), TaskPriority::Normal, 0).to_body();
    let normal = s.topology.queues[1].url.clone();
    s.backend.queue.send_raw(&normal, &body).await.unwrap();
    s.backend.queue.send_raw(&normal, &body).await.unwrap();
    let (stop, stats, handle) = s.poll();
    s.wait_run("dup", "completed", 1, Duration::from_secs(60)).await;
    let start = Instant::now();
    while stats.deletes.load(Ordering::SeqCst) < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "every copy is eventually acknowledged (a copy that found the lease held waits for its end, 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(Counters::get(&s.sink.counters.attempts), 1, "one provider call");
    assert_eq!(Counters::get(&s.sink.counters.completed), 1, "one completion");
    assert_eq!(s.task("dup-0").await.attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_deferral_is_refreshed_on_the_queue_not_dead_lettered() {
    // Refresh after 2 receives instead of 5 (half the production maxReceiveCount of 10, which
    // the queues here have too), with the pause backoff capped at 2 s, so a few seconds of pause
    // exercise the path twice.
    let backoff = DeferBackoff { pause_cap: Duration::from_secs(2), ..DeferBackoff::default() };
    let settings = WorkerSettings {
        refresh_after_receives: 2,
        cancel_check_every: Duration::from_millis(500),
        backoff,
        ..WorkerSettings::default()
    };
    let s = stack_with(settings).await;
    assert_eq!(s.call("POST", "/control/pause", None).await.0, 200);
    assert_eq!(s.call("POST", "/tasks", Some(tasks("long", 0, 1, "normal"))).await.0, 201);
    let (stop, stats, handle) = s.poll();
    // Paused: deferred by visibility (1–2 s) until past 2 receives, then re-sent fresh and the
    // old message deleted — the poller sees that as a success.
    let start = Instant::now();
    while stats.deletes.load(Ordering::SeqCst) < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the deferred message was refreshed twice");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = s.task("long-0").await;
    assert_eq!((r.state, r.attempt, r.throttles), (TaskState::Queued, 0, 0), "refreshes use no attempt");
    let dlq = QueuePair {
        priority: TaskPriority::Normal,
        url: s.topology.queues[1].dlq_url.clone(),
        dlq_url: s.topology.queues[1].dlq_url.clone(),
    };
    let dead = s.backend.worker_queue.receive(&dlq, 10, Duration::from_secs(1)).await.unwrap();
    assert!(dead.is_empty(), "nothing was dead-lettered: {dead:?}");
    assert_eq!(s.call("POST", "/control/resume", None).await.0, 200);
    s.wait_run("long", "completed", 1, Duration::from_secs(60)).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(Counters::get(&s.sink.counters.attempts), 1);
}

/// A paused run holding 2,000 queued tasks costs a number of AWS calls per minute bounded
/// independently of how fast messages could cycle: DynamoDB sees no call per delivery (the
/// worker defers a paused task on the control state it read at most a second ago, before any
/// permit or task read), and each message is received at most 7 times in its first minute
/// (backoff 1, 1, 2, 4, 8, 16, 32 s...; then one receive per 150–300 s), where the 1-second
/// recheck of before cost 60. The figures are printed for docs/deploy.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_run_of_two_thousand_tasks_costs_bounded_calls_while_it_waits() {
    const TASKS: usize = 2_000;
    const PAUSE: Duration = Duration::from_secs(60);
    let calls = Calls::default();
    let settings = WorkerSettings { cancel_check_every: Duration::from_secs(2), ..WorkerSettings::default() };
    let s = counted_stack(settings, &calls).await;
    let (status, _) = s.call("POST", "/control/pause", Some(serde_json::json!({"runId": "held"}))).await;
    assert_eq!(status, 200);
    for from in (0..TASKS).step_by(500) {
        let (status, body) = s.call("POST", "/tasks", Some(tasks("held", from, 500, "normal"))).await;
        assert_eq!(status, 201, "{body}");
    }
    let before = calls.snapshot();
    // More pollers on the run's queue than the default 2, so that the emulator (one Python
    // process, a few ms per call) gets through more of the 2,000 messages in the minute.
    let stop = CancellationToken::new();
    let stats = Arc::new(PollerStats::default());
    let settings = PollerSettings { wait: Duration::from_secs(1), concurrency: [1, 8, 1], ..PollerSettings::default() };
    let handle = s.backend.poll(settings, stats.clone(), stop.clone());
    tokio::time::sleep(PAUSE).await;
    stop.cancel();
    handle.await.unwrap();
    let (dynamo, dynamo_ops) = calls.since(&before, "DynamoDB");
    let (sqs, sqs_ops) = calls.since(&before, "SQS");
    let deferred = Counters::get(&s.sink.counters.deferred);
    eprintln!(
        "paused run, {TASKS} tasks, {} s: {deferred} deliveries deferred; DynamoDB {dynamo} calls {dynamo_ops:?}; \
         SQS {sqs} calls {sqs_ops:?}; mapping: {} receives, {} batches",
        PAUSE.as_secs(),
        stats.receives.load(Ordering::SeqCst),
        stats.batches.load(Ordering::SeqCst)
    );
    assert_eq!(Counters::get(&s.sink.counters.attempts), 0, "nothing ran while paused");
    assert!(deferred >= 100, "deliveries were made and deferred: {deferred}");
    // DynamoDB: the control item at most once a second (per process), and the worker's cancel
    // check every 2 s while a batch is in hand; nothing per delivery.
    assert!(dynamo <= 2 * PAUSE.as_secs() + 10, "DynamoDB calls do not grow with deliveries: {dynamo_ops:?}");
    // SQS: at most 7 receives per message in its first minute (each a visibility change or, past
    // 5 receives, a fresh copy), plus the mapping's receive calls (10 messages each, or empty
    // long polls: 6 loops, one a second at most).
    let per_message = 7 * TASKS as u64;
    let receive_calls = per_message / 10 + 6 * (PAUSE.as_secs() + 1);
    assert!(deferred <= per_message, "no message was received more than 7 times in a minute: {deferred}");
    assert!(sqs <= per_message + receive_calls, "SQS calls bounded by the backoff: {sqs_ops:?}");
    // And per delivery: one visibility change (or, past 5 receives, one fresh copy), never a
    // DynamoDB call.
    let per_delivery: u64 = sqs_ops
        .iter()
        .filter(|(op, _)| op.ends_with("ChangeMessageVisibility") || op.ends_with("SendMessage"))
        .map(|(_, n)| n)
        .sum();
    assert!(per_delivery <= deferred, "one SQS write per deferred delivery: {sqs_ops:?}, {deferred} deferred");
    for i in (0..TASKS).step_by(97) {
        let r = s.task(&format!("held-{i}")).await;
        assert_eq!((r.state, r.attempt), (TaskState::Queued, 0), "held-{i}: deferrals use no attempt");
    }
    let (status, body) = s.call("GET", "/metrics", None).await;
    assert_eq!(status, 400, "no global summary on DynamoDB (it would scan the table): {body}");
    assert_eq!(body["error"]["details"][0]["field"], "runId", "{body}");
    let before = calls.snapshot();
    assert_eq!(s.call("GET", "/metrics?runId=held", None).await.0, 200);
    let (_, ops) = calls.since(&before, "DynamoDB");
    assert!(ops.iter().all(|(op, _)| !op.ends_with(".Scan")), "a run's metrics come from its index: {ops:?}");
}

/// A test-only fault that no production input can reach: the provider panics for tasks whose id
/// starts with `crash`, as a handler bug would in the middle of an attempt.
struct PanicOn(Deployments);

impl Provider for PanicOn {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        if request.task_id.starts_with("crash") {
            panic!("test fault: {} crashes its handler", request.task_id);
        }
        self.0.call(request).await
    }
}

/// A task that panics its handler on every attempt, on the emulator: its batch siblings complete
/// in the same invocations; each crash counts an attempt at its claim; the claim after the last
/// allowed attempt (`max_attempts = 2` here) fails it with the reason and sends it to the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_crashes_its_handler_is_dead_lettered_after_its_budget_while_its_siblings_complete() {
    let worker = WorkerSettings { cancel_check_every: Duration::from_millis(500), ..WorkerSettings::default() };
    // A 3 s lease: each crash leaves the task running until its lease lapses.
    let lease = Some(Duration::from_secs(3));
    let s = stack_on(CONFIG, common::dynamo_client(), common::sqs_client(), worker, lease, PanicOn).await;
    let mut batch = tasks("crash", 0, 1, "normal");
    batch.as_array_mut().unwrap().extend(tasks("ok", 0, 9, "normal").as_array().unwrap().iter().cloned());
    assert_eq!(s.call("POST", "/tasks", Some(batch)).await.0, 201);
    let (stop, _, handle) = s.poll();
    s.wait_run("ok", "completed", 9, Duration::from_secs(60)).await;
    s.wait_run("crash", "failed", 1, Duration::from_secs(90)).await;
    let crashed = s.task("crash-0").await;
    stop.cancel();
    handle.await.unwrap();
    let reason = crashed.dead_letter_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("handler crashed during attempt 2"), "{crashed:?}");
    assert_eq!(crashed.attempt, 2, "two crashing attempts, then the budget check: {crashed:?}");
    for i in 0..9 {
        let r = s.task(&format!("ok-{i}")).await;
        assert_eq!((r.state, r.attempt), (TaskState::Completed, 1), "ok-{i}: untouched by its sibling's crashes");
    }
    let dlq = QueuePair {
        priority: TaskPriority::Normal,
        url: s.topology.queues[1].dlq_url.clone(),
        dlq_url: s.topology.queues[1].dlq_url.clone(),
    };
    let dead = s.backend.worker_queue.receive(&dlq, 10, Duration::from_secs(1)).await.unwrap();
    let bodies: Vec<&str> = dead.iter().filter_map(|m| m.body.as_deref()).collect();
    assert!(bodies.len() == 1 && bodies[0].contains("\"crash-0\""), "the crasher, alone, on the DLQ: {bodies:?}");
}

/// A deployment two calls wide, each call about half a second: its capacity is short whenever
/// more than two tasks want it.
const NARROW: &str = r#"
[engine]
lease_ms = 30000
aging_ms = 60000
[deployments.sim]
kind = "sim"
concurrency = 2
[deployments.sim.sim]
latency = { median_ms = 500, p99_ms = 600 }
seed = 1
"#;

/// The provider of the configured deployments, noting when each task's first call started.
struct Recording(Deployments, Arc<std::sync::Mutex<Vec<(String, Instant)>>>);

impl Provider for Recording {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        {
            let mut started = self.1.lock().unwrap();
            if !started.iter().any(|(id, _)| *id == request.task_id) {
                started.push((request.task_id.clone(), Instant::now()));
            }
        }
        self.0.call(request).await
    }
}

/// Priority survives a full limit in the AWS shape, across workers: two workers (containers)
/// share a deployment limited to two calls at once; a backlog of low tasks fills it, then high
/// tasks arrive. Once their tickets stand in the limit's shared waiting line, the low tasks
/// yield: every high task starts before any low task still waiting, and every task completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_tasks_arriving_behind_a_low_backlog_take_a_full_limit_first_across_workers() {
    // A short backoff cap keeps the low backlog's tail short; the line decides the order.
    let backoff = DeferBackoff { blocked_cap: Duration::from_secs(4), ..DeferBackoff::default() };
    let worker = WorkerSettings { backoff, ..WorkerSettings::default() };
    let started = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recording = |deployments| Recording(deployments, started.clone());
    let (dynamo, sqs) = (common::dynamo_client(), common::sqs_client());
    let s = stack_on(NARROW, dynamo.clone(), sqs.clone(), worker.clone(), None, recording).await;
    let other = backend_on(
        NARROW,
        "worker-e2e-2",
        (&dynamo, &sqs),
        &s.table,
        &s.topology,
        worker,
        None,
        |deployments| Recording(deployments, started.clone()),
        &s.sink,
    );
    assert_eq!(s.call("POST", "/tasks", Some(tasks("low", 0, 24, "low"))).await.0, 201);
    let (stop, _, handle) = s.poll();
    let settings = PollerSettings { wait: Duration::from_secs(1), concurrency: [2, 2, 2], ..PollerSettings::default() };
    let other_handle = other.poll(settings, Arc::new(PollerStats::default()), stop.clone());
    // The backlog is being served, and the rest of it waits.
    s.wait_run("low", "completed", 4, Duration::from_secs(60)).await;
    let arrived = Instant::now();
    assert_eq!(s.call("POST", "/tasks", Some(tasks("high", 0, 6, "high"))).await.0, 201);
    s.wait_run("high", "completed", 6, Duration::from_secs(60)).await;
    s.wait_run("low", "completed", 24, Duration::from_secs(120)).await;
    stop.cancel();
    handle.await.unwrap();
    other_handle.await.unwrap();

    let started = started.lock().unwrap().clone();
    assert_eq!(started.len(), 30, "every task called");
    let at = |prefix: &str| -> Vec<Duration> {
        started
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .map(|(_, t)| t.saturating_duration_since(arrived))
            .collect()
    };
    let (highs, lows) = (at("high-"), at("low-"));
    let (first_high, last_high) = (*highs.iter().min().unwrap(), *highs.iter().max().unwrap());
    // The high tasks are received in one batch and processed together: each takes a permit or
    // stands in the line then. Until every worker's view of the line is renewed (`line_view`,
    // 1 s) a low task may still take a freed permit: allowed for 2 s after the first high start
    // (counting from there, not from the submission, keeps a slow receive on a loaded machine
    // from being blamed on the line).
    let settle = first_high + Duration::from_secs(2);
    let overtaking: Vec<&Duration> = lows.iter().filter(|t| **t > settle && **t < last_high).collect();
    let mut order: Vec<(Duration, &str)> =
        started.iter().map(|(id, t)| (t.saturating_duration_since(arrived), id.as_str())).collect();
    order.sort();
    assert!(
        overtaking.is_empty(),
        "low tasks started while high ones waited (last high started {last_high:?} after arrival): {overtaking:?}\n\
         every start after the arrival: {order:?}"
    );
    let waiting_lows = lows.iter().filter(|t| **t > Duration::ZERO).count();
    assert!(waiting_lows >= 10, "most of the backlog was still waiting when the high tasks arrived: {waiting_lows}");
}
