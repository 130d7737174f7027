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
//! - Deferrals without a known end (paused, a concurrency limit full, the store unreachable) back
//!   off exponentially with jitter up to a cap ([`DeferBackoff`]), counted over every copy of the
//!   message: a paused run or a blocked deployment costs each waiting message one receive per
//!   cap at most once the backoff has grown, not one per second.
//! - Priority where capacity is short: a task at the front of a full limit's shared waiting line
//!   ([`DeferReason::InLine`]) comes back within a second; a task waiting for a quota window
//!   comes back when it frees plus a head start by class ([`DeferBackoff::rank_delay`]).
//! - A message whose processing panics is isolated: its siblings in the batch finish normally, and
//!   it comes back when the claim's lease has run out. Its attempt was counted at the claim, so a
//!   task that crashes its handler on every attempt is failed at the claim after its last allowed
//!   attempt (the engine's budget check), not redelivered for ever.
//! - `DeadLetter`: the engine recorded why; the envelope goes to the queue's DLQ (the `dlq`
//!   function records the analysis and emits the metric) and the message is acknowledged.
//! - A body that cannot be decoded is poison: it goes to the DLQ as it is, and is acknowledged.
//! - If an SQS call fails, the message is reported as failed: it comes back after its visibility
//!   timeout, and processing it again is safe (claims and outcomes are fenced).
//!
//! Every SQS operation goes through core's [`WorkQueue`] port (`taskexec_aws::SqsQueue`): the
//! worker speaks in deliveries, receipts and durations; seconds, URLs and SQS's limits are the
//! queue's business. Acknowledging is reporting success to the event source mapping, which
//! deletes the message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use taskexec_core::engine::Decision;
use taskexec_core::error::StoreError;
use taskexec_core::message::{CORRELATION_ATTRIBUTE, PoisonNote, QueueMessage, decode};
use taskexec_core::ports::{DeadLetter, DeferReason, Delivery, Receipt, RunCounter, RunDelta, Topology, WorkQueue};
use taskexec_core::schedule::effective_rank;
use taskexec_core::task::TaskState;
use taskexec_core::time::{Clock, Millis, SystemClock, duration_ms};
use tracing::Instrument;

use crate::executor::{Accepted, Executor};
use crate::window::OutcomeWindow;

/// How long a message deferred without a known end waits before it is received again: an
/// exponential backoff over the message's deferrals so far, with "equal jitter" (half the ceiling
/// fixed, half random, so waits never collapse to zero and a crowd of messages deferred together
/// spreads out), up to a cap per reason.
///
/// Deferrals with a known end keep their exact time: a held lease (its end), a retry not due
/// (its time), an open breaker (its cool-down). A task at the front of a full limit's shared
/// waiting line asks again within [`DeferBackoff::in_line`] whatever its deferrals so far: it
/// is next (a limit's line holds at most [`taskexec_core::schedule::LINE_FRONT`] such tasks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferBackoff {
    /// The ceiling of the first deferral.
    pub base: Duration,
    /// The largest wait of a paused task. Resuming one run takes up to this long to reach its
    /// longest-waiting messages; a global resume re-enables the event source mappings, and
    /// messages that were never received during the pause arrive at once.
    pub pause_cap: Duration,
    /// The largest wait of a task blocked by a full concurrency limit or an unreachable store.
    pub blocked_cap: Duration,
    /// The wait of a task at the front of a full limit's waiting line
    /// ([`DeferReason::InLine`]): at most this, at least half of it.
    pub in_line: Duration,
    /// What a task waiting for a quota window ([`DeferReason::RateLimited`]) adds to its wait
    /// per class below high it ranks in ([`taskexec_core::schedule::effective_rank`], aging
    /// included): when the window frees, high tasks come back first and take it, normal ones
    /// this much later, low ones twice as late.
    pub rank_step: Duration,
}

impl Default for DeferBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            pause_cap: Duration::from_secs(300),
            blocked_cap: Duration::from_secs(60),
            in_line: Duration::from_secs(1),
            rank_step: Duration::from_millis(500),
        }
    }
}

impl DeferBackoff {
    /// The wait of a delivery deferred for `reason` (the engine asked for `asked`) after
    /// `deferrals` earlier deferrals of its message. Never shorter than `asked`.
    pub fn delay_for(&self, reason: &DeferReason, asked: Duration, deferrals: u32, rng: &mut impl Rng) -> Duration {
        let cap = match reason {
            // At the front of a full limit's shared line: back soon, spread over (in_line / 2,
            // in_line], so that capacity freed anywhere goes to the best-ranked waiting task.
            DeferReason::InLine(_) => {
                let half = self.in_line / 2;
                let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
                return (half + Duration::from_millis(rng.random_range(0..=spread))).max(asked);
            }
            DeferReason::Paused => self.pause_cap,
            DeferReason::LimitReached(_) | DeferReason::StoreUnavailable => self.blocked_cap,
            DeferReason::LeaseHeld
            | DeferReason::NotDue
            | DeferReason::BreakerOpen(_)
            | DeferReason::RateLimited(_) => {
                return asked;
            }
        };
        let ceiling = self.base.saturating_mul(1 << deferrals.min(20)).min(cap).max(self.base);
        let half = ceiling / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        (half + Duration::from_millis(rng.random_range(0..=spread))).max(asked)
    }

    /// The head start of a delivery waiting for a quota window at `now` over those ranking a
    /// class below it: what its wait grows by ([`DeferBackoff::rank_step`] per class below high
    /// it ranks in). Nothing for other waits.
    #[must_use]
    pub fn rank_delay(&self, reason: &DeferReason, d: &Delivery, now: Millis, aging: Duration) -> Duration {
        if !matches!(reason, DeferReason::RateLimited(_)) {
            return Duration::ZERO;
        }
        let rank = effective_rank(d.priority, d.ready_at, now, duration_ms(aging));
        self.rank_step.saturating_mul(u32::from(rank))
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
    /// How deferrals without a known end wait.
    pub backoff: DeferBackoff,
    /// Seed of the backoff jitter (random when `None`).
    pub seed: Option<u64>,
}

/// The queues' `maxReceiveCount` the template sets (see `template.yaml`): every receive of a
/// message counts, so the worker refreshes a deferred message at half of it.
pub const MAX_RECEIVE_COUNT: u32 = 10;

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            refresh_after_receives: MAX_RECEIVE_COUNT / 2,
            safety_margin: Duration::from_secs(3),
            cancel_check_every: Duration::from_secs(2),
            backoff: DeferBackoff::default(),
            seed: None,
        }
    }
}

/// The worker handler.
pub struct Worker<E, Q, W> {
    executor: E,
    /// The breakers' outcome window shared with the other workers.
    window: W,
    queue: Q,
    topology: Topology,
    settings: WorkerSettings,
    run_counter: Option<Arc<dyn RunCounter>>,
    rng: std::sync::Mutex<StdRng>,
}

/// Whether a message is done with (`Ok`) or must come back (`Err`).
type MessageResult = Result<(), ()>;

/// Per run: tasks this batch completed and failed.
type Tally = std::sync::Mutex<BTreeMap<String, (u64, u64)>>;

impl<E: Executor, Q: WorkQueue, W: OutcomeWindow> Worker<E, Q, W> {
    /// A worker; `window` is where breaker outcomes are shared with the other workers.
    pub fn new(executor: E, queue: Q, window: W, topology: Topology, settings: WorkerSettings) -> Self {
        let rng = settings.seed.map_or_else(|| StdRng::from_rng(&mut rand::rng()), StdRng::seed_from_u64);
        Self { executor, window, queue, topology, settings, run_counter: None, rng: std::sync::Mutex::new(rng) }
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

    /// Handle one batch; `deadline` is the invocation's deadline. After it: the batch's outcomes
    /// go to the shared breaker window, its finished tasks to the run counters, and the
    /// container's unused share of the current quota slot back to the fleet's ledger.
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
        self.executor.give_back_quota().await;
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
            self.executor.check_control().await;
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
        let receipt = Receipt::new(queue.url.as_str(), m.receipt_handle.as_deref().unwrap_or(""));
        let mut delivery = match decode(body) {
            Ok(QueueMessage::Task(d)) => d,
            Ok(QueueMessage::RawTask(task)) => match self.executor.accept(*task).await {
                Ok(Accepted::Deliver(d)) => d,
                Ok(Accepted::Conflict) => {
                    return self.poison(&receipt, id, body, "task id exists with other content").await;
                }
                Err(error) => {
                    tracing::warn!(message_id = id, %error, "could not store a raw task; will retry");
                    return Err(());
                }
            },
            Err(error) => return self.poison(&receipt, id, body, &error.to_string()).await,
        };
        delivery.receive_count = m.attributes.get("ApproximateReceiveCount").and_then(|n| n.parse().ok()).unwrap_or(1);
        delivery.receipt = receipt;
        delivery.correlation =
            m.message_attributes.get(CORRELATION_ATTRIBUTE).and_then(|a| a.string_value.as_deref()).map(Arc::from);
        // Every log line of this message's processing (the engine's, the provider call's) names
        // the task, its run and the submitting request.
        let span = tracing::info_span!(
            "task",
            task_id = %delivery.task_id,
            run_id = %delivery.run_id(),
            correlation_id = delivery.correlation.as_deref().unwrap_or(""),
            message_id = id,
        );
        // Boxed: the instrumented future nested in the batch's join would otherwise make the
        // worker's future type too deep for the compiler's layout queries in some crates.
        Box::pin(self.process_message(delivery, id, cap, finished).instrument(span)).await
    }

    async fn process_message(
        &self,
        delivery: Delivery,
        id: &str,
        cap: Option<Duration>,
        finished: &Tally,
    ) -> MessageResult {
        // A panic is caught here so that it costs only this message (Lambda would otherwise fail
        // the whole batch). Nothing was recorded: the claim's lease keeps the task until it runs
        // out, then the next delivery claims it again and the claim counts the attempt.
        let processed = std::panic::AssertUnwindSafe(self.executor.process(&delivery, cap)).catch_unwind().await;
        let Ok((decision, done)) = processed else {
            tracing::error!(message_id = id, task_id = %delivery.task_id, "processing panicked; the task's attempt is counted and it comes back after its lease");
            // Invisible for the claim's lease: when it comes back, the task can be claimed again.
            let _ = self.sent(self.queue.retry_after(&delivery, self.executor.lease()).await);
            return Err(());
        };
        if let Some(state) = done {
            let mut tally = finished.lock().expect("poisoned");
            let entry: &mut (u64, u64) = tally.entry(delivery.run_id().to_owned()).or_default();
            if state == TaskState::Completed { entry.0 += 1 } else { entry.1 += 1 }
        }
        tracing::info!(message_id = id, task_id = %delivery.task_id, ?decision, "processed");
        match decision {
            Decision::Ack => Ok(()),
            Decision::Retry { delay } => self.come_back(&delivery, delay).await,
            Decision::Defer { delay, reason } => {
                let deferrals = delivery.deferrals_so_far();
                let delay = {
                    let mut rng = self.rng.lock().expect("rng poisoned");
                    self.settings.backoff.delay_for(&reason, delay, deferrals, &mut *rng)
                };
                let now = SystemClock.now();
                let delay = delay + self.settings.backoff.rank_delay(&reason, &delivery, now, self.executor.aging());
                self.come_back(&delivery, delay).await
            }
            Decision::DeadLetter { reason } => {
                tracing::warn!(task_id = %delivery.task_id, reason, "dead-lettered");
                self.sent(self.queue.dead_letter(DeadLetter::Task(&delivery)).await)
            }
        }
    }

    /// Make the message come back after `delay`: by visibility, or as a fresh copy once it has
    /// been received too often.
    async fn come_back(&self, delivery: &Delivery, delay: Duration) -> MessageResult {
        if delivery.receive_count > self.settings.refresh_after_receives {
            // The fresh copy carries the deferrals so far (this one included), so its backoff
            // goes on from where this copy's stopped.
            self.sent(self.queue.send(vec![(delivery.fresh_copy(), delay)]).await)?;
            // Reported as a success: the event source mapping deletes the old message itself.
            return Ok(());
        }
        self.sent(self.queue.retry_after(delivery, delay).await)?;
        Err(())
    }

    async fn poison(&self, receipt: &Receipt, message_id: &str, body: &str, why: &str) -> MessageResult {
        tracing::error!(message_id, why, "poison message sent to the dead-letter queue");
        let note = PoisonNote { message_id: message_id.to_owned(), reason: why.to_owned(), body: body.to_owned() };
        self.sent(self.queue.dead_letter(DeadLetter::Poison { receipt, note: &note }).await)
    }

    fn sent(&self, result: Result<(), StoreError>) -> MessageResult {
        result.map_err(|error| tracing::warn!(%error, "SQS call failed; the message will come back"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskexec_core::ports::LimitKey;

    #[test]
    fn deferrals_without_a_known_end_back_off_up_to_their_cap() {
        let backoff = DeferBackoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut previous_ceiling = Duration::ZERO;
        for n in 0..16 {
            let paused = backoff.delay_for(&DeferReason::Paused, Duration::from_secs(1), n, &mut rng);
            let ceiling = (Duration::from_secs(1) * (1 << n)).min(Duration::from_secs(300));
            assert!(
                paused >= (ceiling / 2).max(Duration::from_secs(1)) && paused <= ceiling.max(Duration::from_secs(1)),
                "{n}: {paused:?}"
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
            let limit = LimitKey::Deployment("d".into());
            let blocked = backoff.delay_for(&DeferReason::LimitReached(limit), Duration::from_millis(50), n, &mut rng);
            assert!(blocked <= Duration::from_secs(60), "{n}: {blocked:?}");
        }
        let late = backoff.delay_for(&DeferReason::Paused, Duration::from_secs(1), 30, &mut rng);
        assert!(late >= Duration::from_secs(150) && late <= Duration::from_secs(300), "{late:?}");
    }

    #[test]
    fn deferrals_with_a_known_end_keep_it() {
        let backoff = DeferBackoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let asked = Duration::from_millis(2_345);
        for reason in [DeferReason::LeaseHeld, DeferReason::NotDue, DeferReason::BreakerOpen("d".into())] {
            assert_eq!(backoff.delay_for(&reason, asked, 9, &mut rng), asked, "{reason:?}");
        }
    }

    #[test]
    fn quota_waits_give_high_tasks_a_head_start_and_aging_closes_it() {
        use std::sync::Arc;
        use taskexec_core::ports::Route;
        use taskexec_core::task::TaskPriority;
        let backoff = DeferBackoff::default();
        let route = Arc::new(Route { provider_id: "d".into(), model_id: "m".into(), run_id: "r".into() });
        let d = |priority| Delivery::new("t", route.clone(), priority, 0);
        let quota = DeferReason::RateLimited("d".into());
        let aging = Duration::from_secs(10);
        let step = backoff.rank_step;
        assert_eq!(backoff.rank_delay(&quota, &d(TaskPriority::High), 0, aging), Duration::ZERO);
        assert_eq!(backoff.rank_delay(&quota, &d(TaskPriority::Normal), 0, aging), step);
        assert_eq!(backoff.rank_delay(&quota, &d(TaskPriority::Low), 0, aging), step * 2);
        assert_eq!(backoff.rank_delay(&quota, &d(TaskPriority::Low), 10_000, aging), step, "promoted once");
        assert_eq!(backoff.rank_delay(&quota, &d(TaskPriority::Low), 20_000, aging), Duration::ZERO);
        let limit = DeferReason::LimitReached(LimitKey::Deployment("d".into()));
        assert_eq!(backoff.rank_delay(&limit, &d(TaskPriority::Low), 0, aging), Duration::ZERO, "the line ranks those");
    }

    #[test]
    fn jitter_spreads_a_crowd_deferred_together() {
        let backoff = DeferBackoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let waits: std::collections::BTreeSet<u128> = (0..100)
            .map(|_| backoff.delay_for(&DeferReason::Paused, Duration::from_secs(1), 6, &mut rng).as_millis())
            .collect();
        assert!(waits.len() > 50, "100 messages, {} distinct waits", waits.len());
    }
}
