//! What a handler does to SQS messages, as a port: the Lambda functions implement it with the
//! SQS client (`taskexec-aws`), tests with [`RecordingActions`].

use std::future::Future;
use std::sync::Mutex;

use taskexec_core::task::TaskPriority;

/// An SQS call failed.
pub type ActionError = Box<dyn std::error::Error + Send + Sync>;

/// Message operations the handlers need.
pub trait QueueActions: Send + Sync {
    /// Make a received message invisible for `seconds` (0..=43200).
    fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> impl Future<Output = Result<(), ActionError>> + Send;
    /// Delete a received message.
    fn delete(&self, queue_url: &str, receipt_handle: &str) -> impl Future<Output = Result<(), ActionError>> + Send;
    /// Send a message, visible after `delay_seconds` (0..=900).
    fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: i32,
    ) -> impl Future<Output = Result<(), ActionError>> + Send;
}

impl<T: QueueActions> QueueActions for std::sync::Arc<T> {
    fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> impl Future<Output = Result<(), ActionError>> + Send {
        (**self).change_visibility(queue_url, receipt_handle, seconds)
    }

    fn delete(&self, queue_url: &str, receipt_handle: &str) -> impl Future<Output = Result<(), ActionError>> + Send {
        (**self).delete(queue_url, receipt_handle)
    }

    fn send(
        &self,
        queue_url: &str,
        body: String,
        delay_seconds: i32,
    ) -> impl Future<Output = Result<(), ActionError>> + Send {
        (**self).send(queue_url, body, delay_seconds)
    }
}

/// One work queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    /// The priority it carries.
    pub priority: TaskPriority,
    /// Main queue URL.
    pub url: String,
    /// Its DLQ's URL.
    pub dlq_url: String,
}

/// The three priority queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// High, normal, low.
    pub queues: [QueuePair; 3],
}

impl Topology {
    /// The pair for a priority.
    #[must_use]
    pub fn for_priority(&self, priority: TaskPriority) -> &QueuePair {
        &self.queues[usize::from(priority.rank())]
    }

    /// The pair a message came from, by its event source ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`),
    /// matched on the queue name (the last segment of both the ARN and the URL). A DLQ's ARN
    /// finds the pair whose `dlq_url` it names.
    #[must_use]
    pub fn for_arn(&self, arn: &str) -> Option<&QueuePair> {
        let name = arn.rsplit(':').next()?;
        let last = |url: &str| url.rsplit('/').next().map(str::to_owned);
        self.queues.iter().find(|q| last(&q.url).as_deref() == Some(name) || last(&q.dlq_url).as_deref() == Some(name))
    }
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// change_visibility(queue, receipt, seconds)
    Visibility(String, String, i32),
    /// delete(queue, receipt)
    Delete(String, String),
    /// send(queue, body, delay)
    Send(String, String, i32),
}

/// A [`QueueActions`] that records what it was asked to do (tests, dry runs).
#[derive(Debug, Default)]
pub struct RecordingActions {
    /// Everything asked so far.
    pub log: Mutex<Vec<Action>>,
}

impl RecordingActions {
    /// A copy of the log.
    #[must_use]
    pub fn actions(&self) -> Vec<Action> {
        self.log.lock().expect("poisoned").clone()
    }

    fn push(&self, a: Action) {
        self.log.lock().expect("poisoned").push(a);
    }
}

impl QueueActions for RecordingActions {
    async fn change_visibility(&self, queue_url: &str, receipt_handle: &str, seconds: i32) -> Result<(), ActionError> {
        self.push(Action::Visibility(queue_url.into(), receipt_handle.into(), seconds));
        Ok(())
    }

    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), ActionError> {
        self.push(Action::Delete(queue_url.into(), receipt_handle.into()));
        Ok(())
    }

    async fn send(&self, queue_url: &str, body: String, delay_seconds: i32) -> Result<(), ActionError> {
        self.push(Action::Send(queue_url.into(), body, delay_seconds));
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn test_topology() -> Topology {
    let pair = |priority, name: &str| QueuePair {
        priority,
        url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}"),
        dlq_url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}-dlq"),
    };
    Topology {
        queues: [
            pair(TaskPriority::High, "high"),
            pair(TaskPriority::Normal, "normal"),
            pair(TaskPriority::Low, "low"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_queues_by_arn_and_priority() {
        let t = test_topology();
        let normal = t.for_arn("arn:aws:sqs:us-east-1:123456789012:taskexec-normal").unwrap();
        assert_eq!(normal.priority, TaskPriority::Normal);
        let dlq = t.for_arn("arn:aws:sqs:us-east-1:123456789012:taskexec-low-dlq").unwrap();
        assert_eq!(dlq.priority, TaskPriority::Low);
        assert!(t.for_arn("arn:aws:sqs:us-east-1:123456789012:other").is_none());
        assert!(t.for_priority(TaskPriority::High).url.ends_with("taskexec-high"));
    }
}
