//! `taskexec`: run AI-benchmark task files on the embedded engine (SQLite, no server), serve
//! the HTTP API over the same engine, and inspect or steer a run from another process.

mod admin;
mod config;
mod embedded;
mod exit;
mod limits;
mod progress;
mod providers;
mod run;
mod serve;
#[cfg(feature = "aws")]
mod serve_aws;
mod summary;
mod taskfile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "taskexec", version, about = "Execute AI-benchmark tasks reliably, fast and observably")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a task file (JSON Lines) to the end; running it again continues an interrupted run.
    Run(run::RunArgs),
    /// Serve the HTTP API on this machine (loopback, bearer token from TASKEXEC_API_TOKEN) and
    /// execute the tasks submitted to it.
    Serve(serve::ServeArgs),
    /// Show a task (TaskStatus JSON), a run's summary, or everything.
    Status {
        /// A task id.
        task: Option<String>,
        /// Summarise one run.
        #[arg(long)]
        run: Option<String>,
        /// ExecutionMetrics as JSON.
        #[arg(long)]
        json: bool,
        /// Include the task's audit trail.
        #[arg(long)]
        events: bool,
        #[command(flatten)]
        db: admin::DbArg,
    },
    /// Cancel queued or running tasks (a running task's request is dropped).
    Cancel {
        /// Task ids.
        #[arg(required = true)]
        tasks: Vec<String>,
        #[command(flatten)]
        db: admin::DbArg,
    },
    /// Pause execution (pauseExecution): no new attempt starts; in-flight ones finish.
    Pause {
        /// Pause one run only.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        db: admin::DbArg,
    },
    /// Resume execution (resumeExecution).
    Resume {
        /// Resume one run only.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        db: admin::DbArg,
    },
    /// Give failed tasks a fresh attempt budget (they run on the next `taskexec run`).
    Redrive {
        /// Task ids.
        #[arg(required = true)]
        tasks: Vec<String>,
        #[command(flatten)]
        db: admin::DbArg,
    },
    /// Create the DynamoDB table and SQS queues on a local emulator (AWS_ENDPOINT_URL) and print
    /// the environment `serve --backend aws` reads (builds with `--features aws` only).
    #[cfg(feature = "aws")]
    AwsBootstrap(serve_aws::BootstrapArgs),
    /// Show or change the deployments' limits (concurrency, RPM, TPM, RPD) at run time: a running
    /// `taskexec run` applies a change within a second.
    Limits {
        #[command(subcommand)]
        command: limits::LimitsCommand,
    },
    /// Inspect the configured provider deployments and the models they serve.
    Providers {
        #[command(subcommand)]
        command: providers::ProvidersCommand,
    },
    /// Write a run's results.
    Export {
        /// The run id.
        run: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: admin::Format,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: admin::DbArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TASKEXEC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskexec: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("taskexec: {:#}", failure.error());
            ExitCode::from(failure.code())
        }
    }
}

async fn dispatch(command: Command) -> Result<u8, exit::Failure> {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Serve(args) => serve::serve(args).await,
        #[cfg(feature = "aws")]
        Command::AwsBootstrap(args) => serve_aws::bootstrap(args).await,
        Command::Status { task, run, json, events, db } => {
            admin::status(&db.db, task.as_deref(), run.as_deref(), json, events).await
        }
        Command::Cancel { tasks, db } => admin::cancel(&db.db, &tasks).await,
        Command::Pause { run, db } => admin::set_paused(&db.db, run, true).await,
        Command::Resume { run, db } => admin::set_paused(&db.db, run, false).await,
        Command::Redrive { tasks, db } => admin::redrive(&db.db, &tasks).await,
        Command::Export { run, format, output, db } => admin::export(&db.db, &run, format, output.as_deref()).await,
        Command::Limits { command } => limits::limits(command).await,
        Command::Providers { command } => providers::providers(command).await,
    }
}
