//! [`SqliteStore`]: the task, control and breaker store of the embedded runner, in one SQLite
//! file. Writes go through one writer thread that group-commits them (see [`crate::worker`]);
//! reads go through a second, read-only connection on its own thread, so they never wait behind
//! a write batch (WAL lets them read the last commit meanwhile).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::ports::{
    AuditEvent, BreakerStore, CancelOutcome, ClaimOutcome, ClaimRequest, ControlState, ControlStore, Delivery,
    FinishRequest, GroupSummary, LimitOverride, PauseScope, StoreResult, SubmitOutcome, TaskStore, WriteOutcome,
};
use taskexec_core::task::TaskRecord;
use taskexec_core::time::Millis;

use crate::worker::{Mode, Worker};
use crate::{control, queries, schema, tasks};

/// Records per submission command: a large submission is written in several short transactions,
/// so it never holds the write lock for long. (Submission is idempotent, so a failed chunk is
/// retried by submitting again.)
const SUBMIT_CHUNK: usize = 256;

/// The SQLite store. Cloning is cheap and shares the connections; the threads stop when the last
/// clone is dropped.
///
/// Several processes may open one file: the runner (holding a [`crate::RunnerLock`]) and
/// `taskexec status|cancel|pause|resume`, whose writes wait for the runner's short transactions
/// through SQLite's busy timeout.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Worker,
    reader: Worker,
    path: Arc<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (or create) the database at `path`, creating the schema if it is missing.
    ///
    /// # Errors
    /// When the file cannot be opened or has a schema newer than this build.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref();
        let writer = Worker::spawn(schema::open_writer(path)?, Mode::Write)?;
        let reader = Worker::spawn(schema::open_reader(path)?, Mode::Read)?;
        Ok(Self { writer, reader, path: Arc::new(path.to_owned()) })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.run(1, op).await
    }

    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.reader.run(1, op).await
    }
}

impl TaskStore for SqliteStore {
    async fn submit(&self, records: Vec<TaskRecord>) -> StoreResult<Vec<SubmitOutcome>> {
        let mut outcomes = Vec::with_capacity(records.len());
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<TaskRecord> = records.by_ref().take(SUBMIT_CHUNK).collect();
            outcomes.extend(self.writer.run(chunk.len(), move |c| tasks::submit(c, &chunk)).await?);
        }
        Ok(outcomes)
    }

    async fn get(&self, task_id: &str) -> StoreResult<Option<TaskRecord>> {
        let id = task_id.to_owned();
        self.read(move |c| queries::get(c, &id)).await
    }

    async fn claim(&self, request: ClaimRequest) -> StoreResult<ClaimOutcome> {
        self.write(move |c| tasks::claim(c, &request)).await
    }

    async fn renew_lease(&self, task_id: &str, epoch: u64, until: Millis) -> StoreResult<WriteOutcome> {
        let id = task_id.to_owned();
        self.write(move |c| tasks::renew_lease(c, &id, epoch, until)).await
    }

    async fn finish(&self, request: FinishRequest) -> StoreResult<WriteOutcome> {
        self.write(move |c| tasks::finish(c, &request)).await
    }

    async fn cancel(&self, task_id: &str, now: Millis) -> StoreResult<CancelOutcome> {
        let id = task_id.to_owned();
        self.write(move |c| tasks::cancel(c, &id, now)).await
    }

    async fn redrive(&self, task_id: &str, now: Millis) -> StoreResult<WriteOutcome> {
        let id = task_id.to_owned();
        self.write(move |c| tasks::redrive(c, &id, now)).await
    }

    async fn release_all_leases(&self, now: Millis) -> StoreResult<u64> {
        self.write(move |c| tasks::release_all_leases(c, now)).await
    }

    async fn note(&self, event: AuditEvent) -> StoreResult<()> {
        self.write(move |c| tasks::note(c, &event)).await
    }

    async fn events(&self, task_id: &str) -> StoreResult<Vec<AuditEvent>> {
        let id = task_id.to_owned();
        self.read(move |c| queries::events(c, &id)).await
    }

    async fn pending(&self, cursor: u64, limit: usize) -> StoreResult<(Vec<Delivery>, Option<u64>)> {
        self.read(move |c| queries::pending(c, cursor, limit)).await
    }

    async fn summary(&self, run_id: Option<&str>) -> StoreResult<Vec<GroupSummary>> {
        let run = run_id.map(str::to_owned);
        self.read(move |c| queries::summary(c, run.as_deref())).await
    }

    async fn run_tasks(&self, run_id: &str) -> StoreResult<Vec<TaskRecord>> {
        let run = run_id.to_owned();
        self.read(move |c| queries::run_tasks(c, &run)).await
    }
}

impl ControlStore for SqliteStore {
    async fn control(&self) -> StoreResult<ControlState> {
        self.read(control::control).await
    }

    async fn set_paused(&self, scope: PauseScope, paused: bool) -> StoreResult<()> {
        self.write(move |c| control::set_paused(c, &scope, paused)).await
    }

    async fn set_limits(&self, deployment: &str, limits: Option<LimitOverride>) -> StoreResult<()> {
        let deployment = deployment.to_owned();
        self.write(move |c| control::set_limits(c, &deployment, limits.as_ref())).await
    }
}

impl BreakerStore for SqliteStore {
    async fn load(&self, deployment: &str) -> StoreResult<Option<BreakerSnapshot>> {
        let deployment = deployment.to_owned();
        self.read(move |c| control::load_breaker(c, &deployment)).await
    }

    async fn save(&self, deployment: &str, snapshot: BreakerSnapshot) -> StoreResult<()> {
        let deployment = deployment.to_owned();
        self.write(move |c| control::save_breaker(c, &deployment, &snapshot)).await
    }
}
