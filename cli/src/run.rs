//! `taskexec run FILE.jsonl`: validate the file, submit it idempotently to the SQLite store,
//! take over the store (lock, leases of a dead runner), run every unfinished task of the file's
//! runs through the engine with live progress, and print the closing summary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use taskexec_core::metrics::ExecutionMetrics;
use taskexec_core::ports::{GroupSummary, SubmitOutcome, TaskStore};
use taskexec_core::runner::Runner;
use taskexec_core::task::TaskRecord;
use taskexec_core::time::{Clock, SystemClock};
use taskexec_local::SqliteStore;
use taskexec_providers::Deployments;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::embedded::{self, Embedded};
use crate::exit::{self, Failure};
use crate::progress::{Baseline, CliSink, Display, Figures};
use crate::{summary, taskfile};

/// Arguments of `taskexec run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The task file: one JSON task per line.
    pub file: PathBuf,
    /// The SQLite database holding tasks, results and the audit trail.
    #[arg(long, default_value = "taskexec.db")]
    pub db: PathBuf,
    /// Config file (TOML). Default: FILE's name with `.toml`, else ./taskexec.toml, else built-in.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tasks in flight at once (overrides `engine.concurrency`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Run id for tasks that name none (default: the file's stem).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Print the run's ExecutionMetrics as JSON on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

const SUBMIT_CHUNK: usize = 2_000;

/// Run the file; the exit code says how it went (see `exit`).
pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let (config, origin) = crate::config::locate(args.config.as_deref(), Some(&args.file)).map_err(Failure::input)?;
    let deployments = embedded::deployments(&config)?;
    let default_run = args.run_id.clone().unwrap_or_else(|| taskfile::default_run_id(&args.file));
    if !taskexec_core::validate::is_valid_id(&default_run) {
        return Err(Failure::input(anyhow::anyhow!(
            "--run-id `{default_run}` must match {}",
            taskexec_core::validate::ID_PATTERN
        )));
    }
    let checked = taskfile::check(&args.file, &default_run, &|task| deployments.check(task)).map_err(Failure::input)?;
    let file_check = match checked {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", args.file.display());
            }
            let n = errors.len();
            return Err(Failure::input(anyhow::anyhow!("{n} problem(s) in {}; nothing was run", args.file.display())));
        }
    };
    let (lock, store) = embedded::open_locked(&args.db)?;
    if !args.quiet {
        eprintln!(
            "taskexec: {} tasks in {} (run {}), config {origin}, database {}",
            file_check.tasks,
            args.file.display(),
            file_check.runs.iter().cloned().collect::<Vec<_>>().join(", "),
            args.db.display()
        );
    }
    submit(&store, &args.file, &default_run).await?;
    let result = execute(&args, &config, deployments, store, &file_check.runs).await;
    drop(lock);
    result
}

/// Submit the file in chunks (read on a blocking thread, at most two chunks in memory); a
/// conflict (same id, other content) stops before anything runs.
async fn submit(store: &SqliteStore, file: &Path, default_run: &str) -> Result<(), Failure> {
    let now = SystemClock.now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let (path, run) = (file.to_owned(), default_run.to_owned());
    let reader = tokio::task::spawn_blocking(move || {
        taskfile::read_chunks(&path, &run, SUBMIT_CHUNK, |chunk| {
            tx.blocking_send(chunk).map_err(|_| anyhow::anyhow!("submission stopped"))
        })
    });
    let mut conflicts = Vec::new();
    while let Some(chunk) = rx.recv().await {
        let lines: Vec<(usize, String)> = chunk.iter().map(|(l, t)| (*l, t.id.clone())).collect();
        let records = chunk.into_iter().map(|(_, t)| TaskRecord::new(t, now)).collect();
        let outcomes = store.submit(records).await.map_err(|e| Failure::runtime(e.into()))?;
        for ((line, id), outcome) in lines.into_iter().zip(outcomes) {
            if outcome == SubmitOutcome::Conflict {
                conflicts.push(format!(
                    "{}: line {line}: field `id`: task `{id}` already exists in the database with different content",
                    file.display()
                ));
            }
        }
    }
    reader.await.map_err(|e| Failure::runtime(e.into()))?.map_err(Failure::input)?;
    if conflicts.is_empty() {
        return Ok(());
    }
    for c in &conflicts {
        eprintln!("{c}");
    }
    Err(Failure::input(anyhow::anyhow!(
        "{} task id(s) conflict with earlier submissions; use new ids, another --run-id, or another --db; nothing was run",
        conflicts.len()
    )))
}

async fn execute(
    args: &RunArgs,
    config: &Config,
    deployments: Deployments,
    store: SqliteStore,
    runs: &BTreeSet<String>,
) -> Result<u8, Failure> {
    let Embedded { runner, sink, .. } = embedded::build(config, deployments, store.clone(), args.concurrency, false);

    let before = summaries(&store, runs).await?;
    let baseline = baseline(&before);
    let (released, queued) =
        runner.recover(|d| runs.contains(d.run_id())).await.map_err(|e| Failure::runtime(e.into()))?;
    if !args.quiet {
        if released > 0 {
            eprintln!("taskexec: took over {released} task(s) left running by a stopped runner");
        }
        if baseline.done > 0 {
            eprintln!(
                "taskexec: continuing: {} of {} task(s) already finished, {queued} to run",
                baseline.done, baseline.total
            );
        }
    }

    let shutdown = CancellationToken::new();
    let interrupted = embedded::watch_signals(shutdown.clone());
    let display =
        tokio::spawn(show_progress(runner.clone(), sink.clone(), baseline, args.quiet || args.json, shutdown.clone()));
    let outcome = runner.run(shutdown.clone()).await;
    let was_interrupted = interrupted.is_cancelled();
    shutdown.cancel();
    let _ = display.await;
    outcome.map_err(|e| Failure::runtime(e.into()))?;

    let after = summaries(&store, runs).await?;
    report(args, &after);
    if !config.routes.is_empty() && !args.json {
        // The tables group tasks by the deployment or route they named; a route's split is here.
        print!("{}", summary::served(&sink.counting.served()));
    }
    let all: Vec<GroupSummary> = after.into_iter().flat_map(|(_, g)| g).collect();
    let metrics = ExecutionMetrics::from_groups(&all, None);
    Ok(if was_interrupted {
        exit::INTERRUPTED
    } else if metrics.failed_tasks + metrics.cancelled_tasks + metrics.pending_tasks > 0 {
        exit::TASKS_FAILED
    } else {
        exit::OK
    })
}

async fn summaries(store: &SqliteStore, runs: &BTreeSet<String>) -> Result<Vec<(String, Vec<GroupSummary>)>, Failure> {
    let mut out = Vec::new();
    for run in runs {
        let groups = store.summary(Some(run)).await.map_err(|e| Failure::runtime(e.into()))?;
        out.push((run.clone(), groups));
    }
    Ok(out)
}

fn baseline(runs: &[(String, Vec<GroupSummary>)]) -> Baseline {
    let all: Vec<GroupSummary> = runs.iter().flat_map(|(_, g)| g.iter().cloned()).collect();
    let m = ExecutionMetrics::from_groups(&all, None);
    Baseline {
        total: m.total_tasks,
        completed: m.completed_tasks,
        failed: m.failed_tasks,
        done: m.completed_tasks + m.failed_tasks + m.cancelled_tasks,
    }
}

fn report(args: &RunArgs, runs: &[(String, Vec<GroupSummary>)]) {
    if args.json {
        for (run, groups) in runs {
            let metrics = ExecutionMetrics::from_groups(groups, Some(run));
            println!("{}", serde_json::to_string(&metrics).expect("metrics serialise"));
        }
        return;
    }
    for (run, groups) in runs {
        print!("{}", summary::table(run, groups));
    }
}

async fn show_progress<R: ProgressSource>(
    runner: Arc<R>,
    sink: Arc<CliSink>,
    base: Baseline,
    quiet: bool,
    stop: CancellationToken,
) {
    let mut display = Display::new(base.total, quiet, Duration::from_secs(2));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let figures = Figures::compute(base, runner.progress(), &sink.counting.counters, display.elapsed());
        display.update(&figures, &sink, false);
    }
    let figures = Figures::compute(base, runner.progress(), &sink.counting.counters, display.elapsed());
    display.update(&figures, &sink, true);
    display.finish();
}

/// Anything that reports runner progress (lets the display stay non-generic over the ports).
pub trait ProgressSource: Send + Sync + 'static {
    /// The runner's progress.
    fn progress(&self) -> taskexec_core::runner::Progress;
}

impl<S, B, L, M, P, C, Q> ProgressSource for Runner<S, B, L, M, P, C, Q>
where
    S: taskexec_core::ports::TaskStore + taskexec_core::ports::ControlStore,
    B: taskexec_core::ports::BreakerStore,
    L: taskexec_core::ports::LimiterStore,
    M: taskexec_core::ports::MetricsSink,
    P: taskexec_core::provider::Provider,
    C: Clock,
    Q: taskexec_core::ports::WorkQueue,
{
    fn progress(&self) -> taskexec_core::runner::Progress {
        Runner::progress(self)
    }
}
