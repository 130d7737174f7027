//! The sweeper function (scheduled): re-sends unfinished tasks whose lease expired or whose
//! retry is overdue (`taskexec_lambda::sweeper`). Wiring only.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use taskexec_aws::{DynamoConfig, DynamoStore, QueueUrls, SqsQueue};
use taskexec_core::time::SystemClock;
use taskexec_lambda::env::FunctionEnv;
use taskexec_lambda::sweeper::{SweepReport, sweep};

/// Tasks re-sent per invocation at most.
const SWEEP_LIMIT: usize = 1_000;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let env = FunctionEnv::from_env()?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), DynamoConfig::new(env.table.clone()));
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), QueueUrls::from(&env.topology));
    let (store, queue, topology) = (&store, &queue, &env.topology);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<EventBridgeEvent>| async move {
        let report: SweepReport = sweep(store, queue, topology, &SystemClock, SWEEP_LIMIT).await?;
        Ok::<String, Error>(format!("re-sent {} overdue task(s), {} failed", report.resent, report.failed))
    }))
    .await
}
