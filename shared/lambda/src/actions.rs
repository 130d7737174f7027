//! The error type of the handlers' AWS ports other than the work queue (queue depths, event
//! source mappings), and [`RecordingQueue`]: a work queue that records what a handler asked of
//! it, for tests and dry runs. The handlers reach SQS only through core's
//! [`WorkQueue`] port (`taskexec_aws::SqsQueue` in the functions).

use std::sync::Mutex;
use std::time::Duration;

use taskexec_core::message::PoisonNote;
use taskexec_core::ports::{DeadLetter, Delivery, Receipt, StoreResult, WorkQueue};

/// An AWS call of a port failed.
pub type ActionError = Box<dyn std::error::Error + Send + Sync>;

/// One operation asked of a [`RecordingQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `send`: one entry per delivery.
    Send(Delivery, Duration),
    /// `ack`.
    Ack(Receipt),
    /// `retry_after`.
    RetryAfter(Delivery, Duration),
    /// `dead_letter` of a task.
    DeadLetter(Delivery),
    /// `dead_letter` of poison received with the receipt.
    Poison(Receipt, PoisonNote),
}

/// A [`WorkQueue`] that records what it was asked to do and receives nothing.
#[derive(Debug, Default)]
pub struct RecordingQueue {
    /// Everything asked so far.
    pub log: Mutex<Vec<Op>>,
}

impl RecordingQueue {
    /// A copy of the log.
    #[must_use]
    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().expect("poisoned").clone()
    }

    fn push(&self, op: Op) {
        self.log.lock().expect("poisoned").push(op);
    }
}

impl WorkQueue for RecordingQueue {
    async fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> StoreResult<()> {
        for (delivery, delay) in deliveries {
            self.push(Op::Send(delivery, delay));
        }
        Ok(())
    }

    async fn receive(&self, _max: usize, _wait: Duration) -> StoreResult<Vec<Delivery>> {
        Ok(Vec::new())
    }

    async fn ack(&self, receipt: &Receipt) -> StoreResult<()> {
        self.push(Op::Ack(receipt.clone()));
        Ok(())
    }

    async fn retry_after(&self, delivery: &Delivery, delay: Duration) -> StoreResult<()> {
        self.push(Op::RetryAfter(delivery.clone(), delay));
        Ok(())
    }

    async fn dead_letter(&self, letter: DeadLetter<'_>) -> StoreResult<()> {
        self.push(match letter {
            DeadLetter::Task(delivery) => Op::DeadLetter(delivery.clone()),
            DeadLetter::Poison { receipt, note } => Op::Poison(receipt.clone(), note.clone()),
        });
        Ok(())
    }

    fn len(&self) -> usize {
        0
    }
}

#[cfg(test)]
pub(crate) fn test_topology() -> taskexec_core::ports::Topology {
    use taskexec_core::ports::{QueuePair, Topology};
    use taskexec_core::task::TaskPriority;
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
    use taskexec_core::task::TaskPriority;

    #[test]
    fn finds_queues_by_arn_url_and_priority() {
        let t = test_topology();
        let normal = t.for_arn("arn:aws:sqs:us-east-1:123456789012:taskexec-normal").unwrap();
        assert_eq!(normal.priority, TaskPriority::Normal);
        let dlq = t.for_arn("arn:aws:sqs:us-east-1:123456789012:taskexec-low-dlq").unwrap();
        assert_eq!(dlq.priority, TaskPriority::Low);
        assert!(t.for_arn("arn:aws:sqs:us-east-1:123456789012:other").is_none());
        assert!(t.for_priority(TaskPriority::High).url.ends_with("taskexec-high"));
        assert_eq!(t.for_url(&t.queues[2].dlq_url).unwrap().priority, TaskPriority::Low);
        assert!(t.for_url("https://elsewhere/q").is_none());
    }
}
