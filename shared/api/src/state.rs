//! The state every handler shares: the store and queue ports, and the settings read once when
//! the host (Lambda or `taskexec serve`) starts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use taskexec_core::ports::{ControlStore, RunCounter, RunDelta, TaskStore, WorkQueue};
use taskexec_core::task::BenchmarkTask;
use taskexec_core::time::{Clock, SystemClock};
use taskexec_core::validate::FieldError;

use crate::resources::ResourceSampler;

/// Room kept inside the worker's timeout for the claim, the heartbeat and the recording of the
/// outcome: a task's `timeout` must fit in the worker timeout minus this.
pub const DEFAULT_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// The run of tasks submitted without a `runId`.
pub const DEFAULT_RUN_ID: &str = "default";

/// Settings of the API, typed and read once at the edge.
pub struct ApiSettings {
    /// The deployment names a task's `providerId` may name.
    pub deployments: BTreeSet<String>,
    /// The worker's timeout (the Lambda function's); `None` where attempts are not bounded by
    /// one (the embedded engine of `taskexec serve`).
    pub worker_timeout: Option<Duration>,
    /// Room kept inside `worker_timeout` (see [`DEFAULT_TIMEOUT_MARGIN`]).
    pub timeout_margin: Duration,
    /// The run of tasks that name none.
    pub default_run_id: String,
    /// Wall-clock time (submission times).
    pub clock: Arc<dyn Clock>,
    /// Samples this process's resource use for `GET /resources`.
    pub sampler: Arc<dyn ResourceSampler>,
    /// Per-run counters to add submissions and cancellations to, once per request (AWS).
    pub run_counter: Option<Arc<dyn RunCounter>>,
    /// Checks of a parsed task that only the host knows (the parameters its deployment's model
    /// accepts); each problem is reported like a contract problem.
    pub task_check: Option<TaskCheck>,
    /// Whether `GET /metrics` may summarise every task (no `runId`). Off where that means
    /// reading the whole store (DynamoDB: a table scan); there it asks for a `runId`.
    pub global_metrics: bool,
    /// What the host does after a global pause or resume was written (AWS: disable or enable the
    /// worker's event source mappings, so a paused deployment receives nothing).
    pub pause_hook: Option<PauseHook>,
}

/// A host's action on a global pause (`true`) or resume (`false`), run after the control state
/// was written. Its failure is logged and the request still succeeds: the pause itself holds at
/// every claim; the hook only saves cost (the sweeper also reconciles it).
pub type PauseHook = Arc<
    dyn Fn(bool) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HookError>> + Send>> + Send + Sync,
>;

/// Why a [`PauseHook`] failed.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A host-supplied check of a parsed task.
pub type TaskCheck = Arc<dyn Fn(&BenchmarkTask) -> Vec<FieldError> + Send + Sync>;

impl ApiSettings {
    /// Settings accepting tasks for `deployments`, with no worker timeout, the system clock and
    /// the default run [`DEFAULT_RUN_ID`].
    pub fn new(deployments: impl IntoIterator<Item = impl Into<String>>, sampler: Arc<dyn ResourceSampler>) -> Self {
        Self {
            deployments: deployments.into_iter().map(Into::into).collect(),
            worker_timeout: None,
            timeout_margin: DEFAULT_TIMEOUT_MARGIN,
            default_run_id: DEFAULT_RUN_ID.to_owned(),
            clock: Arc::new(SystemClock),
            sampler,
            run_counter: None,
            task_check: None,
            global_metrics: true,
            pause_hook: None,
        }
    }

    /// Run `hook` after every global pause or resume (see [`ApiSettings::pause_hook`]).
    #[must_use]
    pub fn with_pause_hook(mut self, hook: PauseHook) -> Self {
        self.pause_hook = Some(hook);
        self
    }

    /// `GET /metrics` answers only for one run (`?runId=`): the store cannot summarise every
    /// task without reading all of them (DynamoDB). Without a run it answers 400, pointing to
    /// the CloudWatch metrics.
    #[must_use]
    pub fn without_global_metrics(mut self) -> Self {
        self.global_metrics = false;
        self
    }

    /// Check every parsed task with `check` too (see [`ApiSettings::task_check`]).
    #[must_use]
    pub fn with_task_check(mut self, check: TaskCheck) -> Self {
        self.task_check = Some(check);
        self
    }

    /// Add each request's submissions and cancellations to the runs' counters.
    #[must_use]
    pub fn with_run_counter(mut self, counter: Arc<dyn RunCounter>) -> Self {
        self.run_counter = Some(counter);
        self
    }

    /// Add `delta` to `run`'s counters, if there are counters. A failure is logged, not
    /// returned: the task itself is stored, and `GET /runs/{id}` counts through the index.
    pub async fn count(&self, run: String, delta: RunDelta) {
        let Some(counter) = &self.run_counter else { return };
        if delta.is_empty() {
            return;
        }
        if let Err(error) = counter.add(run.clone(), delta).await {
            tracing::warn!(run_id = %run, %error, "run counters not updated");
        }
    }

    /// Bound task timeouts by a worker timeout (minus [`Self::timeout_margin`]).
    #[must_use]
    pub fn with_worker_timeout(mut self, timeout: Duration) -> Self {
        self.worker_timeout = Some(timeout);
        self
    }

    /// Set the room kept inside the worker timeout.
    #[must_use]
    pub fn with_timeout_margin(mut self, margin: Duration) -> Self {
        self.timeout_margin = margin;
        self
    }

    /// Set the run of tasks that name none.
    #[must_use]
    pub fn with_default_run_id(mut self, run: impl Into<String>) -> Self {
        self.default_run_id = run.into();
        self
    }

    /// Use another clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The longest task `timeout` accepted, if the worker timeout bounds it.
    #[must_use]
    pub fn max_task_timeout(&self) -> Option<Duration> {
        self.worker_timeout.map(|w| w.saturating_sub(self.timeout_margin))
    }
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("deployments", &self.deployments)
            .field("worker_timeout", &self.worker_timeout)
            .field("timeout_margin", &self.timeout_margin)
            .field("default_run_id", &self.default_run_id)
            .finish_non_exhaustive()
    }
}

/// What the handlers share: the store (tasks and control), the work queue and the settings.
pub struct ApiState<S, Q> {
    pub(crate) store: Arc<S>,
    pub(crate) queue: Arc<Q>,
    pub(crate) settings: Arc<ApiSettings>,
}

impl<S, Q> Clone for ApiState<S, Q> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), queue: self.queue.clone(), settings: self.settings.clone() }
    }
}

impl<S: TaskStore + ControlStore, Q: WorkQueue> ApiState<S, Q> {
    /// State over a store and the queue submissions are sent to.
    pub fn new(store: Arc<S>, queue: Arc<Q>, settings: ApiSettings) -> Self {
        Self { store, queue, settings: Arc::new(settings) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<Q> {
        &self.queue
    }

    /// The settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.settings
    }
}
