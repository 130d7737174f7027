//! taskexec-providers: the adapters that turn a core [`ProviderRequest`] into a provider call —
//! an OpenAI-compatible chat-completions client and the built-in `sim` provider — and
//! [`Deployments`], the registry that serves each configured deployment with its adapter.
//!
//! Keys are read once, at the edge: the caller passes an environment lookup to
//! [`Deployments::from_config`]; nothing in this crate calls `std::env::var`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use taskexec_core::provider::{Provider, ProviderRequest};
//! use taskexec_core::task::BenchmarkTask;
//! use taskexec_providers::Deployments;
//! use taskexec_providers::config::DeploymentConfig;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config: BTreeMap<String, DeploymentConfig> = toml::from_str(r#"
//!     [demo]
//!     kind = "sim"
//!     sim = { latency = { median_ms = 1.0, p99_ms = 1.0 }, seed = 1 }
//! "#).unwrap();
//! let deployments = Deployments::from_config(&config, |_| None).unwrap();
//! let task: BenchmarkTask = serde_json::from_str(
//!     r#"{"id":"t1","providerId":"demo","modelId":"m","prompt":"hello"}"#).unwrap();
//! let answer = deployments.call(ProviderRequest::for_task(&task, "demo", 1)).await.unwrap();
//! assert_eq!(answer.finish_reason, "stop");
//! # }
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod openai;
pub mod secret;
pub mod settings;
pub mod sim;

use std::collections::BTreeMap;

use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};

use crate::config::{ConfigError, DeploymentConfig, ProviderKind};
use crate::openai::{BuildError, OpenAiCompatible};
use crate::secret::ApiKey;
use crate::sim::SimProvider;

/// The adapter serving one deployment (an enum because `impl Future` traits cannot be `dyn`).
#[derive(Debug)]
pub enum Adapter {
    /// The built-in simulator.
    Sim(SimProvider),
    /// An OpenAI-compatible server.
    OpenAi(OpenAiCompatible),
}

impl Provider for Adapter {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        match self {
            Self::Sim(sim) => sim.call(request).await,
            Self::OpenAi(openai) => openai.call(request).await,
        }
    }
}

/// Why the deployments could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentsError {
    /// A deployment's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `api_key_env` names a variable that is not set (or is empty).
    #[error("deployment `{deployment}`: environment variable `{var}` (its `api_key_env`) is not set")]
    MissingKey {
        /// The deployment.
        deployment: String,
        /// The variable's name.
        var: String,
    },
    /// The adapter could not be built.
    #[error("deployment `{deployment}`: {source}")]
    Adapter {
        /// The deployment.
        deployment: String,
        /// The cause.
        #[source]
        source: BuildError,
    },
}

/// Every configured deployment, by name, with its adapter. Calls are routed by
/// [`ProviderRequest::deployment`].
#[derive(Debug, Default)]
pub struct Deployments {
    adapters: BTreeMap<String, Adapter>,
    configs: BTreeMap<String, DeploymentConfig>,
}

impl Deployments {
    /// Validate `configs` and build an adapter for each; `env` looks up environment variables
    /// (`|name| std::env::var(name).ok()` in a binary, a map in tests).
    pub fn from_config(
        configs: &BTreeMap<String, DeploymentConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, DeploymentsError> {
        let mut adapters = BTreeMap::new();
        for (name, config) in configs {
            config.validate(name)?;
            adapters.insert(name.clone(), build_adapter(name, config, &env)?);
        }
        Ok(Self { adapters, configs: configs.clone() })
    }

    /// The deployment names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// The adapter of deployment `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Adapter> {
        self.adapters.get(name)
    }

    /// The configuration of deployment `name` (its limits: `concurrency`, `model_concurrency`).
    #[must_use]
    pub fn config(&self, name: &str) -> Option<&DeploymentConfig> {
        self.configs.get(name)
    }

    async fn dispatch(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        match self.adapters.get(&request.deployment) {
            Some(adapter) => adapter.call(request).await,
            None => Err(ProviderError::permanent(format!("unknown deployment `{}`", request.deployment))),
        }
    }
}

fn build_adapter(
    name: &str,
    config: &DeploymentConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Adapter, DeploymentsError> {
    match config.kind {
        ProviderKind::Sim => Ok(Adapter::Sim(SimProvider::new(config.sim.clone().unwrap_or_default()))),
        ProviderKind::OpenAiCompatible => {
            let key = config.api_key_env.as_deref().map(|var| api_key(name, var, env)).transpose()?;
            OpenAiCompatible::new(name, config, key)
                .map(Adapter::OpenAi)
                .map_err(|source| DeploymentsError::Adapter { deployment: name.to_owned(), source })
        }
    }
}

fn api_key(deployment: &str, var: &str, env: &impl Fn(&str) -> Option<String>) -> Result<ApiKey, DeploymentsError> {
    match env(var) {
        Some(key) if !key.trim().is_empty() => Ok(ApiKey::new(key.trim())),
        _ => Err(DeploymentsError::MissingKey { deployment: deployment.to_owned(), var: var.to_owned() }),
    }
}

impl Provider for Deployments {
    fn call(&self, request: ProviderRequest) -> impl Future<Output = Result<ProviderResponse, ProviderError>> + Send {
        self.dispatch(request)
    }
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn configs(text: &str) -> BTreeMap<String, DeploymentConfig> {
        toml::from_str(text).unwrap()
    }

    const TWO: &str = r#"
        [demo]
        kind = "sim"
        [openai]
        kind = "openai-compatible"
        base_url = "http://127.0.0.1:9/v1/"
        api_key_env = "TEST_OPENAI_KEY"
        concurrency = 4
    "#;

    #[test]
    fn builds_every_deployment_with_keys_from_the_lookup() {
        let d = Deployments::from_config(&configs(TWO), |v| (v == "TEST_OPENAI_KEY").then(|| "sk-x".into())).unwrap();
        assert_eq!(d.names().collect::<Vec<_>>(), ["demo", "openai"]);
        assert!(matches!(d.get("demo"), Some(Adapter::Sim(_))));
        let Some(Adapter::OpenAi(o)) = d.get("openai") else { panic!("not openai") };
        assert_eq!(o.endpoint().as_str(), "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(d.config("openai").unwrap().concurrency, Some(4));
    }

    #[test]
    fn an_unset_key_variable_is_named() {
        let err = Deployments::from_config(&configs(TWO), |_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "deployment `openai`: environment variable `TEST_OPENAI_KEY` (its `api_key_env`) is not set"
        );
        let empty = Deployments::from_config(&configs(TWO), |_| Some("  ".into())).unwrap_err();
        assert!(matches!(empty, DeploymentsError::MissingKey { .. }));
    }

    #[test]
    fn invalid_config_is_reported_before_anything_is_built() {
        let err = Deployments::from_config(&configs("[x]\nkind = \"openai-compatible\""), |_| None).unwrap_err();
        assert!(err.to_string().starts_with("deployment `x`: kind `openai-compatible` needs `base_url`"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_deployment_is_permanent() {
        let d = Deployments::from_config(&configs(TWO), |_| Some("k".into())).unwrap();
        let task = serde_json::from_str(r#"{"id":"t","providerId":"nope","modelId":"m","prompt":"p"}"#).unwrap();
        let err = d.call(ProviderRequest::for_task(&task, "nope", 1)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(err.to_string().contains("unknown deployment `nope`"));
    }
}
