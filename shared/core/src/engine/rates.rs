//! The deployment's rate limits and adaptive concurrency around each call ([`crate::rate`]):
//! a gate before the claim (no store traffic while a deployment's window is full or its
//! provider said to wait), the exact reservation after it (the task's estimated tokens), and
//! the settlement after the call (usage, the provider's rate-limit headers, 429s).
//!
//! In process, the windows: the embedded shape's whole fleet is this process. Where the limiter
//! store keeps a quota ledger ([`LimiterStore::quota_slot`]: DynamoDB, shared by every Lambda
//! container), each call also takes its ask from this process's share of the fleet's slot
//! ([`crate::fleet`]), for the deployment's quota and the model's: the gate waits for the next
//! slot once the fleet has spent the current one, the reservation leases when this process's
//! allowance is short, and the worker gives the unused allowance back after each batch
//! ([`Engine::give_back_quota`]). A change of a deployment's adaptive limit (and the provider's
//! `Retry-After` with it) is shared through the limiter too ([`LimiterStore::share_adapted`])
//! and taken by every worker at its next look at the deployment's waiting line. The day budget
//! and the provider's headers stay per process.
//!
//! Limits set at run time (`taskexec limits set`, `PUT /control/limits/{deployment}`) come with
//! the control state ([`Engine::check_control`]) and replace the configured ones field by field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ErrorClass, StoreError};
use crate::fleet::{Amounts, QuotaShare, Taken};
use crate::ports::{
    Adapted, AuditEvent, BreakerStore, ControlStore, LimitKey, LimitOverride, LimiterStore, Metric, MetricsSink,
    TaskStore,
};
use crate::provider::{Provider, RateLimits};
use crate::rate::{AdaptiveLimit, Ask, Quota, RateLimiter, Reservation};
use crate::schedule::LINE_FRONT;
use crate::task::TaskRecord;
use crate::time::{Clock, Millis, until};

use super::attempt::CallEnd;
use super::{Chosen, Engine, Limits};

/// Status of Anthropic's "overloaded" answer: treated as a 429 for the adaptive limit.
const OVERLOADED: u16 = 529;

/// One deployment's rate state.
#[derive(Debug)]
pub(super) struct DeploymentRate {
    limiter: Option<RateLimiter>,
    adaptive: Option<AdaptiveLimit>,
    /// When the newest change of the adaptive limit seen (made here or shared) was made.
    adapted_at: Millis,
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
    fn with_rate<T>(&self, deployment: &str, f: impl FnOnce(&mut DeploymentRate) -> T) -> T {
        let (quota, concurrency) = self.rate_settings(deployment);
        let mut map = self.rates.lock().expect("rates poisoned");
        let rate = map.entry(deployment.to_owned()).or_insert_with(|| DeploymentRate {
            limiter: quota.as_ref().map(RateLimiter::new),
            adaptive: concurrency.map(AdaptiveLimit::new),
            adapted_at: 0,
        });
        f(rate)
    }

    /// A deployment's quota (`None`: not limited) and adaptive ceiling (`None`: no adaptive
    /// limit) in force: the configured ones, with the limits set at run time over them.
    fn rate_settings(&self, deployment: &str) -> (Option<Quota>, Option<u32>) {
        let (overrides, limits) = &*self.overrides.lock().expect("overrides poisoned");
        let configured = self.config.quotas.get(deployment).copied().unwrap_or_default();
        let quota = overrides.get(deployment).map_or(configured, |o| o.over_quota(configured));
        let concurrency = limits.deployments.get(deployment).copied().filter(|_| self.config.adaptive_concurrency);
        ((!quota.is_unlimited()).then_some(quota), concurrency)
    }

    /// The concurrency limits in force: the configured ones, with the limits set at run time.
    pub fn limits(&self) -> Arc<Limits> {
        Arc::clone(&self.overrides.lock().expect("overrides poisoned").1)
    }

    /// Apply the limits set at run time (from the control state): the concurrency limits, each
    /// changed deployment's quota (what its windows hold is kept) and adaptive ceiling. Each
    /// change is an audit log line.
    pub(super) fn apply_limits(&self, overrides: &BTreeMap<String, LimitOverride>) {
        let changed: Vec<String> = {
            let mut applied = self.overrides.lock().expect("overrides poisoned");
            if applied.0 == *overrides {
                return;
            }
            let mut limits = self.config.limits.clone();
            for (deployment, o) in overrides {
                if let Some(n) = o.concurrency {
                    limits.deployments.insert(deployment.clone(), n);
                }
            }
            let keys: BTreeSet<&String> = applied.0.keys().chain(overrides.keys()).collect();
            let changed = keys.into_iter().filter(|d| applied.0.get(*d) != overrides.get(*d)).cloned().collect();
            *applied = (overrides.clone(), Arc::new(limits));
            changed
        };
        for deployment in changed {
            let (quota, concurrency) = self.rate_settings(&deployment);
            let now = overrides.get(&deployment).copied().unwrap_or_default();
            tracing::info!(target: "taskexec::audit", kind = "limitsApplied", deployment = %deployment, limits = %now,
                "run-time limits applied");
            let mut map = self.rates.lock().expect("rates poisoned");
            let Some(rate) = map.get_mut(&deployment) else { continue };
            rate.limiter = match (rate.limiter.take(), quota) {
                (Some(mut limiter), Some(quota)) => {
                    limiter.set_quota(&quota);
                    Some(limiter)
                }
                (None, Some(quota)) => Some(RateLimiter::new(&quota)),
                (_, None) => None,
            };
            rate.adaptive = match (rate.adaptive.take(), concurrency) {
                (Some(mut adaptive), Some(n)) => {
                    adaptive.set_ceiling(n);
                    Some(adaptive)
                }
                (None, Some(n)) => Some(AdaptiveLimit::new(n)),
                (_, None) => None,
            };
        }
    }

    /// The windows of a (deployment, model) with a quota of its own, if it has one.
    fn with_model_rate<T>(&self, deployment: &str, model: &str, f: impl FnOnce(&mut RateLimiter) -> T) -> Option<T> {
        let key = (deployment.to_owned(), model.to_owned());
        let quota = self.config.model_quotas.get(&key).filter(|q| !q.is_unlimited())?;
        let mut map = self.model_rates.lock().expect("model rates poisoned");
        Some(f(map.entry(key).or_insert_with(|| RateLimiter::new(quota))))
    }

    /// Before a claim: when the deployment (and the model's own quota there) can take a call
    /// (`None`: now).
    pub(super) fn rate_gate(&self, deployment: &str, model: &str, now: Millis) -> Option<Millis> {
        let minimal = Ask { input_tokens: 1, output_tokens: 0 };
        let own = self.with_rate(deployment, |r| {
            let held = r.adaptive.as_ref().and_then(|a| a.held_until(now));
            let window = r.limiter.as_mut().map(|l| l.earliest(minimal, now));
            held.max(window)
        });
        let model_key = LimitKey::Model(deployment.to_owned(), model.to_owned());
        let model = self.with_model_rate(deployment, model, |l| l.earliest(minimal, now));
        let fleet =
            self.fleet_gate(&LimitKey::Deployment(deployment.to_owned()), now).max(self.fleet_gate(&model_key, now));
        own.max(model).max(fleet).filter(|at| *at > now)
    }

    /// Until when the fleet is known to have spent the current slot of `key`'s quota (no I/O),
    /// with [`Self::fleet_wait`]'s spread.
    fn fleet_gate(&self, key: &LimitKey, now: Millis) -> Option<Millis> {
        self.fleet?;
        let until = {
            let shares = self.fleet_shares.lock().expect("fleet shares poisoned");
            shares.get(key).and_then(|share| share.gate(now))
        };
        until.map(|at| self.fleet_wait(at))
    }

    /// A call refused by the fleet's slot waits until `at` (the next slot's start) plus a random
    /// part of a slot: the deliveries waiting do not all come back at its start (each of them
    /// arriving before this process knows the new slot spent costs a claim).
    fn fleet_wait(&self, at: Millis) -> Millis {
        use rand::Rng;
        let length = self.fleet.map_or(1, |slots| slots.length().max(1));
        at + self.rng.lock().expect("rng poisoned").random_range(0..length)
    }

    fn fleet_share(&self, key: &LimitKey) -> Arc<QuotaShare> {
        let mut shares = self.fleet_shares.lock().expect("fleet shares poisoned");
        Arc::clone(shares.entry(key.clone()).or_default())
    }

    /// The limit keys of a call with a quota, and the quota in force for each: the
    /// deployment's, then the model's.
    fn quota_keys(&self, c: &Chosen) -> Vec<(LimitKey, Quota)> {
        let own = self.rate_settings(&c.deployment).0.map(|q| (LimitKey::Deployment(c.deployment.clone()), q));
        let model_key = (c.deployment.clone(), c.model.clone());
        let model = self.config.model_quotas.get(&model_key).filter(|q| !q.is_unlimited());
        let model = model.map(|q| (LimitKey::Model(model_key.0, model_key.1), *q));
        own.into_iter().chain(model).collect()
    }

    /// Take a call of `ask` from this process's share of the fleet's quota of each of its keys;
    /// `Err(at)`: a key's slot is spent (what was taken from the others is given back). A
    /// ledger that cannot be reached holds the call for a second.
    async fn take_fleet(&self, c: &Chosen, ask: Ask, now: Millis) -> Result<Vec<FleetTaken>, Millis> {
        let Some(slots) = self.fleet else { return Ok(Vec::new()) };
        let mut taken = Vec::new();
        for (key, quota) in self.quota_keys(c) {
            let share = self.fleet_share(&key);
            let refused = match share.take(&self.ports.limiter, &key, slots, &quota, ask, now).await {
                Ok(Ok(t)) => {
                    taken.push(FleetTaken { share, quota, taken: t });
                    continue;
                }
                Ok(Err(at)) => at,
                Err(error) => {
                    tracing::warn!(key = ?key, %error, "quota ledger unreachable; the call waits");
                    now + 1_000
                }
            };
            for t in taken {
                t.share.settle(t.taken, Amounts::default()).await;
            }
            return Err(self.fleet_wait(refused));
        }
        Ok(taken)
    }

    /// After a batch: give this process's unused share of the current slot of every quota back
    /// to the fleet's ledger (one write per key with some left; nothing without a ledger). A
    /// write that fails does not stop the others; the first error is returned (what it held
    /// lapses with its slot).
    pub async fn give_back_quota(&self) -> Result<(), StoreError> {
        let Some(slots) = self.fleet else { return Ok(()) };
        let shares: Vec<(LimitKey, Arc<QuotaShare>)> = {
            let shares = self.fleet_shares.lock().expect("fleet shares poisoned");
            shares.iter().map(|(k, s)| (k.clone(), Arc::clone(s))).collect()
        };
        let now = self.ports.clock.now();
        let mut first = None;
        for (key, share) in shares {
            if let Err(error) = share.give_back(&self.ports.limiter, &key, slots, now).await {
                first.get_or_insert(error);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The deployment's adaptive concurrency limit, where it has one.
    pub(super) fn adaptive_limit(&self, deployment: &str) -> Option<u32> {
        self.with_rate(deployment, |r| r.adaptive.as_ref().map(AdaptiveLimit::current))
    }

    /// Before the rate gate: take the newest change of the deployment's adaptive limit another
    /// worker shared (read with the deployment's waiting line, so at most once per `line_view`
    /// on DynamoDB), if it has an adaptive limit and the change is newer than what this engine
    /// knows ([`AdaptiveLimit::adopt`]).
    pub(super) async fn follow_adapted(&self, deployment: &str, now: Millis) -> Result<(), StoreError> {
        if self.adaptive_limit(deployment).is_none() {
            return Ok(());
        }
        let key = LimitKey::Deployment(deployment.to_owned());
        let Some(adapted) = self.ports.limiter.waiting_front(&key, LINE_FRONT, now).await?.and_then(|l| l.adapted)
        else {
            return Ok(());
        };
        self.with_rate(deployment, |r| {
            let Some(adaptive) = r.adaptive.as_mut().filter(|_| adapted.at > r.adapted_at) else { return };
            adaptive.adopt(adapted.limit, adapted.held_until, adapted.at);
            r.adapted_at = adapted.at;
        });
        Ok(())
    }

    /// After the claim: reserve the call's estimated tokens in the deployment's windows and the
    /// model's (none where there is no quota) and take them from the fleet's slot where there is
    /// a ledger, or say when they fit (nothing is then held). A call spread over later slots
    /// (larger than one slot's share) waits here for the first of them.
    pub(super) async fn reserve_rate(&self, c: &Chosen, record: &TaskRecord, now: Millis) -> Result<Reserved, Millis> {
        let max_tokens = record.task.parameters.max_tokens.map_or(self.config.default_max_tokens, u64::from);
        let ask = Ask::estimate(record.task.prompt.chars().count(), max_tokens);
        let own = self.with_rate(&c.deployment, |r| r.limiter.as_mut().map(|l| l.try_reserve(ask, now)).transpose())?;
        let model = self.with_model_rate(&c.deployment, &c.model, |l| l.try_reserve(ask, now)).transpose();
        let local = Reserved { own, model: model.as_ref().ok().copied().flatten(), fleet: Vec::new() };
        let fleet = match model {
            Ok(_) => self.take_fleet(c, ask, now).await,
            Err(at) => Err(at),
        };
        match fleet {
            Ok(fleet) => {
                let starts = self.fleet.and_then(|slots| fleet.iter().map(|t| t.taken.starts(slots, now)).max());
                if let Some(starts) = starts.filter(|at| *at > now) {
                    tokio::time::sleep(until(starts, now)).await;
                }
                Ok(Reserved { fleet, ..local })
            }
            Err(at) => {
                // A window or the fleet's slot is full: the local reservations are given back.
                self.unreserve(c, &local);
                Err(at)
            }
        }
    }

    fn unreserve(&self, c: &Chosen, reserved: &Reserved) {
        if let Some(own) = reserved.own {
            self.with_rate(&c.deployment, |r| r.limiter.as_mut().map(|l| l.reconcile(own, None)));
        }
        if let Some(model) = reserved.model {
            self.with_model_rate(&c.deployment, &c.model, |l| l.reconcile(model, None));
        }
    }

    /// After the call: reconcile the reservation, learn from the provider's headers, adapt the
    /// concurrency limit. A change of the limit is a metric and an audit event on the task whose
    /// answer caused it.
    pub(super) async fn settle_rate(
        &self,
        c: &Chosen,
        record: &TaskRecord,
        reserved: Reserved,
        end: &CallEnd,
        now: Millis,
    ) {
        let deployment = c.deployment.as_str();
        // The provider's headers describe the model's quota where the config says it counts
        // per model, else the deployment's.
        let CallUsage { used, limits, throttled, ok } = call_usage(end);
        if let Some((input_tokens, output_tokens)) = used {
            for t in &reserved.fleet {
                let used = Amounts::of_call(&t.quota, Ask { input_tokens, output_tokens });
                t.share.settle(t.taken, used).await;
            }
        }
        let model_counted = self
            .with_model_rate(deployment, &c.model, |limiter| {
                if let (Some(reservation), Some(used)) = (reserved.model, used) {
                    limiter.reconcile(reservation, Some(used));
                }
                if let Some(limits) = limits {
                    limiter.observe(limits, now);
                }
            })
            .is_some();
        let changed = self.with_rate(deployment, |r| {
            if let Some(limiter) = r.limiter.as_mut() {
                if let (Some(reservation), Some(used)) = (reserved.own, used) {
                    limiter.reconcile(reservation, Some(used));
                }
                if let Some(limits) = limits.filter(|_| !model_counted) {
                    limiter.observe(limits, now);
                }
            }
            let adaptive = r.adaptive.as_mut()?;
            let previous = adaptive.current();
            let limit = match throttled {
                Some(retry_after) => adaptive.on_throttled(now, retry_after),
                None if ok => adaptive.on_success(),
                None => None,
            }?;
            let held_until = adaptive.held_until(now).unwrap_or(0);
            r.adapted_at = r.adapted_at.max(now);
            Some((previous, Adapted { limit, held_until, at: r.adapted_at }))
        });
        let Some((previous, adapted)) = changed else { return };
        let limit = adapted.limit;
        // Every worker takes the change at its next look at the deployment's line.
        let key = LimitKey::Deployment(deployment.to_owned());
        if let Err(error) = self.ports.limiter.share_adapted(&key, adapted).await {
            tracing::warn!(deployment, %error, "could not share a concurrency change");
        }
        let metric = Metric::ConcurrencyChanged { deployment: deployment.to_owned(), previous, limit };
        self.ports.metrics.record(metric);
        let event = AuditEvent {
            task_id: record.task.id.clone(),
            at: now,
            kind: "concurrencyChanged".into(),
            epoch: record.epoch,
            detail: Some(format!("{deployment}: at most {limit} calls at once (was {previous})")),
        };
        if let Err(error) = self.ports.store.note(event).await {
            tracing::warn!(task_id = %record.task.id, %error, "could not audit a concurrency change");
        }
    }
}

/// What a call's end tells the rate state.
struct CallUsage<'a> {
    /// The tokens it used (`None`: unknown, the reservation stands).
    used: Option<(u64, u64)>,
    /// The provider's rate-limit headers.
    limits: Option<&'a RateLimits>,
    /// Throttled, with its Retry-After.
    throttled: Option<Option<Duration>>,
    /// Answered.
    ok: bool,
}

fn call_usage(end: &CallEnd) -> CallUsage<'_> {
    match end {
        CallEnd::Answered(response) => CallUsage {
            used: Some((response.usage.input_tokens, response.usage.output_tokens)),
            limits: Some(&response.limits),
            throttled: None,
            ok: true,
        },
        CallEnd::Failed(error, _) => {
            let throttled = error.class() == ErrorClass::RateLimited || error.status() == Some(OVERLOADED);
            // A refused call used no tokens; its request still counts.
            CallUsage {
                used: throttled.then_some((0, 0)),
                limits: Some(error.limits()),
                throttled: throttled.then(|| error.retry_after()),
                ok: false,
            }
        }
        // Timed out or dropped: the provider may have counted everything reserved.
        CallEnd::TimedOut(_) | CallEnd::Cancelled | CallEnd::LeaseLost => {
            CallUsage { used: None, limits: None, throttled: None, ok: false }
        }
    }
}

/// The reservations a call holds: in its deployment's windows and its model's, and what it
/// took from the fleet's slots.
#[derive(Debug)]
pub(super) struct Reserved {
    own: Option<Reservation>,
    model: Option<Reservation>,
    fleet: Vec<FleetTaken>,
}

/// What a call took from one key's share of the fleet's quota.
#[derive(Debug)]
struct FleetTaken {
    share: Arc<QuotaShare>,
    quota: Quota,
    taken: Taken,
}
