//! `taskexec serve --backend aws`: the same API router over DynamoDB and SQS, and the worker
//! handler fed by a local event-source poller exactly as Lambda would feed it (batches, partial
//! failures, deletes of the successful ones). Resources are named by the functions' environment
//! variables (`TASKEXEC_TABLE`, `TASKEXEC_QUEUE_URL_*`, `TASKEXEC_DLQ_URL_*`); the SDK reads
//! `AWS_ENDPOINT_URL` for a local emulator. `--config FILE` stands in for `TASKEXEC_CONFIG`.

use std::sync::Arc;

use anyhow::Context;
use taskexec_api::{ApiSettings, SystemSampler};
use taskexec_aws::secrets::{self, KeysError};
use taskexec_aws::{AwsBackend, BackendSettings, DynamoConfig, LimiterSettings};
use taskexec_core::memory::CountingSink;
use taskexec_lambda::env::FunctionEnv;
use taskexec_lambda::poller::{PollerSettings, PollerStats};
use taskexec_lambda::worker::WorkerSettings;
use tokio_util::sync::CancellationToken;

use crate::embedded;
use crate::exit::{self, Failure};
use crate::serve::{ServeArgs, api, listen, serve_http};

/// The worker timeout assumed when `TASKEXEC_WORKER_TIMEOUT_SECONDS` is unset (Lambda's maximum).
const DEFAULT_WORKER_TIMEOUT: &str = "900";

/// Serve until Ctrl-C / SIGTERM.
pub async fn serve(args: ServeArgs, token: String) -> Result<u8, Failure> {
    let env = environment(&args)?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let deployments = secrets::deployments(&aws, &env.config.deployments, |name| std::env::var(name).ok())
        .await
        .map_err(|e| match e {
            KeysError::Deployments(e) => Failure::input(anyhow::Error::new(e).context("invalid deployments")),
            KeysError::Secret(e) => Failure::runtime(anyhow::Error::new(e).context("cannot read a provider key")),
        })?;
    let settings = BackendSettings {
        table: DynamoConfig::new(env.table.clone()),
        topology: env.topology.clone(),
        engine: env.config.engine_config(format!("serve-{}", std::process::id())),
        worker: WorkerSettings::default(),
        limiter: LimiterSettings { quota_slot: Some(env.config.quota_slot()), ..LimiterSettings::default() },
    };
    let names: Vec<String> =
        deployments.names().chain(env.config.routes.keys().map(String::as_str)).map(str::to_owned).collect();
    let dynamo = aws_sdk_dynamodb::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let backend = AwsBackend::new(&dynamo, &sqs, settings, deployments, CountingSink::default());
    let sampler = SystemSampler::new().context("cannot sample resource use").map_err(Failure::runtime)?;
    let configs = env.config.deployments.clone();
    let api_settings = ApiSettings::new(names, Arc::new(sampler))
        .with_worker_timeout(env.worker_timeout)
        .with_run_counter(backend.store.clone())
        .without_global_metrics()
        .with_task_check(Arc::new(move |task| taskexec_providers::check_parameters(&configs, task)));
    let app = api(backend.store.clone(), backend.queue.clone(), api_settings, &token);
    let what = format!("DynamoDB table {}, SQS queues of {}", env.table, env.topology.queues[1].url);
    let (listener, _) = listen(args.addr, &what).await?;
    let shutdown = CancellationToken::new();
    embedded::watch_signals(shutdown.clone());
    let poller = PollerSettings { function_timeout: env.worker_timeout, ..PollerSettings::default() };
    let polling = backend.poll(poller, Arc::new(PollerStats::default()), shutdown.clone());
    let served = serve_http(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    polling.await.map_err(|e| Failure::runtime(e.into()))?;
    served.context("the HTTP server failed").map_err(Failure::runtime)?;
    eprintln!("taskexec: stopped");
    Ok(exit::OK)
}

/// The functions' environment, with `--config FILE` in place of `TASKEXEC_CONFIG` and Lambda's
/// longest timeout when none is set.
fn environment(args: &ServeArgs) -> Result<FunctionEnv, Failure> {
    let config = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))
                .map_err(Failure::input)?,
        ),
        None => None,
    };
    FunctionEnv::from_lookup(|name| match name {
        "TASKEXEC_CONFIG" if config.is_some() => config.clone(),
        "TASKEXEC_WORKER_TIMEOUT_SECONDS" => {
            Some(std::env::var(name).unwrap_or_else(|_| DEFAULT_WORKER_TIMEOUT.to_owned()))
        }
        _ => std::env::var(name).ok(),
    })
    .map_err(|e| Failure::input(anyhow::Error::new(e).context("--backend aws")))
}

/// Arguments of `taskexec aws-bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Name prefix of the table (`PREFIX-tasks`) and the queues (`PREFIX-high`, `PREFIX-high-dlq`, …).
    #[arg(long, default_value = "taskexec")]
    pub prefix: String,
}

/// Create the table and the six queues if they do not exist (for a local emulator reached through
/// `AWS_ENDPOINT_URL`; deployments get theirs from template.yaml), and print the environment
/// `serve --backend aws` and the functions read.
pub async fn bootstrap(args: BootstrapArgs) -> Result<u8, Failure> {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&aws);
    let table = format!("{}-tasks", args.prefix);
    let exists = dynamo.describe_table().table_name(&table).send().await.is_ok();
    if !exists {
        taskexec_aws::create_table(&dynamo, &table).await.map_err(|e| Failure::runtime(e.into()))?;
    }
    let visibility = std::time::Duration::from_secs(6 * 900);
    // The template's maxReceiveCount, which the worker's refresh threshold (half of it) assumes.
    let max_receives = taskexec_lambda::worker::MAX_RECEIVE_COUNT;
    let topology = taskexec_aws::create_queues(&aws_sdk_sqs::Client::new(&aws), &args.prefix, max_receives, visibility)
        .await
        .map_err(|e| Failure::runtime(e.into()))?;
    println!("export TASKEXEC_TABLE={table}");
    for (q, name) in topology.queues.iter().zip(["HIGH", "NORMAL", "LOW"]) {
        println!("export TASKEXEC_QUEUE_URL_{name}={}", q.url);
        println!("export TASKEXEC_DLQ_URL_{name}={}", q.dlq_url);
    }
    Ok(exit::OK)
}
