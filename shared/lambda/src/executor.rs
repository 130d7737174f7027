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
use taskexec_core::provider::Provider;
use taskexec_core::task::{BenchmarkTask, TaskRecord};
use taskexec_core::time::Clock;

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
    /// The decision function, every attempt bounded by `cap`.
    fn process(&self, delivery: &Delivery, cap: Option<Duration>) -> impl Future<Output = Decision> + Send;
    /// Store a raw task idempotently and return its delivery.
    fn accept(&self, task: BenchmarkTask) -> impl Future<Output = Result<Accepted, StoreError>> + Send;
    /// Abort in-flight calls of tasks cancelled elsewhere.
    fn check_cancellations(&self) -> impl Future<Output = ()> + Send;
    /// Adopt what other workers shared since the last batch (breaker states).
    fn sync_shared_state(&self) -> impl Future<Output = ()> + Send;
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
    async fn process(&self, delivery: &Delivery, cap: Option<Duration>) -> Decision {
        self.process_within(delivery, cap).await
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
        Ok(match outcome.first() {
            Some(SubmitOutcome::Conflict) => Accepted::Conflict,
            _ => Accepted::Deliver(delivery),
        })
    }

    async fn check_cancellations(&self) {
        if let Err(error) = Engine::check_cancellations(self).await {
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
}
