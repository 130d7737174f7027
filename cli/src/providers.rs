//! `taskexec providers`: what the configured deployments are, and which models each serves
//! (asked of the provider's own model-list endpoint, with the deployment's key).

use std::path::PathBuf;

use clap::Subcommand;
use taskexec_providers::ModelInfo;

use crate::embedded;
use crate::exit::{Failure, OK};

/// `taskexec providers …`.
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// List the configured deployments: kind, API root, where the key comes from.
    List {
        /// The config file (default: `taskexec.toml` in the current directory, else built-in).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the models DEPLOYMENT serves, from its provider's model-list endpoint.
    Models {
        /// The deployment's name in the config.
        deployment: String,
        /// The config file (default: `taskexec.toml` in the current directory, else built-in).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object per model instead of one id per line.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `providers` subcommand.
pub async fn providers(command: ProvidersCommand) -> Result<u8, Failure> {
    match command {
        ProvidersCommand::List { config } => list(config).await,
        ProvidersCommand::Models { deployment, config, json } => models(&deployment, config, json).await,
    }
}

async fn list(config: Option<PathBuf>) -> Result<u8, Failure> {
    let (config, origin) = crate::config::locate(config.as_deref(), None).map_err(Failure::input)?;
    println!("# deployments in {origin}");
    for (name, d) in &config.deployments {
        let key = match (&d.api_key_env, &d.api_key_secret) {
            (Some(var), _) => format!("key from ${var}"),
            (None, Some(reference)) => format!("key from {reference}"),
            (None, None) => "no key".to_owned(),
        };
        let root = d.api_root().unwrap_or("-");
        println!("{name}\t{}\t{root}\t{key}", d.kind.as_str());
    }
    Ok(OK)
}

async fn models(deployment: &str, config: Option<PathBuf>, json: bool) -> Result<u8, Failure> {
    let (config, _) = crate::config::locate(config.as_deref(), None).map_err(Failure::input)?;
    let deployments = embedded::deployments(&config)?;
    let Some(adapter) = deployments.get(deployment) else {
        let known = deployments.names().collect::<Vec<_>>().join(", ");
        return Err(Failure::input(anyhow::anyhow!("unknown deployment `{deployment}` (configured: {known})")));
    };
    let models = adapter
        .models()
        .await
        .map_err(|e| Failure::runtime(anyhow::anyhow!("deployment `{deployment}`: listing models failed: {e}")))?;
    print_models(&models, json);
    Ok(OK)
}

fn print_models(models: &[ModelInfo], json: bool) {
    for model in models {
        if json {
            println!("{}", serde_json::to_string(model).expect("a model serialises"));
        } else {
            match &model.display_name {
                Some(name) => println!("{}\t{name}", model.id),
                None => println!("{}", model.id),
            }
        }
    }
}
