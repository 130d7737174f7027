//! The API function: the taskexec HTTP API router (`taskexec-api`) over the DynamoDB store and
//! the SQS queues, behind an API Gateway HTTP API (payload v2) with IAM authorization.
//! Wiring only: configuration from the environment (read once), SDK clients built once.

use std::sync::Arc;

use taskexec_api::{ApiSettings, ApiState, SystemSampler, router};
use taskexec_aws::{DynamoConfig, DynamoStore, EventSourceMappings, SqsQueue};
use taskexec_lambda::env::FunctionEnv;
use taskexec_lambda::sweeper::env::SweeperEnv;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // JSON log lines, and X-Ray subsegments of provider and AWS calls when tracing is active.
    taskexec_aws::xray::init_tracing();
    let env = FunctionEnv::from_env()?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&aws),
        DynamoConfig::new(env.table.clone()).with_task_retention(env.task_retention),
    ));
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), env.topology.clone());
    let configs = env.config.deployments.clone();
    let settings = ApiSettings::new(
        env.config.deployments.keys().chain(env.config.routes.keys()).cloned(),
        Arc::new(SystemSampler::new()?),
    )
    .with_worker_timeout(env.worker_timeout)
    .with_run_counter(store.clone())
    .without_global_metrics()
    .with_task_check(Arc::new(move |task| taskexec_providers::check_parameters(&configs, task)));
    // A global pause disables the worker's event source mappings, a resume enables them.
    let settings = match SweeperEnv::from_env()?.mappings {
        Some(uuids) => {
            let mappings = EventSourceMappings::new(aws_sdk_lambda::Client::new(&aws), uuids);
            settings.with_pause_hook(Arc::new(move |paused| {
                let mappings = mappings.clone();
                Box::pin(async move {
                    mappings.set_enabled(!paused).await?;
                    Ok(())
                })
            }))
        }
        None => settings,
    };
    let app = router(ApiState::new(store, Arc::new(queue), settings));
    lambda_http::run(app).await
}
