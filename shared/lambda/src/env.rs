//! The functions' configuration, read once from the environment at start (names as in
//! `template.yaml`), failing fast with a message that names the missing or bad variable.

use std::time::Duration;

use taskexec_core::task::TaskPriority;
use taskexec_providers::settings::RunConfig;

use taskexec_core::ports::{QueuePair, Topology};

/// A variable is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Not set.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// Set but invalid.
    #[error("environment variable {name} is invalid: {why}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Everything the functions read from the environment.
#[derive(Debug, Clone)]
pub struct FunctionEnv {
    /// `TASKEXEC_TABLE`.
    pub table: String,
    /// `TASKEXEC_QUEUE_URL_{HIGH,NORMAL,LOW}` and `TASKEXEC_DLQ_URL_{HIGH,NORMAL,LOW}`.
    pub topology: Topology,
    /// `TASKEXEC_CONFIG`: the run config (TOML).
    pub config: RunConfig,
    /// `TASKEXEC_WORKER_TIMEOUT_SECONDS`.
    pub worker_timeout: Duration,
    /// `TASK_RETENTION_DAYS` (optional, default 30): how long a finished task's items are kept
    /// (DynamoDB TTL); `None` (0 days) keeps them for ever.
    pub task_retention: Option<Duration>,
    /// `TASKEXEC_REFRESH_AFTER_RECEIVES` (optional, default the worker's, half of
    /// [`crate::worker::MAX_RECEIVE_COUNT`]): receives after which the worker re-sends a deferred
    /// message fresh; must stay below the queues' `maxReceiveCount`.
    pub refresh_after_receives: u32,
}

/// Default of `TASK_RETENTION_DAYS`.
pub const DEFAULT_TASK_RETENTION_DAYS: u64 = 30;

impl FunctionEnv {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read from `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.is_empty()).ok_or(EnvError::Missing(name));
        let pair = |priority, queue: &'static str, dlq: &'static str| -> Result<QueuePair, EnvError> {
            Ok(QueuePair { priority, url: get(queue)?, dlq_url: get(dlq)? })
        };
        let topology = Topology {
            queues: [
                pair(TaskPriority::High, "TASKEXEC_QUEUE_URL_HIGH", "TASKEXEC_DLQ_URL_HIGH")?,
                pair(TaskPriority::Normal, "TASKEXEC_QUEUE_URL_NORMAL", "TASKEXEC_DLQ_URL_NORMAL")?,
                pair(TaskPriority::Low, "TASKEXEC_QUEUE_URL_LOW", "TASKEXEC_DLQ_URL_LOW")?,
            ],
        };
        let config = RunConfig::parse(&get("TASKEXEC_CONFIG")?)
            .map_err(|e| EnvError::Invalid { name: "TASKEXEC_CONFIG", why: e.to_string() })?;
        let timeout = get("TASKEXEC_WORKER_TIMEOUT_SECONDS")?;
        let seconds: u64 = timeout.parse().map_err(|_| EnvError::Invalid {
            name: "TASKEXEC_WORKER_TIMEOUT_SECONDS",
            why: format!("`{timeout}` is not a number"),
        })?;
        let days = number(&lookup, "TASK_RETENTION_DAYS")?.unwrap_or(DEFAULT_TASK_RETENTION_DAYS);
        let refresh = number(&lookup, "TASKEXEC_REFRESH_AFTER_RECEIVES")?;
        Ok(Self {
            table: get("TASKEXEC_TABLE")?,
            topology,
            config,
            worker_timeout: Duration::from_secs(seconds),
            task_retention: (days > 0).then(|| Duration::from_secs(days * 24 * 3600)),
            refresh_after_receives: refresh
                .map_or(crate::worker::WorkerSettings::default().refresh_after_receives, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX)
                }),
        })
    }
}

/// An optional whole number; set but not a number is an error naming the variable.
fn number(lookup: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<Option<u64>, EnvError> {
    let Some(value) = lookup(name).filter(|v| !v.is_empty()) else { return Ok(None) };
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| EnvError::Invalid { name, why: format!("`{value}` is not a whole number") })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars() -> HashMap<String, String> {
        let mut m = HashMap::new();
        for p in ["HIGH", "NORMAL", "LOW"] {
            m.insert(format!("TASKEXEC_QUEUE_URL_{p}"), format!("http://q/{p}"));
            m.insert(format!("TASKEXEC_DLQ_URL_{p}"), format!("http://q/{p}-dlq"));
        }
        m.insert("TASKEXEC_TABLE".into(), "t".into());
        m.insert("TASKEXEC_CONFIG".into(), "[deployments.sim]\nkind = \"sim\"\n".into());
        m.insert("TASKEXEC_WORKER_TIMEOUT_SECONDS".into(), "120".into());
        m
    }

    #[test]
    fn reads_every_variable() {
        let v = vars();
        let env = FunctionEnv::from_lookup(|n| v.get(n).cloned()).unwrap();
        assert_eq!(env.table, "t");
        assert_eq!(env.topology.for_priority(TaskPriority::Low).dlq_url, "http://q/LOW-dlq");
        assert_eq!(env.worker_timeout, Duration::from_secs(120));
        assert!(env.config.deployments.contains_key("sim"));
        assert_eq!(env.task_retention, Some(Duration::from_secs(30 * 24 * 3600)), "default");
        assert_eq!(env.refresh_after_receives, 5, "default: half of maxReceiveCount 10");
        let mut v = vars();
        v.insert("TASK_RETENTION_DAYS".into(), "0".into());
        v.insert("TASKEXEC_REFRESH_AFTER_RECEIVES".into(), "4".into());
        let env = FunctionEnv::from_lookup(|n| v.get(n).cloned()).unwrap();
        assert_eq!((env.task_retention, env.refresh_after_receives), (None, 4));
        v.insert("TASK_RETENTION_DAYS".into(), "a month".into());
        let err = FunctionEnv::from_lookup(|n| v.get(n).cloned()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable TASK_RETENTION_DAYS is invalid: `a month` is not a whole number"
        );
    }

    #[test]
    fn names_what_is_missing_or_bad() {
        let mut v = vars();
        v.remove("TASKEXEC_DLQ_URL_NORMAL");
        let err = FunctionEnv::from_lookup(|n| v.get(n).cloned()).unwrap_err();
        assert_eq!(err.to_string(), "environment variable TASKEXEC_DLQ_URL_NORMAL is not set");
        let mut v = vars();
        v.insert("TASKEXEC_CONFIG".into(), "[engine]\nconcurency = 1\n".into());
        let err = FunctionEnv::from_lookup(|n| v.get(n).cloned()).unwrap_err();
        assert!(err.to_string().starts_with("environment variable TASKEXEC_CONFIG is invalid"), "{err}");
    }
}
