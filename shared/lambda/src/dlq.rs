//! The dead-letter consumer. Messages reach a DLQ three ways: the worker dead-lettered a task
//! whose budget ran out (the analysis is already on the task), the worker sent a poison message,
//! or SQS redrove a message that failed `maxReceiveCount` times (a crash loop). For each:
//! - poison: recorded under its message id in the [`PoisonLog`];
//! - a dead-lettered task: its analysis (class, last error, attempts, throttles) logged as one JSON
//!   line (the engine emitted the dead-letter metric when it gave up);
//! - an unfinished task with attempts left (it got here by crashes): re-queued on its main queue;
//! - an unfinished task without attempts left: failed with `deadLetterReason` (fenced claim, then
//!   a fenced finish), metric emitted;
//! - a task finished otherwise: nothing to do.
//!
//! Every message is acknowledged unless a store or SQS call failed.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use taskexec_core::error::{ErrorClass, StoreError, TaskError};
use taskexec_core::message::{PoisonNote, QueueMessage, decode};
use taskexec_core::ports::{
    ClaimOutcome, ClaimRequest, Delivery, FinishRequest, Metric, MetricsSink, Outcome, Route, TaskStore, WorkQueue,
};
use taskexec_core::task::{TaskRecord, TaskState};
use taskexec_core::time::{Clock, Millis};

/// Where poison messages are recorded.
pub trait PoisonLog: Send + Sync {
    /// Record a message that could not be decoded, under its message id.
    fn record(&self, note: PoisonNote, at: Millis) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An in-memory poison log (tests, dry runs).
#[derive(Debug, Default)]
pub struct MemoryPoisonLog {
    /// What was recorded.
    pub notes: Mutex<Vec<PoisonNote>>,
}

impl PoisonLog for MemoryPoisonLog {
    async fn record(&self, note: PoisonNote, _at: Millis) -> Result<(), StoreError> {
        self.notes.lock().expect("poisoned").push(note);
        Ok(())
    }
}

/// What the DLQ handler did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqOutcome {
    /// Recorded as poison under this message id.
    Poison(String),
    /// The engine had dead-lettered the task; analysis logged.
    Analysed(String),
    /// Re-queued with attempts left.
    Requeued(String),
    /// Failed now: no attempts left after crashes.
    Finalised(String),
    /// The task had finished; nothing to do.
    AlreadyDone(String),
}

/// The DLQ handler.
pub struct DlqHandler<S, P, Q, M, C> {
    store: S,
    poison: P,
    queue: Q,
    metrics: M,
    clock: C,
    max_attempts: u32,
}

impl<S: TaskStore, P: PoisonLog, Q: WorkQueue, M: MetricsSink, C: Clock> DlqHandler<S, P, Q, M, C> {
    /// A handler re-queueing through `queue`; `max_attempts` is the retry policy's budget.
    pub fn new(store: S, poison: P, queue: Q, metrics: M, clock: C, max_attempts: u32) -> Self {
        Self { store, poison, queue, metrics, clock, max_attempts }
    }

    /// The poison log.
    pub fn poison_log(&self) -> &P {
        &self.poison
    }

    /// Handle one batch.
    pub async fn handle(&self, event: SqsEvent) -> (SqsBatchResponse, Vec<DlqOutcome>) {
        let mut response = SqsBatchResponse::default();
        let mut outcomes = Vec::new();
        for m in &event.records {
            match self.handle_message(m).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(error) => {
                    tracing::warn!(message_id = ?m.message_id, %error, "dead-letter message not handled; will retry");
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = m.message_id.clone().unwrap_or_default();
                    response.batch_item_failures.push(failure);
                }
            }
        }
        (response, outcomes)
    }

    async fn handle_message(&self, m: &SqsMessage) -> Result<DlqOutcome, Box<dyn std::error::Error + Send + Sync>> {
        let message_id = m.message_id.clone().unwrap_or_default();
        let body = m.body.as_deref().unwrap_or("");
        let now = self.clock.now();
        if let Some(note) = PoisonNote::from_body(body) {
            let id = note.message_id.clone();
            self.poison.record(note, now).await?;
            return Ok(DlqOutcome::Poison(id));
        }
        let delivery = match decode(body) {
            Ok(QueueMessage::Task(d)) => d,
            Ok(QueueMessage::RawTask(task)) => {
                let run_id = task.run_or(crate::executor::EXTERNAL_RUN).to_owned();
                let route = Route { provider_id: task.provider_id, model_id: task.model_id, run_id };
                Delivery::new(task.id, std::sync::Arc::new(route), task.priority, now)
            }
            Err(error) => {
                let note = PoisonNote { message_id: message_id.clone(), reason: error.to_string(), body: body.into() };
                self.poison.record(note, now).await?;
                return Ok(DlqOutcome::Poison(message_id));
            }
        };
        let Some(record) = self.store.get(&delivery.task_id).await? else {
            let reason = format!("no task with id {}", delivery.task_id);
            self.poison.record(PoisonNote { message_id: message_id.clone(), reason, body: body.into() }, now).await?;
            return Ok(DlqOutcome::Poison(message_id));
        };
        self.handle_task(record, delivery, now).await
    }

    async fn handle_task(
        &self,
        record: TaskRecord,
        delivery: Delivery,
        now: Millis,
    ) -> Result<DlqOutcome, Box<dyn std::error::Error + Send + Sync>> {
        let id = delivery.task_id.clone();
        if let Some(reason) = &record.dead_letter_reason {
            self.analyse(&record, reason);
            return Ok(DlqOutcome::Analysed(id));
        }
        if record.state.is_terminal() {
            return Ok(DlqOutcome::AlreadyDone(id));
        }
        if record.attempt < self.max_attempts {
            self.queue.send(vec![(delivery, Duration::ZERO)]).await?;
            tracing::info!(task_id = %id, attempt = record.attempt, "dead-lettered by crashes with attempts left: re-queued");
            return Ok(DlqOutcome::Requeued(id));
        }
        self.finalise(&record, now).await?;
        Ok(DlqOutcome::Finalised(id))
    }

    fn analyse(&self, record: &TaskRecord, reason: &str) {
        let error = record.error.as_ref();
        let analysis = serde_json::json!({
            "event": "deadLetterAnalysis",
            "taskId": record.task.id,
            "runId": record.run_id(),
            "providerId": record.task.provider_id,
            "modelId": record.task.model_id,
            "class": error.map(|e| e.class.as_str()),
            "lastError": error.map(|e| e.message.as_str()),
            "providerStatus": error.and_then(|e| e.provider_status),
            "attempts": record.attempt,
            "throttles": record.throttles,
            "reason": reason,
            "promptBytes": record.task.prompt.len(),
        });
        // The engine emitted the dead-letter metric when it dead-lettered the task: not again here.
        tracing::warn!(analysis = %analysis, "dead-letter analysis");
    }

    /// Fail a task that used its whole budget crashing: claim it (fenced), then finish it failed.
    async fn finalise(&self, record: &TaskRecord, now: Millis) -> Result<(), StoreError> {
        let claim =
            ClaimRequest { task_id: record.task.id.clone(), owner: "dlq".into(), now, lease_until: now + 60_000 };
        let ClaimOutcome::Claimed(claimed) = self.store.claim(claim).await? else { return Ok(()) };
        let reason = format!(
            "attempts exhausted: {} of {} used without an outcome (the worker crashed or timed out every time)",
            record.attempt, self.max_attempts
        );
        let error = TaskError::new(ErrorClass::Transient, "no attempt produced an outcome");
        let finish = FinishRequest {
            task_id: claimed.task.id.clone(),
            epoch: claimed.epoch,
            outcome: Outcome::Failed { error, dead_letter_reason: Some(reason.clone()) },
            attempt: record.attempt,
            throttles: claimed.throttles,
            record: None,
            now,
        };
        self.store.finish(finish).await?;
        self.metrics.record(Metric::DeadLettered { task_id: claimed.task.id.clone(), reason });
        debug_assert_eq!(claimed.state, TaskState::Running);
        Ok(())
    }
}
