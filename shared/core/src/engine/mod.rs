//! The engine and its one decision function: a [`Delivery`] in, a [`Decision`] out.
//!
//! [`Engine::process`] admits the call through the deployment's breaker and the concurrency
//! limits, claims the task (committed before the call), makes one provider call under the
//! attempt timeout with a lease heartbeat and a cancellation token, records the outcome with a
//! write fenced by the claim's epoch, and says what to do with the delivery. The embedded runner
//! ([`crate::runner`]) and the Lambda worker are thin loops around it.

mod admission;
mod attempt;
mod rates;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerPolicy};
use crate::error::{ErrorClass, StoreError, TaskError};
use crate::ports::{
    AuditEvent, BreakerStore, CancelOutcome, ClaimOutcome, ClaimRequest, ControlState, ControlStore, DeferReason,
    Delivery, LimitKey, LimitOverride, LimiterStore, Metric, MetricsSink, TaskStore,
};
use crate::provider::Provider;
use crate::rate::Quota;
use crate::retry::RetryPolicy;
use crate::task::TaskState;
use crate::time::{Clock, Millis, duration_ms, until};

tokio::task_local! {
    /// The terminal state the current `process_reporting` call wrote, if any.
    static FINISHED: std::cell::Cell<Option<TaskState>>;
}

/// Note that this call finished a task (read by [`Engine::process_reporting`]; a no-op outside it).
fn report_finished(state: TaskState) {
    let _ = FINISHED.try_with(|cell| cell.set(Some(state)));
}

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

    /// Every key with a limit (global, then per deployment, then per model), with its limit.
    #[must_use]
    pub fn keys(&self) -> Vec<(LimitKey, u32)> {
        let global = self.global.map(|n| (LimitKey::Global, n));
        let deployments = self.deployments.iter().map(|(d, n)| (LimitKey::Deployment(d.clone()), *n));
        let models = self.models.iter().map(|((d, m), n)| (LimitKey::Model(d.clone(), m.clone()), *n));
        global.into_iter().chain(deployments).chain(models).collect()
    }
}

/// The deployment a delivery goes to, the model id it asks for, and whether the call is a
/// half-open breaker's probe.
#[derive(Debug, Clone)]
pub(super) struct Chosen {
    pub(super) deployment: String,
    pub(super) model: String,
    pub(super) probe: bool,
}

/// How long a delivery waits, and why.
type Wait = (Duration, DeferReason);

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
    /// A task waiting for capacity is promoted one priority class per this long (the queue's
    /// aging; in the AWS shape, the rank in a full limit's shared waiting line).
    pub aging: Duration,
    /// Provider quotas per deployment (requests and tokens per minute or day; see
    /// [`crate::rate`]). Deployments without one are not rate-limited here.
    pub quotas: BTreeMap<String, Quota>,
    /// Provider quotas per (deployment, model), held on top of the deployment's.
    pub model_quotas: BTreeMap<(String, String), Quota>,
    /// Output tokens reserved for a task that sets no `maxTokens`.
    pub default_max_tokens: u64,
    /// Whether a deployment's concurrency limit adapts to rate-limit answers (halved on a 429,
    /// grown back on successes, never above the configured limit).
    pub adaptive_concurrency: bool,
    /// Routes: names a task may use as its `providerId`, each spreading over deployments.
    pub routes: BTreeMap<String, crate::routing::RouteSpec>,
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
            aging: Duration::from_secs(10),
            quotas: BTreeMap::new(),
            model_quotas: BTreeMap::new(),
            default_max_tokens: 1_024,
            adaptive_concurrency: true,
            routes: BTreeMap::new(),
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

/// The engine, generic over its ports.
pub struct Engine<S, B, L, M, P, C> {
    ports: Ports<S, B, L, M, P, C>,
    config: EngineConfig,
    rng: Mutex<StdRng>,
    breakers: Mutex<HashMap<String, Breaker>>,
    rates: Mutex<HashMap<String, rates::DeploymentRate>>,
    /// Per (deployment, model) with a quota of its own: its windows.
    model_rates: Mutex<HashMap<(String, String), crate::rate::RateLimiter>>,
    /// The fleet's quota ledger's slots (`None`: this process is the whole fleet), and this
    /// process's share of each limit key's quota ([`crate::fleet`]).
    fleet: Option<crate::fleet::Slots>,
    fleet_shares: Mutex<HashMap<LimitKey, Arc<crate::fleet::QuotaShare>>>,
    /// Per deployment in this process: calls in flight and calls started (routes' choice).
    calls_by_deployment: Mutex<HashMap<String, (u32, u64)>>,
    in_flight: Mutex<HashMap<String, (u64, CancellationToken)>>,
    seen_cancel_seq: Mutex<u64>,
    /// The limits set at run time last applied, and the concurrency limits they make
    /// ([`Engine::check_control`]).
    overrides: Mutex<(BTreeMap<String, LimitOverride>, Arc<Limits>)>,
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
        let fleet = ports.limiter.quota_slot().map(crate::fleet::Slots::new);
        Self {
            ports,
            rng: Mutex::new(rng),
            breakers: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            model_rates: Mutex::new(HashMap::new()),
            fleet,
            fleet_shares: Mutex::new(HashMap::new()),
            calls_by_deployment: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            seen_cancel_seq: Mutex::new(0),
            overrides: Mutex::new((BTreeMap::new(), Arc::new(config.limits.clone()))),
            config,
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
        self.process_within(delivery, None).await
    }

    /// [`Self::process`] with every attempt also bounded by `cap` (in Lambda: the invocation's
    /// remaining time minus a safety margin).
    pub async fn process_within(&self, delivery: &Delivery, cap: Option<Duration>) -> Decision {
        match self.try_process(delivery, cap).await {
            Ok(decision) => decision,
            Err(error) => {
                tracing::warn!(task_id = %delivery.task_id, %error, "store failed; delivery will be retried");
                Decision::Defer { delay: Duration::from_secs(1), reason: DeferReason::StoreUnavailable }
            }
        }
    }

    /// [`Self::process_within`], also saying whether this call finished the task (the state it
    /// wrote: `Completed` or `Failed`), so a worker can count a run's outcomes once per
    /// invocation instead of once per task.
    pub async fn process_reporting(&self, delivery: &Delivery, cap: Option<Duration>) -> (Decision, Option<TaskState>) {
        FINISHED
            .scope(std::cell::Cell::new(None), async {
                let decision = self.process_within(delivery, cap).await;
                (decision, FINISHED.with(std::cell::Cell::get))
            })
            .await
    }

    async fn try_process(&self, d: &Delivery, cap: Option<Duration>) -> Result<Decision, StoreError> {
        // A paused task is deferred before it takes permits or reads anything, where the store
        // holds a recent control state: a paused run costs no store traffic per delivery.
        if self.ports.store.recent_control().await?.is_some_and(|c| c.is_paused(d.run_id())) {
            return Ok(self.defer(d, self.config.pause_recheck, DeferReason::Paused).await);
        }
        let now = self.ports.clock.now();
        let (chosen, held) = match self.choose(d, now).await? {
            Ok(chosen) => chosen,
            Err((_, reason @ (DeferReason::RateLimited(_) | DeferReason::BreakerOpen(_)))) if d.fail_fast => {
                return self.fail_fast(d, &reason).await;
            }
            Err((delay, reason)) => return Ok(self.defer(d, delay, reason).await),
        };
        // A panic in the attempt (a handler bug) must not leak the permits: they are given back,
        // then the panic goes on to the caller (the Lambda worker isolates it per message).
        let decision = std::panic::AssertUnwindSafe(self.claim_and_call(d, &chosen, cap)).catch_unwind().await;
        for key in held.iter().rev() {
            self.ports.limiter.release(key).await?;
        }
        decision.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    async fn claim_and_call(&self, d: &Delivery, c: &Chosen, cap: Option<Duration>) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let claimed = self.ports.store.claim(self.claim_request(d, now)).await;
        if let Ok(ClaimOutcome::Claimed(record)) = claimed {
            return self.attempt(*record, d, c, cap).await;
        }
        // No attempt is made: an admitted probe gives its slot back.
        self.forget_probe(&c.deployment, c.probe);
        Ok(self.unclaimed(d, claimed?, now).await)
    }

    /// A fail-fast task when no deployment it may go to has capacity: claimed, then failed
    /// without a provider call and without using an attempt (`rateLimited` for a spent quota,
    /// `transient` for an open breaker).
    async fn fail_fast(&self, d: &Delivery, reason: &DeferReason) -> Result<Decision, StoreError> {
        let now = self.ports.clock.now();
        let record = match self.ports.store.claim(self.claim_request(d, now)).await? {
            ClaimOutcome::Claimed(record) => record,
            other => return Ok(self.unclaimed(d, other, now).await),
        };
        let (class, why) = match reason {
            DeferReason::BreakerOpen(deployment) => {
                (ErrorClass::Transient, format!("the breaker of {deployment} is open"))
            }
            DeferReason::RateLimited(deployment) => {
                (ErrorClass::RateLimited, format!("the quota of {deployment} is spent"))
            }
            _ => unreachable!("only capacity deferrals fail fast"),
        };
        let error = TaskError::new(class, format!("fail-fast: no deployment has capacity ({why})"));
        let attempt = record.attempt.saturating_sub(1);
        self.fail(&record, error, None, attempt, record.throttles, None).await
    }

    /// This engine's claim of a delivery's task at `now`, with a lease from then.
    fn claim_request(&self, d: &Delivery, now: Millis) -> ClaimRequest {
        ClaimRequest {
            task_id: d.task_id.clone(),
            owner: self.config.owner.clone(),
            now,
            lease_until: now + duration_ms(self.config.lease),
        }
    }

    /// What becomes of a delivery whose claim did not succeed.
    async fn unclaimed(&self, d: &Delivery, outcome: ClaimOutcome, now: Millis) -> Decision {
        let (delay, reason) = match outcome {
            ClaimOutcome::Claimed(_) => unreachable!("a claimed task is attempted"),
            ClaimOutcome::Terminal(_) => return Decision::Ack,
            ClaimOutcome::NotFound => {
                return Decision::DeadLetter { reason: format!("no task with id {}", d.task_id) };
            }
            ClaimOutcome::NotDue { at } => (until(at, now), DeferReason::NotDue),
            ClaimOutcome::LeaseHeld { until: at } => (until(at, now), DeferReason::LeaseHeld),
            ClaimOutcome::Paused => (self.config.pause_recheck, DeferReason::Paused),
        };
        self.defer(d, delay, reason).await
    }

    /// The deployments a delivery may go to, in the order to try: its route's by weighted least
    /// in flight ([`crate::routing`]), or its own deployment, each with the model id to ask for.
    fn targets(&self, d: &Delivery) -> Vec<(String, String)> {
        let Some(route) = self.config.routes.get(d.provider_id()) else {
            return vec![(d.provider_id().to_owned(), d.model_id().to_owned())];
        };
        let calls = self.calls_by_deployment.lock().expect("calls poisoned");
        let busy = |deployment: &str| calls.get(deployment).copied().unwrap_or_default();
        let model = |t: &crate::routing::RouteTarget| t.model.clone().unwrap_or_else(|| d.model_id().to_owned());
        route.order(busy).into_iter().map(|t| (t.deployment.clone(), model(t))).collect()
    }

    /// Every limit key a delivery may take, with its limit (all of its route's deployments).
    #[must_use]
    pub fn limit_keys_for(&self, d: &Delivery) -> Vec<(LimitKey, u32)> {
        let mut keys: Vec<(LimitKey, u32)> = Vec::new();
        for (deployment, model) in self.targets(d) {
            for key in self.limits().keys_for(&deployment, &model) {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// The first target that admits the call (breaker, quota, concurrency), with the permits it
    /// took; else how long to wait and why: a full concurrency limit if any (the runner parks
    /// the delivery on that key), else the earliest end of an open breaker or a spent quota.
    async fn choose(&self, d: &Delivery, now: Millis) -> Result<Result<(Chosen, Vec<LimitKey>), Wait>, StoreError> {
        // The first key found full (and whether this delivery is at the front of its line).
        let mut limit: Option<(LimitKey, bool)> = None;
        let mut earliest: Option<(Millis, DeferReason)> = None;
        let mut later = |at: Millis, reason: DeferReason| {
            if earliest.as_ref().is_none_or(|(t, _)| at < *t) {
                earliest = Some((at, reason));
            }
        };
        for (deployment, model) in self.targets(d) {
            self.follow_adapted(&deployment, now).await?;
            let probe = match self.admit(&deployment, now).await? {
                Admission::Allowed { probe } => probe,
                Admission::Rejected { retry_at } => {
                    later(retry_at, DeferReason::BreakerOpen(deployment));
                    continue;
                }
            };
            // A deployment whose rate window is full, or whose provider said to wait (here or,
            // shared, to another worker), is waited for before the claim: no attempt, no claim.
            if let Some(at) = self.rate_gate(&deployment, &model, now) {
                self.forget_probe(&deployment, probe);
                later(at, DeferReason::RateLimited(deployment));
                continue;
            }
            match self.acquire(d, &deployment, &model, now).await? {
                Ok(held) => return Ok(Ok((Chosen { deployment, model, probe }, held))),
                Err(blocked) => {
                    self.forget_probe(&deployment, probe);
                    if limit.is_none() {
                        limit = Some(blocked);
                    }
                }
            }
        }
        Ok(Err(match (limit, earliest) {
            (Some((key, true)), _) => (self.config.limit_recheck, DeferReason::InLine(key)),
            (Some((key, false)), _) => (self.config.limit_recheck, DeferReason::LimitReached(key)),
            (None, Some((at, reason))) => (until(at, now), reason),
            (None, None) => unreachable!("every delivery has at least one target"),
        }))
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
    /// Cancel a task: queued ones are finalised at once; a running one here has its in-flight
    /// request dropped.
    pub async fn cancel(&self, task_id: &str) -> Result<CancelOutcome, StoreError> {
        let outcome = self.ports.store.cancel(task_id, self.ports.clock.now()).await?;
        if let Some((_, token)) = self.lock_in_flight().get(task_id) {
            token.cancel();
        }
        Ok(outcome)
    }

    /// Follow the control state set elsewhere (another process, the API, `taskexec limits`):
    /// apply the limits set at run time, and abort in-flight calls of tasks cancelled elsewhere.
    /// Reads the control state once; looks at the tasks only when the cancel counter moved.
    /// Returns the calls aborted.
    pub async fn check_control(&self) -> Result<usize, StoreError> {
        let control = self.ports.store.control().await?;
        self.follow_control(&control).await
    }

    /// [`Engine::check_control`] on a control state the caller already read.
    pub async fn follow_control(&self, control: &ControlState) -> Result<usize, StoreError> {
        self.apply_limits(&control.limits);
        let seq = control.cancel_seq;
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
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn keys_lists_every_limited_key_once() {
        let mut limits = Limits { global: Some(9), ..Limits::default() };
        limits.deployments.insert("a".into(), 3);
        limits.models.insert(("a".into(), "m".into()), 2);
        let keys = limits.keys();
        assert_eq!(
            keys,
            vec![
                (LimitKey::Global, 9),
                (LimitKey::Deployment("a".into()), 3),
                (LimitKey::Model("a".into(), "m".into()), 2)
            ]
        );
        assert_eq!(Limits::default().keys(), vec![]);
    }
}
