//! [`SqsQueue`]: the work queue port over three SQS queues, one per priority, each with its
//! dead-letter queue. Message bodies are [`Delivery::to_body`] envelopes. This is the one place
//! that knows SQS's units and limits: batches of ten, delays in whole seconds of at most 900,
//! visibility timeouts of at most 12 hours.
//!
//! - `send` batches up to ten messages per `SendMessageBatch` to each delivery's priority queue,
//!   with its delay (rounded up; a longer wait is sent with 900 s and the worker defers again
//!   when it arrives early).
//! - `receive` polls high, then normal, then low, and returns envelopes as deliveries carrying a
//!   receipt (queue URL and receipt handle). A body that is not an envelope is left in the
//!   queue: a raw task from another system needs the worker (which stores it first), and poison
//!   reaches the dead-letter queue through the redrive policy. The Lambda worker gets its
//!   messages in the event instead, and settles them through the same port.
//! - `ack` deletes, `retry_after` changes the visibility, `dead_letter` sends to the DLQ of the
//!   queue the copy came from.
//!
//! Every SQS request is counted ([`SqsQueue::api_calls`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry};
use taskexec_core::error::StoreError;
use taskexec_core::message::{CORRELATION_ATTRIBUTE, QueueMessage, decode};
use taskexec_core::ports::{DeadLetter, Delivery, QueuePair, Receipt, StoreResult, Topology, WorkQueue};
use taskexec_core::task::TaskPriority;
use taskexec_lambda::actions::ActionError;
use taskexec_lambda::sweeper::resend::{QueueDepth, QueueDepths};

use crate::error::AwsError;

/// The longest delay SQS accepts, in seconds.
const MAX_DELAY_SECS: u64 = 900;
/// The longest visibility timeout SQS accepts, in seconds (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// Messages per `SendMessageBatch` and per `ReceiveMessage`.
const BATCH: usize = 10;

const PRIORITIES: [TaskPriority; 3] = [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low];

/// The SQS work queue.
///
/// ```no_run
/// use std::time::Duration;
/// use taskexec_aws::SqsQueue;
/// use taskexec_core::ports::{QueuePair, Topology, WorkQueue};
/// use taskexec_core::task::TaskPriority;
/// # async fn demo(client: aws_sdk_sqs::Client) -> Result<(), taskexec_core::error::StoreError> {
/// let pair = |priority, name: &str| QueuePair {
///     priority,
///     url: format!("https://sqs/{name}"),
///     dlq_url: format!("https://sqs/{name}-dlq"),
/// };
/// let topology = Topology {
///     queues: [pair(TaskPriority::High, "high"), pair(TaskPriority::Normal, "normal"), pair(TaskPriority::Low, "low")],
/// };
/// let queue = SqsQueue::new(client, topology);
/// for delivery in queue.receive(10, Duration::from_secs(1)).await? {
///     queue.retry_after(&delivery, Duration::from_secs(30)).await?;
/// }
/// assert!(queue.api_calls() >= 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqsQueue {
    client: Client,
    topology: Topology,
    api_calls: AtomicU64,
    /// Sent minus received through this instance (what `len` reports without a request).
    outstanding: AtomicUsize,
}

impl SqsQueue {
    /// A queue over existing SQS queues.
    #[must_use]
    pub fn new(client: Client, topology: Topology) -> Self {
        Self { client, topology, api_calls: AtomicU64::new(0), outstanding: AtomicUsize::new(0) }
    }

    /// The SQS client (for the Lambda ports in `crate::lambda`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The queues.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// SQS requests made so far by this instance.
    #[must_use]
    pub fn api_calls(&self) -> u64 {
        self.api_calls.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self) {
        self.api_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Set a received message's visibility timeout, rounded up to seconds, at most 12 hours.
    async fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), AwsError> {
        self.count();
        let request = self.client.change_message_visibility().queue_url(queue_url).receipt_handle(receipt_handle);
        let seconds = whole_seconds(timeout, MAX_VISIBILITY_SECS);
        request.visibility_timeout(seconds).send().await.map_err(|e| AwsError::sqs("ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// Delete (acknowledge) a received message.
    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), AwsError> {
        self.count();
        let request = self.client.delete_message().queue_url(queue_url).receipt_handle(receipt_handle);
        request.send().await.map_err(|e| AwsError::sqs("DeleteMessage", e))?;
        Ok(())
    }

    /// Send a body as it is to one queue (tests: duplicates, poison, another system's raw task).
    pub async fn send_raw(&self, queue_url: &str, body: &str) -> Result<(), AwsError> {
        self.send_body(queue_url, body.to_owned(), Duration::ZERO).await
    }

    /// Send one message body to one queue, visible after `delay` (rounded up to seconds, at
    /// most 900).
    async fn send_body(&self, queue_url: &str, body: String, delay: Duration) -> Result<(), AwsError> {
        self.count();
        let request = self.client.send_message().queue_url(queue_url).message_body(body);
        let delay = whole_seconds(delay, MAX_DELAY_SECS);
        request.delay_seconds(delay).send().await.map_err(|e| AwsError::sqs("SendMessage", e))?;
        Ok(())
    }

    /// The pair a receipt's copy came from; a copy never received goes by its priority.
    fn pair_of(&self, receipt: &Receipt, priority: Option<TaskPriority>) -> Result<&QueuePair, StoreError> {
        match (receipt.source(), priority) {
            (Some(url), _) => self.topology.for_url(url).ok_or_else(|| unknown_queue(url)),
            (None, Some(priority)) => Ok(self.topology.for_priority(priority)),
            (None, None) => Err(unknown_queue("(none: a receipt without a queue)")),
        }
    }

    /// Messages waiting in the three queues, visible or delayed, as SQS estimates them.
    pub async fn approximate_len(&self) -> Result<u64, AwsError> {
        Ok(self.backlogs().await?.iter().sum())
    }

    /// Messages waiting in the high, normal and low queues, each visible + delayed
    /// (`ApproximateNumberOfMessages` + `ApproximateNumberOfMessagesDelayed`; in-flight messages
    /// are not counted), as SQS estimates them: one `GetQueueAttributes` per queue.
    pub async fn backlogs(&self) -> Result<[u64; 3], AwsError> {
        let mut out = [0; 3];
        for (i, pair) in self.topology.queues.iter().enumerate() {
            let url = &pair.url;
            self.count();
            let reply = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(|e| AwsError::sqs("GetQueueAttributes", e))?;
            let attributes = reply.attributes.unwrap_or_default();
            out[i] = attributes.values().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>();
        }
        Ok(out)
    }

    async fn send_batch(&self, queue_url: &str, batch: &[(Delivery, Duration)]) -> Result<(), AwsError> {
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, (d, delay))| {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(d.to_body())
                    .delay_seconds(whole_seconds(*delay, MAX_DELAY_SECS));
                let entry = match &d.correlation {
                    Some(id) => entry.message_attributes(CORRELATION_ATTRIBUTE, correlation_attribute(id)?),
                    None => entry,
                };
                entry.build().map_err(|e| AwsError::build("SendMessageBatch entry", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.count();
        let out = self
            .client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| AwsError::sqs("SendMessageBatch", e))?;
        if let Some(first) = out.failed().first() {
            let failed = out.failed().len();
            return Err(AwsError::SqsBatch { operation: "SendMessageBatch", failed, code: first.code().to_owned() });
        }
        Ok(())
    }

    /// Up to `max` (at most ten) messages from one queue, waiting up to `wait_secs`.
    async fn receive_from(&self, queue_url: &str, max: usize, wait_secs: i32) -> Result<Vec<Message>, AwsError> {
        self.count();
        let out = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(i32::try_from(max.clamp(1, BATCH)).unwrap_or(1))
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(CORRELATION_ATTRIBUTE)
            .send()
            .await
            .map_err(|e| AwsError::sqs("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// A received message as a delivery with its receipt. A body that is not an envelope is
    /// left alone (see the module documentation).
    fn delivery_of(&self, queue_url: &str, message: Message) -> Option<Delivery> {
        let mut delivery = match decode(message.body().unwrap_or_default()) {
            Ok(QueueMessage::Task(delivery)) => delivery,
            Ok(QueueMessage::RawTask(task)) => {
                tracing::warn!(messageId = message.message_id(), taskId = task.id, "raw task left for the worker");
                return None;
            }
            Err(e) => {
                tracing::warn!(messageId = message.message_id(), error = %e, "undecodable message left for the DLQ");
                return None;
            }
        };
        delivery.receive_count = receive_count(&message);
        delivery.correlation = message
            .message_attributes()
            .and_then(|a| a.get(CORRELATION_ATTRIBUTE))
            .and_then(|v| v.string_value())
            .map(std::sync::Arc::from);
        delivery.receipt = Receipt::new(queue_url, message.receipt_handle().unwrap_or_default());
        let _ = self.outstanding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        Some(delivery)
    }
}

fn correlation_attribute(id: &str) -> Result<aws_sdk_sqs::types::MessageAttributeValue, AwsError> {
    aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(id)
        .build()
        .map_err(|e| AwsError::build("message attribute", e))
}

/// A duration in whole seconds as SQS takes it: rounded up (never early), at most `max`.
fn whole_seconds(duration: Duration, max: u64) -> i32 {
    let secs = duration.as_millis().div_ceil(1000);
    i32::try_from(secs.min(u128::from(max))).unwrap_or(0)
}

fn unknown_queue(url: &str) -> StoreError {
    StoreError::backend(std::io::Error::other(format!("a receipt of a queue this topology does not have: {url}")))
}

fn receive_count(message: &Message) -> u32 {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

impl WorkQueue for SqsQueue {
    async fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> StoreResult<()> {
        for priority in PRIORITIES {
            let of_priority: Vec<_> = deliveries.iter().filter(|(d, _)| d.priority == priority).cloned().collect();
            for batch in of_priority.chunks(BATCH) {
                self.send_batch(&self.topology.for_priority(priority).url, batch).await?;
                self.outstanding.fetch_add(batch.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// High first, then normal, then low: one short poll of each, then one-second long polls
    /// in the same order until `wait` has passed. Returns what the first queue with messages
    /// gave (at most ten: one request).
    async fn receive(&self, max: usize, wait: Duration) -> StoreResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut wait_secs = 0;
        loop {
            for priority in PRIORITIES {
                let url = &self.topology.for_priority(priority).url;
                let messages = self.receive_from(url, max, wait_secs).await?;
                let deliveries: Vec<_> = messages.into_iter().filter_map(|m| self.delivery_of(url, m)).collect();
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
            }
            if deadline.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_secs(1) {
                return Ok(Vec::new());
            }
            wait_secs = 1;
        }
    }

    async fn ack(&self, receipt: &Receipt) -> StoreResult<()> {
        match (receipt.source(), receipt.handle()) {
            (Some(url), Some(handle)) => Ok(self.delete(url, handle).await?),
            // Never received: nothing to delete.
            _ => Ok(()),
        }
    }

    /// A received copy is made invisible for `delay`; a copy never received is sent with it.
    async fn retry_after(&self, delivery: &Delivery, delay: Duration) -> StoreResult<()> {
        match (delivery.receipt.source(), delivery.receipt.handle()) {
            (Some(url), Some(handle)) => Ok(self.change_visibility(url, handle, delay).await?),
            _ => self.send(vec![(delivery.clone(), delay)]).await,
        }
    }

    async fn dead_letter(&self, letter: DeadLetter<'_>) -> StoreResult<()> {
        let (pair, body) = match letter {
            DeadLetter::Task(d) => (self.pair_of(&d.receipt, Some(d.priority))?, d.to_body()),
            DeadLetter::Poison { receipt, note } => (self.pair_of(receipt, None)?, note.to_body()),
        };
        Ok(self.send_body(&pair.dlq_url, body, Duration::ZERO).await?)
    }

    /// What this instance sent minus what it received (no request; other producers and
    /// consumers are not seen — [`SqsQueue::approximate_len`] asks SQS).
    fn len(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// SQS's default retention period, for a queue whose attributes do not say (4 days).
const DEFAULT_RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);

/// The queues' depths for the sweeper's re-send rule (`taskexec_lambda::sweeper::resend`): one `GetQueueAttributes` per queue.
impl QueueDepths for SqsQueue {
    async fn depths(&self) -> Result<[QueueDepth; 3], ActionError> {
        let mut out = [QueueDepth { messages: 0, retention: DEFAULT_RETENTION }; 3];
        for (depth, pair) in out.iter_mut().zip(&self.topology.queues) {
            self.count();
            let reply = self
                .client
                .get_queue_attributes()
                .queue_url(&pair.url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::MessageRetentionPeriod)
                .send()
                .await
                .map_err(|e| AwsError::sqs("GetQueueAttributes", e))?;
            let mut attributes = reply.attributes.unwrap_or_default();
            let retention = attributes.remove(&QueueAttributeName::MessageRetentionPeriod);
            if let Some(seconds) = retention.and_then(|v| v.parse::<u64>().ok()) {
                depth.retention = Duration::from_secs(seconds);
            }
            depth.messages = attributes.values().filter_map(|v| v.parse::<u64>().ok()).sum();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_seconds_and_cap_at_the_limit() {
        assert_eq!(whole_seconds(Duration::ZERO, MAX_DELAY_SECS), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1_001), MAX_DELAY_SECS), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3_600), MAX_DELAY_SECS), 900);
        assert_eq!(whole_seconds(Duration::from_secs(86_400), MAX_VISIBILITY_SECS), 43_200);
    }
}
