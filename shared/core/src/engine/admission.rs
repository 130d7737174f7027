//! Admission before a claim: the deployment's circuit breaker (restored from and saved to the
//! breaker store on every state change) and the concurrency permits of the task's limit keys.

use crate::breaker::{Admission, Breaker, CallResult};
use crate::error::StoreError;
use crate::ports::{
    BreakerStore, ControlStore, Delivery, LimitKey, LimiterStore, Metric, MetricsSink, TaskStore, Ticket,
};
use crate::provider::Provider;
use crate::schedule::{LINE_FRONT, aged_score, line_check};
use crate::time::{Clock, Millis, duration_ms};

use super::Engine;

impl<S, B, L, M, P, C> Engine<S, B, L, M, P, C>
where
    S: TaskStore + ControlStore,
    B: BreakerStore,
    L: LimiterStore,
    M: MetricsSink,
    P: Provider,
    C: Clock,
{
    /// Take a permit of every limit key of `deployment`/`model` for `d`, or none (`Err`: the
    /// first key that is full, or whose capacity goes to better-ranked deliveries in its shared
    /// waiting line; with whether `d` is at the front of that line). Where the limiter keeps
    /// lines (the AWS shape), a delivery blocked by a key stands in its line, and one that takes
    /// a permit after waiting leaves it.
    pub(super) async fn acquire(
        &self,
        d: &Delivery,
        deployment: &str,
        model: &str,
        now: Millis,
    ) -> Result<Result<Vec<LimitKey>, (LimitKey, bool)>, StoreError> {
        let aging = duration_ms(self.config.aging);
        let score = aged_score(d.priority, d.ready_at, aging);
        let mut held = Vec::new();
        for (key, limit) in self.limits().keys_for(deployment, model) {
            // A deployment's limit may have adapted down to its provider's rate-limit answers,
            // here or in another worker ([`Engine::follow_adapted`]).
            let limit = match &key {
                LimitKey::Deployment(deployment) => self.adaptive_limit(deployment).map_or(limit, |n| n.min(limit)),
                _ => limit,
            };
            let line = self.ports.limiter.waiting_front(&key, LINE_FRONT, now).await?;
            let check = line.as_ref().map(|line| line_check(line, limit, &d.task_id, score, aging));
            if !check.is_some_and(|c| c.yields) && self.ports.limiter.try_acquire(&key, limit).await? {
                // Only a delivery deferred before can have a ticket in the line.
                if line.is_some() && d.deferrals_so_far() > 0 {
                    let ticket = Ticket { score, task_id: d.task_id.clone() };
                    self.ports.limiter.leave_line(&key, &ticket).await?;
                }
                held.push(key);
                continue;
            }
            for k in held.iter().rev() {
                self.ports.limiter.release(k).await?;
            }
            let Some(check) = check else { return Ok(Err((key, false))) };
            let ticket = Ticket { score, task_id: d.task_id.clone() };
            self.ports.limiter.stand_in_line(&key, &ticket, now).await?;
            return Ok(Err((key, check.in_front)));
        }
        Ok(Ok(held))
    }

    pub(super) async fn admit(&self, deployment: &str, now: Millis) -> Result<Admission, StoreError> {
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

    /// Adopt breaker states other workers stored since this one last looked: for every breaker
    /// known here, a stored snapshot that changed later than the local one replaces it (its
    /// window counts start again). Where many workers share a deployment (Lambda containers),
    /// calling this once per batch lets an open by one be honoured by all at their next batch.
    /// One breaker-store read per known deployment.
    pub async fn sync_breakers(&self) -> Result<usize, StoreError> {
        let known: Vec<(String, Millis)> = {
            let map = self.breakers.lock().expect("breakers poisoned");
            map.iter().map(|(d, b)| (d.clone(), b.snapshot().changed_at)).collect()
        };
        let mut adopted = 0;
        for (deployment, local_changed_at) in known {
            let Some(stored) = self.ports.breakers.load(&deployment).await? else { continue };
            if stored.changed_at <= local_changed_at {
                continue;
            }
            let state = stored.state;
            let mut map = self.breakers.lock().expect("breakers poisoned");
            if let Some(b) = map.get_mut(&deployment).filter(|b| b.snapshot().changed_at < stored.changed_at) {
                let (calls, failures) = b.take_unshared();
                *b = Breaker::restore(self.config.breaker.clone(), stored);
                b.add_unshared(calls, failures);
                adopted += 1;
                drop(map);
                self.ports.metrics.record(Metric::BreakerChanged { deployment, state });
            }
        }
        Ok(adopted)
    }

    /// The deployments this engine has a breaker for, each with where its shared window judged
    /// at `now` starts ([`Breaker::window_start`]).
    pub fn breaker_windows(&self, now: Millis) -> Vec<(String, Millis)> {
        let map = self.breakers.lock().expect("breakers poisoned");
        map.iter().map(|(d, b)| (d.clone(), b.window_start(now))).collect()
    }

    /// The outcomes (calls, failures) each deployment's breaker counted since the last drain,
    /// for a window shared with other workers; deployments with none are left out.
    pub fn drain_outcomes(&self) -> Vec<(String, u32, u32)> {
        let mut map = self.breakers.lock().expect("breakers poisoned");
        map.iter_mut()
            .map(|(d, b)| {
                let (calls, failures) = b.take_unshared();
                (d.clone(), calls, failures)
            })
            .filter(|(_, calls, _)| *calls > 0)
            .collect()
    }

    /// Give back drained outcomes that could not be shared, so the next drain includes them.
    pub fn restore_outcomes(&self, deployment: &str, calls: u32, failures: u32) {
        if let Some(b) = self.breakers.lock().expect("breakers poisoned").get_mut(deployment) {
            b.add_unshared(calls, failures);
        }
    }

    /// Judge a deployment's breaker on the outcomes of every worker over the shared window
    /// (see [`Breaker::judge_shared`]); a change is recorded and saved like any other.
    /// Returns the new state if it changed.
    pub async fn judge_shared(
        &self,
        deployment: &str,
        calls: u32,
        failures: u32,
        now: Millis,
    ) -> Result<Option<crate::breaker::BreakerState>, StoreError> {
        self.ensure_breaker(deployment).await?;
        let changed = {
            let mut map = self.breakers.lock().expect("breakers poisoned");
            let breaker = map.get_mut(deployment).expect("ensured");
            breaker.judge_shared(calls, failures, now).map(|state| (state, breaker.snapshot().clone()))
        };
        let Some((state, snapshot)) = changed else { return Ok(None) };
        self.breaker_changed(deployment, snapshot).await?;
        Ok(Some(state))
    }

    pub(super) async fn ensure_breaker(&self, deployment: &str) -> Result<(), StoreError> {
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

    pub(super) async fn record_breaker(
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

    pub(super) async fn breaker_changed(
        &self,
        deployment: &str,
        snapshot: crate::breaker::BreakerSnapshot,
    ) -> Result<(), StoreError> {
        tracing::info!(deployment, state = ?snapshot.state, opens = snapshot.opens, "breaker changed state");
        self.ports.metrics.record(Metric::BreakerChanged { deployment: deployment.to_owned(), state: snapshot.state });
        self.ports.breakers.save(deployment, snapshot).await
    }

    pub(super) fn forget_probe(&self, deployment: &str, probe: bool) {
        if probe && let Some(b) = self.breakers.lock().expect("breakers poisoned").get_mut(deployment) {
            b.forget_probe();
        }
    }
}
