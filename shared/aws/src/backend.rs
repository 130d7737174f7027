//! The AWS backend assembled the one way the worker function, `taskexec serve --backend aws` and
//! the emulator tests use: the DynamoDB store, the SQS queues, the engine over them and the
//! configured deployments, and the worker handler; plus, for local runs, the event-source
//! poller that feeds the worker as Lambda would.

use std::sync::Arc;

use taskexec_core::engine::{Engine, EngineConfig, Ports};
use taskexec_core::ports::MetricsSink;
use taskexec_core::ports::Topology;
use taskexec_core::provider::Provider;
use taskexec_core::time::{Millis, SystemClock};
use taskexec_lambda::poller::{PollerSettings, PollerStats};
use taskexec_lambda::worker::{Worker, WorkerSettings};
use taskexec_providers::Deployments;
use tokio_util::sync::CancellationToken;

use crate::dynamo::{DynamoConfig, DynamoLimiter, DynamoStore, DynamoWindow, LimiterSettings};
use crate::sqs::SqsQueue;

/// The engine of the AWS shape. Concurrency limits hold across processes (Lambda containers):
/// capacity leased in chunks from the table ([`DynamoLimiter`], one per process, its holder id
/// the engine's owner id). The provider is the configured deployments; tests may put another
/// [`Provider`] in its place (a fault that production input cannot reach).
pub type AwsEngine<M, P = Deployments> = Engine<DynamoStore, DynamoStore, DynamoLimiter, M, P, SystemClock>;

/// The worker handler of the AWS shape.
pub type AwsWorker<M, P = Deployments> = Worker<Arc<AwsEngine<M, P>>, Arc<SqsQueue>, DynamoWindow>;

/// Where the backend's resources are and how its engine and worker behave.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    /// The table.
    pub table: DynamoConfig,
    /// The queues.
    pub topology: Topology,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The worker's settings.
    pub worker: WorkerSettings,
    /// How concurrency permits are leased (chunk size, lease length; `Default` for 8 and 30 min).
    pub limiter: LimiterSettings,
}

/// Everything a process of the AWS shape needs.
pub struct AwsBackend<M, P = Deployments> {
    /// The store, for the API.
    pub store: Arc<DynamoStore>,
    /// The queues, for the API (its own client: its call counter is the submission side's).
    pub queue: Arc<SqsQueue>,
    /// The worker's queues (actions and, locally, the poller's receives and deletes).
    pub worker_queue: Arc<SqsQueue>,
    /// The worker handler.
    pub worker: Arc<AwsWorker<M, P>>,
    /// Queue URLs and priorities.
    pub topology: Topology,
}

impl<M: MetricsSink, P: Provider> AwsBackend<M, P> {
    /// Build over the given clients.
    pub fn new(
        dynamo: &aws_sdk_dynamodb::Client,
        sqs: &aws_sdk_sqs::Client,
        settings: BackendSettings,
        deployments: P,
        metrics: M,
    ) -> Self {
        let BackendSettings { table, topology, engine, worker, limiter } = settings;
        let store = || DynamoStore::new(dynamo.clone(), table.clone());
        let queues = || Arc::new(SqsQueue::new(sqs.clone(), topology.clone()));
        let ports = Ports {
            store: store(),
            breakers: store(),
            limiter: DynamoLimiter::new(dynamo.clone(), table.table.clone(), engine.owner.clone(), limiter),
            metrics,
            provider: deployments,
            clock: SystemClock,
        };
        let worker_queue = queues();
        // Outcome buckets are kept a few breaker windows (at least a minute) before their TTL.
        let keep_ms = Millis::try_from(engine.breaker.window_ms.saturating_mul(4)).unwrap_or(Millis::MAX).max(60_000);
        let window = DynamoWindow::new(dynamo.clone(), table.table.clone(), keep_ms);
        let engine = Arc::new(Engine::new(ports, engine));
        let handler = Worker::new(engine, worker_queue.clone(), window, topology.clone(), worker)
            .with_run_counter(Arc::new(store()));
        Self { store: Arc::new(store()), queue: queues(), worker_queue, worker: Arc::new(handler), topology }
    }

    /// Run the local event-source mapping until `shutdown` (what Lambda does in the cloud).
    pub fn poll(
        &self,
        settings: PollerSettings,
        stats: Arc<PollerStats>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        M: 'static,
    {
        tokio::spawn(taskexec_lambda::poller::run(
            self.worker_queue.clone(),
            self.worker.clone(),
            Arc::new(self.worker_queue.clone()),
            self.topology.clone(),
            settings,
            stats,
            shutdown,
        ))
    }
}
