//! Group commit: a thread that owns one connection and runs the commands sent to it in batches.
//!
//! The thread takes the first waiting command, drains whatever else is already queued (up to a
//! bounded weight, so a transaction stays short and other processes sharing the file are not
//! starved), runs them all in ONE transaction, commits, and only then answers each caller. Every
//! caller therefore learns its outcome after it is durable, while the cost of a commit is shared
//! by the whole batch.
//!
//! On the writer, each command runs inside its own savepoint: a command that fails is rolled back
//! alone and the rest of its batch still commits. A reader runs its batch in one read
//! transaction (one consistent snapshot) and needs no savepoints.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use taskexec_core::error::StoreError;
use taskexec_core::ports::StoreResult;
use tokio::sync::oneshot;

use crate::error::SqliteStoreError;

/// Most weight (commands, or records for a submission) run in one transaction.
pub(crate) const MAX_BATCH_WEIGHT: usize = 512;

/// Whether a worker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `BEGIN IMMEDIATE`, a savepoint per command.
    Write,
    /// `BEGIN DEFERRED`, no savepoints.
    Read,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Write => "writer",
            Mode::Read => "reader",
        }
    }
}

/// A command queued for a worker, type-erased.
trait Job: Send {
    /// How much of a batch this command uses.
    fn weight(&self) -> usize;
    /// Run the command and keep its result; `false` when it failed.
    fn execute(&mut self, conn: &Connection) -> bool;
    /// Replace the kept result by an error (the batch did not commit).
    fn fail(&mut self, error: StoreError);
    /// Send the kept result to the caller.
    fn answer(self: Box<Self>);
}

/// A typed command: the operation, then its result until the batch is committed.
struct Call<T, F> {
    weight: usize,
    op: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn weight(&self) -> usize {
        self.weight
    }

    fn execute(&mut self, conn: &Connection) -> bool {
        let op = self.op.take().expect("a command runs once");
        let result = op(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, error: StoreError) {
        self.result = Some(Err(error));
    }

    fn answer(self: Box<Self>) {
        if let Some(result) = self.result {
            // The caller may have gone (its future was dropped): the command still happened.
            let _ = self.reply.send(result);
        }
    }
}

/// A handle to a connection thread. Cloning shares the thread; it stops when every handle is
/// dropped, after finishing the batch in hand.
#[derive(Clone)]
pub(crate) struct Worker {
    jobs: mpsc::Sender<Box<dyn Job>>,
    mode: Mode,
}

impl Worker {
    /// Start a thread owning `conn`.
    pub(crate) fn spawn(conn: Connection, mode: Mode) -> StoreResult<Self> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        thread::Builder::new()
            .name(format!("taskexec-sqlite-{}", mode.name()))
            .spawn(move || serve(&conn, &queue, mode))
            .map_err(StoreError::backend)?;
        Ok(Self { jobs, mode })
    }

    /// Run `op` on the worker's connection; returns once its batch has committed.
    pub(crate) async fn run<T, F>(&self, weight: usize, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call = Call { weight, op: Some(op), result: None, reply };
        let gone = || StoreError::from(SqliteStoreError::WorkerGone(self.mode.name()));
        self.jobs.send(Box::new(call)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The thread's loop: batch, run, commit, answer, until every handle is dropped.
fn serve(conn: &Connection, queue: &mpsc::Receiver<Box<dyn Job>>, mode: Mode) {
    while let Ok(first) = queue.recv() {
        let mut weight = first.weight();
        let mut batch = vec![first];
        while weight < MAX_BATCH_WEIGHT {
            let Ok(next) = queue.try_recv() else { break };
            weight += next.weight();
            batch.push(next);
        }
        run_batch(conn, &mut batch, mode);
        batch.into_iter().for_each(|job| job.answer());
    }
}

/// Run a batch in one transaction; on a failed begin or commit every command gets the error.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>], mode: Mode) {
    let begin = if mode == Mode::Write { "BEGIN IMMEDIATE" } else { "BEGIN DEFERRED" };
    if let Err(e) = exec(conn, begin) {
        return fail_all(batch, "begin", e);
    }
    for job in batch.iter_mut() {
        match mode {
            Mode::Write => run_in_savepoint(conn, job.as_mut()),
            Mode::Read => {
                job.execute(conn);
            }
        }
    }
    if let Err(e) = exec(conn, "COMMIT") {
        let _ = exec(conn, "ROLLBACK");
        fail_all(batch, "commit", e);
    }
}

/// Run one command so that its failure undoes its own writes only.
fn run_in_savepoint(conn: &Connection, job: &mut dyn Job) {
    if let Err(e) = exec(conn, "SAVEPOINT command") {
        return job.fail(crate::error::sql(e));
    }
    if !job.execute(conn) {
        // If even the rollback fails, the commit will fail too and report it.
        let _ = exec(conn, "ROLLBACK TO command");
    }
    let _ = exec(conn, "RELEASE command");
}

fn fail_all(batch: &mut [Box<dyn Job>], stage: &'static str, error: rusqlite::Error) {
    let source = Arc::new(error);
    for job in batch {
        job.fail(SqliteStoreError::Batch { stage, source: Arc::clone(&source) }.into());
    }
}

/// Run a parameterless statement through the statement cache.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;

    fn worker_on_temp_file(dir: &tempfile::TempDir) -> Worker {
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER)").unwrap();
        Worker::spawn(conn, Mode::Write).unwrap()
    }

    fn insert(conn: &Connection, v: i64) -> StoreResult<()> {
        conn.execute("INSERT INTO t (v) VALUES (?1)", [v]).map(drop).map_err(crate::error::sql)
    }

    #[tokio::test]
    async fn a_failing_command_rolls_back_alone_within_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_on_temp_file(&dir);
        // Hold the thread so the next three commands queue up and run as one batch.
        let (release, held) = std_mpsc::channel::<()>();
        let gate = tokio::spawn({
            let w = worker.clone();
            async move { w.run(1, move |_| held.recv().map_err(StoreError::backend)).await }
        });
        tokio::task::yield_now().await;
        let (ok1, bad, ok2) = (worker.clone(), worker.clone(), worker.clone());
        let first = tokio::spawn(async move { ok1.run(1, |c| insert(c, 1)).await });
        let failing = tokio::spawn(async move {
            bad.run(1, |c| {
                insert(c, 2)?;
                c.execute("INSERT INTO missing VALUES (1)", []).map(drop).map_err(crate::error::sql)
            })
            .await
        });
        let last = tokio::spawn(async move { ok2.run(1, |c| insert(c, 3)).await });
        tokio::task::yield_now().await;
        release.send(()).unwrap();

        gate.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(failing.await.unwrap().is_err());
        last.await.unwrap().unwrap();
        let values: Vec<i64> = worker
            .run(1, |c| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v").map_err(crate::error::sql)?;
                s.query_map([], |r| r.get(0)).and_then(Iterator::collect).map_err(crate::error::sql)
            })
            .await
            .unwrap();
        assert_eq!(values, [1, 3]);
    }

    #[tokio::test]
    async fn a_stopped_thread_is_reported_not_hung() {
        let dir = tempfile::tempdir().unwrap();
        let worker = worker_on_temp_file(&dir);
        let crashed = worker.run(1, |_| -> StoreResult<()> { panic!("bug in a command") }).await;
        let err = crashed.unwrap_err();
        assert!(std::error::Error::source(&err).unwrap().to_string().contains("writer thread has stopped"));
        assert!(worker.run(1, |_| Ok(())).await.is_err());
    }
}
