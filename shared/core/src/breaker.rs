//! Circuit breaker per deployment: closed → open when the failure rate over a sliding window
//! (with a minimum call count) or a run of consecutive failures crosses its threshold; open for a
//! cool-down that grows on repeated opens; half-open admits a few real tasks as probes; their
//! successes close it, a failure re-opens it with a longer cool-down.
//!
//! Pure logic: time comes in as an argument. Only transient failures count as failures; a
//! permanent error is a healthy provider's answer and rate limits belong to the limiter.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::{Millis, duration_ms};

/// Thresholds and cool-downs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Sliding window length, ms.
    pub window_ms: u64,
    /// Calls the window must hold before the failure rate is judged.
    pub min_calls: u32,
    /// Failure rate (0..=1) over the window that opens the breaker.
    pub failure_rate: f64,
    /// Consecutive failures that open the breaker regardless of the window.
    pub consecutive_failures: u32,
    /// First cool-down, ms.
    pub cooldown_ms: u64,
    /// Largest cool-down, ms.
    pub max_cooldown_ms: u64,
    /// Cool-down growth factor per repeated open.
    pub cooldown_multiplier: f64,
    /// Probes admitted while half-open; that many successes close the breaker.
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            window_ms: 30_000,
            min_calls: 20,
            failure_rate: 0.5,
            consecutive_failures: 10,
            cooldown_ms: 5_000,
            max_cooldown_ms: 120_000,
            cooldown_multiplier: 2.0,
            half_open_probes: 3,
        }
    }
}

impl BreakerPolicy {
    /// The cool-down after the `opens`-th consecutive open (1-based).
    #[must_use]
    pub fn cooldown(&self, opens: u32) -> Duration {
        let factor = self.cooldown_multiplier.max(1.0).powi(i32::try_from(opens.saturating_sub(1)).unwrap_or(i32::MAX));
        let ms = (self.cooldown_ms as f64 * factor).min(self.max_cooldown_ms as f64);
        Duration::from_millis(ms as u64)
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are deferred until the cool-down ends.
    Open,
    /// A few probes are admitted.
    HalfOpen,
}

/// What is stored about a breaker (written only when the state changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSnapshot {
    /// State.
    pub state: BreakerState,
    /// Consecutive opens without a close in between (drives the cool-down growth).
    pub opens: u32,
    /// When an open breaker may go half-open.
    pub open_until: Option<Millis>,
    /// When the state last changed.
    pub changed_at: Millis,
}

impl Default for BreakerSnapshot {
    fn default() -> Self {
        Self { state: BreakerState::Closed, opens: 0, open_until: None, changed_at: 0 }
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go; `probe` when admitted as a half-open probe (report its outcome with `probe = true`).
    Allowed {
        /// Whether this call is a probe.
        probe: bool,
    },
    /// Not now; try again at `retry_at`.
    Rejected {
        /// When to ask again.
        retry_at: Millis,
    },
}

/// How a call ended, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// The provider answered (success or a permanent error).
    Healthy,
    /// A transient failure.
    Failure,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: Millis,
    calls: u32,
    failures: u32,
}

/// One deployment's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    snapshot: BreakerSnapshot,
    buckets: VecDeque<Bucket>,
    consecutive_failures: u32,
    probes_out: u32,
    probe_successes: u32,
    /// Calls and failures counted since the last [`Breaker::take_unshared`].
    unshared: (u32, u32),
}

const BUCKETS: i64 = 10;

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(policy: BreakerPolicy) -> Self {
        Self::restore(policy, BreakerSnapshot::default())
    }

    /// A breaker in a stored state (window counts start empty).
    #[must_use]
    pub fn restore(policy: BreakerPolicy, snapshot: BreakerSnapshot) -> Self {
        Self {
            policy,
            snapshot,
            buckets: VecDeque::new(),
            consecutive_failures: 0,
            probes_out: 0,
            probe_successes: 0,
            unshared: (0, 0),
        }
    }

    /// The calls and failures counted since the last take (for a window shared between
    /// processes); resets them.
    pub fn take_unshared(&mut self) -> (u32, u32) {
        std::mem::take(&mut self.unshared)
    }

    /// Put back counts taken but not shared (or carried over to a restored breaker).
    pub fn add_unshared(&mut self, calls: u32, failures: u32) {
        self.unshared.0 = self.unshared.0.saturating_add(calls);
        self.unshared.1 = self.unshared.1.saturating_add(failures);
    }

    /// Where the window judged at `now` starts: a window length back, but not before the last
    /// state change (a breaker that just closed is not re-opened by the failures that opened it).
    #[must_use]
    pub fn window_start(&self, now: Millis) -> Millis {
        now.saturating_sub(i64::try_from(self.policy.window_ms).unwrap_or(i64::MAX)).max(self.snapshot.changed_at)
    }

    /// Judge the failure-rate rule on a window shared between processes (`calls`, `failures`
    /// summed over every process's outcomes, this one's included): a closed breaker opens when
    /// the window holds at least `min_calls` calls and the failure rate reaches its threshold,
    /// the same rule as the local window's. Nothing changes otherwise (an open or half-open
    /// breaker is left to its cool-down and probes). Returns the new state if it changed.
    pub fn judge_shared(&mut self, calls: u32, failures: u32, now: Millis) -> Option<BreakerState> {
        if self.snapshot.state != BreakerState::Closed || !self.rate_exceeded(calls, failures) {
            return None;
        }
        self.open(now);
        Some(BreakerState::Open)
    }

    /// The state as it stands (an open breaker whose cool-down passed still reads open until a
    /// call asks to be admitted).
    #[must_use]
    pub fn snapshot(&self) -> &BreakerSnapshot {
        &self.snapshot
    }

    /// Ask to make a call. May move open → half-open; returns the new state if it changed.
    pub fn admit(&mut self, now: Millis) -> (Admission, Option<BreakerState>) {
        match self.snapshot.state {
            BreakerState::Closed => (Admission::Allowed { probe: false }, None),
            BreakerState::Open => {
                let until = self.snapshot.open_until.unwrap_or(now);
                if now < until {
                    return (Admission::Rejected { retry_at: until }, None);
                }
                self.set_state(BreakerState::HalfOpen, now);
                self.probes_out = 1;
                (Admission::Allowed { probe: true }, Some(BreakerState::HalfOpen))
            }
            BreakerState::HalfOpen if self.probes_out < self.policy.half_open_probes => {
                self.probes_out += 1;
                (Admission::Allowed { probe: true }, None)
            }
            // Probes are out: ask again shortly; their outcomes decide.
            BreakerState::HalfOpen => (Admission::Rejected { retry_at: now + 250 }, None),
        }
    }

    /// An admitted probe did not make its call (deferred elsewhere): free its slot.
    pub fn forget_probe(&mut self) {
        self.probes_out = self.probes_out.saturating_sub(1);
    }

    /// Record a call's result. Returns the new state if it changed.
    pub fn record(&mut self, result: CallResult, probe: bool, now: Millis) -> Option<BreakerState> {
        self.count(result, now);
        match (self.snapshot.state, probe, result) {
            (BreakerState::HalfOpen, true, CallResult::Failure) => {
                self.open(now);
                Some(BreakerState::Open)
            }
            (BreakerState::HalfOpen, true, CallResult::Healthy) => {
                self.probe_successes += 1;
                if self.probe_successes < self.policy.half_open_probes {
                    return None;
                }
                self.snapshot.opens = 0;
                self.snapshot.open_until = None;
                self.buckets.clear();
                self.consecutive_failures = 0;
                self.set_state(BreakerState::Closed, now);
                Some(BreakerState::Closed)
            }
            (BreakerState::Closed, _, CallResult::Failure) if self.should_open() => {
                self.open(now);
                Some(BreakerState::Open)
            }
            // Late results of calls admitted before the state changed do not move it.
            _ => None,
        }
    }

    fn count(&mut self, result: CallResult, now: Millis) {
        let width = (i64::try_from(self.policy.window_ms).unwrap_or(i64::MAX) / BUCKETS).max(1);
        let start = now - now.rem_euclid(width);
        let horizon = now - width * BUCKETS;
        while self.buckets.front().is_some_and(|b| b.start <= horizon) {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|b| b.start != start) {
            self.buckets.push_back(Bucket { start, calls: 0, failures: 0 });
        }
        let bucket = self.buckets.back_mut().expect("just pushed");
        bucket.calls += 1;
        self.unshared.0 = self.unshared.0.saturating_add(1);
        if result == CallResult::Failure {
            self.unshared.1 = self.unshared.1.saturating_add(1);
        }
        match result {
            CallResult::Failure => {
                bucket.failures += 1;
                self.consecutive_failures += 1;
            }
            CallResult::Healthy => self.consecutive_failures = 0,
        }
    }

    fn should_open(&self) -> bool {
        if self.consecutive_failures >= self.policy.consecutive_failures {
            return true;
        }
        let (calls, failures) = self.buckets.iter().fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
        self.rate_exceeded(calls, failures)
    }

    fn rate_exceeded(&self, calls: u32, failures: u32) -> bool {
        calls >= self.policy.min_calls && f64::from(failures) >= self.policy.failure_rate * f64::from(calls)
    }

    fn open(&mut self, now: Millis) {
        self.snapshot.opens += 1;
        self.snapshot.open_until = Some(now + duration_ms(self.policy.cooldown(self.snapshot.opens)));
        self.set_state(BreakerState::Open, now);
    }

    fn set_state(&mut self, state: BreakerState, now: Millis) {
        self.snapshot.state = state;
        self.snapshot.changed_at = now;
        self.probes_out = 0;
        self.probe_successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            window_ms: 10_000,
            min_calls: 4,
            failure_rate: 0.5,
            consecutive_failures: 3,
            cooldown_ms: 1_000,
            max_cooldown_ms: 3_000,
            cooldown_multiplier: 2.0,
            half_open_probes: 2,
        }
    }

    fn trip(b: &mut Breaker, now: Millis) {
        for _ in 0..3 {
            b.record(CallResult::Failure, false, now);
        }
        assert_eq!(b.snapshot().state, BreakerState::Open);
    }

    #[test]
    fn closed_open_half_open_closed() {
        let mut b = Breaker::new(policy());
        assert_eq!(b.admit(0).0, Admission::Allowed { probe: false });
        assert_eq!(b.record(CallResult::Failure, false, 0), None);
        assert_eq!(b.record(CallResult::Failure, false, 0), None);
        assert_eq!(b.record(CallResult::Failure, false, 0), Some(BreakerState::Open));
        assert_eq!(b.admit(999).0, Admission::Rejected { retry_at: 1_000 });
        // Cool-down over: the first caller becomes a probe and the state goes half-open.
        assert_eq!(b.admit(1_000), (Admission::Allowed { probe: true }, Some(BreakerState::HalfOpen)));
        assert_eq!(b.admit(1_001).0, Admission::Allowed { probe: true });
        assert!(matches!(b.admit(1_002).0, Admission::Rejected { .. }), "only two probes");
        assert_eq!(b.record(CallResult::Healthy, true, 1_100), None);
        assert_eq!(b.record(CallResult::Healthy, true, 1_200), Some(BreakerState::Closed));
        assert_eq!(b.snapshot().opens, 0);
        assert_eq!(b.admit(1_300).0, Admission::Allowed { probe: false });
    }

    #[test]
    fn failed_probe_reopens_with_longer_cooldown_capped() {
        let mut b = Breaker::new(policy());
        trip(&mut b, 0);
        assert_eq!(b.snapshot().open_until, Some(1_000));
        b.admit(1_000);
        assert_eq!(b.record(CallResult::Failure, true, 1_050), Some(BreakerState::Open));
        assert_eq!(b.snapshot().open_until, Some(1_050 + 2_000));
        b.admit(3_050);
        b.record(CallResult::Failure, true, 3_060);
        assert_eq!(b.snapshot().open_until, Some(3_060 + 3_000), "capped at max_cooldown_ms");
        assert_eq!(b.snapshot().opens, 3);
    }

    #[test]
    fn failure_rate_over_window_with_minimum_calls() {
        let mut b = Breaker::new(BreakerPolicy { consecutive_failures: 100, ..policy() });
        // 1 failure in 1 call: 100% but below min_calls.
        assert_eq!(b.record(CallResult::Failure, false, 0), None);
        b.record(CallResult::Healthy, false, 10);
        b.record(CallResult::Healthy, false, 20);
        // 2 of 4 calls failed: 50% at min_calls → open.
        assert_eq!(b.record(CallResult::Failure, false, 30), Some(BreakerState::Open));
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let mut b = Breaker::new(BreakerPolicy { consecutive_failures: 100, ..policy() });
        b.record(CallResult::Failure, false, 0);
        b.record(CallResult::Failure, false, 0);
        b.record(CallResult::Healthy, false, 0);
        // 11 s later the first three have left the 10 s window: 1 failure in 4 calls.
        for t in [11_000, 11_001, 11_002] {
            b.record(CallResult::Healthy, false, t);
        }
        assert_eq!(b.record(CallResult::Failure, false, 11_003), None);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn successes_reset_the_consecutive_run_and_late_results_are_ignored() {
        let mut b = Breaker::new(BreakerPolicy { min_calls: 100, ..policy() });
        b.record(CallResult::Failure, false, 0);
        b.record(CallResult::Failure, false, 0);
        b.record(CallResult::Healthy, false, 0);
        b.record(CallResult::Failure, false, 0);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        trip(&mut b, 1);
        // A call admitted before the open reports late: no change.
        assert_eq!(b.record(CallResult::Healthy, false, 2), None);
        assert_eq!(b.snapshot().state, BreakerState::Open);
    }

    #[test]
    fn forgotten_probe_frees_its_slot() {
        let mut b = Breaker::new(policy());
        trip(&mut b, 0);
        b.admit(1_000);
        b.admit(1_000);
        assert!(matches!(b.admit(1_000).0, Admission::Rejected { .. }));
        b.forget_probe();
        assert_eq!(b.admit(1_000).0, Admission::Allowed { probe: true });
    }

    #[test]
    fn shared_window_opens_a_closed_breaker_by_the_same_rule() {
        let mut b = Breaker::new(policy());
        assert_eq!(b.judge_shared(3, 3, 0), None, "below min_calls");
        assert_eq!(b.judge_shared(10, 4, 0), None, "40% < 50%");
        assert_eq!(b.judge_shared(10, 5, 100), Some(BreakerState::Open));
        assert_eq!(b.snapshot().open_until, Some(1_100));
        assert_eq!(b.snapshot().opens, 1);
        assert_eq!(b.judge_shared(10, 10, 200), None, "already open");
        b.admit(1_100);
        assert_eq!(b.judge_shared(10, 10, 1_200), None, "half-open is left to its probes");
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    }

    #[test]
    fn the_shared_window_starts_at_the_last_change() {
        let mut b = Breaker::new(policy());
        assert_eq!(b.window_start(50_000), 40_000);
        b.judge_shared(10, 10, 45_000);
        assert_eq!(b.window_start(50_000), 45_000);
    }

    #[test]
    fn unshared_counts_are_taken_once() {
        let mut b = Breaker::new(BreakerPolicy { consecutive_failures: 100, min_calls: 100, ..policy() });
        b.record(CallResult::Failure, false, 0);
        b.record(CallResult::Healthy, false, 1);
        b.record(CallResult::Failure, false, 2);
        assert_eq!(b.take_unshared(), (3, 2));
        assert_eq!(b.take_unshared(), (0, 0));
        b.add_unshared(1, 1);
        assert_eq!(b.take_unshared(), (1, 1));
    }

    #[test]
    fn restore_keeps_open_state() {
        let mut b = Breaker::new(policy());
        trip(&mut b, 0);
        let mut restored = Breaker::restore(policy(), b.snapshot().clone());
        assert_eq!(restored.admit(500).0, Admission::Rejected { retry_at: 1_000 });
    }
}
