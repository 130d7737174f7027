//! The worker function: SQS batches from the three priority queues through the engine's
//! decision function, with partial batch failures (`taskexec_lambda::worker`). Wiring only.

// The engine's futures nest deeply (worker → engine → provider adapters → reqwest).
#![recursion_limit = "256"]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use taskexec_aws::{AwsBackend, BackendSettings, DynamoConfig, EmfSink, LimiterSettings, secrets};
use taskexec_lambda::env::FunctionEnv;
use taskexec_lambda::worker::WorkerSettings;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON log lines, and X-Ray subsegments of provider and AWS calls when tracing is active.
    taskexec_aws::xray::init_tracing();
    let env = FunctionEnv::from_env()?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    // Keys named by `api_key_secret` are read once, here, before the first batch.
    let deployments = secrets::deployments(&aws, &env.config.deployments, |name| std::env::var(name).ok()).await?;
    let owner =
        std::env::var("AWS_LAMBDA_LOG_STREAM_NAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()));
    let settings = BackendSettings {
        table: DynamoConfig::new(env.table.clone()).with_task_retention(env.task_retention),
        topology: env.topology.clone(),
        engine: env.config.engine_config(owner),
        worker: WorkerSettings { refresh_after_receives: env.refresh_after_receives, ..WorkerSettings::default() },
        limiter: LimiterSettings { quota_slot: Some(env.config.quota_slot()), ..LimiterSettings::default() },
    };
    let dynamo = aws_sdk_dynamodb::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let backend = AwsBackend::new(&dynamo, &sqs, settings, deployments, EmfSink::stdout());
    let worker = &backend.worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = instant_of(event.context.deadline);
        Ok::<SqsBatchResponse, Error>(worker.handle(event.payload, Some(deadline)).await)
    }))
    .await
}

/// The invocation's deadline (ms since the epoch) as an `Instant`.
fn instant_of(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let left = u64::try_from(u128::from(deadline_ms).saturating_sub(now_ms)).unwrap_or(0);
    Instant::now() + Duration::from_millis(left)
}
