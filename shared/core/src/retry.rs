//! Retry policy: how many attempts, and how long to wait before the next one. Exponential
//! backoff with full jitter (the delay is uniform in `0..=min(cap, base·2ⁿ⁻¹)`), and the
//! provider's `Retry-After` honoured: the larger of the two wins.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Retry limits and backoff shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Provider calls a task may use (429s excluded). 1 means no retry.
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry, ms.
    pub base_delay_ms: u64,
    /// Largest backoff ceiling, ms.
    pub max_delay_ms: u64,
    /// Rate-limit answers a task may receive before it fails as `rateLimited`.
    pub throttle_budget: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay_ms: 500, max_delay_ms: 30_000, throttle_budget: 20 }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts.
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The upper bound of the jittered delay before retry number `n` (1 = first retry).
    #[must_use]
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(32);
        let ms = self.base_delay_ms.saturating_mul(1u64 << exp).min(self.max_delay_ms);
        Duration::from_millis(ms)
    }

    /// The delay before retry number `n`: full jitter under [`Self::ceiling`], or the provider's
    /// `retry_after` if that is longer.
    pub fn delay_for(&self, n: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(n).as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// Whether a task that has used `attempt` calls may make another.
    #[must_use]
    pub fn attempts_left(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let p = RetryPolicy { base_delay_ms: 100, max_delay_ms: 1_000, ..RetryPolicy::default() };
        let ceilings: Vec<_> = (1..=6).map(|n| p.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.ceiling(200), Duration::from_millis(1_000), "no overflow at large n");
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let p = RetryPolicy { base_delay_ms: 100, max_delay_ms: 10_000, ..RetryPolicy::default() };
        let mut rng = StdRng::seed_from_u64(7);
        for n in 1..=5 {
            let ceiling = p.ceiling(n);
            let delays: Vec<_> = (0..2_000).map(|_| p.delay_for(n, None, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {n} above {ceiling:?}");
            let min = delays.iter().min().unwrap();
            let max = delays.iter().max().unwrap();
            // Full jitter covers the whole range, not just the top of it.
            assert!(*min < ceiling / 10, "retry {n}: min {min:?}");
            assert!(*max > ceiling * 9 / 10, "retry {n}: max {max:?}");
        }
    }

    #[test]
    fn retry_after_wins_when_larger() {
        let p = RetryPolicy { base_delay_ms: 100, max_delay_ms: 1_000, ..RetryPolicy::default() };
        let mut rng = StdRng::seed_from_u64(1);
        let long = Duration::from_secs(5);
        for _ in 0..100 {
            assert_eq!(p.delay_for(1, Some(long), &mut rng), long);
        }
        // A short Retry-After never shortens the backoff below it; it only sets a floor.
        for _ in 0..100 {
            let d = p.delay_for(3, Some(Duration::from_millis(10)), &mut rng);
            assert!(d >= Duration::from_millis(10) && d <= p.ceiling(3));
        }
    }

    #[test]
    fn attempts_budget() {
        let p = RetryPolicy::default().with_max_attempts(2);
        assert!(p.attempts_left(1));
        assert!(!p.attempts_left(2));
    }
}
