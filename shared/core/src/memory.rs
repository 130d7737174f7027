//! In-memory adapters for every port: the store (tasks, control, breakers), the embedded work
//! queue, the concurrency limiter and a counting metrics sink. The queue, limiter and metrics are
//! what the embedded runner uses in production too; the store is for tests and `--db :memory:`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::breaker::{BreakerSnapshot, BreakerState};
use crate::error::{ErrorClass, TaskError};
use crate::fleet::{Amounts, MemoryLedger};
use crate::lifecycle::{TaskEvent, transition};
use crate::ports::{
    AuditEvent, BreakerStore, CancelOutcome, ClaimOutcome, ClaimRequest, ControlState, ControlStore, DeadLetter,
    Delivery, DeliveryBuilder, FinishRequest, GroupSummary, LimitKey, LimitOverride, LimiterStore, Metric, MetricsSink,
    Outcome, PauseScope, Receipt, StoreResult, SubmitOutcome, TaskStore, WorkQueue, WriteOutcome,
};
use crate::schedule::Scheduler;
use crate::task::{Lease, TaskRecord, TaskState};
use crate::time::{Clock, Millis};

#[derive(Debug, Default)]
struct Tables {
    tasks: HashMap<String, TaskRecord>,
    order: Vec<String>,
    events: Vec<AuditEvent>,
    control: ControlState,
    breakers: HashMap<String, BreakerSnapshot>,
}

impl Tables {
    fn event(&mut self, r: &TaskRecord, at: Millis, kind: &str, detail: Option<String>) {
        self.events.push(AuditEvent { task_id: r.task.id.clone(), at, kind: kind.into(), epoch: r.epoch, detail });
    }
}

/// Task store, control store and breaker store in one mutex-guarded map.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        f(&mut self.tables.lock().expect("memory store poisoned"))
    }
}

/// Apply a claim to a record; shared by every adapter that holds records in memory.
fn claim_record(t: &mut Tables, req: &ClaimRequest) -> ClaimOutcome {
    let paused = {
        let Some(r) = t.tasks.get(&req.task_id) else {
            return ClaimOutcome::NotFound;
        };
        t.control.is_paused(r.run_id())
    };
    let r = t.tasks.get_mut(&req.task_id).expect("checked");
    let event = match r.state {
        s if s.is_terminal() => return ClaimOutcome::Terminal(s),
        TaskState::Queued => match r.next_attempt_at {
            Some(at) if at > req.now => return ClaimOutcome::NotDue { at },
            _ => TaskEvent::Claim,
        },
        _ => match &r.lease {
            Some(l) if l.until > req.now => return ClaimOutcome::LeaseHeld { until: l.until },
            _ => TaskEvent::Reclaim,
        },
    };
    if paused {
        return ClaimOutcome::Paused;
    }
    r.state = transition(r.state, event).expect("claim is legal from queued and running");
    r.epoch += 1;
    r.attempt += 1;
    r.lease = Some(Lease { owner: req.owner.clone(), until: req.lease_until });
    r.started_at.get_or_insert(req.now);
    r.next_attempt_at = None;
    let record = r.clone();
    let kind = if event == TaskEvent::Claim { "claimed" } else { "reclaimed" };
    t.event(&record, req.now, kind, Some(format!("attempt {}", record.attempt)));
    ClaimOutcome::Claimed(Box::new(record))
}

fn finish_record(t: &mut Tables, req: FinishRequest) -> WriteOutcome {
    let Some(r) = t.tasks.get_mut(&req.task_id) else {
        return WriteOutcome::Stale;
    };
    if r.state != TaskState::Running || r.epoch != req.epoch {
        return WriteOutcome::Stale;
    }
    r.attempt = req.attempt;
    r.throttles = req.throttles;
    r.lease = None;
    r.history.extend(req.record);
    let mut events: Vec<(&str, Option<String>)> = Vec::new();
    match req.outcome {
        Outcome::Completed(result) => {
            r.state = TaskState::Completed;
            r.result = Some(result);
            r.error = None;
            r.ended_at = Some(req.now);
            events.push(("completed", None));
        }
        Outcome::Retry { error, next_attempt_at } => {
            r.state = TaskState::Queued;
            r.next_attempt_at = Some(next_attempt_at);
            events.push(("retryScheduled", Some(error.message.clone())));
            r.error = Some(error);
        }
        Outcome::Failed { error, dead_letter_reason } => {
            r.state = TaskState::Failed;
            r.ended_at = Some(req.now);
            events.push(("failed", Some(error.message.clone())));
            if let Some(reason) = &dead_letter_reason {
                events.push(("deadLettered", Some(reason.clone())));
            }
            r.error = Some(error);
            r.dead_letter_reason = dead_letter_reason;
        }
        Outcome::Released => {
            r.state = TaskState::Queued;
            r.next_attempt_at = None;
            events.push(("released", None));
        }
    }
    let record = r.clone();
    for (kind, detail) in events {
        t.event(&record, req.now, kind, detail);
    }
    WriteOutcome::Applied
}

impl TaskStore for MemoryStore {
    async fn submit(&self, records: Vec<TaskRecord>) -> StoreResult<Vec<SubmitOutcome>> {
        Ok(self.with(|t| {
            records
                .into_iter()
                .map(|r| match t.tasks.get(&r.task.id) {
                    Some(old) if old.content_hash == r.content_hash => SubmitOutcome::Duplicate(old.state),
                    Some(_) => SubmitOutcome::Conflict,
                    None => {
                        t.event(&r, r.submitted_at, "submitted", None);
                        t.order.push(r.task.id.clone());
                        t.tasks.insert(r.task.id.clone(), r);
                        SubmitOutcome::Created
                    }
                })
                .collect()
        }))
    }

    async fn get(&self, task_id: &str) -> StoreResult<Option<TaskRecord>> {
        Ok(self.with(|t| t.tasks.get(task_id).cloned()))
    }

    async fn claim(&self, request: ClaimRequest) -> StoreResult<ClaimOutcome> {
        Ok(self.with(|t| claim_record(t, &request)))
    }

    async fn renew_lease(&self, task_id: &str, epoch: u64, until: Millis) -> StoreResult<WriteOutcome> {
        Ok(self.with(|t| match t.tasks.get_mut(task_id) {
            Some(r) if r.state == TaskState::Running && r.epoch == epoch => {
                if let Some(lease) = &mut r.lease {
                    lease.until = until;
                }
                WriteOutcome::Applied
            }
            _ => WriteOutcome::Stale,
        }))
    }

    async fn finish(&self, request: FinishRequest) -> StoreResult<WriteOutcome> {
        Ok(self.with(|t| finish_record(t, request)))
    }

    async fn cancel(&self, task_id: &str, now: Millis) -> StoreResult<CancelOutcome> {
        Ok(self.with(|t| {
            let Some(r) = t.tasks.get_mut(task_id) else {
                return CancelOutcome::NotFound;
            };
            let was = r.state;
            if transition(was, TaskEvent::Cancel).is_err() {
                return CancelOutcome::AlreadyTerminal(was);
            }
            r.state = TaskState::Cancelled;
            r.epoch += 1;
            r.lease = None;
            r.ended_at = Some(now);
            r.error = Some(TaskError::new(ErrorClass::Cancelled, "cancelled by user"));
            let record = r.clone();
            t.event(&record, now, "cancelled", None);
            t.control.cancel_seq += 1;
            CancelOutcome::Cancelled { was }
        }))
    }

    async fn redrive(&self, task_id: &str, now: Millis) -> StoreResult<WriteOutcome> {
        Ok(self.with(|t| {
            let Some(r) = t.tasks.get_mut(task_id) else {
                return WriteOutcome::Stale;
            };
            if transition(r.state, TaskEvent::Redrive).is_err() {
                return WriteOutcome::Stale;
            }
            r.state = TaskState::Queued;
            r.epoch += 1;
            r.attempt = 0;
            r.throttles = 0;
            r.next_attempt_at = None;
            r.ended_at = None;
            r.dead_letter_reason = None;
            let record = r.clone();
            t.event(&record, now, "redriven", None);
            WriteOutcome::Applied
        }))
    }

    async fn release_all_leases(&self, now: Millis) -> StoreResult<u64> {
        Ok(self.with(|t| {
            let running: Vec<String> =
                t.order.iter().filter(|id| t.tasks[*id].state == TaskState::Running).cloned().collect();
            for id in &running {
                let r = t.tasks.get_mut(id).expect("listed");
                r.state = TaskState::Queued;
                r.lease = None;
                let record = r.clone();
                t.event(&record, now, "released", Some("lease of a stopped runner taken back".into()));
            }
            running.len() as u64
        }))
    }

    async fn note(&self, event: AuditEvent) -> StoreResult<()> {
        self.with(|t| t.events.push(event));
        Ok(())
    }

    async fn events(&self, task_id: &str) -> StoreResult<Vec<AuditEvent>> {
        Ok(self.with(|t| t.events.iter().filter(|e| e.task_id == task_id).cloned().collect()))
    }

    async fn pending(&self, cursor: u64, limit: usize) -> StoreResult<(Vec<Delivery>, Option<u64>)> {
        Ok(self.with(|t| {
            let start = usize::try_from(cursor).unwrap_or(usize::MAX).min(t.order.len());
            let mut page = Vec::new();
            let mut builder = DeliveryBuilder::default();
            for (pos, id) in t.order.iter().enumerate().skip(start) {
                if page.len() == limit {
                    return (page, Some(pos as u64));
                }
                let r = &t.tasks[id];
                if !r.state.is_terminal() {
                    page.push(builder.of_task(&r.task, r.run_id(), r.next_attempt_at.unwrap_or(r.submitted_at)));
                }
            }
            (page, None)
        }))
    }

    async fn summary(&self, run_id: Option<&str>) -> StoreResult<Vec<GroupSummary>> {
        Ok(self.with(|t| {
            let records = t.order.iter().map(|id| &t.tasks[id]).filter(|r| run_id.is_none_or(|run| r.run_id() == run));
            crate::metrics::summarise(records)
        }))
    }

    async fn run_tasks(&self, run_id: &str) -> StoreResult<Vec<TaskRecord>> {
        Ok(self.with(|t| t.order.iter().map(|id| &t.tasks[id]).filter(|r| r.run_id() == run_id).cloned().collect()))
    }
}

impl ControlStore for MemoryStore {
    async fn control(&self) -> StoreResult<ControlState> {
        Ok(self.with(|t| t.control.clone()))
    }

    async fn set_paused(&self, scope: PauseScope, paused: bool) -> StoreResult<()> {
        self.with(|t| match scope {
            PauseScope::Global => t.control.paused = paused,
            PauseScope::Run(run) if paused => {
                t.control.paused_runs.insert(run);
            }
            PauseScope::Run(run) => {
                t.control.paused_runs.remove(&run);
            }
        });
        Ok(())
    }

    async fn set_limits(&self, deployment: &str, limits: Option<LimitOverride>) -> StoreResult<()> {
        self.with(|t| match limits.filter(|l| !l.is_empty()) {
            Some(limits) => t.control.limits.insert(deployment.to_owned(), limits),
            None => t.control.limits.remove(deployment),
        });
        Ok(())
    }
}

impl BreakerStore for MemoryStore {
    async fn load(&self, deployment: &str) -> StoreResult<Option<BreakerSnapshot>> {
        Ok(self.with(|t| t.breakers.get(deployment).cloned()))
    }

    async fn save(&self, deployment: &str, snapshot: BreakerSnapshot) -> StoreResult<()> {
        self.with(|t| t.breakers.insert(deployment.to_owned(), snapshot));
        Ok(())
    }
}

/// The embedded work queue: a [`Scheduler`] behind a mutex, with a notifier so a waiting
/// receiver wakes when work is sent.
pub struct MemoryQueue<C> {
    scheduler: Mutex<Scheduler>,
    notify: Notify,
    clock: C,
}

impl<C: Clock> MemoryQueue<C> {
    /// A queue promoting waiting tasks by one class per `aging`.
    #[must_use]
    pub fn new(aging: Duration, clock: C) -> Self {
        Self { scheduler: Mutex::new(Scheduler::new(aging)), notify: Notify::new(), clock }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().expect("queue poisoned")
    }

    /// Up to `max` due deliveries, each counted as received once more.
    fn take(s: &mut Scheduler, max: usize, now: Millis) -> Vec<Delivery> {
        let mut taken = Vec::new();
        while taken.len() < max.max(1) {
            let Some(mut d) = s.pop(now) else { break };
            d.receive_count += 1;
            taken.push(d);
        }
        taken
    }
}

/// The embedded queue needs no acknowledgement: a copy received is gone from the queue, and a
/// process that dies loses only its queue, which the next run rebuilds from the store. Its
/// dead-letter queue is the store itself: a dead-lettered task is failed there with its reason,
/// and `taskexec redrive` (or `POST /tasks/{id}/redrive`) brings it back.
impl<C: Clock> WorkQueue for MemoryQueue<C> {
    async fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> StoreResult<()> {
        let now = self.clock.now();
        {
            let mut s = self.lock();
            for (d, delay) in deliveries {
                s.push(d, now + crate::time::duration_ms(delay), now);
            }
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> StoreResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let next_due = {
                let mut s = self.lock();
                let taken = Self::take(&mut s, max, self.clock.now());
                if !taken.is_empty() {
                    return Ok(taken);
                }
                s.next_due()
            };
            let sleep_until = match next_due {
                Some(at) => (tokio::time::Instant::now() + crate::time::until(at, self.clock.now())).min(deadline),
                None => deadline,
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(sleep_until) => {
                    if tokio::time::Instant::now() >= deadline {
                        let mut s = self.lock();
                        return Ok(Self::take(&mut s, max, self.clock.now()));
                    }
                }
            }
        }
    }

    async fn ack(&self, _receipt: &Receipt) -> StoreResult<()> {
        Ok(())
    }

    async fn retry_after(&self, delivery: &Delivery, delay: Duration) -> StoreResult<()> {
        self.send(vec![(delivery.clone(), delay)]).await
    }

    async fn dead_letter(&self, _letter: DeadLetter<'_>) -> StoreResult<()> {
        Ok(())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Concurrency permits per key, in process; with [`MemoryLimiter::with_quota_ledger`], also a
/// fleet quota ledger shared with other limiters (tests that simulate several processes).
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    in_use: Mutex<HashMap<LimitKey, u32>>,
    quota: Option<(Duration, std::sync::Arc<MemoryLedger>)>,
}

impl MemoryLimiter {
    /// A limiter whose provider quotas are shared through `ledger` in slots of `slot`.
    #[must_use]
    pub fn with_quota_ledger(slot: Duration, ledger: std::sync::Arc<MemoryLedger>) -> Self {
        Self { in_use: Mutex::default(), quota: Some((slot, ledger)) }
    }
}

impl LimiterStore for MemoryLimiter {
    async fn try_acquire(&self, key: &LimitKey, limit: u32) -> StoreResult<bool> {
        let mut map = self.in_use.lock().expect("limiter poisoned");
        let n = map.entry(key.clone()).or_default();
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }

    async fn release(&self, key: &LimitKey) -> StoreResult<()> {
        let mut map = self.in_use.lock().expect("limiter poisoned");
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    async fn in_use(&self, key: &LimitKey) -> StoreResult<u32> {
        Ok(self.in_use.lock().expect("limiter poisoned").get(key).copied().unwrap_or(0))
    }

    fn quota_slot(&self) -> Option<Duration> {
        self.quota.as_ref().map(|(slot, _)| *slot)
    }

    async fn lease_quota(&self, key: &LimitKey, slot: u64, amounts: Amounts, caps: Amounts) -> StoreResult<bool> {
        Ok(self.quota.as_ref().is_none_or(|(_, ledger)| ledger.lease(key, slot, amounts, caps)))
    }

    async fn give_back_quota(&self, key: &LimitKey, slot: u64, amounts: Amounts) -> StoreResult<()> {
        if let Some((_, ledger)) = &self.quota {
            ledger.give_back(key, slot, amounts);
        }
        Ok(())
    }
}

/// Live counters of what the engine did in this process (the progress bar reads them).
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts started.
    pub attempts: AtomicU64,
    /// Tasks completed.
    pub completed: AtomicU64,
    /// Tasks failed for good.
    pub failed: AtomicU64,
    /// Tasks cancelled while running.
    pub cancelled: AtomicU64,
    /// Retries scheduled.
    pub retries: AtomicU64,
    /// Retries scheduled after a 429.
    pub throttled: AtomicU64,
    /// Deferrals.
    pub deferred: AtomicU64,
    /// Dead-lettered tasks.
    pub dead_lettered: AtomicU64,
    /// Breakers currently open or half-open.
    pub open_breakers: AtomicU64,
    /// Breaker opens.
    pub breaker_opens: AtomicU64,
    /// Decreases of an adaptive concurrency limit.
    pub concurrency_decreases: AtomicU64,
}

impl Counters {
    /// Read one counter.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one deployment served, as the metrics counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Attempts started on it.
    pub attempts: u64,
    /// Tasks it completed.
    pub completed: u64,
}

/// A metrics sink that counts.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// The counters.
    pub counters: Counters,
    breakers: Mutex<HashMap<String, BreakerState>>,
    served: Mutex<BTreeMap<String, Served>>,
}

impl CountingSink {
    /// Per deployment called (a route's choice or the task's own): attempts and completions.
    #[must_use]
    pub fn served(&self) -> BTreeMap<String, Served> {
        self.served.lock().expect("sink poisoned").clone()
    }

    fn serve(&self, deployment: String, f: impl FnOnce(&mut Served)) {
        let mut served = self.served.lock().expect("sink poisoned");
        match served.get_mut(&deployment) {
            Some(s) => f(s),
            None => f(served.entry(deployment).or_default()),
        }
    }
}

impl MetricsSink for CountingSink {
    fn record(&self, metric: Metric) {
        let c = &self.counters;
        let bump = |a: &AtomicU64| a.fetch_add(1, Ordering::Relaxed);
        match metric {
            Metric::AttemptStarted { deployment } => {
                self.serve(deployment, |s| s.attempts += 1);
                bump(&c.attempts)
            }
            Metric::Completed { deployment, .. } => {
                self.serve(deployment, |s| s.completed += 1);
                bump(&c.completed)
            }
            Metric::Failed(_) => bump(&c.failed),
            Metric::RetryScheduled(class) => {
                if class == ErrorClass::RateLimited {
                    bump(&c.throttled);
                }
                bump(&c.retries)
            }
            Metric::Deferred(_) => bump(&c.deferred),
            Metric::DeadLettered { .. } => bump(&c.dead_lettered),
            Metric::Cancelled => bump(&c.cancelled),
            Metric::BreakerChanged { deployment, state } => {
                if state == BreakerState::Open {
                    bump(&c.breaker_opens);
                }
                let mut map = self.breakers.lock().expect("sink poisoned");
                map.insert(deployment, state);
                let open = map.values().filter(|s| **s != BreakerState::Closed).count();
                c.open_breakers.store(open as u64, Ordering::Relaxed);
                0
            }
            Metric::ConcurrencyChanged { previous, limit, .. } => {
                if limit < previous {
                    bump(&c.concurrency_decreases);
                }
                0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Route;
    use crate::task::TaskPriority;
    use crate::time::FakeClock;

    fn delivery(id: &str, priority: TaskPriority) -> Delivery {
        Delivery::new(
            id,
            std::sync::Arc::new(Route { provider_id: "p".into(), model_id: "m".into(), run_id: "r".into() }),
            priority,
            0,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn queue_serves_by_priority_and_waits_for_delayed_work() {
        let clock = FakeClock::at(0);
        let q = MemoryQueue::new(Duration::from_secs(10), clock.clone());
        q.send(vec![
            (delivery("n", TaskPriority::Normal), Duration::ZERO),
            (delivery("h", TaskPriority::High), Duration::ZERO),
            (delivery("later", TaskPriority::High), Duration::from_secs(5)),
        ])
        .await
        .unwrap();
        assert_eq!(q.len(), 3);
        let ids = |batch: Vec<Delivery>| batch.into_iter().map(|d| d.task_id).collect::<Vec<_>>();
        assert_eq!(ids(q.receive(1, Duration::ZERO).await.unwrap()), ["h"]);
        assert_eq!(ids(q.receive(10, Duration::ZERO).await.unwrap()), ["n"], "only what is due");
        assert!(q.receive(10, Duration::from_millis(10)).await.unwrap().is_empty());
        clock.advance(Duration::from_secs(5));
        let later = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!((later[0].task_id.as_str(), later[0].receive_count), ("later", 1));
        assert!(q.is_empty());
        // A retried copy comes back after its delay, received once more.
        q.retry_after(&later[0], Duration::from_secs(2)).await.unwrap();
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty(), "not before its delay");
        clock.advance(Duration::from_secs(2));
        let again = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!((again[0].task_id.as_str(), again[0].receive_count), ("later", 2));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wakes_a_waiting_receiver() {
        let q = std::sync::Arc::new(MemoryQueue::new(Duration::from_secs(10), FakeClock::at(0)));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.receive(10, Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        q.send(vec![(delivery("x", TaskPriority::Low), Duration::ZERO)]).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap()[0].task_id, "x");
    }

    #[tokio::test]
    async fn limiter_never_exceeds_its_limit() {
        let l = MemoryLimiter::default();
        let key = LimitKey::Deployment("d".into());
        assert!(l.try_acquire(&key, 2).await.unwrap());
        assert!(l.try_acquire(&key, 2).await.unwrap());
        assert!(!l.try_acquire(&key, 2).await.unwrap());
        assert_eq!(l.in_use(&key).await.unwrap(), 2);
        l.release(&key).await.unwrap();
        assert!(l.try_acquire(&key, 2).await.unwrap());
        assert_eq!(l.in_use(&LimitKey::Global).await.unwrap(), 0);
    }

    #[test]
    fn counting_sink_tracks_open_breakers() {
        let s = CountingSink::default();
        let changed = |d: &str, state| s.record(Metric::BreakerChanged { deployment: d.into(), state });
        changed("a", BreakerState::Open);
        changed("b", BreakerState::Open);
        changed("a", BreakerState::HalfOpen);
        assert_eq!(Counters::get(&s.counters.open_breakers), 2);
        changed("a", BreakerState::Closed);
        assert_eq!(Counters::get(&s.counters.open_breakers), 1);
        assert_eq!(Counters::get(&s.counters.breaker_opens), 2);
        s.record(Metric::RetryScheduled(ErrorClass::RateLimited));
        s.record(Metric::RetryScheduled(ErrorClass::Transient));
        assert_eq!(Counters::get(&s.counters.retries), 2);
        assert_eq!(Counters::get(&s.counters.throttled), 1);
    }
}
