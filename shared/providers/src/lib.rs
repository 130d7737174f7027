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

mod answer;
mod anthropic;
mod azure;
#[cfg(feature = "aws")]
mod bedrock;
pub mod capability;
pub mod config;
mod conversation;
mod gemini;
mod http;
mod openai;
pub mod secret;
pub mod settings;
pub mod sim;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet};

use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::BenchmarkTask;
use taskexec_core::validate::FieldError;

pub use crate::answer::ModelInfo;
use crate::anthropic::{Anthropic, AnthropicMessages};
use crate::azure::{AzureChat, AzureOpenAi};
use crate::capability::{Capabilities, for_deployment};
use crate::config::{ConfigError, DeploymentConfig, ProviderKind, UnsupportedParams};
use crate::gemini::{Gemini, GeminiGenerate};
use crate::http::HttpSettings;
use crate::openai::{OpenAiChat, OpenAiCompatible, OpenAiDeployment};
use crate::secret::{ApiKey, SecretRef};
use crate::sim::SimProvider;

pub use crate::http::{ATTEMPT_HEADER, BuildError, TASK_ID_HEADER};

/// The adapter serving one deployment.
#[derive(Debug)]
pub struct Adapter(Inner);

/// An enum because `impl Future` traits cannot be `dyn`.
#[derive(Debug)]
enum Inner {
    /// The built-in simulator.
    Sim(SimProvider),
    /// AWS Bedrock Converse through the SDK (kind `bedrock`, cargo feature `aws`).
    #[cfg(feature = "aws")]
    Bedrock(bedrock::BedrockConverse),
    /// OpenAI chat completions (kind `openai-compatible`).
    OpenAi(OpenAiCompatible),
    /// OpenAI itself (kind `openai`): chat completions or the Responses API, per model.
    OpenAiRouted(Box<OpenAiDeployment>),
    /// Azure OpenAI chat completions (kind `azure-openai`).
    Azure(AzureOpenAi),
    /// Anthropic's Messages API (kind `anthropic`).
    Anthropic(Anthropic),
    /// Google Gemini's `generateContent` (kind `gemini`).
    Gemini(Gemini),
}

impl Adapter {
    /// One call; `caps` are the model's capabilities on this deployment (the request already
    /// holds only what they accept).
    async fn call(&self, request: ProviderRequest, caps: &Capabilities) -> Result<ProviderResponse, ProviderError> {
        match &self.0 {
            Inner::Sim(sim) => sim.call(request).await,
            #[cfg(feature = "aws")]
            Inner::Bedrock(bedrock) => bedrock.call(request, caps).await,
            Inner::OpenAi(openai) => openai.call(request, caps).await,
            Inner::OpenAiRouted(openai) => openai.call(request, caps).await,
            Inner::Azure(azure) => azure.call(request, caps).await,
            Inner::Anthropic(anthropic) => anthropic.call(request, caps).await,
            Inner::Gemini(gemini) => gemini.call(request, caps).await,
        }
    }

    /// Every model the deployment serves, from the provider's model list.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        match &self.0 {
            Inner::Sim(_) => Ok(vec![ModelInfo {
                id: "any".into(),
                display_name: Some("the simulator answers any model id".into()),
            }]),
            Inner::OpenAi(openai) => openai.models().await,
            #[cfg(feature = "aws")]
            Inner::Bedrock(bedrock) => bedrock.models().await,
            Inner::OpenAiRouted(openai) => openai.models().await,
            Inner::Azure(azure) => azure.models().await,
            Inner::Anthropic(anthropic) => anthropic.models().await,
            Inner::Gemini(gemini) => gemini.models().await,
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
    /// `api_key_secret` was not resolved (embedded runs cannot read AWS secrets).
    #[error(
        "deployment `{deployment}`: its `api_key_secret` ({reference}) was not read: secrets are read by the AWS shape; elsewhere use `api_key_env`"
    )]
    MissingSecret {
        /// The deployment.
        deployment: String,
        /// The reference.
        reference: String,
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
    /// Routes tasks may name instead of a deployment (the engine picks the deployment).
    routes: BTreeMap<String, taskexec_core::routing::RouteSpec>,
}

impl Deployments {
    /// Validate `configs` and build an adapter for each; `env` looks up environment variables
    /// (`|name| std::env::var(name).ok()` in a binary, a map in tests). A deployment whose key
    /// is an `api_key_secret` fails here: use [`Deployments::from_config_with_secrets`].
    pub fn from_config(
        configs: &BTreeMap<String, DeploymentConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, DeploymentsError> {
        Self::from_config_with_secrets(configs, env, &BTreeMap::new())
    }

    /// As [`Deployments::from_config`], with the values of the `api_key_secret` references
    /// already read (the AWS shape reads [`Deployments::secret_refs`] at start-up).
    pub fn from_config_with_secrets(
        configs: &BTreeMap<String, DeploymentConfig>,
        env: impl Fn(&str) -> Option<String>,
        secrets: &BTreeMap<SecretRef, String>,
    ) -> Result<Self, DeploymentsError> {
        let mut adapters = BTreeMap::new();
        for (name, config) in configs {
            config.validate(name)?;
            let key = api_key(name, config, &env, secrets)?;
            adapters.insert(name.clone(), build_adapter(name, config, key, &env)?);
        }
        Ok(Self { adapters, configs: configs.clone(), routes: BTreeMap::new() })
    }

    /// The secret references `configs` use (validated ones only).
    #[must_use]
    pub fn secret_refs(configs: &BTreeMap<String, DeploymentConfig>) -> BTreeSet<SecretRef> {
        configs.values().filter_map(|c| c.api_key_secret.as_deref().and_then(SecretRef::parse)).collect()
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

    /// The same deployments, and `routes` (checked by `RunConfig`: every target exists).
    #[must_use]
    pub fn with_routes(mut self, routes: BTreeMap<String, taskexec_core::routing::RouteSpec>) -> Self {
        self.routes = routes;
        self
    }

    /// The names a task may give as its `providerId`: deployments, then routes.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.names().chain(self.routes.keys().map(String::as_str))
    }

    /// Check a task against its deployment (or every deployment of its route) before it is
    /// accepted: the name exists, and (unless a deployment drops them) every parameter it sets
    /// is accepted by the model it would be asked for.
    #[must_use]
    pub fn check(&self, task: &BenchmarkTask) -> Vec<FieldError> {
        if let Some(route) = self.routes.get(&task.provider_id) {
            let mut errors = Vec::new();
            for target in &route.targets {
                let mut routed = task.clone();
                routed.provider_id.clone_from(&target.deployment);
                if let Some(model) = &target.model {
                    routed.model_id.clone_from(model);
                }
                errors.extend(check_parameters(&self.configs, &routed));
            }
            return errors;
        }
        if !self.configs.contains_key(&task.provider_id) {
            let known = self.targets().collect::<Vec<_>>().join(", ");
            let message = format!("unknown deployment `{}` (configured: {known})", task.provider_id);
            return vec![FieldError { field: "providerId".into(), message }];
        }
        check_parameters(&self.configs, task)
    }

    async fn dispatch(&self, mut request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let (Some(adapter), Some(config)) =
            (self.adapters.get(&request.deployment), self.configs.get(&request.deployment))
        else {
            return Err(ProviderError::permanent(format!("unknown deployment `{}`", request.deployment)));
        };
        // Tasks that reached a queue without the API's validation are checked here too.
        let caps = for_deployment(config, &request.model);
        let unsupported = caps.unsupported(&request);
        if let Some(first) = unsupported.first() {
            if config.unsupported_params == UnsupportedParams::Reject {
                return Err(ProviderError::Permanent {
                    status: None,
                    code: Some("unsupported_parameter".into()),
                    detail: unsupported_message(&request.deployment, config, &request.model, first),
                    limits: Default::default(),
                });
            }
            let dropped: Vec<_> = unsupported.iter().map(|u| u.field).collect();
            tracing::warn!(deployment = %request.deployment, model = %request.model, task_id = %request.task_id,
                dropped = ?dropped, "parameters the model does not accept were left out (unsupported_params = \"drop\")");
            caps.strip(&mut request, &unsupported);
        }
        adapter.call(request, &caps).await
    }
}

/// The parameters of `task` its deployment's model does not accept, unless the deployment drops
/// them; nothing for an unknown deployment (reported apart). Needs only the configuration, so
/// the API checks submissions without the providers' keys.
#[must_use]
pub fn check_parameters(configs: &BTreeMap<String, DeploymentConfig>, task: &BenchmarkTask) -> Vec<FieldError> {
    let Some(config) = configs.get(&task.provider_id) else { return Vec::new() };
    if config.unsupported_params == UnsupportedParams::Drop {
        return Vec::new();
    }
    let caps = for_deployment(config, &task.model_id);
    // A model that takes every parameter needs no request built (it would copy the prompt),
    // which matters when a file of 100,000 tasks is checked.
    if caps.accepts_everything() {
        return Vec::new();
    }
    let request = ProviderRequest::for_task(task, &task.provider_id, 1);
    caps.unsupported(&request)
        .into_iter()
        .map(|u| FieldError {
            field: u.field.into(),
            message: unsupported_message(&task.provider_id, config, &request.model, &u),
        })
        .collect()
}

fn unsupported_message(
    deployment: &str,
    config: &DeploymentConfig,
    model: &str,
    u: &capability::Unsupported,
) -> String {
    let name = u.field.trim_start_matches("parameters.");
    format!(
        "`{name}` {} by model `{model}` on deployment `{deployment}` (kind `{}`); remove it, or set `unsupported_params = \"drop\"` on the deployment",
        u.reason,
        config.kind.as_str()
    )
}

fn build_adapter(
    name: &str,
    config: &DeploymentConfig,
    key: Option<ApiKey>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Adapter, DeploymentsError> {
    let failed = |source| DeploymentsError::Adapter { deployment: name.to_owned(), source };
    let settings = HttpSettings {
        connect_timeout: std::time::Duration::from_millis(
            config.connect_timeout_ms.unwrap_or(config::DEFAULT_CONNECT_TIMEOUT_MS),
        ),
        keep_raw: config.keep_raw,
    };
    let root = config.api_root().unwrap_or_default();
    match config.kind {
        ProviderKind::Sim => Ok(Adapter(Inner::Sim(SimProvider::new(config.sim.clone().unwrap_or_default())))),
        ProviderKind::OpenAi => OpenAiDeployment::new(name, root, config.api, key, &settings)
            .map(|a| Adapter(Inner::OpenAiRouted(Box::new(a))))
            .map_err(failed),
        ProviderKind::AzureOpenAi => AzureChat::new(root, config.api_version.as_deref())
            .and_then(|wire| AzureOpenAi::new(name, wire, key, &settings))
            .map(|a| Adapter(Inner::Azure(a)))
            .map_err(failed),
        ProviderKind::OpenAiCompatible => {
            let wire = OpenAiChat::new(root, config.kind).map_err(failed)?;
            OpenAiCompatible::new(name, wire, key, &settings).map(|a| Adapter(Inner::OpenAi(a))).map_err(failed)
        }
        ProviderKind::Anthropic => {
            let wire = AnthropicMessages::new(root).map_err(failed)?;
            Anthropic::new(name, wire, key, &settings).map(|a| Adapter(Inner::Anthropic(a))).map_err(failed)
        }
        ProviderKind::Gemini => {
            let wire = GeminiGenerate::new(root).map_err(failed)?;
            Gemini::new(name, wire, key, &settings).map(|a| Adapter(Inner::Gemini(a))).map_err(failed)
        }
        ProviderKind::Bedrock => bedrock_adapter(name, config, settings.connect_timeout, env).map_err(failed),
    }
}

/// Kind `bedrock`: the SDK clients are built on the first call; credentials from `env` when it
/// has `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, else from the AWS default chain.
#[cfg(feature = "aws")]
fn bedrock_adapter(
    name: &str,
    config: &DeploymentConfig,
    connect_timeout: std::time::Duration,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Adapter, BuildError> {
    let settings =
        bedrock::BedrockSettings { region: config.region.clone(), endpoint: config.base_url.clone(), connect_timeout };
    Ok(Adapter(Inner::Bedrock(bedrock::BedrockConverse::new(name, settings, env))))
}

/// Kind `bedrock` without the AWS SDK compiled in.
#[cfg(not(feature = "aws"))]
fn bedrock_adapter(
    _name: &str,
    _config: &DeploymentConfig,
    _connect_timeout: std::time::Duration,
    _env: &impl Fn(&str) -> Option<String>,
) -> Result<Adapter, BuildError> {
    Err(BuildError::NotInThisBuild("kind `bedrock` needs the AWS build: `cargo build --features aws`"))
}

fn api_key(
    deployment: &str,
    config: &DeploymentConfig,
    env: &impl Fn(&str) -> Option<String>,
    secrets: &BTreeMap<SecretRef, String>,
) -> Result<Option<ApiKey>, DeploymentsError> {
    if let Some(var) = &config.api_key_env {
        return match env(var) {
            Some(key) if !key.trim().is_empty() => Ok(Some(ApiKey::new(key.trim()))),
            _ => Err(DeploymentsError::MissingKey { deployment: deployment.to_owned(), var: var.clone() }),
        };
    }
    let Some(reference) = config.api_key_secret.as_deref().and_then(SecretRef::parse) else { return Ok(None) };
    match secrets.get(&reference) {
        Some(key) if !key.trim().is_empty() => Ok(Some(ApiKey::new(key.trim()))),
        _ => {
            Err(DeploymentsError::MissingSecret { deployment: deployment.to_owned(), reference: reference.to_string() })
        }
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
        assert!(matches!(d.get("demo"), Some(Adapter(Inner::Sim(_)))));
        let Some(Adapter(Inner::OpenAi(o))) = d.get("openai") else { panic!("not openai") };
        assert_eq!(o.wire().endpoint().as_str(), "http://127.0.0.1:9/v1/chat/completions");
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
