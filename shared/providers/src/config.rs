//! Deployment configuration: the typed form of a `[deployments.NAME]` table in the user's TOML,
//! and its validation. Configuration never holds a key: `api_key_env` names the environment
//! variable that does, and the caller looks it up (see [`crate::Deployments::from_config`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which adapter serves a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderKind {
    /// The built-in simulated provider ([`crate::sim::SimProvider`]).
    #[serde(rename = "sim")]
    Sim,
    /// Any server speaking OpenAI's chat-completions API:
    /// vLLM, Ollama, llama.cpp, OpenRouter, Together, Groq, GitHub Models. Parameters are passed
    /// as given (the server decides).
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    /// OpenAI itself: chat completions, or the Responses API for models that need it; OpenAI's
    /// model capabilities apply. `base_url` defaults to OpenAI's.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI: `base_url` is the resource endpoint, a task's `modelId` the Azure
    /// deployment name; the key goes in the `api-key` header.
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    /// Anthropic's Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini's `generateContent` (the Gemini API, key in `x-goog-api-key`).
    #[serde(rename = "gemini")]
    Gemini,
    /// AWS Bedrock's Converse API through the AWS SDK (cargo feature `aws`); credentials come
    /// from the AWS default chain, not from a key.
    #[serde(rename = "bedrock")]
    Bedrock,
}

impl ProviderKind {
    /// The name used in the config.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sim => "sim",
            Self::OpenAiCompatible => "openai-compatible",
            Self::OpenAi => "openai",
            Self::AzureOpenAi => "azure-openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Bedrock => "bedrock",
        }
    }

    /// The API root used when `base_url` is not set; `None` where `base_url` is required.
    #[must_use]
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("https://api.openai.com/v1"),
            Self::Anthropic => Some("https://api.anthropic.com"),
            Self::Gemini => Some("https://generativelanguage.googleapis.com"),
            Self::Sim | Self::OpenAiCompatible | Self::AzureOpenAi | Self::Bedrock => None,
        }
    }
}

/// What to do with a task parameter the deployment's model does not accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedParams {
    /// The task fails validation up front, naming the parameter and the model (the default).
    #[default]
    Reject,
    /// The parameter is left out of the request, and a warning naming it is logged each time.
    Drop,
}

/// Which OpenAI API a deployment of kind `openai` uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenAiApi {
    /// Chat completions, except for models the capability table says need the Responses API.
    #[default]
    Auto,
    /// Always chat completions.
    Chat,
    /// Always the Responses API.
    Responses,
}

/// One `[deployments.NAME]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The adapter.
    pub kind: ProviderKind,
    /// API root such as `https://api.openai.com/v1` (`/chat/completions` is appended); for
    /// Bedrock, an endpoint override (tests, VPC endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The NAME of the environment variable holding the key (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Where the AWS shape reads the key: `secretsmanager:SECRET_ID[#JSON_FIELD]` or
    /// `ssm:/PARAMETER/NAME` (a SecureString is decrypted). Resolved once at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// Azure OpenAI: the `api-version` of the deployment-scoped API; unset means the v1 API
    /// (`{base_url}/openai/v1/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind `openai`: which API to call.
    #[serde(default)]
    pub api: OpenAiApi,
    /// Bedrock: the AWS region (else the default chain's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// What to do with a parameter the model does not accept.
    #[serde(default)]
    pub unsupported_params: UnsupportedParams,
    /// Keep each answer's raw response body on the task result, for audit.
    #[serde(default)]
    pub keep_raw: bool,
    /// Most calls in flight on this deployment (the engine's limiter enforces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Most calls in flight per model on this deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_concurrency: BTreeMap<String, u32>,
    /// The provider's quota for this deployment's key, as it counts it: requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute, input and output together (OpenAI, Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Input tokens per minute (Anthropic counts them apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tpm: Option<u64>,
    /// Output tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tpm: Option<u64>,
    /// Requests per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpd: Option<u64>,
    /// Quotas the provider counts per model on this key (OpenAI, Gemini, Bedrock), as
    /// `model_quotas = { "gpt-4o" = { rpm = 500, tpm = 30000 } }`: held on top of the
    /// deployment's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_quotas: BTreeMap<String, taskexec_core::rate::Quota>,
    /// Behaviour of a `sim` deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimConfig>,
    /// TCP + TLS connect timeout (default [`DEFAULT_CONNECT_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
}

/// Connect timeout used when `connect_timeout_ms` is not set.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// How a `sim` deployment behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Latency distribution of every call.
    pub latency: LatencyConfig,
    /// Per-call fault probabilities.
    pub faults: FaultRates,
    /// Windows, measured from the provider's creation, in which every call fails with a 503.
    pub outages: Vec<Outage>,
    /// Seed of the random generator; `None` seeds from the OS (not reproducible).
    pub seed: Option<u64>,
    /// Output tokens reported per answer (capped by the request's `max_tokens`).
    pub output_tokens: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: LatencyConfig::default(),
            faults: FaultRates::default(),
            outages: Vec::new(),
            seed: None,
            output_tokens: 64,
        }
    }
}

/// A lognormal latency fitted to its median and 99th percentile; `p99_ms == median_ms` means a
/// fixed latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    /// Median latency in ms.
    pub median_ms: f64,
    /// 99th percentile in ms (at least the median).
    pub p99_ms: f64,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self { median_ms: 300.0, p99_ms: 1500.0 }
    }
}

/// Probability per call of each injected fault (each in `0..=1`, summing to at most 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRates {
    /// 429 `rate_limit_exceeded` with a retry hint of `retry_after_ms`.
    pub rate_limit: f64,
    /// 503.
    pub server_error: f64,
    /// The call never completes (until its future is dropped).
    pub hang: f64,
    /// A 200 whose body cannot be parsed.
    pub malformed: f64,
    /// The connection is reset.
    pub reset: f64,
    /// 400: never retried.
    pub bad_request: f64,
    /// The retry hint sent with a simulated 429.
    pub retry_after_ms: u64,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            rate_limit: 0.0,
            server_error: 0.0,
            hang: 0.0,
            malformed: 0.0,
            reset: 0.0,
            bad_request: 0.0,
            retry_after_ms: 1000,
        }
    }
}

impl FaultRates {
    /// The rates by name, in the fixed order the simulator draws them.
    #[must_use]
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("rate_limit", self.rate_limit),
            ("server_error", self.server_error),
            ("hang", self.hang),
            ("malformed", self.malformed),
            ("reset", self.reset),
            ("bad_request", self.bad_request),
        ]
    }
}

/// A window in which every call fails with a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Start, in ms after the provider was created.
    pub start_ms: u64,
    /// Length in ms (more than 0).
    pub duration_ms: u64,
}

/// A deployment whose configuration cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("deployment `{deployment}`: {problem}")]
pub struct ConfigError {
    /// The deployment's name.
    pub deployment: String,
    /// What is wrong.
    #[source]
    pub problem: ConfigProblem,
}

/// What is wrong with a deployment's configuration; each message says how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigProblem {
    /// A kind that has no default API root, without `base_url`.
    #[error("kind `{kind}` needs `base_url` (for example \"{example}\")")]
    MissingBaseUrl {
        /// The kind.
        kind: &'static str,
        /// An example value.
        example: &'static str,
    },
    /// Both `api_key_env` and `api_key_secret`.
    #[error("set one of `api_key_env` and `api_key_secret`, not both")]
    TwoKeySources,
    /// `api_key_secret` is not a reference this version can read.
    #[error("`api_key_secret` must be `secretsmanager:SECRET_ID[#JSON_FIELD]` or `ssm:/PARAMETER/NAME`")]
    BadSecretRef,
    /// `base_url` is not an absolute http(s) URL, or embeds credentials.
    #[error("`base_url` {0}")]
    BadBaseUrl(&'static str),
    /// A field that only the other kind uses.
    #[error("`{field}` is not used by kind `{kind}`; remove it")]
    NotForKind {
        /// The field.
        field: &'static str,
        /// The kind.
        kind: &'static str,
    },
    /// `api_key_env` is not a variable name (it may be a pasted key: never echoed).
    #[error("`api_key_env` must be the NAME of an environment variable (letters, digits, `_`), not the key itself")]
    BadKeyEnvName,
    /// A concurrency or a quota of 0.
    #[error("`{0}` must be at least 1")]
    ZeroConcurrency(String),
    /// Latency parameters that do not describe a distribution.
    #[error("`sim.latency` needs finite 0 <= median_ms <= p99_ms (got median {median_ms}, p99 {p99_ms})")]
    BadLatency {
        /// Median.
        median_ms: f64,
        /// 99th percentile.
        p99_ms: f64,
    },
    /// A fault rate outside `0..=1`.
    #[error("`sim.faults.{name}` must be between 0 and 1 (got {value})")]
    BadRate {
        /// The rate's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// Fault rates summing to more than 1.
    #[error("`sim.faults` rates sum to {0}, more than 1")]
    RatesAboveOne(f64),
    /// An outage of length 0.
    #[error("`sim.outages[{0}].duration_ms` must be more than 0")]
    EmptyOutage(usize),
    /// A connect timeout of 0.
    #[error("`connect_timeout_ms` must be more than 0")]
    ZeroConnectTimeout,
}

impl DeploymentConfig {
    /// Check the configuration of deployment `name`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        self.check().map_err(|problem| ConfigError { deployment: name.to_owned(), problem })
    }

    fn check(&self) -> Result<(), ConfigProblem> {
        self.check_limits()?;
        self.check_fields_for_kind()?;
        match self.kind {
            ProviderKind::Sim => self.sim.as_ref().map_or(Ok(()), SimConfig::check),
            _ => self.check_remote(),
        }
    }

    /// The provider quota this deployment declares (`rpm`, `tpm`, `input_tpm`, `output_tpm`,
    /// `rpd`).
    #[must_use]
    pub fn quota(&self) -> taskexec_core::rate::Quota {
        taskexec_core::rate::Quota {
            rpm: self.rpm,
            tpm: self.tpm,
            input_tpm: self.input_tpm,
            output_tpm: self.output_tpm,
            rpd: self.rpd,
        }
    }

    fn check_limits(&self) -> Result<(), ConfigProblem> {
        if self.concurrency == Some(0) {
            return Err(ConfigProblem::ZeroConcurrency("concurrency".into()));
        }
        if let Some(name) = self.quota().zero_budget() {
            return Err(ConfigProblem::ZeroConcurrency(name.into()));
        }
        for (model, quota) in &self.model_quotas {
            if let Some(name) = quota.zero_budget() {
                return Err(ConfigProblem::ZeroConcurrency(format!("model_quotas.{model}.{name}")));
            }
        }
        match self.model_concurrency.iter().find(|(_, n)| **n == 0) {
            Some((model, _)) => Err(ConfigProblem::ZeroConcurrency(format!("model_concurrency.{model}"))),
            None => Ok(()),
        }
    }

    /// Every field that the kind does not use is refused, so a typo'd kind cannot silently
    /// ignore settings.
    fn check_fields_for_kind(&self) -> Result<(), ConfigProblem> {
        use ProviderKind as K;
        let kind = self.kind;
        let set: [(&'static str, bool, bool); 8] = [
            ("sim", self.sim.is_some(), kind == K::Sim),
            ("base_url", self.base_url.is_some(), kind != K::Sim),
            ("api_key_env", self.api_key_env.is_some(), !matches!(kind, K::Sim | K::Bedrock)),
            ("api_key_secret", self.api_key_secret.is_some(), !matches!(kind, K::Sim | K::Bedrock)),
            ("api_version", self.api_version.is_some(), kind == K::AzureOpenAi),
            ("api", self.api != OpenAiApi::Auto, kind == K::OpenAi),
            ("region", self.region.is_some(), kind == K::Bedrock),
            ("connect_timeout_ms", self.connect_timeout_ms.is_some(), kind != K::Sim),
        ];
        match set.iter().find(|(_, is_set, allowed)| *is_set && !allowed) {
            Some((field, ..)) => Err(ConfigProblem::NotForKind { field, kind: kind.as_str() }),
            None => Ok(()),
        }
    }

    fn check_remote(&self) -> Result<(), ConfigProblem> {
        match (&self.base_url, self.kind.default_base_url()) {
            (Some(url), _) => check_base_url(url)?,
            (None, Some(_)) => {}
            (None, None) if self.kind == ProviderKind::Bedrock => {}
            (None, None) => {
                let example = match self.kind {
                    ProviderKind::AzureOpenAi => "https://my-resource.openai.azure.com",
                    _ => "http://127.0.0.1:8000/v1",
                };
                return Err(ConfigProblem::MissingBaseUrl { kind: self.kind.as_str(), example });
            }
        }
        if self.api_key_env.is_some() && self.api_key_secret.is_some() {
            return Err(ConfigProblem::TwoKeySources);
        }
        if let Some(var) = &self.api_key_env {
            check_env_name(var)?;
        }
        if let Some(reference) = &self.api_key_secret {
            crate::secret::SecretRef::parse(reference).ok_or(ConfigProblem::BadSecretRef)?;
        }
        if self.connect_timeout_ms == Some(0) {
            return Err(ConfigProblem::ZeroConnectTimeout);
        }
        Ok(())
    }

    /// The API root: `base_url`, else the kind's default.
    #[must_use]
    pub fn api_root(&self) -> Option<&str> {
        self.base_url.as_deref().or(self.kind.default_base_url())
    }
}

fn check_base_url(raw: &str) -> Result<(), ConfigProblem> {
    let url = reqwest::Url::parse(raw).map_err(|_| ConfigProblem::BadBaseUrl("is not a valid absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigProblem::BadBaseUrl("must start with http:// or https://"));
    }
    // Credentials in a URL end up in error messages; keys belong in `api_key_env`.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigProblem::BadBaseUrl("must not embed credentials; use `api_key_env`"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigProblem::BadBaseUrl("must not have a query or fragment"));
    }
    Ok(())
}

fn check_env_name(var: &str) -> Result<(), ConfigProblem> {
    let mut chars = var.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(ConfigProblem::BadKeyEnvName)
    }
}

impl SimConfig {
    fn check(&self) -> Result<(), ConfigProblem> {
        let LatencyConfig { median_ms, p99_ms } = self.latency;
        if !(median_ms.is_finite() && p99_ms.is_finite() && 0.0 <= median_ms && median_ms <= p99_ms) {
            return Err(ConfigProblem::BadLatency { median_ms, p99_ms });
        }
        let rates = self.faults.named();
        if let Some(&(name, value)) = rates.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err(ConfigProblem::BadRate { name, value });
        }
        let sum: f64 = rates.iter().map(|(_, v)| v).sum();
        if sum > 1.0 + 1e-9 {
            return Err(ConfigProblem::RatesAboveOne(sum));
        }
        match self.outages.iter().position(|o| o.duration_ms == 0) {
            Some(i) => Err(ConfigProblem::EmptyOutage(i)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        deployments: BTreeMap<String, DeploymentConfig>,
    }

    fn parse(toml_text: &str) -> Result<BTreeMap<String, DeploymentConfig>, toml::de::Error> {
        toml::from_str::<File>(toml_text).map(|f| f.deployments)
    }

    fn problem(toml_text: &str) -> ConfigProblem {
        let (name, d) = parse(toml_text).unwrap().into_iter().next().unwrap();
        d.validate(&name).unwrap_err().problem
    }

    #[test]
    fn parses_both_kinds_with_defaults() {
        let d = parse(
            r#"
            [deployments.openai]
            kind = "openai-compatible"
            base_url = "https://api.openai.com/v1"
            api_key_env = "OPENAI_API_KEY"
            concurrency = 32
            model_concurrency = { "gpt-4o-mini" = 8 }

            [deployments.demo]
            kind = "sim"
            sim = { latency = { median_ms = 50.0, p99_ms = 400.0 }, faults = { rate_limit = 0.1 }, outages = [{ start_ms = 10000, duration_ms = 5000 }], seed = 7 }
            "#,
        )
        .unwrap();
        assert_eq!(d["openai"].kind, ProviderKind::OpenAiCompatible);
        assert_eq!(d["openai"].model_concurrency["gpt-4o-mini"], 8);
        let sim = d["demo"].sim.as_ref().unwrap();
        assert_eq!(sim.faults.rate_limit, 0.1);
        assert_eq!(sim.faults.retry_after_ms, 1000);
        assert_eq!(sim.output_tokens, 64);
        assert_eq!(sim.outages, [Outage { start_ms: 10_000, duration_ms: 5_000 }]);
        for (name, dep) in &d {
            dep.validate(name).unwrap();
        }
    }

    #[test]
    fn rejects_unknown_keys_at_every_level() {
        let top = parse("[deployments.a]\nkind = \"sim\"\nbase_ulr = \"x\"").unwrap_err();
        assert!(top.to_string().contains("base_ulr"), "{top}");
        let nested = parse("[deployments.a]\nkind = \"sim\"\nsim = { faults = { hangs = 0.1 } }").unwrap_err();
        assert!(nested.to_string().contains("hangs"), "{nested}");
        let kind = parse("[deployments.a]\nkind = \"openia\"").unwrap_err();
        assert!(kind.to_string().contains("openai-compatible"), "{kind}");
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(matches!(
            problem("[deployments.a]\nkind = \"openai-compatible\""),
            ConfigProblem::MissingBaseUrl { kind: "openai-compatible", .. }
        ));
        assert!(matches!(
            problem("[deployments.a]\nkind = \"azure-openai\""),
            ConfigProblem::MissingBaseUrl { kind: "azure-openai", .. }
        ));
        let e = problem("[deployments.a]\nkind = \"anthropic\"\napi_key_env = \"A\"\napi_key_secret = \"ssm:/k\"");
        assert_eq!(e, ConfigProblem::TwoKeySources);
        let e = problem("[deployments.a]\nkind = \"gemini\"\napi_key_secret = \"vault:/k\"");
        assert_eq!(e, ConfigProblem::BadSecretRef);
        let e = problem("[deployments.a]\nkind = \"bedrock\"\napi_key_env = \"A\"");
        assert_eq!(e, ConfigProblem::NotForKind { field: "api_key_env", kind: "bedrock" });
        let e = problem("[deployments.a]\nkind = \"anthropic\"\napi_version = \"2024-10-21\"");
        assert_eq!(e, ConfigProblem::NotForKind { field: "api_version", kind: "anthropic" });
        let e = problem("[deployments.a]\nkind = \"openai-compatible\"\nbase_url = \"http://x\"\napi = \"responses\"");
        assert_eq!(e, ConfigProblem::NotForKind { field: "api", kind: "openai-compatible" });
        let e = problem("[deployments.a]\nkind = \"sim\"\nbase_url = \"http://x\"");
        assert_eq!(e, ConfigProblem::NotForKind { field: "base_url", kind: "sim" });
        let e = problem("[deployments.a]\nkind = \"openai-compatible\"\nbase_url = \"ftp://x\"");
        assert!(matches!(e, ConfigProblem::BadBaseUrl(_)));
        let e = problem("[deployments.a]\nkind = \"openai-compatible\"\nbase_url = \"https://u:p@x\"");
        assert!(e.to_string().contains("credentials"));
        let e = problem("[deployments.a]\nkind = \"sim\"\nsim = { latency = { median_ms = 10.0, p99_ms = 5.0 } }");
        assert!(matches!(e, ConfigProblem::BadLatency { .. }));
        let e = problem("[deployments.a]\nkind = \"sim\"\nsim = { faults = { hang = 0.6, reset = 0.6 } }");
        assert!(matches!(e, ConfigProblem::RatesAboveOne(_)));
        let e = problem("[deployments.a]\nkind = \"sim\"\nsim = { faults = { hang = -0.1 } }");
        assert_eq!(e, ConfigProblem::BadRate { name: "hang", value: -0.1 });
        let e = problem("[deployments.a]\nkind = \"sim\"\nconcurrency = 0");
        assert_eq!(e, ConfigProblem::ZeroConcurrency("concurrency".into()));
        let e = problem("[deployments.a]\nkind = \"sim\"\nsim = { outages = [{ start_ms = 1, duration_ms = 0 }] }");
        assert_eq!(e, ConfigProblem::EmptyOutage(0));
    }

    #[test]
    fn a_pasted_key_in_api_key_env_is_rejected_without_being_echoed() {
        let key = "sk-proj-THIS-IS-A-KEY";
        let text = format!(
            "[deployments.a]\nkind = \"openai-compatible\"\nbase_url = \"https://x/v1\"\napi_key_env = \"{key}\""
        );
        let (name, d) = parse(&text).unwrap().into_iter().next().unwrap();
        let err = d.validate(&name).unwrap_err();
        assert_eq!(err.problem, ConfigProblem::BadKeyEnvName);
        assert!(!err.to_string().contains(key));
        assert!(!format!("{err:?}").contains(key));
    }
}
