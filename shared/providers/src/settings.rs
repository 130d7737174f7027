//! The run configuration (TOML): engine settings, retry and breaker policies, deployments. The
//! same format for `taskexec run`/`serve` (a file) and the Lambda functions (`TASKEXEC_CONFIG`).
//! Parsed once, at the edge; keys are read from the environment by the deployments' adapters
//! (the config names the variable, never holds the key).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use taskexec_core::breaker::BreakerPolicy;
use taskexec_core::engine::{EngineConfig, Limits};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::routing::RouteSpec;

use crate::config::DeploymentConfig;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// `[engine]`.
    pub engine: EngineSection,
    /// `[retry]`.
    pub retry: RetryPolicy,
    /// `[breaker]`.
    pub breaker: BreakerPolicy,
    /// `[deployments.NAME]`.
    pub deployments: BTreeMap<String, DeploymentConfig>,
    /// `[routes.NAME]`: names tasks may use as `providerId`, spread over deployments.
    pub routes: BTreeMap<String, RouteSpec>,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Tasks in flight at once (the global limit); `--concurrency` overrides it.
    pub concurrency: usize,
    /// Attempt timeout of tasks that set no `timeout`, ms.
    pub default_timeout_ms: u64,
    /// Lease length, ms (renewed every third of it during long calls).
    pub lease_ms: u64,
    /// A waiting task is promoted one priority class per this many ms.
    pub aging_ms: u64,
    /// Seed for backoff jitter (reproducible runs).
    pub seed: Option<u64>,
    /// Output tokens a task without `maxTokens` reserves against a deployment's token quota.
    pub default_max_tokens: u64,
    /// Whether a deployment's `concurrency` adapts to rate-limit answers (halved on a 429,
    /// grown back on successes, never above the configured value).
    pub adaptive_concurrency: bool,
    /// The AWS shape: the slot length, ms, of the ledger through which every worker container
    /// shares the per-minute quotas (`taskexec_core::fleet`; 2,000: at most 94 % of a quota
    /// usable a minute, 1,000: 97 %, with twice the writes). The embedded shape ignores it.
    pub quota_slot_ms: u64,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            concurrency: 64,
            default_timeout_ms: 60_000,
            lease_ms: 30_000,
            aging_ms: 10_000,
            seed: None,
            default_max_tokens: 1_024,
            adaptive_concurrency: true,
            quota_slot_ms: 2_000,
        }
    }
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not valid TOML for this format.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// Parsed, but a value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl RunConfig {
    /// Parse and check TOML text.
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// A config with one `sim` deployment named `sim`.
    #[must_use]
    pub fn builtin() -> Self {
        let sim: DeploymentConfig = toml::from_str("kind = \"sim\"\n[sim]\n").expect("the built-in deployment parses");
        Self { deployments: [("sim".to_owned(), sim)].into(), ..Self::default() }
    }

    fn check(&self) -> Result<(), SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_owned()));
        if self.engine.concurrency == 0 {
            return invalid("engine.concurrency must be at least 1");
        }
        if !(100..=60_000).contains(&self.engine.quota_slot_ms) {
            return invalid("engine.quota_slot_ms must be within 100..=60000");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.breaker.failure_rate) {
            return invalid("breaker.failure_rate must be within 0..=1");
        }
        if self.deployments.is_empty() {
            return invalid("no deployments: add at least one [deployments.NAME] table");
        }
        for (name, route) in &self.routes {
            if self.deployments.contains_key(name) {
                return invalid(&format!("routes.{name}: a deployment has this name already"));
            }
            if route.targets.is_empty() {
                return invalid(&format!("routes.{name}: no targets"));
            }
            for target in &route.targets {
                if !self.deployments.contains_key(&target.deployment) {
                    return invalid(&format!("routes.{name}: no deployment named `{}`", target.deployment));
                }
                if target.weight == 0 {
                    return invalid(&format!(
                        "routes.{name}: the weight of `{}` must be at least 1",
                        target.deployment
                    ));
                }
            }
        }
        Ok(())
    }

    /// The concurrency limits the deployments declare.
    #[must_use]
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        for (name, d) in &self.deployments {
            if let Some(n) = d.concurrency {
                limits.deployments.insert(name.clone(), n);
            }
            for (model, n) in &d.model_concurrency {
                limits.models.insert((name.clone(), model.clone()), *n);
            }
        }
        limits
    }

    /// Lease length.
    #[must_use]
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.engine.lease_ms.max(1_000))
    }

    /// The slot length of the AWS shape's quota ledger (`[engine] quota_slot_ms`).
    #[must_use]
    pub fn quota_slot(&self) -> Duration {
        Duration::from_millis(self.engine.quota_slot_ms)
    }

    /// The engine's settings, for a worker named `owner`.
    #[must_use]
    pub fn engine_config(&self, owner: String) -> EngineConfig {
        EngineConfig {
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            lease: self.lease(),
            default_timeout: Duration::from_millis(self.engine.default_timeout_ms),
            limits: self.limits(),
            owner,
            seed: self.engine.seed,
            quotas: self.deployments.iter().map(|(name, d)| (name.clone(), d.quota())).collect(),
            model_quotas: self
                .deployments
                .iter()
                .flat_map(|(name, d)| d.model_quotas.iter().map(|(model, q)| ((name.clone(), model.clone()), *q)))
                .collect(),
            aging: Duration::from_millis(self.engine.aging_ms),
            default_max_tokens: self.engine.default_max_tokens,
            adaptive_concurrency: self.engine.adaptive_concurrency,
            routes: self.routes.clone(),
            ..EngineConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_quotas_reach_the_engine_and_bad_routes_are_named() {
        let base = "[deployments.a]\nkind = \"sim\"\nrpm = 60\ntpm = 1000\n[deployments.a.sim]\n\
                    [deployments.b]\nkind = \"sim\"\n[deployments.b.sim]\n";
        let good = format!(
            "{base}[routes.r]\ntargets = [{{ deployment = \"a\", weight = 3 }}, {{ deployment = \"b\", model = \"m2\" }}]\n"
        );
        let engine = RunConfig::parse(&good).unwrap().engine_config("w".into());
        let route = &engine.routes["r"];
        assert_eq!((route.targets[0].weight, route.targets[1].weight), (3, 1));
        assert_eq!(route.targets[1].model.as_deref(), Some("m2"));
        assert_eq!((engine.quotas["a"].rpm, engine.quotas["a"].tpm), (Some(60), Some(1000)));
        assert!(engine.quotas["b"].is_unlimited());
        for (route, problem) in [
            ("[routes.r]\ntargets = [{ deployment = \"nowhere\" }]", "routes.r: no deployment named `nowhere`"),
            ("[routes.a]\ntargets = [{ deployment = \"b\" }]", "routes.a: a deployment has this name already"),
            ("[routes.r]\ntargets = []", "routes.r: no targets"),
            (
                "[routes.r]\ntargets = [{ deployment = \"a\", weight = 0 }]",
                "routes.r: the weight of `a` must be at least 1",
            ),
        ] {
            let error = RunConfig::parse(&format!("{base}{route}\n")).unwrap_err().to_string();
            assert_eq!(error, problem);
        }
    }

    #[test]
    fn the_quota_slot_is_read_and_bounded() {
        let base = "[deployments.a]\nkind = \"sim\"\n[deployments.a.sim]\n";
        assert_eq!(RunConfig::parse(base).unwrap().quota_slot(), Duration::from_secs(2));
        let one = RunConfig::parse(&format!("[engine]\nquota_slot_ms = 1000\n{base}")).unwrap();
        assert_eq!(one.quota_slot(), Duration::from_secs(1));
        let error = RunConfig::parse(&format!("[engine]\nquota_slot_ms = 0\n{base}")).unwrap_err().to_string();
        assert!(error.contains("quota_slot_ms"), "{error}");
    }

    #[test]
    fn model_quotas_reach_the_engine_and_a_zero_budget_is_named() {
        let text = "[deployments.a]\nkind = \"sim\"\nrpm = 60\n\
                    model_quotas = { \"m1\" = { rpm = 5, tpm = 900 } }\n[deployments.a.sim]\n";
        let engine = RunConfig::parse(text).unwrap().engine_config("w".into());
        let quota = engine.model_quotas[&("a".to_owned(), "m1".to_owned())];
        assert_eq!((quota.rpm, quota.tpm, quota.rpd), (Some(5), Some(900), None));
        let zero = text.replace("tpm = 900", "tpm = 0");
        let config = RunConfig::parse(&zero).map(|c| c.deployments["a"].validate("a").map_err(|e| e.to_string()));
        let error = match config {
            Ok(checked) => checked.unwrap_err(),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("model_quotas.m1.tpm"), "{error}");
        let typo = text.replace("tpm = 900", "tmp = 900");
        assert!(RunConfig::parse(&typo).is_err(), "an unknown budget name is refused");
    }

    #[test]
    fn the_example_configs_are_valid() {
        for (name, text) in [
            ("quickstart.toml", include_str!("../../../examples/quickstart.toml")),
            ("providers.toml", include_str!("../../../examples/providers.toml")),
        ] {
            let config = RunConfig::parse(text).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
            for (deployment, d) in &config.deployments {
                d.validate(deployment).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
            }
        }
    }

    #[test]
    fn parses_a_full_config_and_derives_limits() {
        let config: RunConfig = toml::from_str(
            r#"
            [engine]
            concurrency = 8
            [retry]
            max_attempts = 4
            [breaker]
            consecutive_failures = 3
            [deployments.fast]
            kind = "sim"
            concurrency = 5
            model_concurrency = { "m1" = 2 }
            [deployments.fast.sim]
            [deployments.local]
            kind = "openai-compatible"
            base_url = "http://127.0.0.1:8080/v1"
            api_key_env = "LOCAL_KEY"
            "#,
        )
        .unwrap();
        config.check().unwrap();
        assert_eq!(config.engine.concurrency, 8);
        assert_eq!(config.retry.max_attempts, 4);
        assert_eq!(config.retry.throttle_budget, 20, "unset fields keep their defaults");
        let limits = config.limits();
        assert_eq!(limits.deployments.get("fast"), Some(&5));
        assert_eq!(limits.models.get(&("fast".into(), "m1".into())), Some(&2));
        assert!(!limits.deployments.contains_key("local"));
    }

    #[test]
    fn rejects_unknown_keys_and_empty_deployments() {
        assert!(toml::from_str::<RunConfig>("[engine]\nconcurency = 3\n").is_err());
        assert!(RunConfig::default().check().is_err());
        RunConfig::builtin().check().unwrap();
    }
}
