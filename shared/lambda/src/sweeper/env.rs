//! What only the sweeper reads from the environment, at its edge: kept out of
//! [`crate::env::FunctionEnv`] (and out of `env.rs`, whose variables every function is given),
//! so the other functions never need these.

use std::time::Duration;

use crate::env::EnvError;

/// What only the sweeper reads, at its edge (the other functions never need it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperEnv {
    /// `TASKEXEC_EVENT_SOURCE_MAPPINGS`: the UUIDs of the high, normal and low queues' event source
    /// mappings, comma-separated in that order. Unset or empty: no rebalancing.
    pub mappings: Option<[String; 3]>,
    /// `TASKEXEC_STUCK_RUN_MINUTES` (default 15): a run with unfinished tasks and no finish for
    /// this long is stuck.
    pub stuck_after: Duration,
    /// `TASKEXEC_RESEND_GRACE_SECONDS` (default 120, [`super::resend::DEFAULT_RESEND_GRACE`]):
    /// how long a task's state must have been still before its message may be judged missing
    /// (see [`super::resend`]).
    pub resend_grace: Duration,
}

impl SweeperEnv {
    /// Read the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read from `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        const MAPPINGS: &str = "TASKEXEC_EVENT_SOURCE_MAPPINGS";
        const STUCK: &str = "TASKEXEC_STUCK_RUN_MINUTES";
        const GRACE: &str = "TASKEXEC_RESEND_GRACE_SECONDS";
        let mappings = match lookup(MAPPINGS).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
            None => None,
            Some(list) => {
                let ids: Vec<String> = list.split(',').map(|id| id.trim().to_owned()).collect();
                let ids: [String; 3] = ids.try_into().map_err(|ids: Vec<String>| EnvError::Invalid {
                    name: MAPPINGS,
                    why: format!("expected 3 comma-separated UUIDs (high,normal,low), got {}", ids.len()),
                })?;
                if ids.iter().any(String::is_empty) {
                    return Err(EnvError::Invalid { name: MAPPINGS, why: "an empty UUID".into() });
                }
                Some(ids)
            }
        };
        let stuck_after = match lookup(STUCK).filter(|v| !v.is_empty()) {
            None => super::stuck::DEFAULT_STUCK_AFTER,
            Some(v) => match v.parse::<u64>() {
                Ok(minutes) if minutes > 0 => Duration::from_secs(minutes * 60),
                _ => return Err(EnvError::Invalid { name: STUCK, why: format!("`{v}` is not a positive number") }),
            },
        };
        let resend_grace = match lookup(GRACE).filter(|v| !v.is_empty()) {
            None => super::resend::DEFAULT_RESEND_GRACE,
            Some(v) => match v.parse::<u64>() {
                // Below a minute the SQS counts the rule reads may still lag behind a send.
                Ok(seconds) if seconds >= 60 => Duration::from_secs(seconds),
                _ => {
                    return Err(EnvError::Invalid {
                        name: GRACE,
                        why: format!("`{v}` is not a number of seconds ≥ 60"),
                    });
                }
            },
        };
        Ok(Self { mappings, stuck_after, resend_grace })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_sweepers_variables_are_optional_and_checked() {
        let none = SweeperEnv::from_lookup(|_| None).unwrap();
        assert_eq!((none.mappings, none.stuck_after), (None, Duration::from_secs(900)));
        assert_eq!(none.resend_grace, Duration::from_secs(120));
        let v: HashMap<&str, &str> = HashMap::from([
            ("TASKEXEC_EVENT_SOURCE_MAPPINGS", "a, b ,c"),
            ("TASKEXEC_STUCK_RUN_MINUTES", "5"),
            ("TASKEXEC_RESEND_GRACE_SECONDS", "600"),
        ]);
        let env = SweeperEnv::from_lookup(|n| v.get(n).map(|s| (*s).to_owned())).unwrap();
        assert_eq!(env.mappings, Some(["a".into(), "b".into(), "c".into()]));
        assert_eq!(env.stuck_after, Duration::from_secs(300));
        assert_eq!(env.resend_grace, Duration::from_secs(600));
        for (name, bad) in [
            ("TASKEXEC_EVENT_SOURCE_MAPPINGS", "a,b"),
            ("TASKEXEC_EVENT_SOURCE_MAPPINGS", "a,,c"),
            ("TASKEXEC_STUCK_RUN_MINUTES", "0"),
            ("TASKEXEC_RESEND_GRACE_SECONDS", "30"),
            ("TASKEXEC_RESEND_GRACE_SECONDS", "soon"),
        ] {
            let err = SweeperEnv::from_lookup(|n| (n == name).then(|| bad.to_owned())).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
