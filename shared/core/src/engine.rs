//! The engine and its one decision function: a [`Delivery`] in, a [`Decision`] out.
//!
//! [`Engine::process`] admits the call through the deployment's breaker and the concurrency
//! limits, claims the task (committed before the call), makes one provider call under the
//! attempt timeout with a lease heartbeat and a cancellation token, records the outcome with a
//! write fenced by the claim's epoch, and says what to do with the delivery. The embedded runner
//! ([`crate::runner`]) and the Lambda worker are thin loops around it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerPolicy, CallResult};
use crate::error::{ErrorClass, ProviderError, StoreError, TaskError};
use crate::ports::{
    AuditEvent, BreakerStore, CancelOutcome, ClaimOutcome, ClaimRequest, ControlStore, DeferReason, Delivery,
    FinishRequest, LimitKey, LimiterStore, Metric, MetricsSink, Outcome, TaskStore, WriteOutcome,
};
use crate::provider::{Provider, ProviderRequest, ProviderResponse};
use crate::retry::RetryPolicy;
use crate::task::{AttemptRecord, TaskRecord, TaskResult, TaskState};
use crate::time::{Clock, Millis, duration_ms, format_rfc3339, until};

/// What to do with a delivery after processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done with it: the task is terminal (or the delivery was stale).
    Ack,
    /// An attempt failed; deliver again after `delay`. The retry is recorded on the task.
    Retry {
        /// How long to wait.
        delay: Duration,
    },
    /// Not started (no attempt used); deliver again after `delay`.
    Defer {
        /// How long to wait.
        delay: Duration,
        /// Why.
        reason: DeferReason,
    },
    /// The engine gave up on the task (recorded on it as failed, with the reason).
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// Concurrency limits. The embedded runner bounds the global concurrency itself; `global` is for
/// shapes where many workers share a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Shared global limit.
    pub global: Option<u32>,
    /// Per deployment.
    pub deployments: BTreeMap<String, u32>,
    /// Per (deployment, model).
    pub models: BTreeMap<(String, String), u32>,
}

impl Limits {
    /// The keys a task on `deployment`/`model` must hold, with their limits.
    #[must_use]
    pub fn keys_for(&self, deployment: &str, model: &str) -> Vec<(LimitKey, u32)> {
        let mut keys = Vec::with_capacity(3);
        if let Some(n) = self.global {
            keys.push((LimitKey::Global, n));
        }
        if let Some(n) = self.deployments.get(deployment) {
            keys.push((LimitKey::Deployment(deployment.to_owned()), *n));
        }
        if let Some(n) = self.models.get(&(deployment.to_owned(), model.to_owned())) {
            keys.push((LimitKey::Model(deployment.to_owned(), model.to_owned()), *n));
        }
        keys
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Attempt budget and backoff.
    pub retry: RetryPolicy,
    /// Breaker thresholds (one breaker per deployment).
    pub breaker: BreakerPolicy,
    /// Lease length; renewed every third of it during long calls.
    pub lease: Duration,
    /// Attempt timeout for tasks that set none.
    pub default_timeout: Duration,
    /// Concurrency limits.
    pub limits: Limits,
    /// This worker's id (lease owner).
    pub owner: String,
    /// Seed for backoff jitter (random when `None`).
    pub seed: Option<u64>,
    /// How long a paused task waits before asking again.
    pub pause_recheck: Duration,
    /// How long a task deferred by a full limit waits before asking again.
    pub limit_recheck: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            lease: Duration::from_secs(30),
            default_timeout: Duration::from_secs(60),
            limits: Limits::default(),
            owner: "engine".into(),
            seed: None,
            pause_recheck: Duration::from_secs(1),
            limit_recheck: Duration::from_millis(50),
        }
    }
}

/// The ports the engine runs on.
pub struct Ports<S, B, L, M, P, C> {
    /// Task store.
    pub store: S,
    /// Breaker state.
    pub breakers: B,
    /// Concurrency limiter.
    pub limiter: L,
    /// Metrics.
    pub metrics: M,
    /// The provider(s).
    pub provider: P,
    /// Clock.
    pub clock: C,
}

/// How an attempt's call ended.
enum CallEnd {
    Answered(ProviderResponse),
    Failed(ProviderError, Duration),
    TimedOut(Duration),
    Cancelled,
    LeaseLost,
}

/// The engine, generic over its ports.
pub struct Engine<S, B, L, M, P, C> {
    ports: Ports<S, B, L, M, P, C>,
    config: EngineConfig,
    rng: Mutex<StdRng>,
    breakers: Mutex<HashMap<String, Breaker>>,
    in_flight: Mutex<HashMap<String, (u64, CancellationToken)>>,
    seen_cancel_seq: Mutex<u64>,
}

impl<S, B, L, M, P, C> Engine<S, B, L, M, P, C>
where
    S: TaskStore + ControlStore,
    B: BreakerStore,
    L: LimiterStore,
    M: MetricsSink,
    P: Provider,
    C: Clock,
{
    /// An engine over `ports`.
    pub fn new(ports: Ports<S, B, L, M, P, C>, config: EngineConfig) -> Self {
        let rng = config.seed.map_or_else(|| StdRng::from_rng(&mut rand::rng()), StdRng::seed_from_u64);
        Self {
            ports,
            config,
            rng: Mutex::new(rng),
            breakers: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            seen_cancel_seq: Mutex::new(0),
        }
    }

    /// The ports (for the runner and the API).
    pub fn ports(&self) -> &Ports<S, B, L, M, P, C> {
        &self.ports
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The decision function: process one delivery. A store failure is answered with a retry of
    /// the delivery (nothing was recorded, so nothing is lost).
    pub async fn process(&self, delivery: &Delivery) -> Decision {
        match self.try_process(delivery).await {
            Ok(decision) => decision,
            Err(error) => {
                tracing::warn!(task_id = %delivery.task_id, %error, "store failed; delivery will be retried");
                Decision::Defer { delay: Duration::from_secs(1), reason: DeferReason::StoreUnavailable }
            }
        }
    }

    async fn try_process(&self, d: &Delivery) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let probe = match self.admit(d.provider_id(), now).await? {
            Admission::Allowed { probe } => probe,
            Admission::Rejected { retry_at } => {
                let reason = DeferReason::BreakerOpen(d.provider_id().to_owned());
                return Ok(self.defer(d, until(retry_at, now), reason).await);
            }
        };
        let held = match self.acquire(d).await? {
            Ok(held) => held,
            Err(key) => {
                self.forget_probe(d.provider_id(), probe);
                return Ok(self.defer(d, self.config.limit_recheck, DeferReason::LimitReached(key)).await);
            }
        };
        let decision = self.claim_and_call(d, probe).await;
        for key in held.iter().rev() {
            self.ports.limiter.release(key).await?;
        }
        decision
    }

    async fn claim_and_call(&self, d: &Delivery, probe: bool) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let request = ClaimRequest {
            task_id: d.task_id.clone(),
            owner: self.config.owner.clone(),
            now,
            lease_until: now + duration_ms(self.config.lease),
        };
        let claimed = self.ports.store.claim(request).await;
        let (delay, reason) = match claimed {
            Ok(ClaimOutcome::Claimed(record)) => return self.attempt(*record, d, probe).await,
            Ok(ClaimOutcome::Terminal(_)) => (None, DeferReason::NotDue),
            Ok(ClaimOutcome::NotDue { at }) => (Some(until(at, now)), DeferReason::NotDue),
            Ok(ClaimOutcome::LeaseHeld { until: at }) => (Some(until(at, now)), DeferReason::LeaseHeld),
            Ok(ClaimOutcome::Paused) => (Some(self.config.pause_recheck), DeferReason::Paused),
            Ok(ClaimOutcome::NotFound) => {
                self.forget_probe(d.provider_id(), probe);
                return Ok(Decision::DeadLetter { reason: format!("no task with id {}", d.task_id) });
            }
            Err(e) => {
                self.forget_probe(d.provider_id(), probe);
                return Err(e);
            }
        };
        self.forget_probe(d.provider_id(), probe);
        Ok(match delay {
            None => Decision::Ack,
            Some(delay) => self.defer(d, delay, reason).await,
        })
    }

    async fn defer(&self, d: &Delivery, delay: Duration, reason: DeferReason) -> Decision {
        self.ports.metrics.record(Metric::Deferred(reason.clone()));
        let detail = match &reason {
            DeferReason::Paused => Some("paused".to_owned()),
            DeferReason::BreakerOpen(dep) => Some(format!("breaker of {dep} open")),
            // Limit and lease deferrals are frequent and self-explanatory: not audited.
            _ => None,
        };
        if let Some(detail) = detail {
            let event = AuditEvent {
                task_id: d.task_id.clone(),
                at: self.ports.clock.now(),
                kind: "deferred".into(),
                epoch: 0,
                detail: Some(detail),
            };
            if let Err(error) = self.ports.store.note(event).await {
                tracing::warn!(task_id = %d.task_id, %error, "could not audit a deferral");
            }
        }
        Decision::Defer { delay, reason }
    }

    async fn attempt(&self, record: TaskRecord, d: &Delivery, probe: bool) -> Result<Decision, StoreError> {
        let started = self.ports.clock.now();
        let deadline = record.deadline_at();
        if deadline.is_some_and(|at| at <= started) {
            self.forget_probe(d.provider_id(), probe);
            let error = TaskError::new(ErrorClass::DeadlineExceeded, "overall deadline passed before the attempt");
            return self.fail(&record, error, None, record.attempt, record.throttles, None).await;
        }
        let timeout = self.attempt_timeout(&record, started);
        self.ports.metrics.record(Metric::AttemptStarted);
        let end = self.call(&record, timeout).await;
        let finished = self.ports.clock.now();
        let mut entry = AttemptRecord {
            attempt: record.attempt,
            epoch: record.epoch,
            started_at: format_rfc3339(started),
            latency_ms: 0.0,
            ttft_ms: None,
            queue_wait_ms: u64::try_from(started - d.ready_at).unwrap_or(0),
            outcome: "ok".into(),
            provider_status: None,
        };
        let error = match end {
            CallEnd::Answered(response) => {
                self.record_breaker(d.provider_id(), CallResult::Healthy, probe, finished).await?;
                return self.complete(&record, d, response, entry).await;
            }
            CallEnd::Cancelled | CallEnd::LeaseLost => {
                self.forget_probe(d.provider_id(), probe);
                self.ports.metrics.record(Metric::Cancelled);
                return Ok(Decision::Ack);
            }
            CallEnd::TimedOut(elapsed) if deadline.is_some_and(|at| at <= finished) => {
                entry.latency_ms = ms_f64(elapsed);
                entry.outcome = ErrorClass::DeadlineExceeded.as_str().into();
                self.forget_probe(d.provider_id(), probe);
                let error = TaskError::new(ErrorClass::DeadlineExceeded, "overall deadline passed during the attempt");
                return self.fail(&record, error, None, record.attempt, record.throttles, Some(entry)).await;
            }
            CallEnd::TimedOut(elapsed) => {
                entry.latency_ms = ms_f64(elapsed);
                ProviderError::transient(format!("attempt timed out after {} ms", timeout.as_millis()))
            }
            CallEnd::Failed(error, elapsed) => {
                entry.latency_ms = ms_f64(elapsed);
                entry.provider_status = error.status();
                error
            }
        };
        entry.outcome = error.class().as_str().into();
        self.failed_attempt(&record, d, probe, error, entry).await
    }

    fn attempt_timeout(&self, record: &TaskRecord, now: Millis) -> Duration {
        let timeout = record.task.timeout.map_or(self.config.default_timeout, Duration::from_millis);
        match record.deadline_at() {
            Some(at) => timeout.min(until(at, now)),
            None => timeout,
        }
    }

    /// One provider call, raced against the timeout, the cancellation token and the lease.
    async fn call(&self, record: &TaskRecord, timeout: Duration) -> CallEnd {
        let id = record.task.id.clone();
        let token = CancellationToken::new();
        self.lock_in_flight().insert(id.clone(), (record.epoch, token.clone()));
        let request = ProviderRequest::for_task(&record.task, &record.task.provider_id, record.attempt);
        let began = Instant::now();
        let end = tokio::select! {
            result = tokio::time::timeout(timeout, self.ports.provider.call(request)) => match result {
                Ok(Ok(response)) => CallEnd::Answered(response),
                Ok(Err(error)) => CallEnd::Failed(error, began.elapsed()),
                Err(_) => CallEnd::TimedOut(began.elapsed()),
            },
            () = token.cancelled() => CallEnd::Cancelled,
            () = self.heartbeat(&id, record.epoch) => CallEnd::LeaseLost,
        };
        self.lock_in_flight().remove(&id);
        end
    }

    /// Renew the lease every third of its length; returns when the lease is lost.
    async fn heartbeat(&self, task_id: &str, epoch: u64) {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let until = self.ports.clock.now() + duration_ms(self.config.lease);
            match self.ports.store.renew_lease(task_id, epoch, until).await {
                Ok(WriteOutcome::Applied) => {}
                Ok(WriteOutcome::Stale) => return,
                Err(error) => {
                    tracing::warn!(task_id, %error, "lease renewal failed; will try again")
                }
            }
        }
    }

    async fn complete(
        &self,
        record: &TaskRecord,
        d: &Delivery,
        response: ProviderResponse,
        mut entry: AttemptRecord,
    ) -> Result<Decision, StoreError> {
        entry.latency_ms = ms_f64(response.latency);
        entry.ttft_ms = response.ttft.map(ms_f64);
        let mut attempts = record.history.clone();
        attempts.push(entry.clone());
        let result = TaskResult {
            text: response.text,
            finish_reason: response.finish_reason,
            usage: response.usage,
            deployment: d.provider_id().to_owned(),
            model: response.model,
            request_id: response.request_id,
            latency_ms: entry.latency_ms,
            ttft_ms: entry.ttft_ms,
            attempts,
        };
        let latency_ms = result.latency_ms;
        let written =
            self.finish(record, Outcome::Completed(result), record.attempt, record.throttles, Some(entry)).await?;
        if written == WriteOutcome::Applied {
            self.ports.metrics.record(Metric::Completed { latency_ms });
        }
        Ok(Decision::Ack)
    }

    async fn failed_attempt(
        &self,
        record: &TaskRecord,
        d: &Delivery,
        probe: bool,
        error: ProviderError,
        entry: AttemptRecord,
    ) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let class = error.class();
        let task_error = error.to_task_error();
        let policy = &self.config.retry;
        // A 429 gives back the attempt its claim counted and uses the throttle budget instead.
        let (attempt, throttles) = match class {
            ErrorClass::RateLimited => (record.attempt.saturating_sub(1), record.throttles + 1),
            _ => (record.attempt, record.throttles),
        };
        match class {
            ErrorClass::Transient => self.record_breaker(d.provider_id(), CallResult::Failure, probe, now).await?,
            ErrorClass::Permanent => self.record_breaker(d.provider_id(), CallResult::Healthy, probe, now).await?,
            _ => self.forget_probe(d.provider_id(), probe),
        }
        let exhausted = match class {
            ErrorClass::Permanent => {
                return self.fail(record, task_error, None, attempt, throttles, Some(entry)).await;
            }
            ErrorClass::RateLimited if throttles > policy.throttle_budget => Some(format!(
                "throttle budget exhausted: {throttles} rate-limit answers (budget {})",
                policy.throttle_budget
            )),
            ErrorClass::Transient if !policy.attempts_left(attempt) => {
                Some(format!("attempts exhausted: {attempt} of {} used", policy.max_attempts))
            }
            _ => None,
        };
        if let Some(reason) = exhausted {
            let reason = format!("{reason}; last error: {}", task_error.message);
            return self.fail(record, task_error, Some(reason), attempt, throttles, Some(entry)).await;
        }
        let n = if class == ErrorClass::RateLimited { throttles } else { attempt };
        let delay = policy.delay_for(n, error.retry_after(), &mut *self.rng.lock().expect("rng poisoned"));
        let next_attempt_at = now + duration_ms(delay);
        if record.deadline_at().is_some_and(|at| next_attempt_at >= at) {
            let error = TaskError::new(
                ErrorClass::DeadlineExceeded,
                format!("overall deadline leaves no room for a retry after: {}", task_error.message),
            );
            return self.fail(record, error, None, attempt, throttles, Some(entry)).await;
        }
        let outcome = Outcome::Retry { error: task_error, next_attempt_at };
        if self.finish(record, outcome, attempt, throttles, Some(entry)).await? == WriteOutcome::Applied {
            self.ports.metrics.record(Metric::RetryScheduled(class));
        }
        Ok(Decision::Retry { delay })
    }

    async fn fail(
        &self,
        record: &TaskRecord,
        error: TaskError,
        dead_letter_reason: Option<String>,
        attempt: u32,
        throttles: u32,
        entry: Option<AttemptRecord>,
    ) -> Result<Decision, StoreError> {
        let class = error.class;
        let outcome = Outcome::Failed { error, dead_letter_reason: dead_letter_reason.clone() };
        if self.finish(record, outcome, attempt, throttles, entry).await? == WriteOutcome::Applied {
            self.ports.metrics.record(Metric::Failed(class));
            if let Some(reason) = &dead_letter_reason {
                let task_id = record.task.id.clone();
                self.ports.metrics.record(Metric::DeadLettered { task_id, reason: reason.clone() });
            }
        }
        Ok(match dead_letter_reason {
            Some(reason) => Decision::DeadLetter { reason },
            None => Decision::Ack,
        })
    }

    async fn finish(
        &self,
        record: &TaskRecord,
        outcome: Outcome,
        attempt: u32,
        throttles: u32,
        entry: Option<AttemptRecord>,
    ) -> Result<WriteOutcome, StoreError> {
        let request = FinishRequest {
            task_id: record.task.id.clone(),
            epoch: record.epoch,
            outcome,
            attempt,
            throttles,
            record: entry,
            now: self.ports.clock.now(),
        };
        let written = self.ports.store.finish(request).await?;
        if written == WriteOutcome::Stale {
            tracing::info!(task_id = %record.task.id, epoch = record.epoch, "outcome discarded: the task moved on");
        }
        Ok(written)
    }

    /// Cancel a task: queued ones are finalised at once; a running one here has its in-flight
    /// request dropped.
    pub async fn cancel(&self, task_id: &str) -> Result<CancelOutcome, StoreError> {
        let outcome = self.ports.store.cancel(task_id, self.ports.clock.now()).await?;
        if let Some((_, token)) = self.lock_in_flight().get(task_id) {
            token.cancel();
        }
        Ok(outcome)
    }

    /// Abort in-flight calls of tasks cancelled elsewhere (another process, another worker).
    /// Reads the control state once; looks at the tasks only when the cancel counter moved.
    pub async fn check_cancellations(&self) -> Result<usize, StoreError> {
        let seq = self.ports.store.control().await?.cancel_seq;
        {
            let mut seen = self.seen_cancel_seq.lock().expect("poisoned");
            if *seen == seq {
                return Ok(0);
            }
            *seen = seq;
        }
        let in_flight: Vec<(String, u64, CancellationToken)> =
            self.lock_in_flight().iter().map(|(id, (epoch, t))| (id.clone(), *epoch, t.clone())).collect();
        let mut aborted = 0;
        for (id, epoch, token) in in_flight {
            let current = self.ports.store.get(&id).await?;
            if current.is_none_or(|r| r.state != TaskState::Running || r.epoch != epoch) {
                token.cancel();
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Tasks with a provider call in flight.
    pub fn in_flight(&self) -> usize {
        self.lock_in_flight().len()
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.in_flight.lock().expect("in-flight map poisoned")
    }

    async fn acquire(&self, d: &Delivery) -> Result<Result<Vec<LimitKey>, LimitKey>, StoreError> {
        let mut held = Vec::new();
        for (key, limit) in self.config.limits.keys_for(d.provider_id(), d.model_id()) {
            if self.ports.limiter.try_acquire(&key, limit).await? {
                held.push(key);
                continue;
            }
            for k in held.iter().rev() {
                self.ports.limiter.release(k).await?;
            }
            return Ok(Err(key));
        }
        Ok(Ok(held))
    }

    async fn admit(&self, deployment: &str, now: Millis) -> Result<Admission, StoreError> {
        self.ensure_breaker(deployment).await?;
        let (admission, changed) = {
            let mut map = self.breakers.lock().expect("breakers poisoned");
            let breaker = map.get_mut(deployment).expect("ensured");
            let (admission, changed) = breaker.admit(now);
            (admission, changed.map(|_| breaker.snapshot().clone()))
        };
        if let Some(snapshot) = changed {
            self.breaker_changed(deployment, snapshot).await?;
        }
        Ok(admission)
    }

    async fn ensure_breaker(&self, deployment: &str) -> Result<(), StoreError> {
        if self.breakers.lock().expect("breakers poisoned").contains_key(deployment) {
            return Ok(());
        }
        let stored = self.ports.breakers.load(deployment).await?;
        let breaker = match stored {
            Some(s) => Breaker::restore(self.config.breaker.clone(), s),
            None => Breaker::new(self.config.breaker.clone()),
        };
        self.breakers.lock().expect("breakers poisoned").entry(deployment.to_owned()).or_insert(breaker);
        Ok(())
    }

    async fn record_breaker(
        &self,
        deployment: &str,
        result: CallResult,
        probe: bool,
        now: Millis,
    ) -> Result<(), StoreError> {
        let changed = {
            let mut map = self.breakers.lock().expect("breakers poisoned");
            let Some(breaker) = map.get_mut(deployment) else {
                return Ok(());
            };
            breaker.record(result, probe, now).map(|_| breaker.snapshot().clone())
        };
        match changed {
            Some(snapshot) => self.breaker_changed(deployment, snapshot).await,
            None => Ok(()),
        }
    }

    async fn breaker_changed(
        &self,
        deployment: &str,
        snapshot: crate::breaker::BreakerSnapshot,
    ) -> Result<(), StoreError> {
        tracing::info!(deployment, state = ?snapshot.state, opens = snapshot.opens, "breaker changed state");
        self.ports.metrics.record(Metric::BreakerChanged { deployment: deployment.to_owned(), state: snapshot.state });
        self.ports.breakers.save(deployment, snapshot).await
    }

    fn forget_probe(&self, deployment: &str, probe: bool) {
        if probe && let Some(b) = self.breakers.lock().expect("breakers poisoned").get_mut(deployment) {
            b.forget_probe();
        }
    }
}

fn ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
