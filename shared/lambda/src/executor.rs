//! What the worker needs from the engine, as a trait (so handler tests can also use a stub):
//! the decision function, idempotent acceptance of raw tasks, and the cancellation check.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskexec_core::engine::{Decision, Engine};
use taskexec_core::error::StoreError;
use taskexec_core::ports::{
    BreakerStore, ControlStore, Delivery, LimiterStore, MetricsSink, Route, SubmitOutcome, TaskStore,
};
use taskexec_core::ports::{RunCounter, RunDelta};
use taskexec_core::provider::Provider;
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::Clock;

use crate::window::{OutcomeWindow, bucket_start, bucket_width};

/// Run id given to raw tasks from other systems that name none.
pub const EXTERNAL_RUN: &str = "external";

/// How accepting a raw task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now or earlier with the same content: deliver it.
    Deliver(Delivery),
    /// The id exists with other content.
    Conflict,
}

/// The engine as the worker uses it.
pub trait Executor: Send + Sync {
    /// The decision function, every attempt bounded by `cap`; also the terminal state this call
    /// wrote, if it finished the task.
    fn process(
        &self,
        delivery: &Delivery,
        cap: Option<Duration>,
    ) -> impl Future<Output = (Decision, Option<TaskState>)> + Send;
    /// Store a raw task idempotently and return its delivery.
    fn accept(&self, task: BenchmarkTask) -> impl Future<Output = Result<Accepted, StoreError>> + Send;
    /// Abort in-flight calls of tasks cancelled elsewhere.
    fn check_control(&self) -> impl Future<Output = ()> + Send;
    /// The lease a claim takes: how long a task whose worker vanished stays claimed.
    fn lease(&self) -> Duration;
    /// A waiting task is promoted one priority class per this long.
    fn aging(&self) -> Duration;
    /// Adopt what other workers shared since the last batch (breaker states).
    fn sync_shared_state(&self) -> impl Future<Output = ()> + Send;
    /// Judge every known breaker on all workers' outcomes over its window (one window read per
    /// known deployment); opens are saved like local ones.
    fn judge_shared<W: OutcomeWindow>(&self, window: &W) -> impl Future<Output = ()> + Send;
    /// Add the outcomes counted since the last call to the shared window: one write per
    /// deployment with outcomes, nothing when there are none.
    fn share_outcomes<W: OutcomeWindow>(&self, window: &W) -> impl Future<Output = ()> + Send;
    /// Give this container's unused share of the fleet's current quota slot back (after a
    /// batch: a frozen container's allowance would be lost to the others until the slot ends).
    fn give_back_quota(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl<S, B, L, M, P, C> Executor for Arc<Engine<S, B, L, M, P, C>>
where
    S: TaskStore + ControlStore,
    B: BreakerStore,
    L: LimiterStore,
    M: MetricsSink,
    P: Provider,
    C: Clock,
{
    async fn process(&self, delivery: &Delivery, cap: Option<Duration>) -> (Decision, Option<TaskState>) {
        self.process_reporting(delivery, cap).await
    }

    async fn accept(&self, mut task: BenchmarkTask) -> Result<Accepted, StoreError> {
        task.run_id.get_or_insert_with(|| EXTERNAL_RUN.to_owned());
        let now = self.ports().clock.now();
        let route = Route {
            provider_id: task.provider_id.clone(),
            model_id: task.model_id.clone(),
            run_id: task.run_or(EXTERNAL_RUN).to_owned(),
        };
        let delivery = Delivery::new(task.id.clone(), Arc::new(route), task.priority, now);
        let outcome = self.ports().store.submit(vec![TaskRecord::new(task, now)]).await?;
        // Its message is the one being handled: nothing to re-send (a lost settle only costs the
        // sweeper a duplicate message for a task still unclaimed).
        if let Err(error) = self.ports().store.mark_sent(std::slice::from_ref(&delivery)).await {
            tracing::warn!(task_id = %delivery.task_id, %error, "raw task stored but not settled");
        }
        Ok(match outcome.first() {
            Some(SubmitOutcome::Conflict) => Accepted::Conflict,
            _ => Accepted::Deliver(delivery),
        })
    }

    fn lease(&self) -> Duration {
        self.config().lease
    }

    fn aging(&self) -> Duration {
        self.config().aging
    }

    async fn check_control(&self) {
        if let Err(error) = Engine::check_control(self).await {
            tracing::warn!(%error, "cancellation check failed");
        }
    }

    async fn sync_shared_state(&self) {
        match self.sync_breakers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(breakers = n, "adopted breaker states other workers stored"),
            Err(error) => tracing::warn!(%error, "breaker sync failed; local states kept"),
        }
    }

    async fn judge_shared<W: OutcomeWindow>(&self, window: &W) {
        let now = self.ports().clock.now();
        for (deployment, since) in self.breaker_windows(now) {
            let judged = match window.window(&deployment, since).await {
                Ok((calls, failures)) => Engine::judge_shared(self, &deployment, calls, failures, now).await,
                Err(error) => Err(error),
            };
            match judged {
                Ok(Some(state)) => tracing::info!(deployment, ?state, "breaker judged on the shared window"),
                Ok(None) => {}
                Err(error) => tracing::warn!(deployment, %error, "shared breaker window not judged"),
            }
        }
    }

    async fn give_back_quota(&self) {
        if let Err(error) = Engine::give_back_quota(self).await {
            tracing::warn!(%error, "unused quota allowance not given back; it lapses with its slot");
        }
    }

    async fn share_outcomes<W: OutcomeWindow>(&self, window: &W) {
        let width = bucket_width(self.config().breaker.window_ms);
        let start = bucket_start(self.ports().clock.now(), width);
        for (deployment, calls, failures) in self.drain_outcomes() {
            if let Err(error) = window.add(&deployment, start, calls, failures).await {
                tracing::warn!(deployment, %error, "outcomes not shared; kept for the next batch");
                self.restore_outcomes(&deployment, calls, failures);
            }
        }
    }
}

/// Run counters in memory (tests, dry runs).
#[derive(Debug, Default)]
pub struct MemoryRunCounter {
    /// Per run: the summed deltas and the number of `add` calls.
    pub runs: std::sync::Mutex<std::collections::BTreeMap<String, (RunDelta, u64)>>,
}

impl RunCounter for MemoryRunCounter {
    fn add(
        &self,
        run_id: String,
        delta: RunDelta,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        let mut runs = self.runs.lock().expect("poisoned");
        let (sum, calls) = runs.entry(run_id).or_default();
        sum.submitted += delta.submitted;
        sum.completed += delta.completed;
        sum.failed += delta.failed;
        sum.cancelled += delta.cancelled;
        *calls += 1;
        Box::pin(std::future::ready(Ok(())))
    }
}
