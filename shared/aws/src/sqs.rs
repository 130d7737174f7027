//! [`SqsQueue`]: the work queue over three SQS queues, one per priority. Message bodies are
//! core's [`Envelope`]s. `send` batches up to
//! ten messages per `SendMessageBatch` to each delivery's priority queue, with its delay (SQS
//! allows at most 900 s: a longer wait is sent with 900 s and the worker defers again when it
//! arrives early). `receive` polls high, then normal, then low, and deletes what it returns
//! (the port has no acknowledgement: the store's lease and the sweeper carry durability). The
//! Lambda worker gets its messages in the event instead, and uses the inherent methods
//! ([`SqsQueue::change_visibility`], [`SqsQueue::delete`],
//! [`SqsQueue::send_raw`], [`SqsQueue::send_body`]). Every SQS request is counted ([`SqsQueue::api_calls`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry};
use taskexec_core::message::{Envelope, QueueMessage, decode};
use taskexec_core::ports::{Delivery, StoreResult, WorkQueue};
use taskexec_core::task::TaskPriority;

use crate::error::AwsError;

/// The longest delay SQS accepts, in seconds.
pub const MAX_DELAY_SECS: u64 = 900;
/// The longest visibility timeout SQS accepts, in seconds (12 hours).
pub const MAX_VISIBILITY_SECS: u32 = 43_200;
/// Messages per `SendMessageBatch`.
const BATCH: usize = 10;

/// The three queue URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    /// Queue of `high` tasks.
    pub high: String,
    /// Queue of `normal` tasks.
    pub normal: String,
    /// Queue of `low` tasks.
    pub low: String,
}

impl QueueUrls {
    /// The queue of a priority.
    #[must_use]
    pub fn of(&self, priority: TaskPriority) -> &str {
        match priority {
            TaskPriority::High => &self.high,
            TaskPriority::Normal => &self.normal,
            TaskPriority::Low => &self.low,
        }
    }

    /// The priority a queue serves (`None` for another URL).
    #[must_use]
    pub fn priority_of(&self, queue_url: &str) -> Option<TaskPriority> {
        [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low].into_iter().find(|p| self.of(*p) == queue_url)
    }
}

/// The SQS work queue.
///
/// ```no_run
/// use std::time::Duration;
/// use taskexec_aws::{QueueUrls, SqsQueue};
/// # async fn demo(client: aws_sdk_sqs::Client) -> Result<(), taskexec_aws::AwsError> {
/// let urls = QueueUrls { high: "https://sqs/high".into(), normal: "https://sqs/normal".into(), low: "https://sqs/low".into() };
/// let queue = SqsQueue::new(client, urls);
/// queue.change_visibility("https://sqs/normal", "receipt-handle", 30).await?;
/// assert!(queue.api_calls() >= 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqsQueue {
    client: Client,
    urls: QueueUrls,
    api_calls: AtomicU64,
    /// Sent minus received through this instance (what `len` reports without a request).
    outstanding: AtomicUsize,
}

impl SqsQueue {
    /// A queue over existing SQS queues.
    #[must_use]
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self { client, urls, api_calls: AtomicU64::new(0), outstanding: AtomicUsize::new(0) }
    }

    /// The SQS client (for the Lambda ports in `crate::lambda`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The queue URLs.
    #[must_use]
    pub fn urls(&self) -> &QueueUrls {
        &self.urls
    }

    /// SQS requests made so far by this instance.
    #[must_use]
    pub fn api_calls(&self) -> u64 {
        self.api_calls.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self) {
        self.api_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Set a received message's visibility timeout (at most 12 hours).
    pub async fn change_visibility(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), AwsError> {
        self.count();
        let seconds = i32::try_from(seconds.min(MAX_VISIBILITY_SECS)).unwrap_or(i32::MAX);
        let request = self.client.change_message_visibility().queue_url(queue_url).receipt_handle(receipt_handle);
        request.visibility_timeout(seconds).send().await.map_err(|e| AwsError::sqs("ChangeMessageVisibility", e))?;
        Ok(())
    }

    /// Delete (acknowledge) a received message.
    pub async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), AwsError> {
        self.count();
        let request = self.client.delete_message().queue_url(queue_url).receipt_handle(receipt_handle);
        request.send().await.map_err(|e| AwsError::sqs("DeleteMessage", e))?;
        Ok(())
    }

    /// Send a body as it is (a poison message to a dead-letter queue).
    pub async fn send_raw(&self, queue_url: &str, body: &str) -> Result<(), AwsError> {
        self.send_body(queue_url, body.to_owned(), Duration::ZERO).await
    }

    /// Send one message body to one queue, visible after `delay` (rounded up to seconds, at
    /// most 900).
    pub async fn send_body(&self, queue_url: &str, body: String, delay: Duration) -> Result<(), AwsError> {
        self.count();
        let request = self.client.send_message().queue_url(queue_url).message_body(body);
        request.delay_seconds(delay_seconds(delay)).send().await.map_err(|e| AwsError::sqs("SendMessage", e))?;
        Ok(())
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
        for (i, url) in [&self.urls.high, &self.urls.normal, &self.urls.low].into_iter().enumerate() {
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
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(Envelope::of(d).to_body())
                    .delay_seconds(delay_seconds(*delay))
                    .build()
                    .map_err(|e| AwsError::build("SendMessageBatch entry", e))
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

    /// One message from one queue, waiting up to `wait_secs`.
    async fn receive_from(&self, queue_url: &str, wait_secs: i32) -> Result<Option<Message>, AwsError> {
        self.count();
        let out = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| AwsError::sqs("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default().into_iter().next())
    }

    /// Turn a received message into a delivery and delete it. A body that is not an envelope is
    /// left alone: a raw task from another system needs the worker (which stores it first), and
    /// poison reaches the dead-letter queue through the redrive policy.
    async fn take(&self, queue_url: &str, message: Message) -> Result<Option<Delivery>, AwsError> {
        let envelope = match decode(message.body().unwrap_or_default()) {
            Ok(QueueMessage::Envelope(envelope)) => envelope,
            Ok(QueueMessage::RawTask(task)) => {
                tracing::warn!(messageId = message.message_id(), taskId = task.id, "raw task left for the worker");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(messageId = message.message_id(), error = %e, "undecodable message left for the DLQ");
                return Ok(None);
            }
        };
        if let Some(handle) = message.receipt_handle() {
            self.delete(queue_url, handle).await?;
        }
        let _ = self.outstanding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        Ok(Some(envelope.into_delivery(receive_count(&message))))
    }
}

/// A delay in whole seconds as SQS takes it: rounded up (never early), at most 900.
#[must_use]
pub fn delay_seconds(delay: Duration) -> i32 {
    let secs = delay.as_millis().div_ceil(1000);
    i32::try_from(secs.min(u128::from(MAX_DELAY_SECS))).unwrap_or(0)
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
        for priority in [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low] {
            let of_priority: Vec<_> = deliveries.iter().filter(|(d, _)| d.priority == priority).cloned().collect();
            for batch in of_priority.chunks(BATCH) {
                self.send_batch(self.urls.of(priority), batch).await?;
                self.outstanding.fetch_add(batch.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// High first, then normal, then low: one short poll of each, then one-second long polls
    /// in the same order until `wait` has passed.
    async fn receive(&self, wait: Duration) -> StoreResult<Option<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut wait_secs = 0;
        loop {
            for priority in [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low] {
                let url = self.urls.of(priority);
                if let Some(message) = self.receive_from(url, wait_secs).await?
                    && let Some(delivery) = self.take(url, message).await?
                {
                    return Ok(Some(delivery));
                }
            }
            if deadline.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_secs(1) {
                return Ok(None);
            }
            wait_secs = 1;
        }
    }

    /// What this instance sent minus what it received (no request; other producers and
    /// consumers are not seen — [`SqsQueue::approximate_len`] asks SQS).
    fn len(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_and_cap_at_fifteen_minutes() {
        assert_eq!(delay_seconds(Duration::ZERO), 0);
        assert_eq!(delay_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(delay_seconds(Duration::from_secs(3_600)), 900);
    }

    #[test]
    fn urls_map_priorities_both_ways() {
        let urls = QueueUrls { high: "h".into(), normal: "n".into(), low: "l".into() };
        assert_eq!(urls.of(TaskPriority::Low), "l");
        assert_eq!(urls.priority_of("n"), Some(TaskPriority::Normal));
        assert_eq!(urls.priority_of("x"), None);
    }
}
