//! A local event-source mapping: what Lambda does between SQS and the worker function, done in
//! process for `taskexec serve --backend aws` and the emulator tests (no emulator here executes
//! Lambda functions). For each queue, up to `concurrency` loops each receive a batch (long poll),
//! hand it to the worker handler as an `SqsEvent` with a deadline, and acknowledge (through the
//! work queue port) the messages the handler did not report as failures — exactly the contract
//! of `ReportBatchItemFailures`. Batches come in raw, as Lambda's service hands them over
//! (poison and raw tasks included), from a [`MessageSource`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use tokio_util::sync::CancellationToken;

use taskexec_core::ports::{QueuePair, Receipt, Topology, WorkQueue};

use crate::actions::ActionError;
use crate::executor::Executor;
use crate::window::OutcomeWindow;
use crate::worker::Worker;

/// Where batches come from.
pub trait MessageSource: Send + Sync + 'static {
    /// Receive up to `max` messages (1..=10) from `queue`, waiting up to `wait` for the first.
    /// Messages must carry `eventSourceARN` and the `ApproximateReceiveCount` attribute.
    fn receive(
        &self,
        queue: &QueuePair,
        max: i32,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<SqsMessage>, ActionError>> + Send;
}

/// Poller settings (the mapping's settings in template.yaml).
#[derive(Debug, Clone)]
pub struct PollerSettings {
    /// Messages per batch (SQS allows up to 10 per receive).
    pub batch_size: i32,
    /// Long-poll wait.
    pub wait: Duration,
    /// Batches in flight per queue (the mapping's `MaximumConcurrency`), high, normal, low.
    pub concurrency: [usize; 3],
    /// The function timeout: each batch gets this deadline.
    pub function_timeout: Duration,
}

impl Default for PollerSettings {
    fn default() -> Self {
        Self {
            batch_size: 10,
            wait: Duration::from_secs(1),
            concurrency: [2, 2, 2],
            function_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts of what the poller did.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Receive calls.
    pub receives: AtomicU64,
    /// Batches handed to the worker.
    pub batches: AtomicU64,
    /// Messages deleted after success.
    pub deletes: AtomicU64,
    /// Messages reported as batch item failures.
    pub failures: AtomicU64,
}

/// Run the mapping until `shutdown` fires.
pub async fn run<S, E, Q, W>(
    source: Arc<S>,
    worker: Arc<Worker<E, Q, W>>,
    queue: Arc<Q>,
    topology: Topology,
    settings: PollerSettings,
    stats: Arc<PollerStats>,
    shutdown: CancellationToken,
) where
    S: MessageSource,
    E: Executor + 'static,
    Q: WorkQueue,
    W: OutcomeWindow + 'static,
{
    let mut loops = tokio::task::JoinSet::new();
    for (i, pair) in topology.queues.iter().enumerate() {
        for _ in 0..settings.concurrency[i].max(1) {
            let poll = Poll {
                source: source.clone(),
                worker: worker.clone(),
                work_queue: queue.clone(),
                queue: pair.clone(),
                settings: settings.clone(),
                stats: stats.clone(),
            };
            loops.spawn(poll.run(shutdown.clone()));
        }
    }
    while loops.join_next().await.is_some() {}
}

struct Poll<S, E, Q, W> {
    source: Arc<S>,
    worker: Arc<Worker<E, Q, W>>,
    work_queue: Arc<Q>,
    queue: QueuePair,
    settings: PollerSettings,
    stats: Arc<PollerStats>,
}

impl<S: MessageSource, E: Executor, Q: WorkQueue, W: OutcomeWindow> Poll<S, E, Q, W> {
    async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Counted before the call: a receive cut short by shutdown was still made.
            self.stats.receives.fetch_add(1, Ordering::Relaxed);
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.source.receive(&self.queue, self.settings.batch_size, self.settings.wait) => r,
            };
            match received {
                Ok(messages) if !messages.is_empty() => self.handle(messages).await,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(queue = %self.queue.url, %error, "receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn handle(&self, messages: Vec<SqsMessage>) {
        let mut event = SqsEvent::default();
        event.records = messages;
        let deadline = Instant::now() + self.settings.function_timeout;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let response = self.worker.handle(event.clone(), Some(deadline)).await;
        let failed: std::collections::HashSet<&str> =
            response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        for m in &event.records {
            if failed.contains(m.message_id.as_deref().unwrap_or("")) {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let receipt = Receipt::new(self.queue.url.as_str(), m.receipt_handle.as_deref().unwrap_or(""));
            match self.work_queue.ack(&receipt).await {
                Ok(()) => {
                    self.stats.deletes.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "delete after success failed; the message comes back and is acked")
                }
            }
        }
    }
}
