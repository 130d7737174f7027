//! The SQS worker: one batch in, every message processed concurrently through the engine's
//! decision function, partial batch failures out (`ReportBatchItemFailures`).
//!
//! What each decision does to its message (DESIGN.md, "Every unfinished task always has a live
//! message"):
//! - `Ack`: success — Lambda deletes the message.
//! - `Retry { delay }` / `Defer { delay }`: the message is made invisible for `delay` and reported
//!   as a failure, so it comes back then (a task leased by a live attempt is deferred for the
//!   lease's remaining time this way). Past `refresh_after_receives` receives, a fresh copy is
//!   sent instead and the old message reported as a success (so the mapping deletes it), so long
//!   deferrals never reach the redrive cap.
//! - `DeadLetter`: the engine recorded why; the envelope goes to the queue's DLQ (the `dlq`
//!   function records the analysis and emits the metric) and the message is acknowledged.
//! - A body that cannot be decoded is poison: it goes to the DLQ as it is, and is acknowledged.
//! - If an SQS call fails, the message is reported as failed: it comes back after its visibility
//!   timeout, and processing it again is safe (claims and outcomes are fenced).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use taskexec_core::engine::Decision;
use taskexec_core::message::{Envelope, QueueMessage, decode};
use taskexec_core::task::TaskState;

use crate::actions::{QueueActions, QueuePair, Topology};
use crate::executor::{Accepted, Executor};
use crate::window::OutcomeWindow;
use taskexec_core::ports::{RunCounter, RunDelta};

/// The longest SQS visibility timeout, seconds.
pub const MAX_VISIBILITY_SECONDS: i32 = 43_200;
/// The longest SQS send delay, seconds.
pub const MAX_DELAY_SECONDS: i32 = 900;

/// What the worker puts on a DLQ for a message it could not decode: the original message id
/// (no task id can be read), why, and the body as received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoisonNote {
    /// The poison message's id.
    pub message_id: String,
    /// Why it could not be decoded.
    pub reason: String,
    /// Its body.
    pub body: String,
}

impl PoisonNote {
    /// The DLQ message body: `{"poison": {...}}`.
    #[must_use]
    pub fn to_body(&self) -> String {
        serde_json::json!({ "poison": self }).to_string()
    }

    /// Read a DLQ body written by [`Self::to_body`].
    #[must_use]
    pub fn from_body(body: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        serde_json::from_value(value.get("poison")?.clone()).ok()
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Receives after which a deferred message is re-sent fresh (half the queue's maxReceiveCount).
    pub refresh_after_receives: u32,
    /// Time kept back from the invocation's deadline for writing outcomes.
    pub safety_margin: Duration,
    /// How often in-flight tasks are checked for cancellation (one control read per check).
    pub cancel_check_every: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            refresh_after_receives: 500,
            safety_margin: Duration::from_secs(3),
            cancel_check_every: Duration::from_secs(2),
        }
    }
}

/// The worker handler.
pub struct Worker<E, A, W> {
    executor: E,
    /// The breakers' outcome window shared with the other workers.
    window: W,
    actions: A,
    topology: Topology,
    settings: WorkerSettings,
    run_counter: Option<Arc<dyn RunCounter>>,
}

/// Whether a message is done with (`Ok`) or must come back (`Err`).
type MessageResult = Result<(), ()>;

/// Per run: tasks this batch completed and failed.
type Tally = std::sync::Mutex<BTreeMap<String, (u64, u64)>>;

impl<E: Executor, A: QueueActions, W: OutcomeWindow> Worker<E, A, W> {
    /// A worker; `window` is where breaker outcomes are shared with the other workers.
    pub fn new(executor: E, actions: A, window: W, topology: Topology, settings: WorkerSettings) -> Self {
        Self { executor, window, actions, topology, settings, run_counter: None }
    }

    /// Add each batch's finished tasks to the runs' counters through `counter`.
    #[must_use]
    pub fn with_run_counter(mut self, counter: Arc<dyn RunCounter>) -> Self {
        self.run_counter = Some(counter);
        self
    }

    /// The executor (for tests and the local poller).
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// Handle one batch; `deadline` is the invocation's deadline.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        let cap =
            deadline.map(|d| d.saturating_duration_since(Instant::now()).saturating_sub(self.settings.safety_margin));
        // Breakers opened by other containers are honoured from this batch on.
        self.executor.sync_shared_state().await;
        // And breakers are judged on every container's outcomes.
        self.executor.judge_shared(&self.window).await;
        let finished = std::sync::Mutex::new(BTreeMap::new());
        let all = futures::future::join_all(event.records.iter().map(|m| self.handle_message(m, cap, &finished)));
        let results = tokio::select! {
            results = all => results,
            () = self.watch_cancellations() => unreachable!("the watch never ends"),
        };
        self.count_runs(finished.into_inner().expect("poisoned")).await;
        self.executor.share_outcomes(&self.window).await;
        let mut response = SqsBatchResponse::default();
        for (message, result) in event.records.iter().zip(results) {
            if result.is_err() {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message.message_id.clone().unwrap_or_default();
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    async fn watch_cancellations(&self) {
        loop {
            tokio::time::sleep(self.settings.cancel_check_every).await;
            self.executor.check_cancellations().await;
        }
    }

    /// Add the batch's finished tasks to their runs' counters: one write per run per invocation.
    async fn count_runs(&self, finished: BTreeMap<String, (u64, u64)>) {
        let Some(counter) = &self.run_counter else { return };
        for (run, (completed, failed)) in finished {
            let delta = RunDelta { completed, failed, ..RunDelta::default() };
            if let Err(error) = counter.add(run.clone(), delta).await {
                tracing::warn!(run_id = %run, %error, "run counters not updated (GET /runs counts through the index)");
            }
        }
    }

    async fn handle_message(&self, m: &SqsMessage, cap: Option<Duration>, finished: &Tally) -> MessageResult {
        let id = m.message_id.as_deref().unwrap_or("");
        let Some(queue) = m.event_source_arn.as_deref().and_then(|arn| self.topology.for_arn(arn)) else {
            tracing::error!(message_id = id, arn = ?m.event_source_arn, "message from an unknown queue");
            return Err(());
        };
        let body = m.body.as_deref().unwrap_or("");
        let receives = m.attributes.get("ApproximateReceiveCount").and_then(|n| n.parse().ok()).unwrap_or(1);
        let delivery = match decode(body) {
            Ok(QueueMessage::Envelope(e)) => e.into_delivery(receives),
            Ok(QueueMessage::RawTask(task)) => match self.executor.accept(*task).await {
                Ok(Accepted::Deliver(mut d)) => {
                    d.receive_count = receives;
                    d
                }
                Ok(Accepted::Conflict) => {
                    return self.poison(queue, id, body, "task id exists with other content").await;
                }
                Err(error) => {
                    tracing::warn!(message_id = id, %error, "could not store a raw task; will retry");
                    return Err(());
                }
            },
            Err(error) => return self.poison(queue, id, body, &error.to_string()).await,
        };
        let (decision, done) = self.executor.process(&delivery, cap).await;
        if let Some(state) = done {
            let mut tally = finished.lock().expect("poisoned");
            let entry: &mut (u64, u64) = tally.entry(delivery.run_id().to_owned()).or_default();
            if state == TaskState::Completed { entry.0 += 1 } else { entry.1 += 1 }
        }
        tracing::info!(message_id = id, task_id = %delivery.task_id, ?decision, "processed");
        let receipt = m.receipt_handle.as_deref().unwrap_or("");
        match decision {
            Decision::Ack => Ok(()),
            Decision::Retry { delay } | Decision::Defer { delay, .. } => {
                self.come_back(queue, receipt, &Envelope::of(&delivery), receives, delay).await
            }
            Decision::DeadLetter { reason } => {
                tracing::warn!(task_id = %delivery.task_id, reason, "dead-lettered");
                self.sent(self.actions.send(&queue.dlq_url, Envelope::of(&delivery).to_body(), 0).await)
            }
        }
    }

    /// Make the message come back after `delay`: by visibility, or as a fresh copy once it has
    /// been received too often.
    async fn come_back(
        &self,
        queue: &QueuePair,
        receipt: &str,
        envelope: &Envelope,
        receives: u32,
        delay: Duration,
    ) -> MessageResult {
        let seconds = i32::try_from(delay.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        if receives > self.settings.refresh_after_receives {
            let sent = self.actions.send(&queue.url, envelope.to_body(), seconds.min(MAX_DELAY_SECONDS)).await;
            self.sent(sent)?;
            // Reported as a success: the event source mapping deletes the old message itself.
            return Ok(());
        }
        let visibility = self.actions.change_visibility(&queue.url, receipt, seconds.min(MAX_VISIBILITY_SECONDS)).await;
        self.sent(visibility)?;
        Err(())
    }

    async fn poison(&self, queue: &QueuePair, message_id: &str, body: &str, why: &str) -> MessageResult {
        tracing::error!(message_id, why, "poison message sent to the dead-letter queue");
        let note = PoisonNote { message_id: message_id.to_owned(), reason: why.to_owned(), body: body.to_owned() };
        self.sent(self.actions.send(&queue.dlq_url, note.to_body(), 0).await)
    }

    fn sent(&self, result: Result<(), crate::actions::ActionError>) -> MessageResult {
        result.map_err(|error| tracing::warn!(%error, "SQS call failed; the message will come back"))
    }
}
