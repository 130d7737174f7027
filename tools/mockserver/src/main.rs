//! `taskexec-mockserver`: serve the mock OpenAI-compatible endpoint, generate benchmark task
//! files, and compute the zero-overhead makespan of a task file's latencies.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use taskexec_mockserver::{Latency, MockConfig, MockServer, makespan};

#[derive(Debug, Parser)]
#[command(about = "Mock OpenAI-compatible server and benchmark helpers for taskexec")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve on 127.0.0.1 until killed; prints `listening on http://ADDR/v1`.
    Serve {
        /// Port (0 picks one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// zero | fixed:MS | lognormal:MEDIAN_MS:P99_MS
        #[arg(long, default_value = "zero")]
        latency: String,
        /// Latency seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Write N tasks for deployment DEPLOYMENT as JSON Lines.
    GenTasks {
        /// How many.
        n: usize,
        /// Deployment name.
        #[arg(long, default_value = "mock")]
        deployment: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// The zero-overhead makespan of a task file's latencies with C slots, in seconds.
    Makespan {
        /// The task file.
        tasks: PathBuf,
        /// Slots.
        #[arg(long)]
        concurrency: usize,
        /// As given to `serve`.
        #[arg(long)]
        latency: String,
        /// As given to `serve`.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { port, latency, seed, threads } => {
            let config =
                MockConfig { latency: Latency::parse(&latency)?, seed, record: false, ..MockConfig::default() };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
            rt.block_on(async {
                let server = MockServer::start(config, port).await?;
                println!("listening on {}", server.base_url());
                std::io::stdout().flush()?;
                std::future::pending::<anyhow::Result<()>>().await
            })
        }
        Command::GenTasks { n, deployment, out } => {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            for i in 0..n {
                writeln!(
                    w,
                    r#"{{"id":"t{i}","providerId":"{deployment}","modelId":"mock-model","prompt":"Task {i}: say ok."}}"#
                )?;
            }
            w.flush()?;
            Ok(())
        }
        Command::Makespan { tasks, concurrency, latency, seed } => {
            let latency = Latency::parse(&latency)?;
            let file = std::io::BufReader::new(std::fs::File::open(&tasks)?);
            let mut latencies = Vec::new();
            for line in file.lines() {
                let v: serde_json::Value = serde_json::from_str(&line?)?;
                let id = v["id"].as_str().unwrap_or_default();
                latencies.push(latency.for_task(id, seed));
            }
            println!("{:.3}", makespan(latencies, concurrency).as_secs_f64());
            Ok(())
        }
    }
}
