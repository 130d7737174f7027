//! [`DynamoStore`]: the task, control and breaker ports over one DynamoDB table.
//!
//! Per task a small STATE item (everything the life cycle changes) and a PAYLOAD item (the
//! submitted task, written once), so claims and transitions cost 1 WCU; the result joins the
//! state item in the completing write. Every transition is a conditional `UpdateItem` on
//! `status` and `epoch`, decided by [`taskexec_core::lifecycle::transition`]. The audit trail
//! is a compact list of transition events on the state item plus one JSON log line per event
//! (target `taskexec::audit`); deferral notes are log lines only. No per-task index: each
//! submission request writes one journal entry per run listing its tasks (`run_tasks`,
//! `summary`, stuck-run confirmation), marked unsent until the sender's `mark_sent` (the
//! sweeper's re-send); run counter items carry a sparse index of active runs (stuck-run
//! candidates). See `docs/aws-dynamodb.md` for the layout, its write cost and its crash points.

mod control;
mod interventions;
mod item;
mod journal;
mod keys;
mod limiter;
mod meter;
mod outcomes;
mod queries;
mod quota;
mod read;
mod size;
mod submit;
mod table;
mod transitions;
mod update;

use std::sync::atomic::AtomicU64;

use aws_sdk_dynamodb::Client;
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::ports::{
    AuditEvent, BreakerStore, CancelOutcome, ClaimOutcome, ClaimRequest, ControlState, ControlStore, Delivery,
    FinishRequest, GroupSummary, LimitOverride, PauseScope, StoreResult, SubmitOutcome, TaskStore, WriteOutcome,
};
use taskexec_core::task::{TaskRecord, TaskState};
use taskexec_core::time::Millis;

pub use control::RunCounts;
pub use limiter::{DynamoLimiter, LimiterSettings};
pub use meter::ConsumedWrites;
pub use outcomes::DynamoWindow;
pub use size::{item_size, write_units};
pub use table::create_table;

/// Where the store lives and how its indexes are sharded. The shard counts are part of the
/// table's layout: keep them for the table's lifetime (fewer shards would hide tasks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    /// Table name.
    pub table: String,
    /// Partitions of the index of unsent journal entries (spreads the writes of busy submissions).
    pub unsent_shards: u16,
    /// Journal partitions per run.
    pub run_shards: u16,
    /// Counter items per run.
    pub counter_shards: u16,
    /// How old the control state a claim checks may be: each process reads the control item at
    /// most once per this interval (strongly consistent), not once per claim, so no single item
    /// is read at the claim rate. It is also the staleness bound of a pause: a claim may start
    /// up to this long after a pause was committed by another process (in-flight attempts
    /// finish anyway). This process's own pauses are seen at once.
    pub control_max_age: std::time::Duration,
    /// How long a finished task's items are kept (DynamoDB TTL on `expiresAt`, counted from the
    /// end); `None` keeps them for ever.
    pub task_retention: Option<std::time::Duration>,
}

/// Default of [`DynamoConfig::control_max_age`].
pub const DEFAULT_CONTROL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// Default of [`DynamoConfig::task_retention`]: 30 days.
pub const DEFAULT_TASK_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

impl DynamoConfig {
    /// The defaults for `table`: 4 unsent-index shards, 4 journal shards per run, 4 counter shards.
    #[must_use]
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            unsent_shards: 4,
            run_shards: 4,
            counter_shards: 4,
            control_max_age: DEFAULT_CONTROL_MAX_AGE,
            task_retention: Some(DEFAULT_TASK_RETENTION),
        }
    }

    /// With claims checking a control state at most `age` old.
    #[must_use]
    pub fn with_control_max_age(mut self, age: std::time::Duration) -> Self {
        self.control_max_age = age;
        self
    }

    /// With finished tasks kept `retention` after their end (`None`: for ever).
    #[must_use]
    pub fn with_task_retention(mut self, retention: Option<std::time::Duration>) -> Self {
        self.task_retention = retention;
        self
    }

    /// With `n` unsent-index partitions.
    #[must_use]
    pub fn with_unsent_shards(mut self, n: u16) -> Self {
        self.unsent_shards = n.max(1);
        self
    }

    /// With `n` journal partitions per run.
    #[must_use]
    pub fn with_run_shards(mut self, n: u16) -> Self {
        self.run_shards = n.max(1);
        self
    }

    /// With `n` counter items per run.
    #[must_use]
    pub fn with_counter_shards(mut self, n: u16) -> Self {
        self.counter_shards = n.max(1);
        self
    }
}

/// An unfinished task the sweeper should look at: a running task whose lease expired, or a
/// queued one that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueTask {
    /// Route, priority and due time, as a delivery needs them.
    pub task: Delivery,
    /// `Queued` or `Running`.
    pub state: TaskState,
    /// The epoch read.
    pub epoch: u64,
}

/// The task, control and breaker stores over one DynamoDB table.
///
/// ```no_run
/// use taskexec_aws::{DynamoConfig, DynamoStore};
/// use taskexec_core::ports::TaskStore;
/// # async fn demo(client: aws_sdk_dynamodb::Client) -> Result<(), taskexec_core::error::StoreError> {
/// let store = DynamoStore::new(client, DynamoConfig::new("taskexec-tasks").with_unsent_shards(8));
/// let overdue = store.overdue(1_700_000_000_000, 100).await?;
/// let record = store.get("t1").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DynamoStore {
    client: Client,
    config: DynamoConfig,
    /// Picks the counter shard of each counter write.
    seq: AtomicU64,
    /// Write capacity consumed, as DynamoDB reports it.
    meter: meter::WriteMeter,
    /// The control state claims check, and when it was read ([`DynamoConfig::control_max_age`]).
    control_cache: std::sync::Mutex<Option<(std::time::Instant, ControlState)>>,
    /// Held while the control state is being read, so concurrent claims make one read.
    control_read: tokio::sync::Mutex<()>,
}

impl DynamoStore {
    /// A store over an existing table (see [`create_table`] for its definition).
    #[must_use]
    pub fn new(client: Client, config: DynamoConfig) -> Self {
        Self {
            client,
            config,
            seq: AtomicU64::new(0),
            meter: meter::WriteMeter::default(),
            control_cache: std::sync::Mutex::new(None),
            control_read: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DynamoConfig {
        &self.config
    }

    /// The DynamoDB client.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Write capacity consumed through this store so far, as DynamoDB reported it with each
    /// write (zero on an emulator that does not report capacity, such as moto).
    #[must_use]
    pub fn consumed_writes(&self) -> ConsumedWrites {
        self.meter.totals()
    }

    fn table(&self) -> &str {
        &self.config.table
    }

    /// The `expiresAt` (DynamoDB TTL, seconds) of a task's STATE item that ends at `ended`.
    pub(crate) fn state_expiry(&self, ended: Millis) -> Option<Millis> {
        let keep = Millis::try_from(self.config.task_retention?.as_millis()).unwrap_or(Millis::MAX);
        Some(ended.saturating_add(keep) / 1000)
    }

    /// The `expiresAt` of a task's PAYLOAD item, written once at submission (expiring it at the
    /// end would cost a second write per task): the end is not known then, so it is counted
    /// from submission plus [`UNFINISHED_FOR_AT_MOST`], the longest a task is expected to stay
    /// unfinished.
    pub(crate) fn payload_expiry(&self, submitted: Millis) -> Option<Millis> {
        let unfinished = Millis::try_from(UNFINISHED_FOR_AT_MOST.as_millis()).unwrap_or(Millis::MAX);
        self.state_expiry(submitted.saturating_add(unfinished))
    }
}

/// How long after submission a task's payload is kept before its retention starts counting:
/// twice the source queues' 7-day message retention. A task still unfinished past it (paused for
/// weeks) may lose its payload to the TTL; it then fails at its next claim as not found.
pub const UNFINISHED_FOR_AT_MOST: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

impl TaskStore for DynamoStore {
    async fn submit(&self, records: Vec<TaskRecord>) -> StoreResult<Vec<SubmitOutcome>> {
        Ok(submit::submit(self, records).await?)
    }

    async fn get(&self, task_id: &str) -> StoreResult<Option<TaskRecord>> {
        Ok(read::record(self, task_id).await?)
    }

    async fn claim(&self, request: ClaimRequest) -> StoreResult<ClaimOutcome> {
        Ok(transitions::claim(self, &request).await?)
    }

    async fn renew_lease(&self, task_id: &str, epoch: u64, until: Millis) -> StoreResult<WriteOutcome> {
        Ok(transitions::renew_lease(self, task_id, epoch, until).await?)
    }

    async fn finish(&self, request: FinishRequest) -> StoreResult<WriteOutcome> {
        Ok(transitions::finish(self, request).await?)
    }

    async fn cancel(&self, task_id: &str, now: Millis) -> StoreResult<CancelOutcome> {
        Ok(interventions::cancel(self, task_id, now).await?)
    }

    async fn redrive(&self, task_id: &str, now: Millis) -> StoreResult<WriteOutcome> {
        Ok(interventions::redrive(self, task_id, now).await?)
    }

    async fn release_all_leases(&self, now: Millis) -> StoreResult<u64> {
        Ok(interventions::release_all_leases(self, now).await?)
    }

    /// Deferrals are frequent and change no state: on DynamoDB they are a log line only (no
    /// write), so [`TaskStore::events`] does not return them.
    async fn note(&self, event: AuditEvent) -> StoreResult<()> {
        transitions::log_event(&event.task_id, &event.kind, event.epoch, event.detail.as_deref());
        Ok(())
    }

    /// The transition events kept on the state item (kind, time, epoch; no detail), oldest
    /// first. Deferral notes and event details are in the JSON logs only.
    async fn events(&self, task_id: &str) -> StoreResult<Vec<AuditEvent>> {
        Ok(read::state(self, task_id).await?.map(|s| s.events()).unwrap_or_default())
    }

    /// Unfinished tasks in due order (`ready_at`, then a hash of the id) rather than submission
    /// order; for tasks never retried the two agree. The cursor is that due key. Each page is a
    /// `Scan` of the table: for operators and tests (no caller in the AWS shape).
    async fn pending(&self, cursor: u64, limit: usize) -> StoreResult<(Vec<Delivery>, Option<u64>)> {
        Ok(queries::pending(self, cursor, limit).await?)
    }

    async fn summary(&self, run_id: Option<&str>) -> StoreResult<Vec<GroupSummary>> {
        Ok(queries::summary(self, run_id).await?)
    }

    async fn run_tasks(&self, run_id: &str) -> StoreResult<Vec<TaskRecord>> {
        Ok(queries::run_tasks(self, run_id).await?)
    }

    /// Settles the submission's journal entries: they leave the index of unsent entries, which
    /// the sweeper re-sends from after a grace.
    async fn mark_sent(&self, deliveries: &[Delivery]) -> StoreResult<()> {
        Ok(journal::mark_sent(self, deliveries).await?)
    }
}

impl ControlStore for DynamoStore {
    async fn control(&self) -> StoreResult<ControlState> {
        Ok(control::read(self).await?)
    }

    async fn set_paused(&self, scope: PauseScope, paused: bool) -> StoreResult<()> {
        Ok(control::set_paused(self, scope, paused).await?)
    }

    async fn set_limits(&self, deployment: &str, limits: Option<LimitOverride>) -> StoreResult<()> {
        Ok(control::set_limits(self, deployment, limits.as_ref()).await?)
    }

    /// The control state claims check ([`DynamoConfig::control_max_age`] old at most).
    async fn recent_control(&self) -> StoreResult<Option<ControlState>> {
        Ok(Some(control::for_claim(self).await?))
    }
}

impl BreakerStore for DynamoStore {
    async fn load(&self, deployment: &str) -> StoreResult<Option<BreakerSnapshot>> {
        Ok(control::load_breaker(self, deployment).await?)
    }

    async fn save(&self, deployment: &str, snapshot: BreakerSnapshot) -> StoreResult<()> {
        Ok(control::save_breaker(self, deployment, &snapshot).await?)
    }
}

impl DynamoStore {
    /// Unfinished tasks due by their own timing, at most `limit`: running ones whose lease ran
    /// out by `now`, queued ones due by `now`. A `Scan` of the table: for operators and tests.
    pub async fn overdue(&self, now: Millis, limit: usize) -> StoreResult<Vec<OverdueTask>> {
        Ok(queries::overdue(self, now, limit).await?)
    }

    /// Runs that may be stuck at `due_by` (active, submitted to at or before it, no finish
    /// reported after it), oldest first, at most `limit`, with their earliest submission since
    /// they became active: the index of active runs and their counter items.
    pub async fn waiting_runs(&self, due_by: Millis, limit: usize) -> StoreResult<Vec<(String, Millis)>> {
        Ok(queries::waiting_runs(self, due_by, limit).await?)
    }

    /// A run's unfinished task count, when one of its tasks last reached a final state and the
    /// earliest due time of its unfinished tasks (its journal and every task's state item). A run
    /// with nothing unfinished leaves the index of active runs.
    pub async fn run_activity(&self, run_id: &str) -> StoreResult<(u64, Option<Millis>, Option<Millis>)> {
        Ok(queries::run_activity(self, run_id).await?)
    }

    /// Replace a breaker snapshot only if the stored one is still `expected` (a conditional
    /// write); `false` when it changed in between.
    pub async fn replace_breaker_if(
        &self,
        deployment: &str,
        expected: &BreakerSnapshot,
        next: &BreakerSnapshot,
    ) -> StoreResult<bool> {
        Ok(control::replace_breaker_if(self, deployment, expected, next).await?)
    }

    /// Add to a run's progress counters: one `ADD` on one of the run's counter shards. Meant to
    /// be called once per invocation with the invocation's totals, not once per task.
    pub async fn add_run_counts(&self, run_id: &str, counts: &RunCounts) -> StoreResult<()> {
        Ok(control::add_run_counts(self, run_id, counts).await?)
    }

    /// A run's progress counters, summed over its shards (all zero for an unknown run).
    pub async fn run_counts(&self, run_id: &str) -> StoreResult<RunCounts> {
        Ok(control::run_counts(self, run_id).await?)
    }
}

/// The store declares what the conformance suite may expect of its audit trail.
#[cfg(feature = "conformance")]
impl taskexec_core::conformance::Capabilities for DynamoStore {
    const FULL_AUDIT_TRAIL: bool = false;
}
