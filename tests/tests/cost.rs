//! What a successful task costs on AWS, measured rather than estimated: 100 tasks submitted
//! through the API router (in 10 requests of 10, then in 100 requests of 1), executed by the
//! worker handler fed by the local event-source poller, every AWS request counted by operation
//! and every DynamoDB request asked for its consumed capacity (`ReturnConsumedCapacity=INDEXES`,
//! index writes included) by SDK interceptors (`taskexec_e2e::{Calls, Capacity}`).
//!
//! DynamoDB is DynamoDB Local, the emulator that reports capacity as DynamoDB bills it (moto
//! reports none); SQS is a moto server of the same private network namespace
//! (`scripts/emulators with-dynamodb-local --with-moto`, see `shared/aws/tests/dynamodb_local.rs`
//! for why DynamoDB Local runs in a namespace). The test re-runs itself inside it; if the
//! namespace or either emulator cannot be had, it fails.
//!
//! It prints one line per way of submitting, the figures BENCHMARKS.md records, and checks them
//! against the budget the design holds to (`docs/aws-dynamodb.md`).

#[path = "../../shared/aws/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use taskexec_api::{ApiSettings, ApiState, SystemSampler, router};
use taskexec_aws::{AwsBackend, BackendSettings, DynamoConfig, LimiterSettings};
use taskexec_core::memory::{Counters, CountingSink};
use taskexec_e2e::{Calls, Capacity, Units, wait_until};
use taskexec_lambda::poller::{PollerSettings, PollerStats};
use taskexec_lambda::worker::WorkerSettings;
use taskexec_providers::Deployments;
use taskexec_providers::settings::RunConfig;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ENDPOINT_VAR: &str = "TASKEXEC_TEST_DDB_LOCAL_ENDPOINT";
const TASKS: usize = 100;

/// No concurrency limit: the limiter's share (≈ 0.5–1.2 WCU per task per limit key) is measured
/// on its own in `shared/aws/tests/dynamodb_local.rs`.
const CONFIG: &str = r#"
[deployments.sim]
kind = "sim"
[deployments.sim.sim]
latency = { median_ms = 20, p99_ms = 60 }
seed = 1
"#;

/// List prices (USD, us-east-1, standard on-demand, no free tier) the dollars are computed at.
const USD_PER_MILLION_WRU: f64 = 0.625;
const USD_PER_MILLION_RRU: f64 = 0.125;
const USD_PER_MILLION_SQS: f64 = 0.40;
const USD_PER_MILLION_LAMBDA: f64 = 0.20;
const USD_PER_MILLION_HTTP_API: f64 = 1.00;

/// What `TASKS` successful tasks cost, per task.
#[derive(Debug)]
struct PerTask {
    units: Units,
    dynamo_requests: f64,
    /// SQS requests made by the code (sends, visibility changes) and by the mapping for messages
    /// (receives that returned messages, deletes); empty long polls are per queue, not per task.
    sqs_requests: f64,
    empty_receives: u64,
    lambda_invocations: f64,
    api_requests: f64,
}

impl PerTask {
    /// Dollars per million tasks: requests and capacity; Lambda's duration (GB-seconds) is left
    /// out, as it is the provider's latency times the memory size.
    fn usd_per_million(&self) -> f64 {
        self.units.writes() * USD_PER_MILLION_WRU
            + self.units.reads() * USD_PER_MILLION_RRU
            + self.sqs_requests * USD_PER_MILLION_SQS
            + self.lambda_invocations * USD_PER_MILLION_LAMBDA
            + self.api_requests * USD_PER_MILLION_HTTP_API
    }
}

async fn call(app: &axum::Router, body: serde_json::Value) -> u16 {
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/tasks")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.unwrap();
    status
}

fn task(run: &str, i: usize) -> serde_json::Value {
    serde_json::json!({"id": format!("{run}-{i}"), "providerId": "sim", "modelId": "sim-small",
        "prompt": format!("question {i} of {run}: what is {i} + {i}?"), "runId": run})
}

/// Submit `TASKS` tasks in requests of `per_request` (1: a single object) and run them all.
async fn measure(endpoint: &str, run: &str, per_request: usize) -> PerTask {
    let (calls, capacity) = (Calls::default(), Capacity::default());
    let dynamo = common::dynamo_client_at(endpoint);
    let config = dynamo.config().to_builder().interceptor(calls.clone()).interceptor(capacity.clone()).build();
    let dynamo = aws_sdk_dynamodb::Client::from_conf(config);
    let sqs = common::sqs_client();
    let sqs = aws_sdk_sqs::Client::from_conf(sqs.config().to_builder().interceptor(calls.clone()).build());
    let table = common::unique_name("cost");
    taskexec_aws::create_table(&dynamo, &table).await.unwrap();
    let topology = common::fresh_topology(&sqs).await;
    let run_config = RunConfig::parse(CONFIG).unwrap();
    let sink = Arc::new(CountingSink::default());
    let settings = BackendSettings {
        table: DynamoConfig::new(table.clone()),
        topology: topology.clone(),
        engine: run_config.engine_config("worker-cost".into()),
        worker: WorkerSettings::default(),
        limiter: LimiterSettings::default(),
    };
    let deployments = Deployments::from_config(&run_config.deployments, |_| None).unwrap();
    let backend = AwsBackend::new(&dynamo, &sqs, settings, deployments, sink.clone());
    let api = ApiSettings::new(["sim"], Arc::new(SystemSampler::new().unwrap()))
        .with_worker_timeout(Duration::from_secs(120))
        .with_run_counter(backend.store.clone())
        .without_global_metrics();
    let app = router(ApiState::new(backend.store.clone(), backend.queue.clone(), api));
    let (before_units, before_calls) = (capacity.units(), calls.snapshot());

    let mut api_requests: u32 = 0;
    for from in (0..TASKS).step_by(per_request) {
        let body =
            if per_request == 1 { task(run, from) } else { (from..from + per_request).map(|i| task(run, i)).collect() };
        assert_eq!(call(&app, body).await, 201);
        api_requests += 1;
    }
    let stop = CancellationToken::new();
    let stats = Arc::new(PollerStats::default());
    let poller = PollerSettings { wait: Duration::from_secs(1), concurrency: [1, 2, 1], ..PollerSettings::default() };
    let handle = backend.poll(poller, stats.clone(), stop.clone());
    let limit = Duration::from_secs(180);
    wait_until("every task completed", limit, || {
        let completed = Counters::get(&sink.counters.completed);
        async move { if completed >= TASKS as u64 { Ok(()) } else { Err(format!("{completed} of {TASKS}")) } }
    })
    .await;
    // Every message acknowledged (the mapping's deletes) before the counts are read.
    wait_until("every message deleted", limit, || {
        let deleted = stats.deletes.load(Ordering::SeqCst);
        async move { if deleted >= TASKS as u64 { Ok(()) } else { Err(format!("{deleted} of {TASKS}")) } }
    })
    .await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(Counters::get(&sink.counters.attempts), TASKS as u64, "one attempt per task");

    let units = capacity.units();
    let units = Units {
        read_table: units.read_table - before_units.read_table,
        read_indexes: units.read_indexes - before_units.read_indexes,
        write_table: units.write_table - before_units.write_table,
        write_indexes: units.write_indexes - before_units.write_indexes,
    };
    let (dynamo_requests, dynamo_ops) = calls.since(&before_calls, "DynamoDB");
    let (sqs_requests, sqs_ops) = calls.since(&before_calls, "SQS");
    let batches = stats.batches.load(Ordering::SeqCst);
    let empty_receives = stats.receives.load(Ordering::SeqCst).saturating_sub(batches);
    let n = TASKS as f64;
    eprintln!(
        "{run}: DynamoDB {dynamo_ops:?}; SQS {sqs_ops:?}; {batches} worker batches, {empty_receives} empty receives"
    );
    PerTask {
        units: Units {
            read_table: units.read_table / n,
            read_indexes: units.read_indexes / n,
            write_table: units.write_table / n,
            write_indexes: units.write_indexes / n,
        },
        dynamo_requests: dynamo_requests as f64 / n,
        sqs_requests: (sqs_requests - empty_receives) as f64 / n,
        empty_receives,
        lambda_invocations: (batches + u64::from(api_requests)) as f64 / n,
        api_requests: f64::from(api_requests) / n,
    }
}

async fn inside(endpoint: &str) {
    for (run, per_request) in [("batched", 10), ("single", 1)] {
        let c = measure(endpoint, run, per_request).await;
        let u = &c.units;
        println!(
            "cost per successful task, {TASKS} tasks in requests of {per_request}: \
             WRU {:.2} (table {:.2} + indexes {:.2}), RRU {:.2} (table {:.2} + indexes {:.2}), \
             DynamoDB requests {:.2}, SQS requests {:.2} (+ {} empty long polls in all), \
             Lambda invocations {:.2} (API {:.2} + worker {:.2}), ${:.2} per million tasks",
            u.writes(),
            u.write_table,
            u.write_indexes,
            u.reads(),
            u.read_table,
            u.read_indexes,
            c.dynamo_requests,
            c.sqs_requests,
            c.empty_receives,
            c.lambda_invocations,
            c.api_requests,
            c.lambda_invocations - c.api_requests,
            c.usd_per_million()
        );
        // The design's floor (docs/aws-dynamodb.md): 4 table WCU for a small task (payload and
        // state puts, claim, finish with the result); per request and run, the journal entry's
        // put and settle and the run counters' ADD (3 table WCU) and the unsent index's insert
        // and delete (2 index WCU); the workers' counter ADDs (once per run per batch, ≈ 0.3),
        // and the active index's insert for each of the run's 4 counter items (≤ 0.04 here). At
        // most 2 RRU (the claim's consistent read of the task's partition, the control item).
        let per_request = 1.0 / per_request as f64;
        assert!(u.write_table <= 4.0 + 3.0 * per_request + 0.3, "{c:?}");
        assert!(u.write_indexes <= 2.0 * per_request + 0.05, "{c:?}");
        assert!(u.reads() <= 2.0, "{c:?}");
        assert!(c.sqs_requests <= 1.0 + per_request + 0.2, "{c:?}");
        if per_request <= 0.1 {
            // Issue 8's goal, for tasks submitted in batches: ≤ 5 WRU with the index writes, ≤ $5
            // per million.
            assert!(u.writes() <= 5.0, "{c:?}");
            assert!(c.usd_per_million() <= 5.0, "{c:?}");
        }
    }
}

#[test]
fn what_a_successful_task_costs_on_aws_measured_on_dynamodb_local_and_sqs() {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(Box::pin(inside(&endpoint)));
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let me = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("bash")
        .arg(root.join("scripts/emulators"))
        .args(["with-dynamodb-local", "--with-moto", "--"])
        .arg(me)
        .args(["what_a_successful_task_costs_on_aws_measured_on_dynamodb_local_and_sqs", "--exact", "--nocapture"])
        .status()
        .expect("cannot run scripts/emulators (bash missing?)");
    assert!(status.success(), "the cost measurement on DynamoDB Local and moto failed (output above)");
}
