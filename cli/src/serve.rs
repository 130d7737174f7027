//! `taskexec serve`: the HTTP API (the same router the Lambda serves) on the loopback interface,
//! behind a bearer token, over the embedded engine. Tasks submitted over HTTP are stored in the
//! SQLite database and sent to the queue the engine's runner pulls from, so they execute here.
//!
//! The HTTP side ([`serve_http`]) knows only a router: another backend builds its
//! [`ApiState`] over its own store and queue and serves it the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use axum::Router;
use taskexec_api::{ApiSettings, ApiState, SystemSampler, bearer_auth, router};
use taskexec_core::ports::{ControlStore, TaskStore, WorkQueue};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::embedded::{self, Embedded};
use crate::exit::{self, Failure};

/// The environment variable holding the bearer token clients must present.
pub const TOKEN_ENV: &str = "TASKEXEC_API_TOKEN";

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;

/// Arguments of `taskexec serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The SQLite database holding tasks, results and the audit trail.
    #[arg(long, default_value = "taskexec.db")]
    pub db: PathBuf,
    /// Config file (TOML). Default: ./taskexec.toml, else built-in (one `sim` deployment).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on; loopback only (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Tasks in flight at once (overrides `engine.concurrency`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// `embedded` (SQLite, this process runs the tasks) or `aws` (DynamoDB and SQS named by the
    /// functions' environment variables; a local event-source poller feeds the worker handler as
    /// Lambda would; needs a build with `--features aws`).
    #[arg(long, value_enum, default_value = "embedded")]
    pub backend: Backend,
}

/// Where `serve` keeps tasks and runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// SQLite and the embedded engine.
    Embedded,
    /// DynamoDB and SQS (an AWS account or a local emulator via `AWS_ENDPOINT_URL`).
    Aws,
}

/// Serve until Ctrl-C / SIGTERM; attempts and requests in flight finish first.
pub async fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let token = api_token(std::env::var(TOKEN_ENV).ok())?;
    check_loopback(args.addr)?;
    if args.backend == Backend::Aws {
        return serve_aws(args, token).await;
    }
    let (config, origin) = crate::config::locate(args.config.as_deref(), None).map_err(Failure::input)?;
    let deployments = embedded::deployments(&config)?;
    let sampler = SystemSampler::new().context("cannot sample resource use").map_err(Failure::runtime)?;
    let configs = config.deployments.clone();
    let settings = ApiSettings::new(deployments.targets(), Arc::new(sampler))
        .with_task_check(Arc::new(move |task| taskexec_providers::check_parameters(&configs, task)));
    let (lock, store) = embedded::open_locked(&args.db)?;
    let Embedded { runner, queue, .. } = embedded::build(&config, deployments, store.clone(), args.concurrency, true);
    let (released, queued) = runner.recover(|_| true).await.map_err(|e| Failure::runtime(e.into()))?;
    let app = api(Arc::new(store), queue, settings, &token);
    let what = format!(
        "database {}, config {origin}; {queued} unfinished task(s) queued, {released} lease(s) taken over",
        args.db.display()
    );
    let (listener, _) = listen(args.addr, &what).await?;
    let shutdown = CancellationToken::new();
    embedded::watch_signals(shutdown.clone());
    let stop_all = shutdown.clone();
    let http = tokio::spawn(async move {
        let served = serve_http(listener, app, stop_all.clone()).await;
        stop_all.cancel(); // the engine does not outlive the API that feeds it
        served
    });
    let outcome = runner.run(shutdown.clone()).await;
    shutdown.cancel();
    let served = http.await.map_err(|e| Failure::runtime(e.into()))?;
    drop(lock);
    outcome.map_err(|e| Failure::runtime(e.into()))?;
    served.context("the HTTP server failed").map_err(Failure::runtime)?;
    eprintln!("taskexec: stopped");
    Ok(exit::OK)
}

#[cfg(feature = "aws")]
async fn serve_aws(args: ServeArgs, token: String) -> Result<u8, Failure> {
    crate::serve_aws::serve(args, token).await
}

#[cfg(not(feature = "aws"))]
async fn serve_aws(_args: ServeArgs, _token: String) -> Result<u8, Failure> {
    Err(Failure::input(anyhow!(
        "this taskexec was built without the AWS backend: build it with `cargo build -p taskexec-cli --features aws`"
    )))
}

/// Bind the listener, serve `app` until Ctrl-C / SIGTERM (which also cancels `shutdown`), and
/// say where. `what` describes the backend for the start-up line.
pub async fn listen(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), Failure> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}")).map_err(Failure::runtime)?;
    let local = listener.local_addr().map_err(|e| Failure::runtime(e.into()))?;
    eprintln!("taskexec: serving the API on http://{local} ({what}); Ctrl-C stops");
    Ok((listener, local))
}

/// The API over any store and queue, every route behind the bearer token.
pub fn api<S, Q>(store: Arc<S>, queue: Arc<Q>, settings: ApiSettings, token: &str) -> Router
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    router(ApiState::new(store, queue, settings)).layer(bearer_auth(token))
}

/// Serve `app` on `listener` until `shutdown`, then let requests in flight finish.
pub async fn serve_http(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// The token from the environment: required, and long enough to be a secret.
fn api_token(value: Option<String>) -> Result<String, Failure> {
    match value.map(|v| v.trim().to_owned()) {
        Some(token) if token.len() >= MIN_TOKEN_LEN => Ok(token),
        Some(_) => Err(Failure::input(anyhow!(
            "{TOKEN_ENV} is shorter than {MIN_TOKEN_LEN} characters; use a long random token (e.g. `openssl rand -hex 32`)"
        ))),
        None => Err(Failure::input(anyhow!(
            "set {TOKEN_ENV} to the bearer token clients must send (e.g. `export {TOKEN_ENV}=$(openssl rand -hex 32)`); \
             the server does not start without one"
        ))),
    }
}

/// Only the loopback interface: the embedded server is for this machine (the AWS deployment is
/// the way to serve others).
fn check_loopback(addr: SocketAddr) -> Result<(), Failure> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Failure::input(anyhow!(
            "--addr {addr} is not a loopback address; `taskexec serve` listens on 127.0.0.1 or ::1 only"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_a_long_enough_token() {
        assert!(api_token(None).unwrap_err().error().to_string().contains(TOKEN_ENV));
        assert!(api_token(Some("short".into())).is_err());
        assert_eq!(api_token(Some(" 0123456789abcdef\n".into())).unwrap(), "0123456789abcdef");
    }

    #[test]
    fn accepts_loopback_addresses_only() {
        assert!(check_loopback("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:0".parse().unwrap()).is_ok());
        assert_eq!(check_loopback("0.0.0.0:8080".parse().unwrap()).unwrap_err().code(), exit::INPUT);
        assert!(check_loopback("192.168.1.2:80".parse().unwrap()).is_err());
    }
}
