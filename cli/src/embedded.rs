//! The embedded engine, built the one way both `taskexec run` and `taskexec serve` use: the
//! SQLite store (under the runner lock), the in-process priority queue and limiter, the
//! configured deployments, one engine and one runner; and the signal handling that stops it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taskexec_core::engine::{Engine, Ports};
use taskexec_core::memory::{MemoryLimiter, MemoryQueue};
use taskexec_core::runner::{Runner, RunnerConfig};
use taskexec_core::time::SystemClock;
use taskexec_local::{RunnerLock, SqliteStore};
use taskexec_providers::Deployments;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exit::{self, Failure};
use crate::progress::CliSink;

/// The embedded work queue.
pub type EmbeddedQueue = MemoryQueue<SystemClock>;

/// The embedded runner over SQLite and the configured deployments.
pub type EmbeddedRunner =
    Runner<SqliteStore, SqliteStore, MemoryLimiter, Arc<CliSink>, Deployments, SystemClock, EmbeddedQueue>;

/// A built engine: the runner, the queue it pulls from (submissions go there too) and the sink
/// counting what it does.
pub struct Embedded {
    /// The runner (it owns the engine).
    pub runner: Arc<EmbeddedRunner>,
    /// The queue the runner pulls from.
    pub queue: Arc<EmbeddedQueue>,
    /// The metrics sink.
    pub sink: Arc<CliSink>,
}

/// The configured deployments, their keys read from the environment.
pub fn deployments(config: &Config) -> Result<Deployments, Failure> {
    Deployments::from_config(&config.deployments, |name| std::env::var(name).ok())
        .map(|d| d.with_routes(config.routes.clone()))
        .map_err(|e| Failure::input(anyhow::Error::new(e).context("invalid deployments")))
}

/// Take the runner lock of `db`, then open it. The lock is held until the returned guard drops.
pub fn open_locked(db: &Path) -> Result<(RunnerLock, SqliteStore), Failure> {
    let lock = RunnerLock::acquire(db).map_err(|e| Failure::runtime(anyhow::Error::new(e)))?;
    let store = SqliteStore::open(db)
        .with_context(|| format!("cannot open database {}", db.display()))
        .map_err(Failure::runtime)?;
    Ok((lock, store))
}

/// Build the engine and its runner over `store`. `concurrency` overrides the config's;
/// `keep_running` makes the runner wait for new work instead of returning when idle (a server).
pub fn build(
    config: &Config,
    deployments: Deployments,
    store: SqliteStore,
    concurrency: Option<usize>,
    keep_running: bool,
) -> Embedded {
    let sink = Arc::new(CliSink::default());
    let engine_config = config.engine_config(format!("runner-{}", std::process::id()));
    let ports = Ports {
        store: store.clone(),
        breakers: store,
        limiter: MemoryLimiter::default(),
        metrics: sink.clone(),
        provider: deployments,
        clock: SystemClock,
    };
    let engine = Arc::new(Engine::new(ports, engine_config));
    let aging = Duration::from_millis(config.engine.aging_ms);
    let queue = Arc::new(MemoryQueue::new(aging, SystemClock));
    let concurrency = concurrency.unwrap_or(config.engine.concurrency).max(1);
    let runner_config = RunnerConfig { concurrency, keep_running, aging, ..RunnerConfig::default() };
    let runner = Runner::new(engine, queue.clone(), runner_config);
    Embedded { runner, queue, sink }
}

/// First Ctrl-C / SIGTERM: cancel `shutdown` (no new attempts; the ones in flight finish).
/// Second Ctrl-C: exit at once (leases are taken back by the next runner). The returned token
/// tells whether a signal came.
pub fn watch_signals(shutdown: CancellationToken) -> CancellationToken {
    let interrupted = CancellationToken::new();
    let flag = interrupted.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term_recv = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term_recv => {}
        }
        flag.cancel();
        shutdown.cancel();
        eprintln!("\ntaskexec: stopping: no new attempts; waiting for those in flight (Ctrl-C again to quit now)");
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
    interrupted
}
