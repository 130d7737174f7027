//! `fidelity`: how faithfully the OpenAI-compatible adapter times a call. It starts a
//! [`TimedServer`] on its own runtime thread, makes N sequential calls through the real adapter
//! with delays spread per task, and reports the error of the client's figures against what the
//! server measured: `latency − (arrival → last byte)` and, for streams,
//! `ttft − (arrival → first content chunk)`.
//!
//! `cargo run --release -p taskexec-mockserver --bin fidelity -- --requests 1000 [--stream] [--json]`

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use taskexec_core::provider::Provider;
use taskexec_mockserver::timed::{Delays, TimedConfig, TimedServer};

#[derive(Debug, Parser)]
#[command(about = "Client timing error against a server with known delays")]
struct Args {
    /// Calls to measure (made one after another).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Stream the answers (also measures the TTFT error).
    #[arg(long)]
    stream: bool,
    /// Unmeasured calls first (the first one opens the connection).
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Base delay of each stage, ms.
    #[arg(long, default_value_t = 1)]
    base_ms: u64,
    /// Largest extra delay per stage, hashed from the task id, ms.
    #[arg(long, default_value_t = 10)]
    spread_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Error percentiles in ms.
#[derive(Debug, Serialize)]
struct Summary {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(mut errors: Vec<f64>) -> Option<Self> {
        errors.sort_by(f64::total_cmp);
        let at = |p: f64| errors[((p * errors.len() as f64).ceil() as usize).clamp(1, errors.len()) - 1];
        let last = *errors.last()?;
        let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
        Some(Self {
            count: errors.len(),
            p50: round(at(0.50)),
            p90: round(at(0.90)),
            p99: round(at(0.99)),
            max: round(last),
        })
    }
}

#[derive(Debug, Serialize)]
struct Report {
    stream: bool,
    latency_error_ms: Option<Summary>,
    ttft_error_ms: Option<Summary>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let delays = Delays { head: ms(args.base_ms), first_token: ms(args.base_ms), rest: ms(args.base_ms) };
    let server = start_server(TimedConfig { delays, spread: Some(ms(args.spread_ms)) })?;
    let client = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (latency, ttft) = client.block_on(measure(&server, &args))?;
    let report =
        Report { stream: args.stream, latency_error_ms: Summary::of(latency), ttft_error_ms: Summary::of(ttft) };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The server on a runtime thread of its own, so client and server do not share a scheduler.
fn start_server(config: TimedConfig) -> anyhow::Result<TimedServer> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
        runtime.block_on(async move {
            let _ = tx.send(TimedServer::start(config).await);
            std::future::pending::<()>().await;
        });
    });
    Ok(rx.recv().context("server thread ended")??)
}

/// Make the calls; returns the latency and TTFT errors in ms.
async fn measure(server: &TimedServer, args: &Args) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let deployments = server.deployments()?;
    let (mut latency, mut ttft) = (Vec::new(), Vec::new());
    for i in 0..args.warmup + args.requests {
        let task_id = format!("fidelity-{i}");
        let answer = deployments.call(TimedServer::request(&task_id, args.stream)?).await?;
        let seen = server.timing(&task_id).context("the server recorded no timing")?;
        if i < args.warmup {
            continue;
        }
        latency.push(ms_f64(answer.latency) - ms_f64(seen.last_byte));
        if let (Some(client), Some(server)) = (answer.ttft, seen.first_token) {
            ttft.push(ms_f64(client) - ms_f64(server));
        }
    }
    Ok((latency, ttft))
}

fn print_table(report: &Report) {
    println!("{:<22} {:>6} {:>9} {:>9} {:>9} {:>9}", "error (ms)", "count", "p50", "p90", "p99", "max");
    let rows = [("latency − last byte", &report.latency_error_ms), ("ttft − first token", &report.ttft_error_ms)];
    for (name, summary) in rows {
        if let Some(s) = summary {
            println!("{name:<22} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}", s.count, s.p50, s.p90, s.p99, s.max);
        }
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ms_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
