//! The AWS side of the Lambda glue's ports (`taskexec-lambda`): batch receiving for the local
//! event-source poller (the work queue port itself is [`SqsQueue`]); for the sweeper
//! the DynamoDB overdue index, breaker board and run watch, and the SQS backlogs (the event
//! source mappings are in `crate::mappings`); the DynamoDB poison log for the DLQ handler.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::error::StoreError;

use taskexec_core::message::PoisonNote;
use taskexec_core::ports::{QueuePair, Topology};
use taskexec_core::time::Millis;
use taskexec_lambda::actions::ActionError;
use taskexec_lambda::dlq::PoisonLog;
use taskexec_lambda::poller::MessageSource;
use taskexec_lambda::sweeper::breakers::BreakerBoard;
use taskexec_lambda::sweeper::mappings::Backlogs;
use taskexec_lambda::sweeper::stuck::{RunActivity, RunWatch, WaitingRun};
use taskexec_lambda::window::OutcomeWindow;

use crate::dynamo::{DynamoStore, DynamoWindow};
use crate::error::AwsError;
use crate::sqs::SqsQueue;

/// How long poison notes are kept (TTL), ms.
const POISON_TTL_MS: Millis = 30 * 24 * 3600 * 1000;

/// Create the three priority queues, each with its own dead-letter queue (redrive after
/// `max_receive_count` receives: `taskexec_lambda::worker::MAX_RECEIVE_COUNT`, 10, in
/// template.yaml, so that a message that crashes its handler reaches the DLQ), named
/// `{prefix}-{priority}` and `{prefix}-{priority}-dlq`. An existing queue of that name is reused.
/// For local emulators and tests; deployments get their queues from template.yaml.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    max_receive_count: u32,
    visibility_timeout: Duration,
) -> Result<Topology, AwsError> {
    use taskexec_core::task::TaskPriority::{High, Low, Normal};
    let mut pairs = Vec::with_capacity(3);
    for priority in [High, Normal, Low] {
        let name = format!("{prefix}-{}", priority.as_str());
        let dlq_url = create_queue(sqs, &format!("{name}-dlq"), Vec::new()).await?;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| AwsError::sqs("GetQueueAttributes", e))?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_default();
        let redrive = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count.to_string()});
        let attributes = vec![
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            (QueueAttributeName::VisibilityTimeout, visibility_timeout.as_secs().to_string()),
        ];
        let url = create_queue(sqs, &name, attributes).await?;
        pairs.push(QueuePair { priority, url, dlq_url });
    }
    let [high, normal, low]: [QueuePair; 3] = pairs.try_into().expect("three queues");
    Ok(Topology { queues: [high, normal, low] })
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attributes: Vec<(QueueAttributeName, String)>,
) -> Result<String, AwsError> {
    let mut request = sqs.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k, v);
    }
    let out = request.send().await.map_err(|e| AwsError::sqs("CreateQueue", e))?;
    Ok(out.queue_url.unwrap_or_default())
}

impl MessageSource for SqsQueue {
    async fn receive(&self, queue: &QueuePair, max: i32, wait: Duration) -> Result<Vec<SqsMessage>, ActionError> {
        self.count();
        let out = self
            .client()
            .receive_message()
            .queue_url(&queue.url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| AwsError::sqs("ReceiveMessage", e))?;
        let arn = arn_of(&queue.url);
        Ok(out.messages.unwrap_or_default().into_iter().map(|m| to_event_message(m, &arn)).collect())
    }
}

/// The event-source ARN Lambda would put on a message of `queue_url` (only the queue name, the
/// last segment, is used to find the queue again).
fn arn_of(queue_url: &str) -> String {
    let mut parts = queue_url.rsplit('/');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or("000000000000");
    format!("arn:aws:sqs:local:{account}:{name}")
}

fn to_event_message(m: aws_sdk_sqs::types::Message, arn: &str) -> SqsMessage {
    let mut attributes = HashMap::new();
    for (k, v) in m.attributes.unwrap_or_default() {
        attributes.insert(k.as_str().to_owned(), v);
    }
    let mut out = SqsMessage::default();
    out.message_id = m.message_id;
    out.receipt_handle = m.receipt_handle;
    out.body = m.body;
    out.md5_of_body = m.md5_of_body;
    out.attributes = attributes;
    out.event_source = Some("aws:sqs".into());
    out.event_source_arn = Some(arn.to_owned());
    out
}

impl taskexec_core::ports::RunCounter for DynamoStore {
    fn add(
        &self,
        run_id: String,
        delta: taskexec_core::ports::RunDelta,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(async move {
            let finished = delta.completed + delta.failed + delta.cancelled > 0;
            let counts = crate::dynamo::RunCounts {
                // The store counts submissions itself, in the write that marks the run active
                // (`DynamoStore::submit`): the caller's count would be a second one.
                submitted: 0,
                completed: delta.completed,
                failed: delta.failed,
                cancelled: delta.cancelled,
                // A hint for the stuck-run check's candidates (it decides from the states'
                // `endedAt`), so the reporting process's clock is good enough.
                last_finished_at: finished.then(|| taskexec_core::time::Clock::now(&taskexec_core::time::SystemClock)),
            };
            self.add_run_counts(&run_id, &counts).await
        })
    }
}

impl OutcomeWindow for DynamoWindow {
    async fn add(&self, deployment: &str, bucket_start: Millis, calls: u32, failures: u32) -> Result<(), StoreError> {
        Ok(DynamoWindow::add(self, deployment, bucket_start, calls, failures).await?)
    }

    async fn window(&self, deployment: &str, since: Millis) -> Result<(u32, u32), StoreError> {
        Ok(DynamoWindow::window(self, deployment, since).await?)
    }
}

impl Backlogs for SqsQueue {
    async fn backlogs(&self) -> Result<[u64; 3], ActionError> {
        Ok(SqsQueue::backlogs(self).await?)
    }
}

impl BreakerBoard for DynamoStore {
    async fn load(&self, deployment: &str) -> Result<Option<BreakerSnapshot>, StoreError> {
        taskexec_core::ports::BreakerStore::load(self, deployment).await
    }

    async fn replace_if(
        &self,
        deployment: &str,
        expected: &BreakerSnapshot,
        next: &BreakerSnapshot,
    ) -> Result<bool, StoreError> {
        self.replace_breaker_if(deployment, expected, next).await
    }
}

impl RunWatch for DynamoStore {
    async fn waiting_runs(&self, due_by: Millis, limit: usize) -> Result<Vec<WaitingRun>, StoreError> {
        let runs = DynamoStore::waiting_runs(self, due_by, limit).await?;
        Ok(runs.into_iter().map(|(run_id, oldest_due_at)| WaitingRun { run_id, oldest_due_at }).collect())
    }

    async fn activity(&self, run_id: &str) -> Result<RunActivity, StoreError> {
        let (unfinished, last_finished_at, oldest_due_at) = self.run_activity(run_id).await?;
        Ok(RunActivity { unfinished, last_finished_at, oldest_due_at })
    }
}

impl PoisonLog for DynamoStore {
    async fn record(&self, note: PoisonNote, at: Millis) -> Result<(), StoreError> {
        let s = |v: String| AttributeValue::S(v);
        let n = |v: Millis| AttributeValue::N(v.to_string());
        self.client()
            .put_item()
            .table_name(&self.config().table)
            .item("pk", s(format!("POISON#{}", note.message_id)))
            .item("sk", s("POISON".into()))
            .item("reason", s(note.reason))
            .item("body", s(note.body))
            .item("at", n(at))
            .item("expiresAt", n((at + POISON_TTL_MS) / 1000))
            .send()
            .await
            .map_err(|e| AwsError::dynamo("PutItem", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_keep_the_queue_name() {
        assert_eq!(
            arn_of("http://127.0.0.1:5000/123456789012/taskexec-high"),
            "arn:aws:sqs:local:123456789012:taskexec-high"
        );
        assert_eq!(arn_of("https://sqs.us-east-1.amazonaws.com/1/q"), "arn:aws:sqs:local:1:q");
    }
}
