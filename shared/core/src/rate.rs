//! Provider quotas as the providers count them, and a concurrency limit that adapts to their
//! answers: the policy code both shapes run (pure, on a clock passed in, so it is tested on a
//! virtual clock).
//!
//! **Rate limits** ([`RateLimiter`]): requests and tokens per minute (tokens as one budget, or
//! input and output apart as Anthropic counts them) and requests per day. Each budget is a
//! sliding window over a log of reservations: a call is admitted only if everything reserved in
//! the last window plus its own reservation fits the budget, so no window of that length ever
//! holds more than the budget (a token bucket would let twice the budget through across a
//! boundary). Before a call a task reserves one request and its estimated tokens (prompt
//! estimate + `maxTokens`); after the call the reservation is reconciled with the usage the
//! provider reported, which gives unused tokens back. The provider's own rate-limit headers
//! correct the local view: when it says fewer remain than the log does, the difference is held
//! until its reset. Written by hand: the well-kept crates (`governor`) are GCRA token buckets
//! without variable-cost reservations that can be reconciled afterwards.
//!
//! **Adaptive concurrency** ([`AdaptiveLimit`]): additive increase, multiplicative decrease, as
//! TCP does: a 429 or an overloaded answer halves the limit (once per cool-down, so one burst of
//! 429s counts once) and holds new calls until its `Retry-After`; each success adds
//! `1 / limit`, so the limit grows by about one per limit's worth of successes.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::{LimitKind, RateLimits};
use crate::time::{Millis, duration_ms};

const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * 60 * MINUTE;
/// How much longer than the provider's window a reservation counts. The provider counts a call
/// from when it arrives, a little after the reservation was stamped: without a margin, a call
/// sent as an old reservation leaves the local window can reach the provider before that old
/// call left the provider's window, and be refused (measured against a local server enforcing
/// its quota: 5 of 80 calls refused at the minute's edge without the margin).
const ARRIVAL_MARGIN: Millis = 1_000;
/// How long a reservation counts in a per-minute budget: the provider's minute and
/// [`ARRIVAL_MARGIN`] (the window the fleet's slot ledger bounds too, [`crate::fleet`]).
pub(crate) const MINUTE_SPAN: Millis = MINUTE + ARRIVAL_MARGIN;

/// A deployment's quota, as its provider counts it. Absent budgets are not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct Quota {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute, input and output together.
    pub tpm: Option<u64>,
    /// Input tokens per minute.
    pub input_tpm: Option<u64>,
    /// Output tokens per minute.
    pub output_tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
}

impl Quota {
    /// Whether no budget is set.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// The name of a budget set to zero (it would never admit a call), if any.
    #[must_use]
    pub fn zero_budget(&self) -> Option<&'static str> {
        let budgets = [("rpm", self.rpm), ("tpm", self.tpm), ("input_tpm", self.input_tpm)];
        let budgets = budgets.into_iter().chain([("output_tpm", self.output_tpm), ("rpd", self.rpd)]);
        budgets.into_iter().find(|(_, n)| *n == Some(0)).map(|(name, _)| name)
    }
}

/// What one call asks for: one request and its estimated tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens reserved (the task's `maxTokens`, or the configured default).
    pub output_tokens: u64,
}

impl Ask {
    /// The estimate for a prompt of `prompt_chars` characters answering at most `max_tokens`:
    /// about four characters per token (rounded up, at least one token).
    #[must_use]
    pub fn estimate(prompt_chars: usize, max_tokens: u64) -> Self {
        let input_tokens = (prompt_chars as u64).div_ceil(4).max(1);
        Self { input_tokens, output_tokens: max_tokens }
    }
}

/// Which budget a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    RequestsPerMinute,
    TokensPerMinute,
    InputTokensPerMinute,
    OutputTokensPerMinute,
    RequestsPerDay,
}

impl Budget {
    /// How long a reservation counts: the provider's window and [`ARRIVAL_MARGIN`].
    fn span(self) -> Millis {
        ARRIVAL_MARGIN + if self == Self::RequestsPerDay { DAY } else { MINUTE }
    }

    /// What a call with these tokens costs in this budget.
    fn cost(self, input: u64, output: u64) -> u64 {
        match self {
            Self::RequestsPerMinute | Self::RequestsPerDay => 1,
            Self::TokensPerMinute => input + output,
            Self::InputTokensPerMinute => input,
            Self::OutputTokensPerMinute => output,
        }
    }

    /// The header kind that reports this budget (per minute only: providers report minutes).
    fn reported_as(self) -> Option<LimitKind> {
        match self {
            Self::RequestsPerMinute => Some(LimitKind::Requests),
            Self::TokensPerMinute => Some(LimitKind::Tokens),
            Self::InputTokensPerMinute => Some(LimitKind::InputTokens),
            Self::OutputTokensPerMinute => Some(LimitKind::OutputTokens),
            Self::RequestsPerDay => None,
        }
    }
}

/// One reservation (or a hold from the provider's headers, `id` 0) in a window's log.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Millis,
    amount: u64,
    id: u64,
}

/// A sliding window: the log of what was reserved in the last `span`, never more than `budget`.
#[derive(Debug, Clone)]
struct Window {
    budget_kind: Budget,
    budget: u64,
    log: VecDeque<Entry>,
    used: u64,
}

impl Window {
    fn new(budget_kind: Budget, budget: u64) -> Self {
        Self { budget_kind, budget: budget.max(1), log: VecDeque::new(), used: 0 }
    }

    fn expire(&mut self, now: Millis) {
        let span = self.budget_kind.span();
        while self.log.front().is_some_and(|e| e.at + span <= now) {
            let e = self.log.pop_front().expect("checked");
            self.used -= e.amount;
        }
    }

    /// When `amount` fits (now if it does). An amount larger than the whole budget is counted as
    /// the whole budget: it waits for an empty window instead of never running.
    fn fits_at(&mut self, amount: u64, now: Millis) -> Millis {
        self.expire(now);
        let amount = amount.min(self.budget);
        if self.used + amount <= self.budget {
            return now;
        }
        let mut freed = 0;
        for e in &self.log {
            freed += e.amount;
            if self.used - freed + amount <= self.budget {
                return e.at + self.budget_kind.span();
            }
        }
        now + self.budget_kind.span()
    }

    fn insert(&mut self, entry: Entry) {
        let position = self.log.partition_point(|e| e.at <= entry.at);
        self.log.insert(position, entry);
        self.used += entry.amount;
    }

    /// Change the amount of the entry `id` made at `at`: found by its time (the log is in time
    /// order), so a full window costs a binary search, not a scan.
    fn set_amount(&mut self, id: u64, at: Millis, amount: u64) {
        let first = self.log.partition_point(|e| e.at < at);
        let same_time = self.log.range_mut(first..).take_while(|e| e.at == at);
        if let Some(e) = same_time.into_iter().find(|e| e.id == id) {
            self.used = self.used - e.amount + amount;
            e.amount = amount;
        }
    }

    fn remaining(&self) -> u64 {
        self.budget.saturating_sub(self.used)
    }
}

/// A reservation made by [`RateLimiter::try_reserve`], to reconcile after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    id: u64,
    at: Millis,
    ask: Ask,
}

/// The rate limits of one deployment (see the module documentation).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    windows: Vec<Window>,
    next_id: u64,
}

impl RateLimiter {
    /// A limiter for `quota` (one window per budget set).
    #[must_use]
    pub fn new(quota: &Quota) -> Self {
        let mut limiter = Self { windows: Vec::new(), next_id: 1 };
        limiter.set_quota(quota);
        limiter
    }

    /// Change the budgets (limits set at run time): a budget kept keeps what its window already
    /// holds, so a change never opens a burst past the new budget; a budget removed stops
    /// counting, a budget added starts empty.
    pub fn set_quota(&mut self, quota: &Quota) {
        let budgets = [
            (Budget::RequestsPerMinute, quota.rpm),
            (Budget::TokensPerMinute, quota.tpm),
            (Budget::InputTokensPerMinute, quota.input_tpm),
            (Budget::OutputTokensPerMinute, quota.output_tpm),
            (Budget::RequestsPerDay, quota.rpd),
        ];
        let mut old = std::mem::take(&mut self.windows);
        for (kind, budget) in budgets {
            let Some(budget) = budget else { continue };
            let window = match old.iter().position(|w| w.budget_kind == kind) {
                Some(i) => Window { budget: budget.max(1), ..old.swap_remove(i) },
                None => Window::new(kind, budget),
            };
            self.windows.push(window);
        }
    }

    /// When a call of `ask` would fit, from `now` on (`now` if it fits now); reserves nothing.
    pub fn earliest(&mut self, ask: Ask, now: Millis) -> Millis {
        let cost = |w: &Window| w.budget_kind.cost(ask.input_tokens, ask.output_tokens);
        self.windows.iter_mut().map(|w| w.fits_at(cost(w), now)).max().unwrap_or(now).max(now)
    }

    /// Reserve one call of `ask` at `now`, or say when it would fit (`Err(at)`).
    pub fn try_reserve(&mut self, ask: Ask, now: Millis) -> Result<Reservation, Millis> {
        let at = self.earliest(ask, now);
        if at > now {
            return Err(at);
        }
        let id = self.next_id;
        self.next_id += 1;
        for w in &mut self.windows {
            let amount = w.budget_kind.cost(ask.input_tokens, ask.output_tokens).min(w.budget);
            w.insert(Entry { at: now, amount, id });
        }
        Ok(Reservation { id, at: now, ask })
    }

    /// Replace a reservation's estimate by what the call used (`None`: the call never reached
    /// the provider, everything is given back). A call that used more than it reserved counts
    /// what it used.
    pub fn reconcile(&mut self, reservation: Reservation, used: Option<(u64, u64)>) {
        for w in &mut self.windows {
            let amount = match used {
                Some((input, output)) => w.budget_kind.cost(input, output),
                None => 0,
            };
            w.set_amount(reservation.id, reservation.at, amount);
        }
    }

    /// Correct the local view with what the provider reported at `now`: a remaining budget
    /// below the local one is held until the reported reset; a smaller budget than configured
    /// replaces it.
    pub fn observe(&mut self, limits: &RateLimits, now: Millis) {
        for w in &mut self.windows {
            let Some(reported) = w.budget_kind.reported_as().and_then(|kind| limits.get(kind)) else { continue };
            if let Some(limit) = reported.limit.filter(|l| *l > 0 && *l < w.budget) {
                w.budget = limit;
            }
            w.expire(now);
            let (Some(remaining), Some(reset)) = (reported.remaining, reported.reset) else { continue };
            let local = w.remaining();
            if remaining < local {
                // Held until the reset: an entry whose window ends then.
                let ends = now + duration_ms(reset).min(w.budget_kind.span());
                w.insert(Entry { at: ends - w.budget_kind.span(), amount: local - remaining, id: 0 });
            }
        }
    }

    /// The most any window of each budget held at `now` (for tests and metrics): (budget, used).
    #[must_use]
    pub fn usage(&self) -> Vec<(u64, u64)> {
        self.windows.iter().map(|w| (w.budget, w.used)).collect()
    }
}

/// A concurrency limit that adapts to the provider's answers (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveLimit {
    limit: f64,
    floor: f64,
    ceiling: f64,
    hold_until: Millis,
    last_decrease: Option<Millis>,
    cool_down: Millis,
}

impl AdaptiveLimit {
    /// A limit starting at `ceiling` (the configured concurrency), never below 1.
    #[must_use]
    pub fn new(ceiling: u32) -> Self {
        let ceiling = f64::from(ceiling.max(1));
        Self { limit: ceiling, floor: 1.0, ceiling, hold_until: 0, last_decrease: None, cool_down: 1_000 }
    }

    /// Change the ceiling (the concurrency set at run time): the limit never stays above it, and
    /// grows back towards a raised one additively.
    pub fn set_ceiling(&mut self, ceiling: u32) {
        self.ceiling = f64::from(ceiling.max(1));
        self.limit = self.limit.min(self.ceiling);
    }

    /// The calls allowed at once now.
    #[must_use]
    pub fn current(&self) -> u32 {
        self.limit.floor() as u32
    }

    /// Until when new calls wait (the latest `Retry-After`), if that is after `now`.
    #[must_use]
    pub fn held_until(&self, now: Millis) -> Option<Millis> {
        (self.hold_until > now).then_some(self.hold_until)
    }

    /// A 429 or overloaded answer at `now`: halve (once per cool-down) and hold new calls until
    /// `retry_after` (one second when the provider did not say). Returns the new limit if it
    /// changed.
    pub fn on_throttled(&mut self, now: Millis, retry_after: Option<Duration>) -> Option<u32> {
        let wait = retry_after.unwrap_or(Duration::from_secs(1));
        self.hold_until = self.hold_until.max(now + duration_ms(wait));
        if self.last_decrease.is_some_and(|at| now < at + self.cool_down) {
            return None;
        }
        self.last_decrease = Some(now);
        let before = self.current();
        self.limit = (self.limit / 2.0).max(self.floor);
        (self.current() != before).then(|| self.current())
    }

    /// Take a change another worker made at `at` ([`crate::ports::Adapted`]): its limit (under
    /// this ceiling) and its hold. A decrease starts the cool-down here too, so one burst of
    /// 429s seen by several workers halves the limit once.
    pub fn adopt(&mut self, limit: u32, held_until: Millis, at: Millis) {
        let shared = f64::from(limit.max(1)).min(self.ceiling);
        if shared.floor() < self.limit.floor() {
            self.last_decrease = Some(self.last_decrease.map_or(at, |t| t.max(at)));
        }
        self.limit = shared;
        self.hold_until = self.hold_until.max(held_until);
    }

    /// A successful call: grow by `1 / limit`. Returns the new limit if its whole part changed.
    pub fn on_success(&mut self) -> Option<u32> {
        let before = self.current();
        self.limit = (self.limit + 1.0 / self.limit).min(self.ceiling);
        (self.current() != before).then(|| self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::RateLimit;

    const T0: Millis = 1_000_000;
    /// How long a reservation counts in a per-minute window.
    const SPAN: Millis = MINUTE + ARRIVAL_MARGIN;

    /// Every window of `span` over the reservations made: the most any held.
    fn max_in_any_window(log: &[(Millis, u64)], span: Millis) -> u64 {
        log.iter()
            .map(|(start, _)| log.iter().filter(|(at, _)| *at >= *start && *at < start + span).map(|(_, n)| n).sum())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_quota_changed_at_run_time_keeps_what_the_window_holds() {
        let mut limiter = RateLimiter::new(&Quota { rpm: Some(10), ..Quota::default() });
        let one = Ask { input_tokens: 10, output_tokens: 0 };
        for _ in 0..6 {
            limiter.try_reserve(one, T0).unwrap();
        }
        // Lowered below what the last minute already used: nothing more until it has passed.
        limiter.set_quota(&Quota { rpm: Some(5), tpm: Some(1_000), ..Quota::default() });
        assert_eq!(limiter.try_reserve(one, T0 + 1), Err(T0 + SPAN));
        assert_eq!(limiter.usage(), vec![(5, 6), (1_000, 0)]);
        // Raised: the same minute's calls still count against the new budget.
        limiter.set_quota(&Quota { rpm: Some(8), ..Quota::default() });
        assert!(limiter.try_reserve(one, T0 + 2).is_ok());
        assert!(limiter.try_reserve(one, T0 + 3).is_ok());
        assert_eq!(limiter.try_reserve(one, T0 + 4), Err(T0 + SPAN));
        // Removed: no budget left to count.
        limiter.set_quota(&Quota::default());
        assert!(limiter.try_reserve(one, T0 + 5).is_ok());
        assert!(limiter.usage().is_empty());
    }

    #[test]
    fn a_change_adopted_from_another_worker_sets_the_limit_its_hold_and_the_cool_down() {
        let mut limit = AdaptiveLimit::new(16);
        limit.adopt(8, T0 + 2_000, T0);
        assert_eq!((limit.current(), limit.held_until(T0)), (8, Some(T0 + 2_000)));
        // The other worker's decrease counts here: a 429 within its cool-down does not halve again.
        assert_eq!(limit.on_throttled(T0 + 500, None), None);
        assert_eq!(limit.current(), 8);
        assert_eq!(limit.on_throttled(T0 + 1_500, None), Some(4));
        // An increase adopted is capped by the ceiling; an adopted hold never shortens one.
        limit.adopt(40, T0, T0 + 3_000);
        assert_eq!((limit.current(), limit.held_until(T0 + 2_000)), (16, Some(T0 + 2_500)));
    }

    #[test]
    fn a_lowered_ceiling_caps_the_adaptive_limit_and_a_raised_one_is_grown_to() {
        let mut limit = AdaptiveLimit::new(8);
        limit.set_ceiling(3);
        assert_eq!(limit.current(), 3);
        limit.set_ceiling(5);
        assert_eq!(limit.current(), 3, "raised: grown back to, not jumped to");
        let mut successes = 0;
        while limit.current() < 5 {
            limit.on_success();
            successes += 1;
        }
        assert!(successes > 2, "additive growth, {successes} successes");
        for _ in 0..100 {
            limit.on_success();
        }
        assert_eq!(limit.current(), 5);
    }

    #[test]
    fn reservations_never_exceed_the_budget_in_any_window() {
        let quota = Quota { rpm: Some(50), tpm: Some(10_000), ..Quota::default() };
        let mut limiter = RateLimiter::new(&quota);
        let (mut requests, mut tokens) = (Vec::new(), Vec::new());
        let mut now = T0;
        // Callers that ask as often as they can for five minutes, with varied sizes.
        for i in 0..100_000u64 {
            let ask = Ask { input_tokens: 50 + (i * 37) % 400, output_tokens: 100 };
            match limiter.try_reserve(ask, now) {
                Ok(_) => {
                    requests.push((now, 1));
                    tokens.push((now, ask.input_tokens + ask.output_tokens));
                }
                Err(at) => {
                    assert!(at > now);
                    now = at;
                }
            }
            now += i64::try_from(i % 7).unwrap() * 13;
            if now > T0 + 5 * MINUTE {
                break;
            }
        }
        assert!(max_in_any_window(&requests, MINUTE) <= 50, "{}", max_in_any_window(&requests, MINUTE));
        assert!(max_in_any_window(&tokens, MINUTE) <= 10_000);
        // And the budget is used: the token budget binds at ~10,000 a minute (≈ 28 calls of ≈ 350).
        let calls = requests.len() as f64 / 5.0;
        assert!(calls >= 25.0, "{calls} calls a minute");
    }

    #[test]
    fn reconciliation_gives_back_unused_tokens() {
        let mut limiter = RateLimiter::new(&Quota { tpm: Some(1_000), ..Quota::default() });
        let ask = Ask { input_tokens: 100, output_tokens: 500 };
        let first = limiter.try_reserve(ask, T0).unwrap();
        assert!(limiter.try_reserve(ask, T0).is_err(), "600 + 600 > 1,000");
        limiter.reconcile(first, Some((100, 20)));
        assert_eq!(limiter.usage(), [(1_000, 120)]);
        limiter.try_reserve(ask, T0 + 1).expect("the unused 480 came back");
        let never = limiter.try_reserve(Ask { input_tokens: 10, output_tokens: 10 }, T0 + 2).unwrap();
        limiter.reconcile(never, None);
        assert_eq!(limiter.usage(), [(1_000, 720)], "a call that never ran costs nothing");
    }

    #[test]
    fn a_full_window_says_when_it_frees() {
        let mut limiter = RateLimiter::new(&Quota { rpm: Some(2), ..Quota::default() });
        limiter.try_reserve(Ask::default(), T0).unwrap();
        limiter.try_reserve(Ask::default(), T0 + 10_000).unwrap();
        assert_eq!(limiter.try_reserve(Ask::default(), T0 + 20_000), Err(T0 + SPAN));
        assert!(
            limiter.try_reserve(Ask::default(), T0 + SPAN - 1).is_err(),
            "a second past the minute: the provider may still count it"
        );
        assert!(limiter.try_reserve(Ask::default(), T0 + SPAN).is_ok());
    }

    #[test]
    fn input_and_output_are_counted_apart_and_a_day_budget_holds() {
        let quota = Quota { input_tpm: Some(1_000), output_tpm: Some(100), rpd: Some(3), ..Quota::default() };
        let mut limiter = RateLimiter::new(&quota);
        let ask = Ask { input_tokens: 10, output_tokens: 60 };
        limiter.try_reserve(ask, T0).unwrap();
        assert_eq!(limiter.try_reserve(ask, T0), Err(T0 + SPAN), "output tokens bind");
        limiter.try_reserve(ask, T0 + SPAN).unwrap();
        limiter.try_reserve(ask, T0 + 2 * SPAN).unwrap();
        assert_eq!(limiter.try_reserve(ask, T0 + 3 * SPAN), Err(T0 + DAY + ARRIVAL_MARGIN), "three a day");
    }

    #[test]
    fn the_providers_headers_correct_the_local_view() {
        let mut limiter = RateLimiter::new(&Quota { rpm: Some(100), tpm: Some(10_000), ..Quota::default() });
        limiter.try_reserve(Ask { input_tokens: 100, output_tokens: 0 }, T0).unwrap();
        // The provider says only 5 requests remain (other clients share the key), reset in 20 s.
        let reported = RateLimits(vec![RateLimit {
            kind: LimitKind::Requests,
            limit: Some(100),
            remaining: Some(5),
            reset: Some(Duration::from_secs(20)),
        }]);
        limiter.observe(&reported, T0 + 1_000);
        for _ in 0..5 {
            limiter.try_reserve(Ask::default(), T0 + 1_000).unwrap();
        }
        assert_eq!(limiter.try_reserve(Ask::default(), T0 + 1_000), Err(T0 + 21_000), "held until the reset");
        // A smaller budget than configured is the provider's truth.
        let smaller =
            RateLimits(vec![RateLimit { kind: LimitKind::Tokens, limit: Some(500), remaining: None, reset: None }]);
        limiter.observe(&smaller, T0 + 2_000);
        assert_eq!(limiter.usage()[1].0, 500);
    }

    #[test]
    fn aimd_halves_on_a_throttle_and_recovers_additively() {
        let mut limit = AdaptiveLimit::new(16);
        assert_eq!(limit.on_throttled(T0, None), Some(8));
        assert_eq!(limit.on_throttled(T0 + 10, None), None, "one burst counts once");
        assert_eq!(limit.on_throttled(T0 + 1_500, None), Some(4));
        let mut successes = 0;
        while limit.current() < 8 {
            limit.on_success();
            successes += 1;
        }
        // From 4 to 8: about 4 + 5 + 6 + 7 = 22 successes (one limit's worth per step).
        assert!((18..=26).contains(&successes), "{successes}");
        for _ in 0..10_000 {
            limit.on_success();
        }
        assert_eq!(limit.current(), 16, "never above the configured concurrency");
        let mut floor = AdaptiveLimit::new(2);
        for i in 0..10 {
            floor.on_throttled(T0 + i * 2_000, None);
        }
        assert_eq!(floor.current(), 1, "never below one");
    }

    #[test]
    fn retry_after_holds_new_calls() {
        let mut limit = AdaptiveLimit::new(4);
        limit.on_throttled(T0, Some(Duration::from_secs(7)));
        assert_eq!(limit.held_until(T0 + 1), Some(T0 + 7_000));
        assert_eq!(limit.held_until(T0 + 7_000), None);
        limit.on_throttled(T0 + 100, None);
        assert_eq!(limit.held_until(T0 + 200), Some(T0 + 7_000), "a shorter hold never cuts a longer one");
    }
}
