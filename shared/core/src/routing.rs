//! Routes: a name a task may give as its `providerId` instead of a deployment, standing for
//! several deployments that serve the same model (other providers, regions or keys), each with
//! its own model id and a weight. The engine tries them in [`RouteSpec::order`]: weighted least
//! in flight first; one whose breaker is open, whose quota is spent or whose concurrency is full
//! is passed over for the next. So traffic splits by weight while all are healthy, moves off a
//! failing or throttled deployment at once, and comes back when it recovers (its breaker's
//! probes succeed). Every attempt records the deployment and model that served it.

use serde::{Deserialize, Serialize};

/// One deployment of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    /// The deployment.
    pub deployment: String,
    /// The model id this deployment knows the model by (default: the task's `modelId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Its share of the traffic, relative to the others' (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A route: the deployments it spreads over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The deployments, in order of preference among equals.
    pub targets: Vec<RouteTarget>,
}

impl RouteSpec {
    /// The targets in the order to try them: by calls in flight per unit of weight, fewest
    /// first; then by calls started so far per unit of weight (so one call at a time still
    /// splits by weight); then the heavier, then the earlier in the list. `load` gives a
    /// deployment's (calls in flight, calls started).
    pub fn order(&self, load: impl Fn(&str) -> (u32, u64)) -> Vec<&RouteTarget> {
        let mut targets: Vec<(usize, &RouteTarget, (u32, u64))> =
            self.targets.iter().enumerate().map(|(i, t)| (i, t, load(&t.deployment))).collect();
        // Compare x_a / weight_a with x_b / weight_b without division.
        let per_weight = |x_a: u64, a: &RouteTarget, x_b: u64, b: &RouteTarget| {
            (u128::from(x_a) * u128::from(b.weight.max(1))).cmp(&(u128::from(x_b) * u128::from(a.weight.max(1))))
        };
        targets.sort_by(|(i, a, (busy_a, started_a)), (j, b, (busy_b, started_b))| {
            per_weight(u64::from(*busy_a), a, u64::from(*busy_b), b)
                .then(per_weight(*started_a, a, *started_b, b))
                .then(b.weight.cmp(&a.weight))
                .then(i.cmp(j))
        });
        targets.into_iter().map(|(_, t, _)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn route(weights: &[(&str, u32)]) -> RouteSpec {
        let targets =
            weights.iter().map(|(d, w)| RouteTarget { deployment: (*d).into(), model: None, weight: *w }).collect();
        RouteSpec { targets }
    }

    #[test]
    fn weighted_least_in_flight_spreads_by_weight() {
        let r = route(&[("a", 2), ("b", 1)]);
        let mut busy: HashMap<String, u32> = HashMap::new();
        // Each pick stays in flight: the split follows the weights.
        for _ in 0..30 {
            let pick = r.order(|d| (busy.get(d).copied().unwrap_or(0), 0))[0].deployment.clone();
            *busy.entry(pick).or_default() += 1;
        }
        assert_eq!((busy["a"], busy["b"]), (20, 10));
        // One call at a time (nothing in flight): the calls started split by weight too.
        let mut started: HashMap<String, u64> = HashMap::new();
        for _ in 0..30 {
            let pick = r.order(|d| (0, started.get(d).copied().unwrap_or(0)))[0].deployment.clone();
            *started.entry(pick).or_default() += 1;
        }
        assert_eq!((started["a"], started["b"]), (20, 10));
    }

    #[test]
    fn every_target_is_offered_least_loaded_first() {
        let r = route(&[("a", 1), ("b", 1), ("c", 1)]);
        let busy = |d: &str| match d {
            "a" => (3, 0),
            "b" => (1, 9),
            _ => (2, 0),
        };
        let order: Vec<_> = r.order(busy).into_iter().map(|t| t.deployment.as_str()).collect();
        assert_eq!(order, ["b", "c", "a"]);
    }
}
