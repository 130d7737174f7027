//! One attempt: the provider call raced against its timeout, the cancellation token and the
//! lease heartbeat, and the fenced write of its outcome (completed, retry, failed or
//! dead-lettered), with the attempt/throttle accounting of DESIGN.md.

use std::time::Duration;

// tokio's clock: monotonic in real runs, virtual under `tokio::time::pause` in tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::CallResult;
use crate::error::{ErrorClass, ProviderError, StoreError, TaskError};
use crate::ports::{
    BreakerStore, ControlStore, DeferReason, Delivery, FinishRequest, LimiterStore, Metric, MetricsSink, Outcome,
    TaskStore, WriteOutcome,
};
use crate::provider::{Provider, ProviderRequest, ProviderResponse};
use crate::task::{AttemptRecord, TaskRecord, TaskResult, TaskState};
use crate::time::{Clock, Millis, duration_ms, format_rfc3339, until};

use super::{Chosen, Decision, Engine};

impl<S, B, L, M, P, C> Engine<S, B, L, M, P, C>
where
    S: TaskStore + ControlStore,
    B: BreakerStore,
    L: LimiterStore,
    M: MetricsSink,
    P: Provider,
    C: Clock,
{
    pub(super) async fn attempt(
        &self,
        record: TaskRecord,
        d: &Delivery,
        c: &Chosen,
        cap: Option<Duration>,
    ) -> Result<Decision, StoreError> {
        let (deployment, probe) = (c.deployment.as_str(), c.probe);
        let started = self.ports.clock.now();
        let deadline = record.deadline_at();
        if deadline.is_some_and(|at| at <= started) {
            self.forget_probe(deployment, probe);
            let error = TaskError::new(ErrorClass::DeadlineExceeded, "overall deadline passed before the attempt");
            return self.fail(&record, error, None, record.attempt, record.throttles, None).await;
        }
        if let Some(reason) = self.crash_budget_spent(&record) {
            self.forget_probe(deployment, probe);
            let error = TaskError::new(ErrorClass::Transient, reason.clone());
            let attempt = record.attempt.saturating_sub(1);
            return self.fail(&record, error, Some(reason), attempt, record.throttles, None).await;
        }
        let reserved = match self.reserve_rate(c, &record, started).await {
            Ok(reserved) => reserved,
            Err(at) => {
                self.forget_probe(deployment, probe);
                return self.release_for_rate(&record, d, deployment, at).await;
            }
        };
        let timeout = self.attempt_timeout(&record, started, cap);
        self.ports.metrics.record(Metric::AttemptStarted { deployment: c.deployment.clone() });
        let end = self.call(&record, c, timeout).await;
        let finished = self.ports.clock.now();
        self.settle_rate(c, &record, reserved, &end, finished).await;
        let mut entry = AttemptRecord {
            attempt: record.attempt,
            epoch: record.epoch,
            started_at: format_rfc3339(started),
            latency_ms: 0.0,
            ttft_ms: None,
            queue_wait_ms: u64::try_from(started - d.ready_at).unwrap_or(0),
            outcome: "ok".into(),
            provider_status: None,
            deployment: Some(c.deployment.clone()),
            model: Some(c.model.clone()),
        };
        let error = match end {
            CallEnd::Answered(response) => {
                self.record_breaker(deployment, CallResult::Healthy, probe, finished).await?;
                return self.complete(&record, deployment, response, entry).await;
            }
            CallEnd::Cancelled | CallEnd::LeaseLost => {
                self.forget_probe(deployment, probe);
                self.ports.metrics.record(Metric::Cancelled);
                return Ok(Decision::Ack);
            }
            CallEnd::TimedOut(elapsed) if deadline.is_some_and(|at| at <= finished) => {
                entry.latency_ms = ms_f64(elapsed);
                entry.outcome = ErrorClass::DeadlineExceeded.as_str().into();
                self.forget_probe(deployment, probe);
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
        self.failed_attempt(&record, c, error, entry).await
    }

    /// The task's tokens do not fit its deployment's rate window until `at`: the claim is given
    /// back with its attempt (the task is queued as before) and the delivery waits until then.
    async fn release_for_rate(
        &self,
        record: &TaskRecord,
        d: &Delivery,
        deployment: &str,
        at: Millis,
    ) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let attempt = record.attempt.saturating_sub(1);
        self.finish(record, Outcome::Released, attempt, record.throttles, None).await?;
        let reason = DeferReason::RateLimited(deployment.to_owned());
        Ok(self.defer(d, until(at, now), reason).await)
    }

    /// Why a claimed task must not be called again, if its budget is spent before the call.
    ///
    /// A claim counts the attempt (`attempt + 1`), and an attempt that ends normally checks the
    /// budget when it records its outcome. One that never records an outcome (the handler
    /// panicked, ran out of memory or time, the process was killed) is still counted, so a task
    /// that kills its handler is caught here, at the claim after its last allowed attempt,
    /// instead of crashing every delivery for ever.
    pub(super) fn crash_budget_spent(&self, record: &TaskRecord) -> Option<String> {
        let max = self.config.retry.max_attempts;
        let used = record.attempt.saturating_sub(1);
        if record.attempt <= max {
            return None;
        }
        let recorded = record.history.last().is_some_and(|entry| entry.attempt == used);
        Some(if recorded {
            format!("attempts exhausted: {used} of {max} used")
        } else {
            format!(
                "handler crashed during attempt {used} (no outcome was recorded); attempts exhausted: {used} of {max} used"
            )
        })
    }

    /// The task's timeout, bounded by its overall deadline and by `cap`.
    pub(super) fn attempt_timeout(&self, record: &TaskRecord, now: Millis, cap: Option<Duration>) -> Duration {
        let mut timeout = record.task.timeout.map_or(self.config.default_timeout, Duration::from_millis);
        if let Some(at) = record.deadline_at() {
            timeout = timeout.min(until(at, now));
        }
        cap.map_or(timeout, |cap| timeout.min(cap))
    }

    /// One provider call, raced against the timeout, the cancellation token and the lease.
    pub(super) async fn call(&self, record: &TaskRecord, c: &Chosen, timeout: Duration) -> CallEnd {
        let id = record.task.id.clone();
        let token = CancellationToken::new();
        self.lock_in_flight().insert(id.clone(), (record.epoch, token.clone()));
        // Removed however the call ends, a panic included.
        let _in_flight = InFlightEntry { map: &self.in_flight, id: &id };
        let mut request = ProviderRequest::for_task(&record.task, &c.deployment, record.attempt);
        request.model.clone_from(&c.model);
        let _calls = DeploymentCall::start(&self.calls_by_deployment, &c.deployment);
        // One span per provider call: its time, deployment and outcome (the Lambda functions
        // send it to X-Ray as a subsegment, `taskexec_aws::xray`).
        let span = tracing::info_span!(
            "provider_call",
            deployment = %c.deployment,
            model = %c.model,
            task_id = %id,
            attempt = record.attempt,
            outcome = tracing::field::Empty,
        );
        let provider_call = tracing::Instrument::instrument(self.ports.provider.call(request), span.clone());
        let began = Instant::now();
        let end = tokio::select! {
            result = tokio::time::timeout(timeout, provider_call) => match result {
                Ok(Ok(response)) => CallEnd::Answered(response),
                Ok(Err(error)) => CallEnd::Failed(error, began.elapsed()),
                Err(_) => CallEnd::TimedOut(began.elapsed()),
            },
            () = token.cancelled() => CallEnd::Cancelled,
            () = self.heartbeat(&id, record.epoch) => CallEnd::LeaseLost,
        };
        span.record("outcome", end.outcome());
        end
    }

    /// Renew the lease every third of its length; returns when the lease is lost.
    pub(super) async fn heartbeat(&self, task_id: &str, epoch: u64) {
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

    pub(super) async fn complete(
        &self,
        record: &TaskRecord,
        deployment: &str,
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
            deployment: deployment.to_owned(),
            model: response.model,
            request_id: response.request_id,
            latency_ms: entry.latency_ms,
            ttft_ms: entry.ttft_ms,
            attempts,
            raw_response: response.raw,
        };
        let latency_ms = result.latency_ms;
        let written =
            self.finish(record, Outcome::Completed(result), record.attempt, record.throttles, Some(entry)).await?;
        if written == WriteOutcome::Applied {
            self.ports.metrics.record(Metric::Completed { deployment: deployment.to_owned(), latency_ms });
            super::report_finished(TaskState::Completed);
        }
        Ok(Decision::Ack)
    }

    pub(super) async fn failed_attempt(
        &self,
        record: &TaskRecord,
        c: &Chosen,
        error: ProviderError,
        entry: AttemptRecord,
    ) -> Result<Decision, StoreError> {
        let (deployment, probe) = (c.deployment.as_str(), c.probe);
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
            ErrorClass::Transient => self.record_breaker(deployment, CallResult::Failure, probe, now).await?,
            ErrorClass::Permanent => self.record_breaker(deployment, CallResult::Healthy, probe, now).await?,
            _ => self.forget_probe(deployment, probe),
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
        // Saturating: a provider hint is clamped at the adapter, but the sum must never wrap.
        let next_attempt_at = now.saturating_add(duration_ms(delay));
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

    pub(super) async fn fail(
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
            super::report_finished(TaskState::Failed);
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

    pub(super) async fn finish(
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
}

/// A task's entry in the in-flight map, removed when dropped.
struct InFlightEntry<'a> {
    map: &'a std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
    id: &'a str,
}

impl Drop for InFlightEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(self.id);
        }
    }
}

/// How an attempt's call ended.
pub(super) enum CallEnd {
    Answered(ProviderResponse),
    Failed(ProviderError, Duration),
    TimedOut(Duration),
    Cancelled,
    LeaseLost,
}

impl CallEnd {
    /// `ok`, or how the call failed (an error class, `timeout`, `cancelled`, `leaseLost`).
    fn outcome(&self) -> &'static str {
        match self {
            Self::Answered(_) => "ok",
            Self::Failed(error, _) => error.class().as_str(),
            Self::TimedOut(_) => "timeout",
            Self::Cancelled => "cancelled",
            Self::LeaseLost => "leaseLost",
        }
    }
}

fn ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One call counted in flight on its deployment while it lives (a panic included).
struct DeploymentCall<'a> {
    map: &'a CallsByDeployment,
    deployment: &'a str,
}

/// Per deployment: calls in flight, calls started.
type CallsByDeployment = std::sync::Mutex<std::collections::HashMap<String, (u32, u64)>>;

impl<'a> DeploymentCall<'a> {
    fn start(map: &'a CallsByDeployment, deployment: &'a str) -> Self {
        let mut calls = map.lock().expect("calls poisoned");
        let (in_flight, started) = calls.entry(deployment.to_owned()).or_default();
        *in_flight += 1;
        *started += 1;
        Self { map, deployment }
    }
}

impl Drop for DeploymentCall<'_> {
    fn drop(&mut self) {
        if let Some((in_flight, _)) = self.map.lock().expect("calls poisoned").get_mut(self.deployment) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}
