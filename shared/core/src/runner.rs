//! The embedded runner: a thin loop around [`Engine::process`] that pulls deliveries from a
//! [`WorkQueue`] with at most `concurrency` in flight, and acts on each decision.
//!
//! Deliveries that cannot start are parked instead of spinning: those of a paused run (or of
//! everything, under a global pause) until a resume is seen; those blocked by a full
//! concurrency limit until a permit of that key is free, and then by priority with the queue's
//! aging (so high goes first when a deployment's capacity is short, and low never starves). A maintenance tick (every `poll`)
//! looks for resumes, frees limit-parked work and aborts calls of tasks cancelled elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::{Decision, Engine};
use crate::error::StoreError;
use crate::ports::{
    BreakerStore, ControlStore, DeadLetter, DeferReason, Delivery, LimitKey, LimiterStore, MetricsSink, TaskStore,
    WorkQueue,
};
use crate::provider::Provider;
use crate::schedule::Scheduler;
use crate::time::Clock;

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Deliveries processed at once (the global concurrency limit of this process).
    pub concurrency: usize,
    /// Maintenance interval: resume checks, cancellation checks, limit unparking.
    pub poll: Duration,
    /// Keep waiting for new work when everything is done (a server), instead of returning.
    pub keep_running: bool,
    /// Deliveries waiting for a limit are promoted one priority class per this long (the
    /// queue's aging).
    pub aging: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { concurrency: 64, poll: Duration::from_millis(200), keep_running: false, aging: Duration::from_secs(10) }
    }
}

/// Tasks read from the store per page during recovery.
const RECOVERY_PAGE: usize = 5_000;

/// The most deliveries taken by one receive.
const RECEIVE_BATCH: usize = 256;

#[derive(Debug, Default)]
struct Parking {
    paused: Vec<Delivery>,
    /// Per limit key, by aged priority (due at their `ready_at`).
    limited: HashMap<LimitKey, Scheduler>,
}

impl Parking {
    fn is_empty(&self) -> bool {
        self.paused.is_empty() && self.limited.values().all(Scheduler::is_empty)
    }
}

/// What the runner has done so far, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Deliveries finished for good (each is one task that reached a terminal state).
    pub finished: u64,
    /// Tasks waiting for a scheduled retry.
    pub retrying: usize,
    /// Deliveries queued or parked.
    pub waiting: usize,
    /// Deliveries being processed.
    pub active: usize,
    /// Deliveries parked by a pause.
    pub paused: usize,
}

/// The embedded loop.
pub struct Runner<S, B, L, M, P, C, Q> {
    engine: Arc<Engine<S, B, L, M, P, C>>,
    queue: Arc<Q>,
    config: RunnerConfig,
    active: AtomicUsize,
    finished: AtomicU64,
    retrying: Mutex<HashSet<String>>,
    parking: Mutex<Parking>,
}

impl<S, B, L, M, P, C, Q> Runner<S, B, L, M, P, C, Q>
where
    S: TaskStore + ControlStore,
    B: BreakerStore,
    L: LimiterStore,
    M: MetricsSink,
    P: Provider,
    C: Clock,
    Q: WorkQueue,
{
    /// A runner feeding `engine` from `queue`.
    pub fn new(engine: Arc<Engine<S, B, L, M, P, C>>, queue: Arc<Q>, config: RunnerConfig) -> Arc<Self> {
        Arc::new(Self {
            engine,
            queue,
            config,
            active: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            retrying: Mutex::default(),
            parking: Mutex::default(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine<S, B, L, M, P, C>> {
        &self.engine
    }

    /// Deliveries waiting in the queue or parked.
    pub fn waiting(&self) -> usize {
        let parking = self.lock_parking();
        self.queue.len() + parking.paused.len() + parking.limited.values().map(Scheduler::len).sum::<usize>()
    }

    /// What the runner has done so far.
    pub fn progress(&self) -> Progress {
        Progress {
            finished: self.finished.load(Ordering::Relaxed),
            retrying: self.retrying.lock().expect("poisoned").len(),
            waiting: self.waiting(),
            active: self.active.load(Ordering::Relaxed),
            paused: self.lock_parking().paused.len(),
        }
    }

    /// Take over the store: release leases left by a dead runner (the caller holds the store's
    /// lock) and queue the unfinished tasks that `wanted` selects. Returns (released leases,
    /// queued tasks).
    pub async fn recover(&self, wanted: impl Fn(&Delivery) -> bool) -> Result<(u64, usize), StoreError> {
        let store = &self.engine.ports().store;
        let released = store.release_all_leases(self.engine.ports().clock.now()).await?;
        let (mut cursor, mut queued) = (Some(0), 0);
        while let Some(at) = cursor {
            let (page, next) = store.pending(at, RECOVERY_PAGE).await?;
            let now = self.engine.ports().clock.now();
            let deliveries: Vec<_> = page
                .into_iter()
                .filter(|d| wanted(d))
                .map(|d| {
                    let delay = crate::time::until(d.ready_at, now);
                    (d, delay)
                })
                .collect();
            queued += deliveries.len();
            self.queue.send(deliveries).await?;
            cursor = next;
        }
        Ok((released, queued))
    }

    /// Process until nothing is left to do (every task terminal), or `shutdown` fires; then wait
    /// for the attempts in flight to end.
    pub async fn run(self: &Arc<Self>, shutdown: CancellationToken) -> Result<(), StoreError> {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let maintenance = tokio::spawn(self.clone().maintain(shutdown.clone()));
        let result = self.pull(&slots, &shutdown).await;
        // Wait for in-flight work: every slot back.
        let all = u32::try_from(self.config.concurrency.max(1)).unwrap_or(u32::MAX);
        let _all = slots.acquire_many(all).await.expect("semaphore never closed");
        maintenance.abort();
        result
    }

    /// Receive as many deliveries as there are free slots (one receive for a batch), and process
    /// each in a task of its own holding one slot.
    async fn pull(self: &Arc<Self>, slots: &Arc<Semaphore>, shutdown: &CancellationToken) -> Result<(), StoreError> {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            // Only this loop takes slots, so the free ones stay free until taken below.
            let free = 1 + slots.available_permits().min(RECEIVE_BATCH - 1);
            let deliveries = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                d = self.queue.receive(free, self.config.poll) => d?,
            };
            if deliveries.is_empty() {
                drop(first);
                if !self.config.keep_running && self.is_idle() {
                    return Ok(());
                }
                continue;
            }
            let mut first = Some(first);
            for delivery in deliveries {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => slots.clone().try_acquire_owned().expect("a slot counted free is still free"),
                };
                self.active.fetch_add(1, Ordering::SeqCst);
                let this = self.clone();
                tokio::spawn(async move {
                    let decision = this.engine.process(&delivery).await;
                    if let Err(error) = this.act(delivery, decision).await {
                        tracing::error!(%error, "could not settle a delivery");
                    }
                    this.active.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                });
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.active.load(Ordering::SeqCst) == 0 && self.queue.is_empty() && self.lock_parking().is_empty()
    }

    /// Settle a delivery as the engine decided. Parked deliveries are acknowledged and sent
    /// again when they may start.
    async fn act(&self, d: Delivery, decision: Decision) -> Result<(), StoreError> {
        let keys = self.engine.limit_keys_for(&d);
        match decision {
            Decision::Ack | Decision::DeadLetter { .. } => {
                if matches!(decision, Decision::DeadLetter { .. }) {
                    self.queue.dead_letter(DeadLetter::Task(&d)).await?;
                }
                self.queue.ack(&d.receipt).await?;
                self.retrying.lock().expect("poisoned").remove(&d.task_id);
                self.finished.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Retry { delay } => {
                self.retrying.lock().expect("poisoned").insert(d.task_id.clone());
                self.queue.retry_after(&d, delay).await?;
            }
            Decision::Defer { reason: DeferReason::Paused, .. } => {
                self.queue.ack(&d.receipt).await?;
                self.lock_parking().paused.push(d);
            }
            Decision::Defer { reason: DeferReason::LimitReached(key) | DeferReason::InLine(key), .. } => {
                self.queue.ack(&d.receipt).await?;
                let now = self.engine.ports().clock.now();
                let mut parking = self.lock_parking();
                let waiting = parking.limited.entry(key).or_insert_with(|| Scheduler::new(self.config.aging));
                let ready_at = d.ready_at.min(now);
                waiting.push(d, ready_at, now);
                return Ok(());
            }
            Decision::Defer { delay, .. } => self.queue.retry_after(&d, delay).await?,
        }
        for (key, limit) in keys {
            self.unpark_limited(&key, limit).await?;
        }
        Ok(())
    }

    /// Re-queue as many limit-parked deliveries of `key` as it has free permits.
    async fn unpark_limited(&self, key: &LimitKey, limit: u32) -> Result<(), StoreError> {
        let free = limit.saturating_sub(self.engine.ports().limiter.in_use(key).await?) as usize;
        let ready: Vec<_> = {
            let mut parking = self.lock_parking();
            let Some(waiting) = parking.limited.get_mut(key) else {
                return Ok(());
            };
            let now = self.engine.ports().clock.now();
            std::iter::from_fn(|| waiting.pop(now)).take(free).map(|d| (d, Duration::ZERO)).collect()
        };
        if !ready.is_empty() {
            self.queue.send(ready).await?;
        }
        Ok(())
    }

    async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            tick.tick().await;
            if let Err(error) = self.maintain_once().await {
                tracing::warn!(%error, "maintenance tick failed");
            }
        }
    }

    async fn maintain_once(&self) -> Result<(), StoreError> {
        let control = self.engine.ports().store.control().await?;
        self.engine.follow_control(&control).await?;
        let resumed: Vec<_> = {
            let mut parking = self.lock_parking();
            let (still, resumed): (Vec<_>, Vec<_>) =
                parking.paused.drain(..).partition(|d| control.is_paused(d.run_id()));
            parking.paused = still;
            resumed.into_iter().map(|d| (d, Duration::ZERO)).collect()
        };
        if !resumed.is_empty() {
            self.queue.send(resumed).await?;
        }
        let keys: Vec<LimitKey> = self.lock_parking().limited.keys().cloned().collect();
        for key in keys {
            // A key whose limit was removed at run time lets everything parked on it go.
            let limit = self.limit_of(&key).unwrap_or(u32::MAX);
            self.unpark_limited(&key, limit).await?;
        }
        Ok(())
    }

    /// A key's limit in force (the configuration, or what was set at run time).
    fn limit_of(&self, key: &LimitKey) -> Option<u32> {
        let limits = self.engine.limits();
        match key {
            LimitKey::Global => limits.global,
            LimitKey::Deployment(d) => limits.deployments.get(d).copied(),
            LimitKey::Model(d, m) => limits.models.get(&(d.clone(), m.clone())).copied(),
        }
    }

    fn lock_parking(&self) -> std::sync::MutexGuard<'_, Parking> {
        self.parking.lock().expect("parking poisoned")
    }
}
