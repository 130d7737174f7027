//! The dead-letter function: messages from the three DLQs analysed, re-queued or finalised
//! (`taskexec_lambda::dlq`). Wiring only.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use taskexec_aws::{DynamoConfig, DynamoStore, EmfSink, SqsQueue};
use taskexec_core::time::SystemClock;
use taskexec_lambda::dlq::DlqHandler;
use taskexec_lambda::env::FunctionEnv;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON log lines, and X-Ray subsegments of provider and AWS calls when tracing is active.
    taskexec_aws::xray::init_tracing();
    let env = FunctionEnv::from_env()?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&aws);
    let handler = DlqHandler::new(
        DynamoStore::new(dynamo.clone(), DynamoConfig::new(env.table.clone()).with_task_retention(env.task_retention)),
        DynamoStore::new(dynamo, DynamoConfig::new(env.table.clone()).with_task_retention(env.task_retention)),
        SqsQueue::new(aws_sdk_sqs::Client::new(&aws), env.topology.clone()),
        EmfSink::stdout(),
        SystemClock,
        env.config.retry.max_attempts,
    );
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let (response, outcomes) = Box::pin(handler.handle(event.payload)).await;
        tracing::info!(?outcomes, "dead-letter batch handled");
        Ok::<SqsBatchResponse, Error>(response)
    }))
    .await
}
