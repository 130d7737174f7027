//! Commands that act on a database while a run may be going on in another process:
//! `status`, `cancel`, `pause`, `resume` (the story's `pauseExecution` / `resumeExecution`),
//! `redrive` and `export`. They open the database without taking the runner's lock; the runner
//! sees their writes (a cancel aborts the in-flight call within its poll interval; a pause stops
//! new attempts at the next claim).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use taskexec_core::metrics::ExecutionMetrics;
use taskexec_core::ports::{CancelOutcome, ControlStore, PauseScope, TaskStore, WriteOutcome};
use taskexec_core::task::TaskRecord;
use taskexec_core::time::{Clock, SystemClock};
use taskexec_local::SqliteStore;

use crate::exit::{self, Failure};
use crate::summary;

/// The database option every admin command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DbArg {
    /// The SQLite database of the run.
    #[arg(long, default_value = "taskexec.db")]
    pub db: PathBuf,
}

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One TaskStatus JSON object per line (the API's format).
    Jsonl,
    /// One row per task, flat columns.
    Csv,
}

pub(crate) fn open(db: &Path) -> Result<SqliteStore, Failure> {
    if !db.exists() {
        return Err(Failure::input(anyhow!("no database at {} (pass --db PATH)", db.display())));
    }
    SqliteStore::open(db).with_context(|| format!("cannot open database {}", db.display())).map_err(Failure::runtime)
}

pub(crate) fn store_err(e: taskexec_core::error::StoreError) -> Failure {
    Failure::runtime(e.into())
}

/// `taskexec status`: one task, one run, or everything.
pub async fn status(db: &Path, task: Option<&str>, run: Option<&str>, json: bool, events: bool) -> Result<u8, Failure> {
    let store = open(db)?;
    if let Some(id) = task {
        let record =
            store.get(id).await.map_err(store_err)?.ok_or_else(|| Failure::input(anyhow!("no task with id {id}")))?;
        let mut value = serde_json::to_value(record.status()).expect("status serialises");
        if events {
            value["events"] =
                serde_json::to_value(store.events(id).await.map_err(store_err)?).expect("events serialise");
        }
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(exit::OK);
    }
    let groups = store.summary(run).await.map_err(store_err)?;
    let control = store.control().await.map_err(store_err)?;
    if json {
        let mut value = serde_json::to_value(ExecutionMetrics::from_groups(&groups, run)).expect("metrics serialise");
        value["paused"] = control.paused.into();
        value["pausedRuns"] = serde_json::to_value(&control.paused_runs).expect("json");
        println!("{value}");
        return Ok(exit::OK);
    }
    print!("{}", summary::table(run.unwrap_or("(all runs)"), &groups));
    if control.paused {
        println!("execution is PAUSED globally (taskexec resume)");
    }
    for r in &control.paused_runs {
        println!("run {r} is PAUSED (taskexec resume --run {r})");
    }
    Ok(exit::OK)
}

/// `taskexec cancel ID...`.
pub async fn cancel(db: &Path, ids: &[String]) -> Result<u8, Failure> {
    let store = open(db)?;
    let mut missing = 0;
    for id in ids {
        match store.cancel(id, SystemClock.now()).await.map_err(store_err)? {
            CancelOutcome::Cancelled { was } => println!("cancelled {id} (was {})", was.as_str()),
            CancelOutcome::AlreadyTerminal(state) => println!("{id} had already finished ({})", state.as_str()),
            CancelOutcome::NotFound => {
                eprintln!("no task with id {id}");
                missing += 1;
            }
        }
    }
    if missing > 0 { Err(Failure::input(anyhow!("{missing} unknown task id(s)"))) } else { Ok(exit::OK) }
}

/// `taskexec pause` / `taskexec resume`.
pub async fn set_paused(db: &Path, run: Option<String>, paused: bool) -> Result<u8, Failure> {
    let store = open(db)?;
    let what = run.as_ref().map_or_else(|| "all runs".to_owned(), |r| format!("run {r}"));
    let scope = run.map_or(PauseScope::Global, PauseScope::Run);
    store.set_paused(scope, paused).await.map_err(store_err)?;
    if paused {
        println!("paused {what}: no new attempt starts; attempts in flight finish");
    } else {
        println!("resumed {what}");
    }
    Ok(exit::OK)
}

/// `taskexec redrive ID...`: failed tasks run again with a fresh attempt budget.
pub async fn redrive(db: &Path, ids: &[String]) -> Result<u8, Failure> {
    let store = open(db)?;
    let mut refused = 0;
    for id in ids {
        if store.get(id).await.map_err(store_err)?.is_none() {
            eprintln!("no task with id {id}");
            refused += 1;
            continue;
        }
        match store.redrive(id, SystemClock.now()).await.map_err(store_err)? {
            WriteOutcome::Applied => println!("{id} queued again (run the task file again to execute it)"),
            WriteOutcome::Stale => {
                eprintln!("{id} is not a failed task");
                refused += 1;
            }
        }
    }
    if refused > 0 { Err(Failure::input(anyhow!("{refused} task(s) not redriven"))) } else { Ok(exit::OK) }
}

/// `taskexec export RUN --format jsonl|csv`.
pub async fn export(db: &Path, run: &str, format: Format, output: Option<&Path>) -> Result<u8, Failure> {
    let store = open(db)?;
    let records = store.run_tasks(run).await.map_err(store_err)?;
    if records.is_empty() {
        return Err(Failure::input(anyhow!("run {run} has no tasks in {}", db.display())));
    }
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))
                .map_err(Failure::runtime)?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let written = match format {
        Format::Jsonl => write_jsonl(&mut out, &records),
        Format::Csv => write_csv(&mut out, &records),
    };
    written.and_then(|()| out.flush().map_err(Into::into)).map_err(Failure::runtime)?;
    Ok(exit::OK)
}

fn write_jsonl(out: &mut dyn Write, records: &[TaskRecord]) -> anyhow::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, &r.status())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 18] = [
    "id",
    "runId",
    "providerId",
    "modelId",
    "status",
    "attempt",
    "throttles",
    "latencyMs",
    "ttftMs",
    "inputTokens",
    "outputTokens",
    "finishReason",
    "errorClass",
    "errorMessage",
    "deadLetterReason",
    "startTime",
    "endTime",
    "text",
];

fn write_csv(out: &mut dyn Write, records: &[TaskRecord]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    for r in records {
        let s = r.status();
        let res = s.result.as_ref();
        let err = s.error.as_ref();
        let opt = |v: Option<String>| v.unwrap_or_default();
        w.write_record([
            s.id.clone(),
            s.run_id.clone(),
            s.provider_id.clone(),
            s.model_id.clone(),
            s.status.as_str().to_owned(),
            s.attempt.to_string(),
            s.throttles.to_string(),
            opt(res.map(|r| format!("{:.3}", r.latency_ms))),
            opt(res.and_then(|r| r.ttft_ms).map(|t| format!("{t:.3}"))),
            opt(res.map(|r| r.usage.input_tokens.to_string())),
            opt(res.map(|r| r.usage.output_tokens.to_string())),
            opt(res.map(|r| r.finish_reason.clone())),
            opt(err.map(|e| e.class.as_str().to_owned())),
            opt(err.map(|e| e.message.clone())),
            opt(s.dead_letter_reason.clone()),
            opt(s.start_time.clone()),
            opt(s.end_time.clone()),
            opt(res.map(|r| r.text.clone())),
        ])?;
    }
    w.flush()?;
    Ok(())
}
