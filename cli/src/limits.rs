//! `taskexec limits show|set|reset`: the deployments' limits as configured, as set at run time, and
//! in force. A change is stored in the run's database; the runner applies it within a second
//! (its control check), without a restart. `set` changes the fields given and keeps the others
//! set before; `reset` goes back to the configuration. Each change is an audit log line
//! (`taskexec::audit`, kind `limitsSet`). In the AWS shape the same change is
//! `PUT /control/limits/{deployment}` (docs/api.md).

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Subcommand;
use taskexec_core::ports::{ControlStore, LimitOverride};
use taskexec_core::rate::Quota;

use crate::admin::{DbArg, open, store_err};
use crate::config::Config;
use crate::exit::{Failure, OK};

/// `taskexec limits …`.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Each deployment's limits: configured, set at run time, in force.
    Show {
        /// The config file (default: `taskexec.toml` in the current directory, else built-in).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Change a deployment's limits at run time (the fields given; the others stay as set).
    Set {
        /// The deployment's name in the config.
        deployment: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// The config file (default: `taskexec.toml` in the current directory, else built-in).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        db: DbArg,
    },
    /// Remove a deployment's run-time limits: back to the configuration.
    Reset {
        /// The deployment's name in the config.
        deployment: String,
        /// The config file (default: `taskexec.toml` in the current directory, else built-in).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        db: DbArg,
    },
}

/// The limits `set` changes (each at least 1).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Calls at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Requests per minute.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rpm: Option<u64>,
    /// Tokens per minute (input and output together).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tpm: Option<u64>,
    /// Input tokens per minute.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    input_tpm: Option<u64>,
    /// Output tokens per minute.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    output_tpm: Option<u64>,
    /// Requests per day.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rpd: Option<u64>,
}

impl LimitArgs {
    fn to_override(&self) -> LimitOverride {
        LimitOverride {
            concurrency: self.concurrency,
            rpm: self.rpm,
            tpm: self.tpm,
            input_tpm: self.input_tpm,
            output_tpm: self.output_tpm,
            rpd: self.rpd,
        }
    }
}

/// Run a `limits` subcommand.
pub async fn limits(command: LimitsCommand) -> Result<u8, Failure> {
    match command {
        LimitsCommand::Show { config, json, db } => show(&db.db, config.as_deref(), json).await,
        LimitsCommand::Set { deployment, limits, config, db } => {
            let change = limits.to_override();
            if change.is_empty() {
                return Err(Failure::input(anyhow!(
                    "nothing to set: give at least one of --concurrency, --rpm, --tpm, --input-tpm, --output-tpm, --rpd"
                )));
            }
            set(&db.db, config.as_deref(), &deployment, Some(change)).await
        }
        LimitsCommand::Reset { deployment, config, db } => set(&db.db, config.as_deref(), &deployment, None).await,
    }
}

fn config(explicit: Option<&Path>) -> Result<Config, Failure> {
    Ok(crate::config::locate(explicit, None).map_err(Failure::input)?.0)
}

/// A deployment's configured limits, in the override's shape.
fn configured(config: &Config, deployment: &str) -> Result<LimitOverride, Failure> {
    let Some(d) = config.deployments.get(deployment) else {
        let known = config.deployments.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(Failure::input(anyhow!("unknown deployment `{deployment}` (configured: {known})")));
    };
    let Quota { rpm, tpm, input_tpm, output_tpm, rpd } = d.quota();
    Ok(LimitOverride { concurrency: d.concurrency, rpm, tpm, input_tpm, output_tpm, rpd })
}

async fn set(
    db: &Path,
    explicit: Option<&Path>,
    deployment: &str,
    change: Option<LimitOverride>,
) -> Result<u8, Failure> {
    let config = config(explicit)?;
    let configured = configured(&config, deployment)?;
    let store = open(db)?;
    let before = store.control().await.map_err(store_err)?.limits.get(deployment).copied().unwrap_or_default();
    let after = change.map(|c| before.merged(c));
    store.set_limits(deployment, after).await.map_err(store_err)?;
    let after = after.unwrap_or_default();
    tracing::info!(target: "taskexec::audit", kind = "limitsSet", deployment, limits = %after, previous = %before,
        "run-time limits set");
    println!("{deployment}: set at run time {after} (was {before}); in force {}", configured.merged(after));
    Ok(OK)
}

async fn show(db: &Path, explicit: Option<&Path>, json: bool) -> Result<u8, Failure> {
    let config = config(explicit)?;
    let store = open(db)?;
    let overrides = store.control().await.map_err(store_err)?.limits;
    let mut rows = Vec::new();
    for name in config.deployments.keys() {
        let configured = configured(&config, name)?;
        let set = overrides.get(name).copied().unwrap_or_default();
        rows.push((name.clone(), configured, set, configured.merged(set)));
    }
    for (name, set) in overrides.iter().filter(|(name, _)| !config.deployments.contains_key(*name)) {
        rows.push((name.clone(), LimitOverride::default(), *set, *set));
    }
    if json {
        let value: serde_json::Map<String, serde_json::Value> = rows
            .into_iter()
            .map(|(name, configured, set, effective)| {
                let entry = serde_json::json!({"configured": configured, "setAtRunTime": set, "inForce": effective});
                (name, entry)
            })
            .collect();
        println!("{}", serde_json::Value::Object(value));
        return Ok(OK);
    }
    println!("{:<20} {:<32} {:<32} in force", "deployment", "configured", "set at run time");
    for (name, configured, set, effective) in rows {
        let set = if set.is_empty() { "-".to_owned() } else { set.to_string() };
        println!("{name:<20} {:<32} {set:<32} {effective}", configured.to_string());
    }
    Ok(OK)
}
