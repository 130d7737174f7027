//! Ports: the small capability traits the engine is written against. Every port has an
//! in-memory adapter in [`crate::memory`]; the SQLite adapters live in `taskexec-local`, the AWS
//! ones in a later `taskexec-aws`. One behavioural suite (module `conformance`, behind the
//! feature of that name) runs against all.
//!
//! Methods return `impl Future + Send` (no `async_trait`); the engine is generic over them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSnapshot;
use crate::error::{ErrorClass, StoreError, TaskError};
use crate::task::{AttemptRecord, TaskPriority, TaskRecord, TaskResult, TaskState};
use crate::time::Millis;

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What a submission did with one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Stored as a new queued task.
    Created,
    /// The same id with the same content was already there: nothing changed.
    Duplicate(TaskState),
    /// The same id with different content: rejected.
    Conflict,
}

/// A claim: take a task for one attempt, committed before the provider call.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The task.
    pub task_id: String,
    /// Who claims (runner or worker id).
    pub owner: String,
    /// Now.
    pub now: Millis,
    /// When the lease runs out unless renewed.
    pub lease_until: Millis,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// Claimed: the record as it is now (running, epoch bumped, `attempt` + 1, lease set).
    Claimed(Box<TaskRecord>),
    /// The task is finished; the delivery can be acknowledged.
    Terminal(TaskState),
    /// A scheduled retry is not due yet.
    NotDue {
        /// When it is.
        at: Millis,
    },
    /// Another attempt holds a live lease.
    LeaseHeld {
        /// When the lease runs out.
        until: Millis,
    },
    /// Execution is paused, globally or for the task's run. Every store checks this at claim:
    /// the in-memory and SQLite stores atomically with the claim, so no attempt starts after a
    /// pause was committed; DynamoDB against the control state the process read at most
    /// `control_max_age` (1 s) ago (a transaction would cost 4 WCU per claim and make the control
    /// item as hot as the claim rate), so a claim may start its attempt up to that long after
    /// another process committed a pause.
    Paused,
    /// No such task.
    NotFound,
}

/// How an attempt ended, as written to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `running → completed`.
    Completed(TaskResult),
    /// `running → queued` with a retry time.
    Retry {
        /// The error of this attempt.
        error: TaskError,
        /// Earliest start of the next attempt.
        next_attempt_at: Millis,
    },
    /// `running → failed`.
    Failed {
        /// The final error.
        error: TaskError,
        /// Set when the engine dead-letters the task (budget exhausted).
        dead_letter_reason: Option<String>,
    },
    /// `running → queued` without an outcome (the attempt was never made or is abandoned).
    Released,
}

/// A fenced write of an attempt's outcome.
#[derive(Debug, Clone)]
pub struct FinishRequest {
    /// The task.
    pub task_id: String,
    /// The epoch of the claim; the write applies only if the task still has it and is running.
    pub epoch: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The task's `attempt` after this attempt (a 429 gives back the attempt its claim counted).
    pub attempt: u32,
    /// The task's `throttles` after this attempt.
    pub throttles: u32,
    /// The attempt's history entry, if a provider call was made.
    pub record: Option<AttemptRecord>,
    /// Now.
    pub now: Millis,
}

/// Whether a fenced write applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written.
    Applied,
    /// Rejected: the task moved on (cancelled, reclaimed by a newer epoch, or finished).
    Stale,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued or running and is now cancelled.
    Cancelled {
        /// The state it was in.
        was: TaskState,
    },
    /// It had already finished.
    AlreadyTerminal(TaskState),
    /// No such task.
    NotFound,
}

/// One audit-trail event (append-only, per task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// The task.
    pub task_id: String,
    /// When (ms since the epoch).
    pub at: Millis,
    /// `submitted`, `claimed`, `reclaimed`, `released`, `retryScheduled`, `completed`, `failed`,
    /// `deadLettered`, `cancelled`, `deferred`, `redriven`.
    pub kind: String,
    /// Epoch at the time of the event.
    pub epoch: u64,
    /// Free detail (error message, deferral reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Per deployment/model figures of a run, as the closing summary shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSummary {
    /// Deployment.
    pub provider_id: String,
    /// Model.
    pub model_id: String,
    /// Tasks in each state.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed, by class.
    pub failed_by_class: std::collections::BTreeMap<String, u64>,
    /// Cancelled.
    pub cancelled: u64,
    /// Dead-lettered by the engine (also counted in failed).
    pub dead_lettered: u64,
    /// Attempts beyond the first, over all tasks (429s excluded).
    pub retries: u64,
    /// Rate-limit answers, over all tasks.
    pub throttles: u64,
    /// Latency of each completed task's successful attempt, ms.
    pub latencies_ms: Vec<f64>,
    /// Earliest first start.
    pub first_start: Option<Millis>,
    /// Latest end.
    pub last_end: Option<Millis>,
}

/// The task store: task records, leases, results and the audit trail.
///
/// ```
/// use taskexec_core::memory::MemoryStore;
/// use taskexec_core::ports::{SubmitOutcome, TaskStore};
/// use taskexec_core::task::{BenchmarkTask, TaskRecord};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::default();
/// let task: BenchmarkTask = serde_json::from_str(
///     r#"{"id":"t1","providerId":"sim","modelId":"m","prompt":"hi","runId":"r"}"#).unwrap();
/// let out = store.submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
/// assert_eq!(out, [SubmitOutcome::Created]);
/// # });
/// ```
pub trait TaskStore: Send + Sync + 'static {
    /// Store new tasks idempotently (id + content hash), each with a `submitted` event.
    ///
    /// One outcome per record, in order: [`SubmitOutcome::Created`] stores the record as given;
    /// an id already stored with the same `content_hash` is a [`SubmitOutcome::Duplicate`]
    /// carrying the stored state, and one with another hash a [`SubmitOutcome::Conflict`]; in
    /// both cases nothing is written (no record change, no event). A repeat inside one batch is
    /// judged against the earlier record of the batch. Records are independent: a store may
    /// commit a large batch in several transactions.
    fn submit(&self, records: Vec<TaskRecord>) -> impl Future<Output = StoreResult<Vec<SubmitOutcome>>> + Send;
    /// Read one task (`None` if the id is unknown).
    fn get(&self, task_id: &str) -> impl Future<Output = StoreResult<Option<TaskRecord>>> + Send;
    /// Claim a task for one attempt (see [`ClaimOutcome`]); committed before returning.
    ///
    /// - unknown id → `NotFound`; completed, failed or cancelled → `Terminal(state)`;
    /// - queued with `next_attempt_at > now` → `NotDue { at }`;
    /// - running with `lease.until > now` → `LeaseHeld { until }` (a lease with `until <= now`
    ///   has expired and the task is reclaimed);
    /// - paused globally or for the task's run (see [`ClaimOutcome::Paused`] for how atomic) → `Paused`;
    /// - otherwise `Claimed`: state running, `epoch + 1`, `attempt + 1`, lease set to
    ///   (`owner`, `lease_until`), `started_at` set if unset (kept on later claims),
    ///   `next_attempt_at` cleared, and a `claimed` event (`reclaimed` for an expired lease).
    ///
    /// Every outcome but `Claimed` changes nothing. Of many concurrent claims of one claimable
    /// task exactly one is `Claimed`.
    fn claim(&self, request: ClaimRequest) -> impl Future<Output = StoreResult<ClaimOutcome>> + Send;
    /// Extend the lease of a running attempt (fenced by epoch): `Applied` (lease `until` set)
    /// only while the task is running with this `epoch`, otherwise `Stale` (also for an unknown
    /// id). Writes no event.
    fn renew_lease(
        &self,
        task_id: &str,
        epoch: u64,
        until: Millis,
    ) -> impl Future<Output = StoreResult<WriteOutcome>> + Send;
    /// Record an attempt's outcome (fenced by epoch and `running`).
    ///
    /// Applies only if the task is running with `request.epoch`; otherwise `Stale` and nothing
    /// changes (a stale worker, a cancelled task, a second finish, an unknown id). When applied:
    /// lease cleared, `attempt`/`throttles` set to the request's, `record` appended to the
    /// history, then per outcome:
    /// - `Completed`: completed, `result` stored, `ended_at = now`, `error` cleared; event `completed`;
    /// - `Retry`: queued, `error` and `next_attempt_at` stored; event `retryScheduled`;
    /// - `Failed`: failed, `error` and `dead_letter_reason` stored, `ended_at = now`; event
    ///   `failed`, then `deadLettered` when a reason is given;
    /// - `Released`: queued, `next_attempt_at` cleared; event `released`.
    ///
    /// The epoch is unchanged. Of concurrent finishes with one epoch exactly one applies.
    fn finish(&self, request: FinishRequest) -> impl Future<Output = StoreResult<WriteOutcome>> + Send;
    /// Cancel a queued or running task (bumps epoch).
    ///
    /// Queued or running → `Cancelled { was }`: state cancelled, `epoch + 1`, lease cleared,
    /// `ended_at = now`, `error` of class `cancelled`, a `cancelled` event, and the control
    /// state's `cancel_seq` + 1. Already finished → `AlreadyTerminal(state)`; unknown →
    /// `NotFound`; neither changes anything.
    fn cancel(&self, task_id: &str, now: Millis) -> impl Future<Output = StoreResult<CancelOutcome>> + Send;
    /// Give a failed task a fresh attempt budget (`failed → queued`): `epoch + 1`, `attempt`
    /// and `throttles` 0, `next_attempt_at`, `ended_at` and `dead_letter_reason` cleared, a
    /// `redriven` event → `Applied`. Any other state (or an unknown id) → `Stale`, no change.
    fn redrive(&self, task_id: &str, now: Millis) -> impl Future<Output = StoreResult<WriteOutcome>> + Send;
    /// Release every lease: `running → queued`. Only the process that owns the store (the
    /// embedded runner holding its lock) calls this, at start, to take over a dead runner's work.
    ///
    /// Lease cleared, `epoch` and `attempt` unchanged, a `released` event each; returns how many
    /// tasks were released. The released attempts' writes are stale (the task is not running).
    fn release_all_leases(&self, now: Millis) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Append an event that changes no state (deferrals), as given.
    fn note(&self, event: AuditEvent) -> impl Future<Output = StoreResult<()>> + Send;
    /// The audit trail of one task, oldest first (insertion order), and only that task's.
    fn events(&self, task_id: &str) -> impl Future<Output = StoreResult<Vec<AuditEvent>>> + Send;
    /// Queued and running tasks as first deliveries (for the embedded queue to rebuild itself) in
    /// submission order, a page at a time: up to `limit` tasks after `cursor` (0 for the first page), and the cursor of
    /// the next page (`None` after the last), with `ready_at` = `next_attempt_at` if set, else
    /// `submitted_at`. A recovery of a million tasks never holds them all at once.
    fn pending(
        &self,
        cursor: u64,
        limit: usize,
    ) -> impl Future<Output = StoreResult<(Vec<Delivery>, Option<u64>)>> + Send;
    /// Per deployment/model figures of a run (`None`: all runs), one group per
    /// (`provider_id`, `model_id`) that has tasks, ordered by that pair. The figures are those of
    /// `crate::metrics::summarise`: counts per state, failures keyed by the JSON name of their
    /// error class, dead-lettered tasks, retries = Σ max(attempt, 1) − 1, throttles Σ, the
    /// `latency_ms` of each completed task's result, earliest `started_at`, latest `ended_at`.
    fn summary(&self, run_id: Option<&str>) -> impl Future<Output = StoreResult<Vec<GroupSummary>>> + Send;
    /// Records of a run, whole and in submission order (for export).
    fn run_tasks(&self, run_id: &str) -> impl Future<Output = StoreResult<Vec<TaskRecord>>> + Send;
    /// The messages of a submission are sent: `deliveries` are all those built for one
    /// [`TaskStore::submit`] call, in its order, each due at its record's `submitted_at` (the
    /// tasks that needed no message included), or the one of a task redriven at `now`
    /// ([`TaskStore::redrive`]), due at `now`. Called by whoever sends after submitting or
    /// redriving (the API, the worker for a raw task it stored), once the send succeeded. A store that keeps a
    /// record of possibly unsent messages for a backstop (DynamoDB's submission journal, read by
    /// the sweeper) settles it here; the default does nothing.
    fn mark_sent(&self, deliveries: &[Delivery]) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = deliveries;
        async { Ok(()) }
    }
}

/// A change to a run's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunDelta {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
}

impl RunDelta {
    /// Whether nothing changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Per-run progress counters, added to once per run per invocation or request (sharded in
/// DynamoDB), never once per task. Boxed futures: the counter is chosen at run time. Exact counts
/// come from [`TaskStore::summary`]; the counters are the cheap live view.
pub trait RunCounter: Send + Sync {
    /// Add `delta` to `run_id`'s counters.
    fn add(
        &self,
        run_id: String,
        delta: RunDelta,
    ) -> std::pin::Pin<Box<dyn Future<Output = StoreResult<()>> + Send + '_>>;
}

/// What is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "scope", content = "runId")]
pub enum PauseScope {
    /// Everything.
    Global,
    /// One run.
    Run(String),
}

/// Control state shared by every worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControlState {
    /// Global pause.
    pub paused: bool,
    /// Paused runs.
    pub paused_runs: BTreeSet<String>,
    /// Bumped on every cancel, so a runner re-checks its in-flight tasks only when it moved.
    pub cancel_seq: u64,
    /// Limits set at run time (`taskexec limits set`, `PUT /control/limits/{deployment}`), by
    /// deployment, over the configured ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, LimitOverride>,
}

/// Limits of one deployment set at run time, over the configuration: each field set replaces the
/// configured value, each field absent keeps it. Every engine reading the control state applies
/// them (the embedded runner within a second, a Lambda worker at its next invocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitOverride {
    /// Calls at once (the ceiling of the adaptive limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute, input and output together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Input tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tpm: Option<u64>,
    /// Output tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tpm: Option<u64>,
    /// Requests per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
}

impl LimitOverride {
    /// The configured quota with this override's budgets in place of the configured ones.
    #[must_use]
    pub fn over_quota(&self, configured: crate::rate::Quota) -> crate::rate::Quota {
        crate::rate::Quota {
            rpm: self.rpm.or(configured.rpm),
            tpm: self.tpm.or(configured.tpm),
            input_tpm: self.input_tpm.or(configured.input_tpm),
            output_tpm: self.output_tpm.or(configured.output_tpm),
            rpd: self.rpd.or(configured.rpd),
        }
    }

    /// The fields of `other` that are set replace these.
    #[must_use]
    pub fn merged(self, other: Self) -> Self {
        Self {
            concurrency: other.concurrency.or(self.concurrency),
            rpm: other.rpm.or(self.rpm),
            tpm: other.tpm.or(self.tpm),
            input_tpm: other.input_tpm.or(self.input_tpm),
            output_tpm: other.output_tpm.or(self.output_tpm),
            rpd: other.rpd.or(self.rpd),
        }
    }

    /// Whether nothing is overridden.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Each field by its JSON name.
    #[must_use]
    pub fn fields(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("concurrency", self.concurrency.map(u64::from)),
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("inputTpm", self.input_tpm),
            ("outputTpm", self.output_tpm),
            ("rpd", self.rpd),
        ]
    }

    /// What is wrong with it, if anything: a zero limit would stop the deployment for good (pause
    /// it instead).
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        let zero: Vec<&str> = self.fields().into_iter().filter(|(_, v)| *v == Some(0)).map(|(name, _)| name).collect();
        (!zero.is_empty()).then(|| format!("{} must be at least 1 (pause the run to stop it)", zero.join(", ")))
    }
}

impl std::fmt::Display for LimitOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<String> =
            self.fields().into_iter().filter_map(|(name, v)| v.map(|v| format!("{name}={v}"))).collect();
        if set.is_empty() { f.write_str("as configured") } else { f.write_str(&set.join(" ")) }
    }
}

impl ControlState {
    /// Whether a task of `run_id` may start an attempt.
    #[must_use]
    pub fn is_paused(&self, run_id: &str) -> bool {
        self.paused || self.paused_runs.contains(run_id)
    }
}

/// Control state: pause flags and the cancel signal.
pub trait ControlStore: Send + Sync + 'static {
    /// Read the control state (a new store: not paused, no paused run, `cancel_seq` 0).
    fn control(&self) -> impl Future<Output = StoreResult<ControlState>> + Send;
    /// Pause or resume, globally or for one run. Idempotent. Claims check it atomically (see
    /// [`TaskStore::claim`]); attempts already running are not affected.
    fn set_paused(&self, scope: PauseScope, paused: bool) -> impl Future<Output = StoreResult<()>> + Send;
    /// Set (`Some`) or remove (`None`: back to the configuration) the run-time limits of a
    /// deployment, for every engine reading this control state. The whole override is replaced.
    fn set_limits(
        &self,
        deployment: &str,
        limits: Option<LimitOverride>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A recent control state this process already holds, if the store keeps one (DynamoDB:
    /// read at most once per interval), for the engine to defer a paused task before it takes
    /// limiter permits or reads the task. `None` (the default) where the claim's own check is
    /// as cheap (in memory, SQLite). Never a substitute for the claim's check.
    fn recent_control(&self) -> impl Future<Output = StoreResult<Option<ControlState>>> + Send {
        std::future::ready(Ok(None))
    }
}

/// Circuit-breaker state per deployment. Written only when the state changes.
pub trait BreakerStore: Send + Sync + 'static {
    /// The stored snapshot of a deployment's breaker (`None` if never saved).
    fn load(&self, deployment: &str) -> impl Future<Output = StoreResult<Option<BreakerSnapshot>>> + Send;
    /// Store a snapshot after a state change, replacing the deployment's previous one.
    fn save(&self, deployment: &str, snapshot: BreakerSnapshot) -> impl Future<Output = StoreResult<()>> + Send;
}

/// A concurrency key: what a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKey {
    /// Every task.
    Global,
    /// One deployment.
    Deployment(String),
    /// One model on one deployment.
    Model(String, String),
}

/// Concurrency-limiter state: permits per key.
pub trait LimiterStore: Send + Sync + 'static {
    /// Take a permit under `limit`, or say none is free.
    fn try_acquire(&self, key: &LimitKey, limit: u32) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Give a permit back.
    fn release(&self, key: &LimitKey) -> impl Future<Output = StoreResult<()>> + Send;
    /// Permits in use.
    fn in_use(&self, key: &LimitKey) -> impl Future<Output = StoreResult<u32>> + Send;

    // The waiting line of a limit key, shared by every worker (the AWS shape): where deliveries
    // blocked by the key stand, so that when its capacity is short the best-ranked go first
    // ([`crate::schedule::line_check`]). The defaults keep no line: a single process orders its
    // blocked deliveries itself (the embedded runner parks them by aged priority).

    /// The line of `key`: the permits held, the best `n` tickets waiting, best (lowest score)
    /// first, expired ones left out, and the shared adaptive limit; `None` (the default) where
    /// no line is kept. A store may answer from a view a little old (DynamoDB: at most its
    /// `line_view`).
    fn waiting_front(
        &self,
        key: &LimitKey,
        n: usize,
        now: Millis,
    ) -> impl Future<Output = StoreResult<Option<Line>>> + Send {
        let _ = (key, n, now);
        std::future::ready(Ok(None))
    }

    /// Stand in the line of `key` with `ticket` (idempotent: standing again renews it). A
    /// store that pools permits per process gives back the idle ones of `key` here, so the
    /// delivery ahead in line, wherever it runs, can take them.
    fn stand_in_line(
        &self,
        key: &LimitKey,
        ticket: &Ticket,
        now: Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = (key, ticket, now);
        std::future::ready(Ok(()))
    }

    /// Leave the line of `key` (the permit was taken); nothing when not in it.
    fn leave_line(&self, key: &LimitKey, ticket: &Ticket) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = (key, ticket);
        std::future::ready(Ok(()))
    }

    /// Share a change of the adaptive limit of `key`'s deployment with every worker (they see
    /// it in [`Line::adapted`]); a change older than the one stored is dropped. The default
    /// shares nothing (one process is the whole fleet).
    fn share_adapted(&self, key: &LimitKey, adapted: Adapted) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = (key, adapted);
        std::future::ready(Ok(()))
    }

    // Provider quotas shared by a fleet of processes through a ledger of time slots
    // ([`crate::fleet`]). The defaults mean "no fleet": this process is the whole fleet (the
    // embedded shape), every lease is granted and nothing is written or read.

    /// The slot length of the fleet's quota ledger; `None` (the default): no ledger, the
    /// quotas are counted in process only.
    fn quota_slot(&self) -> Option<Duration> {
        None
    }
    /// Lease `amounts` of `key`'s quota in `slot` for this process: granted (`true`) only if,
    /// with every process's leases of that slot, each field stays within `caps`.
    fn lease_quota(
        &self,
        key: &LimitKey,
        slot: u64,
        amounts: crate::fleet::Amounts,
        caps: crate::fleet::Amounts,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let _ = (key, slot, amounts, caps);
        std::future::ready(Ok(true))
    }
    /// Give back `amounts` leased in `slot` and not used.
    fn give_back_quota(
        &self,
        key: &LimitKey,
        slot: u64,
        amounts: crate::fleet::Amounts,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = (key, slot, amounts);
        std::future::ready(Ok(()))
    }
}

/// A limit key's waiting line as a delivery about to take a permit sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line {
    /// Permits held across the fleet (this process's included).
    pub leased: u32,
    /// Of those, permits this process holds unused (its to hand out).
    pub idle: u32,
    /// The best tickets waiting, best first.
    pub front: Vec<Ticket>,
    /// The deployment's adaptive concurrency limit as the fleet last changed it (deployment
    /// keys only; `None` before any change was shared).
    pub adapted: Option<Adapted>,
}

impl Line {
    /// Permits a delivery here could take under `limit`: those no process holds, and this
    /// process's idle ones.
    #[must_use]
    pub fn available(&self, limit: u32) -> u32 {
        limit.saturating_sub(self.leased).saturating_add(self.idle)
    }
}

/// A change of a deployment's adaptive concurrency limit ([`crate::rate::AdaptiveLimit`]) shared
/// with every worker: the limit, until when new calls wait (the provider's `Retry-After`) and
/// when it was made (the newest wins).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adapted {
    /// Calls allowed at once.
    pub limit: u32,
    /// New calls wait until then (ms; 0 when not held).
    pub held_until: Millis,
    /// When the change was made (ms).
    pub at: Millis,
}

/// A delivery's place in the waiting line of a limit key: its aged score
/// ([`crate::schedule::aged_score`]; lower goes first) and its task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket {
    /// `ready_at + rank × aging`.
    pub score: Millis,
    /// The task waiting.
    pub task_id: String,
}

/// A metric the engine emits; names are fixed here, once.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A task was claimed and an attempt started on a deployment (a route's choice, or the
    /// task's own).
    AttemptStarted {
        /// The deployment called.
        deployment: String,
    },
    /// A task completed; the deployment that served it and its attempt latency in ms.
    Completed {
        /// The deployment that served it.
        deployment: String,
        /// Latency of the successful attempt.
        latency_ms: f64,
    },
    /// A task failed for good.
    Failed(ErrorClass),
    /// A retry was scheduled after a failed attempt.
    RetryScheduled(ErrorClass),
    /// A delivery was deferred without using an attempt.
    Deferred(DeferReason),
    /// A task was dead-lettered by the engine.
    DeadLettered {
        /// The task.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// A task was cancelled while running.
    Cancelled,
    /// A deployment's breaker changed state.
    BreakerChanged {
        /// The deployment.
        deployment: String,
        /// Its new state.
        state: crate::breaker::BreakerState,
    },
    /// A deployment's adaptive concurrency limit changed (halved on a 429, grown on successes).
    ConcurrencyChanged {
        /// The deployment.
        deployment: String,
        /// Calls allowed at once before.
        previous: u32,
        /// Calls allowed at once from now on.
        limit: u32,
    },
}

/// Where metrics go: atomic counters in process, EMF lines in Lambda.
pub trait MetricsSink: Send + Sync + 'static {
    /// Record one metric (cheap, never blocks on I/O).
    fn record(&self, metric: Metric);
}

/// Why a delivery was deferred (no attempt used).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeferReason {
    /// Paused globally or for the run.
    Paused,
    /// The deployment's breaker is open (or half-open with its probes out).
    BreakerOpen(String),
    /// A concurrency limit is reached (or its capacity goes to better-ranked deliveries waiting
    /// in its line).
    LimitReached(LimitKey),
    /// A concurrency limit is reached and this delivery is among the first in the key's shared
    /// waiting line (AWS shape): it asks again soon, where others back off.
    InLine(LimitKey),
    /// Another attempt holds the lease.
    LeaseHeld,
    /// The retry is scheduled later.
    NotDue,
    /// The store could not be reached; nothing was recorded.
    StoreUnavailable,
    /// The deployment's rate limit (requests or tokens per minute or day) or its provider's
    /// `Retry-After` holds new calls; the deferral lasts until it frees.
    RateLimited(String),
}

/// Where a task goes: deployment (or route), model and run. Shared between deliveries, so a
/// queue of 100,000 tasks holds each distinct route once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Deployment or route.
    pub provider_id: String,
    /// Model.
    pub model_id: String,
    /// Run.
    pub run_id: String,
}

/// The queue's handle on one received copy of a delivery: which of its queues the copy came
/// from and the queue's own handle on it (SQS: the queue URL and the receipt handle). Opaque to
/// everyone but the queue that issued it; empty for a delivery that was never received (a first
/// send) and in the embedded queue, which needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt(Option<Arc<(String, String)>>);

impl Receipt {
    /// The receipt of a copy received from `source` with the queue's `handle`.
    pub fn new(source: impl Into<String>, handle: impl Into<String>) -> Self {
        Self(Some(Arc::new((source.into(), handle.into()))))
    }

    /// The queue the copy came from.
    #[must_use]
    pub fn source(&self) -> Option<&str> {
        self.0.as_deref().map(|(source, _)| source.as_str())
    }

    /// The queue's handle on the copy.
    #[must_use]
    pub fn handle(&self) -> Option<&str> {
        self.0.as_deref().map(|(_, handle)| handle.as_str())
    }
}

/// A task on its way through a work queue: what is sent, what a worker receives, what the
/// store's unfinished tasks are re-queued as, and (on SQS) what a message body holds
/// ([`Delivery::to_body`], decoded by [`crate::message::decode`]). It carries the task's route,
/// so limits and breakers are checked before a claim, and the receipt of the copy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The task.
    pub task_id: String,
    /// Deployment, model and run.
    pub route: Arc<Route>,
    /// Scheduling class (also decides the queue).
    pub priority: TaskPriority,
    /// How many times this copy was received (0 before its first receive).
    pub receive_count: u32,
    /// How many times earlier copies of this message were deferred (a long-deferred message is
    /// re-sent as a fresh copy that carries the count, so its backoff keeps growing).
    pub deferrals: u32,
    /// When the task became due (submission or next attempt; for queue-wait accounting).
    pub ready_at: Millis,
    /// The queue's handle on the copy received.
    pub receipt: Receipt,
    /// The task fails instead of waiting when no deployment has capacity
    /// ([`crate::task::BenchmarkTask::fail_fast`]).
    pub fail_fast: bool,
    /// The id of the request that submitted the task (HTTP `x-request-id`), carried to the
    /// worker (on SQS as the message attribute `correlationId`) for its log lines; `None` for
    /// deliveries rebuilt from the store.
    pub correlation: Option<Arc<str>>,
}

impl Delivery {
    /// A first delivery.
    pub fn new(task_id: impl Into<String>, route: Arc<Route>, priority: TaskPriority, ready_at: Millis) -> Self {
        let receipt = Receipt::default();
        Self {
            task_id: task_id.into(),
            route,
            priority,
            receive_count: 0,
            deferrals: 0,
            ready_at,
            receipt,
            fail_fast: false,
            correlation: None,
        }
    }

    /// The deployment (or route) asked for.
    #[must_use]
    pub fn provider_id(&self) -> &str {
        &self.route.provider_id
    }

    /// The model.
    #[must_use]
    pub fn model_id(&self) -> &str {
        &self.route.model_id
    }

    /// The run.
    #[must_use]
    pub fn run_id(&self) -> &str {
        &self.route.run_id
    }

    /// Deferrals of this task's message before this receive: those of earlier copies, plus every
    /// earlier receive of this copy (a receive that came back was deferred or crashed).
    #[must_use]
    pub fn deferrals_so_far(&self) -> u32 {
        self.deferrals.saturating_add(self.receive_count.saturating_sub(1))
    }

    /// A fresh copy to send in this one's place: no receipt, not yet received, carrying the
    /// deferrals so far plus this one's.
    #[must_use]
    pub fn fresh_copy(&self) -> Self {
        let mut copy = self.clone();
        copy.deferrals = self.deferrals_so_far().saturating_add(1);
        copy.receive_count = 0;
        copy.receipt = Receipt::default();
        copy
    }
}

/// Builds deliveries, sharing repeated routes.
#[derive(Debug, Default)]
pub struct DeliveryBuilder {
    routes: std::collections::HashSet<Arc<Route>>,
}

impl DeliveryBuilder {
    /// A first delivery of `task_id` on `route`.
    pub fn build(&mut self, task_id: String, route: Route, priority: TaskPriority, ready_at: Millis) -> Delivery {
        let route = match self.routes.get(&route) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(route);
                self.routes.insert(shared.clone());
                shared
            }
        };
        Delivery::new(task_id, route, priority, ready_at)
    }

    /// A first delivery of `task` in run `run_id`, due at `ready_at`.
    pub fn of_task(&mut self, task: &crate::task::BenchmarkTask, run_id: &str, ready_at: Millis) -> Delivery {
        let route =
            Route { provider_id: task.provider_id.clone(), model_id: task.model_id.clone(), run_id: run_id.to_owned() };
        let mut d = self.build(task.id.clone(), route, task.priority, ready_at);
        d.fail_fast = task.fail_fast;
        d
    }
}

/// One work queue and its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    /// The priority it carries.
    pub priority: TaskPriority,
    /// Main queue URL.
    pub url: String,
    /// Its DLQ's URL.
    pub dlq_url: String,
}

/// The three priority queues of the AWS shape, each with its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// High, normal, low.
    pub queues: [QueuePair; 3],
}

impl Topology {
    /// The pair for a priority.
    #[must_use]
    pub fn for_priority(&self, priority: TaskPriority) -> &QueuePair {
        &self.queues[usize::from(priority.rank())]
    }

    /// The pair whose main queue or DLQ has this URL.
    #[must_use]
    pub fn for_url(&self, url: &str) -> Option<&QueuePair> {
        self.queues.iter().find(|q| q.url == url || q.dlq_url == url)
    }

    /// The pair a message came from, by its event source ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`),
    /// matched on the queue name (the last segment of both the ARN and the URL). A DLQ's ARN
    /// finds the pair whose `dlq_url` it names.
    #[must_use]
    pub fn for_arn(&self, arn: &str) -> Option<&QueuePair> {
        let name = arn.rsplit(':').next()?;
        let last = |url: &str| url.rsplit('/').next().map(str::to_owned);
        self.queues.iter().find(|q| last(&q.url).as_deref() == Some(name) || last(&q.dlq_url).as_deref() == Some(name))
    }
}

/// What is sent to a dead-letter queue.
#[derive(Debug, Clone, Copy)]
pub enum DeadLetter<'a> {
    /// A task the engine dead-lettered (its reason is on the task's record).
    Task(&'a Delivery),
    /// A message that is not a task, received with `receipt`: kept as it came, with why.
    Poison {
        /// Where it was received.
        receipt: &'a Receipt,
        /// Its id, why it is poison and its body.
        note: &'a crate::message::PoisonNote,
    },
}

/// The work queue: the one port every producer and consumer of tasks uses (the API and the
/// embedded runner send, the runner and the Lambda worker receive and settle, the sweeper and the
/// DLQ handler re-send). Embedded: an in-process priority queue with aging, rebuilt from the
/// store at start ([`crate::memory::MemoryQueue`]); AWS: one SQS queue per priority, each with
/// its DLQ (`taskexec_aws::SqsQueue`), where every limit and unit of SQS (batches of ten,
/// 900 s delays, 12 h visibility, whole seconds) is handled.
///
/// Delivery is at least once: a copy received and neither acknowledged nor retried comes back
/// (SQS: when its visibility timeout ends). Settling a copy never settles another copy of the
/// same task: duplicates are resolved by the store's fenced claims.
pub trait WorkQueue: Send + Sync + 'static {
    /// Enqueue deliveries, each visible after its delay (batched where the queue can).
    fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> impl Future<Output = StoreResult<()>> + Send;
    /// Up to `max` due deliveries, highest priority first, waiting up to `wait` for the first.
    /// Each carries its receipt and receive count.
    fn receive(&self, max: usize, wait: Duration) -> impl Future<Output = StoreResult<Vec<Delivery>>> + Send;
    /// Done with the copy received with `receipt`: it never comes back.
    fn ack(&self, receipt: &Receipt) -> impl Future<Output = StoreResult<()>> + Send;
    /// Deliver this copy again after `delay` (not before; a queue may round it up).
    fn retry_after(&self, delivery: &Delivery, delay: Duration) -> impl Future<Output = StoreResult<()>> + Send;
    /// Put a copy on the dead-letter queue of the queue it came from (of its priority's, if it
    /// was never received). The copy received is not acknowledged by this: acknowledge it too.
    fn dead_letter(&self, letter: DeadLetter<'_>) -> impl Future<Output = StoreResult<()>> + Send;
    /// Deliveries waiting as this process sees them (due or delayed; SQS: sent minus received
    /// through this instance).
    fn len(&self) -> usize;
    /// Whether nothing is waiting.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: WorkQueue> WorkQueue for Arc<T> {
    fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> impl Future<Output = StoreResult<()>> + Send {
        (**self).send(deliveries)
    }

    fn receive(&self, max: usize, wait: Duration) -> impl Future<Output = StoreResult<Vec<Delivery>>> + Send {
        (**self).receive(max, wait)
    }

    fn ack(&self, receipt: &Receipt) -> impl Future<Output = StoreResult<()>> + Send {
        (**self).ack(receipt)
    }

    fn retry_after(&self, delivery: &Delivery, delay: Duration) -> impl Future<Output = StoreResult<()>> + Send {
        (**self).retry_after(delivery, delay)
    }

    fn dead_letter(&self, letter: DeadLetter<'_>) -> impl Future<Output = StoreResult<()>> + Send {
        (**self).dead_letter(letter)
    }

    fn len(&self) -> usize {
        (**self).len()
    }
}

impl<T: BreakerStore> BreakerStore for std::sync::Arc<T> {
    fn load(&self, deployment: &str) -> impl Future<Output = StoreResult<Option<BreakerSnapshot>>> + Send {
        (**self).load(deployment)
    }

    fn save(&self, deployment: &str, snapshot: BreakerSnapshot) -> impl Future<Output = StoreResult<()>> + Send {
        (**self).save(deployment, snapshot)
    }
}

impl<T: MetricsSink> MetricsSink for std::sync::Arc<T> {
    fn record(&self, metric: Metric) {
        (**self).record(metric);
    }
}
