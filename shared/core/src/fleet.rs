//! Provider quotas shared by every process of a fleet (the AWS shape's Lambda containers)
//! through a ledger of time slots, without a hot item: the pure policy on a clock passed in
//! ([`Slots`], [`Amounts`], [`Allowance`]) and one limit key's share of it in a process
//! ([`QuotaShare`]) over the ledger port ([`LimiterStore::lease_quota`],
//! [`LimiterStore::give_back_quota`]). A store without a ledger (memory, SQLite: one process is
//! the whole fleet) says so with [`LimiterStore::quota_slot`] `None`, and none of this runs.
//!
//! **The slot ledger.** Time is cut into slots of `L` ms (default 2 s); slot `i` is
//! `[i·L, (i+1)·L)`. A budget `B` per window `W` (the minute budgets: `W` = 60 s plus the 1 s
//! arrival margin of [`crate::rate`] = 61 s) gives slot `i` the cap
//! `floor(B·(i+1)/N) − floor(B·i/N)`, with `N = ceil(W/L) + 1`, and the fleet leases at most
//! that much in slot `i` (the ledger's conditional write).
//!
//! *No window holds more than `B`, whatever the number of processes.*
//! 1. Any `N` consecutive caps sum to exactly `B`: the sum over `i = a … a+N−1` telescopes to
//!    `floor(B·(a+N)/N) − floor(B·a/N) = (floor(B·a/N) + B) − floor(B·a/N) = B`.
//! 2. The calls of one window were reserved in at most `N` consecutive slots. Calls reserved in
//!    slots `i` and `j > i` are at least `(j−i−1)·L` apart (the end of slot `i` to the start of
//!    slot `j`), so they can fall in one window only when `(j−i−1)·L < W`: `n = j−i+1` slots can
//!    all contribute to one window only when `(n−2)·L < W`, i.e. `n < W/L + 2`. With
//!    `W/L = k` whole, the largest such `n` is `k+1`; with `k < W/L < k+1`, it is `k+2`: in both
//!    cases `ceil(W/L) + 1 = N`.
//! 3. So a window holds at most the caps of `N` consecutive slots: `B`.
//!
//! *Efficiency.* Saturated, the fleet spends `B` per `N·L`, i.e. `60 s / (N·L)` of the quota per
//! minute: 60/64 ≈ 94 % for `L` = 2 s (`N` = 32), 60/62 ≈ 97 % for 1 s (`N` = 62), 60/70 ≈ 86 %
//! for 5 s. Shorter slots lose less to the bound but hold less each (a call must fit a slot's
//! cap, below) and cost more writes per minute.
//!
//! **A process's allowance.** A process leases from the current slot in chunks (an eighth of the
//! slot's cap, or the ask's shortfall if larger, never more than the cap) and spends its
//! [`Allowance`] without I/O; a call reconciled lower (its usage below its estimate) gives the
//! difference back to the allowance while the slot lasts, and one that used more has the excess
//! counted there (this process's next lease covers it; after its slot, the excess is not
//! charged: the bound is on the estimates); what is left of the current slot goes
//! back to the ledger at the end of each batch ([`QuotaShare::give_back`]) and when a lease is
//! refused (less than an ask is left here: with what the ledger has left, it may serve another
//! process's shortfall), and leftovers of past slots are dropped. After a lease is refused the
//! process knows the slot is spent fleet-wide and waits for the next one without asking again
//! ([`QuotaShare::gate`]).
//!
//! *What the bound costs beyond 94 %.* The slots bound the estimates (prompt / 4 +
//! `maxTokens`): what a call did not use serves only later calls of its process in its slot,
//! where the in-process windows reuse it at any later time. With estimates of 300 tokens for
//! calls that use 220, three engines sharing a 100,000-token quota put 92 % of it in estimates
//! into their busiest minute, 68 % in tokens used (`tests/quota.rs`); with estimates equal to
//! usage, 94–97 % (`taskexec-aws`'s `tests/quota.rs`). A slot whose cap holds about one
//! estimate admits one call: estimates near `maxTokens` that answers actually use keep this
//! small.
//!
//! **An ask larger than a slot's cap** (a large `maxTokens` against a small quota, or a request
//! in a slot whose request cap rounds to 0) is spread over the following slots, each charged up
//! to its cap, and the call waits for the first of them to start ([`spread`]). Nobody else
//! leases a slot before it starts, so those slots are free unless another spread call took
//! them. The bound then holds up to that call's excess over one slot's cap; its charge is not
//! reconciled.
//!
//! What stays per process: the requests-per-day budget (counted in process by
//! [`crate::rate::RateLimiter`] only) and the provider's rate-limit headers (they correct the
//! local windows). The adaptive concurrency limit is shared another way
//! ([`crate::ports::LimiterStore::share_adapted`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::ports::{LimitKey, LimiterStore, StoreResult};
use crate::rate::{Ask, MINUTE_SPAN, Quota};
use crate::time::{Millis, duration_ms};

/// The default slot length.
pub const DEFAULT_SLOT: Duration = Duration::from_secs(2);

/// Requests and tokens: a call's ask, a lease, a slot's caps. A field whose budget is not set
/// is 0 in an ask and unbounded (`u64::MAX`) in caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Amounts {
    /// Requests (per minute).
    pub requests: u64,
    /// Tokens, input and output together.
    pub tokens: u64,
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
}

impl Amounts {
    fn fields(self) -> [u64; 4] {
        [self.requests, self.tokens, self.input, self.output]
    }

    fn from_fields([requests, tokens, input, output]: [u64; 4]) -> Self {
        Self { requests, tokens, input, output }
    }

    fn zip(self, other: Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let (a, b) = (self.fields(), other.fields());
        Self::from_fields([f(a[0], b[0]), f(a[1], b[1]), f(a[2], b[2]), f(a[3], b[3])])
    }

    /// What a call of `ask` (or its usage) counts under `quota`: one request and its tokens,
    /// in the minute budgets set only, each at most its budget (as the local windows count it).
    #[must_use]
    pub fn of_call(quota: &Quota, ask: Ask) -> Self {
        let budget = |b: Option<u64>, amount: u64| b.map_or(0, |b| amount.min(b.max(1)));
        Self {
            requests: budget(quota.rpm, 1),
            tokens: budget(quota.tpm, ask.input_tokens + ask.output_tokens),
            input: budget(quota.input_tpm, ask.input_tokens),
            output: budget(quota.output_tpm, ask.output_tokens),
        }
    }

    /// Whether every field is 0.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Whether every field is at most `other`'s.
    #[must_use]
    pub fn fits_in(&self, other: &Self) -> bool {
        self.fields().iter().zip(other.fields()).all(|(a, b)| *a <= b)
    }

    /// Field by field, `self − other`, at least 0.
    #[must_use]
    pub fn saturating_sub(self, other: Self) -> Self {
        self.zip(other, u64::saturating_sub)
    }

    /// Field by field, `self + other`.
    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        self.zip(other, u64::saturating_add)
    }

    /// The fields that are not 0, with their names as the ledgers store them (`req`, `tok`,
    /// `in`, `out`).
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> {
        ["req", "tok", "in", "out"].into_iter().zip(self.fields()).filter(|(_, n)| *n > 0)
    }
}

/// The cut of time into slots and each slot's caps (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    length: Millis,
}

impl Slots {
    /// Slots of `length` (at least 1 ms).
    #[must_use]
    pub fn new(length: Duration) -> Self {
        Self { length: duration_ms(length).max(1) }
    }

    /// The slot length in ms.
    #[must_use]
    pub fn length(&self) -> Millis {
        self.length
    }

    /// The slot `now` is in: `floor(now / L)`.
    #[must_use]
    pub fn of(&self, now: Millis) -> u64 {
        u64::try_from(now.max(0) / self.length).unwrap_or(0)
    }

    /// When `slot` starts.
    #[must_use]
    pub fn start(&self, slot: u64) -> Millis {
        Millis::try_from(slot).unwrap_or(Millis::MAX / 2).saturating_mul(self.length)
    }

    /// `N`: the most consecutive slots whose calls can fall in one window, `ceil(W/L) + 1`.
    #[must_use]
    pub fn per_window(&self) -> u64 {
        let (w, l) = (MINUTE_SPAN.unsigned_abs(), self.length.unsigned_abs());
        w.div_ceil(l) + 1
    }

    /// Slot `slot`'s share of `budget`: `floor(B·(i+1)/N) − floor(B·i/N)`.
    #[must_use]
    pub fn cap(&self, budget: u64, slot: u64) -> u64 {
        let (b, i, n) = (u128::from(budget), u128::from(slot), u128::from(self.per_window()));
        u64::try_from(b * (i + 1) / n - b * i / n).unwrap_or(u64::MAX)
    }

    /// Slot `slot`'s caps under `quota` (unbounded where a minute budget is not set).
    #[must_use]
    pub fn caps(&self, quota: &Quota, slot: u64) -> Amounts {
        let cap = |b: Option<u64>| b.map_or(u64::MAX, |b| self.cap(b.max(1), slot));
        Amounts {
            requests: cap(quota.rpm),
            tokens: cap(quota.tpm),
            input: cap(quota.input_tpm),
            output: cap(quota.output_tpm),
        }
    }
}

/// An ask that does not fit one slot's caps, spread over the slots from `first` on: each
/// slot's part (at most its caps), in order. Empty when `ask` is 0.
#[must_use]
pub fn spread(slots: Slots, quota: &Quota, ask: Amounts, first: u64) -> Vec<(u64, Amounts)> {
    let mut parts = Vec::new();
    let mut rest = ask;
    let mut slot = first;
    // `ask` is at most the budgets, and any N consecutive caps sum to them.
    while !rest.is_zero() && parts.len() as u64 <= slots.per_window() {
        let part = rest.zip(slots.caps(quota, slot), u64::min);
        if !part.is_zero() {
            parts.push((slot, part));
        }
        rest = rest.saturating_sub(part);
        slot += 1;
    }
    parts
}

/// What one process holds of one slot of a key's quota: leased from the ledger, and spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowance {
    slot: u64,
    leased: Amounts,
    spent: Amounts,
}

impl Allowance {
    /// Move to `slot`: a new slot starts empty (what was left of the last one is dropped).
    pub fn roll(&mut self, slot: u64) {
        if slot != self.slot {
            *self = Self { slot, ..Self::default() };
        }
    }

    /// Spend `ask` from what is leased, if it fits.
    pub fn try_spend(&mut self, ask: Amounts) -> bool {
        let fits = self.spent.saturating_add(ask).fits_in(&self.leased);
        if fits {
            self.spent = self.spent.saturating_add(ask);
        }
        fits
    }

    /// What to lease for `ask` under `caps`: for each field short of it, an eighth of the cap
    /// or the shortfall if larger (`exact`: the shortfall only), never more than the cap.
    #[must_use]
    pub fn lease_for(&self, ask: Amounts, caps: Amounts, exact: bool) -> Amounts {
        // What is spent may exceed what is leased: a call that used more than its estimate.
        let short = self.spent.saturating_add(ask).saturating_sub(self.leased);
        let chunk = |short: u64, cap: u64| {
            if short == 0 {
                0
            } else if exact {
                short.min(cap)
            } else {
                short.max(cap / 8).min(cap)
            }
        };
        short.zip(caps, chunk)
    }

    /// Add a granted lease.
    pub fn add(&mut self, leased: Amounts) {
        self.leased = self.leased.saturating_add(leased);
    }

    /// A call that took `taken` in `slot` used `used`: while the slot lasts, what it did not
    /// use is free again, and what it used beyond its estimate is counted (the next lease of
    /// this process covers it).
    pub fn settle(&mut self, slot: u64, taken: Amounts, used: Amounts) {
        if slot == self.slot {
            self.spent = self.spent.saturating_sub(taken).saturating_add(used);
        }
    }

    /// Take what is leased and not spent in `slot` out of the allowance (to give it back).
    pub fn take_unused(&mut self, slot: u64) -> Amounts {
        let all = Amounts { requests: 1, tokens: 1, input: 1, output: 1 };
        self.take_unused_of(slot, all)
    }

    /// [`Self::take_unused`] of the budgets that are not 0 in `which` only.
    pub fn take_unused_of(&mut self, slot: u64, which: Amounts) -> Amounts {
        if slot != self.slot {
            return Amounts::default();
        }
        let unused = self.leased.saturating_sub(self.spent).zip(which, |n, w| if w > 0 { n } else { 0 });
        self.leased = self.leased.saturating_sub(unused);
        unused
    }
}

/// What a call took from the fleet's quota (to reconcile when it ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    slot: u64,
    amounts: Amounts,
    spread: bool,
}

/// One limit key's share of the fleet's quota in this process: its allowance, and until when
/// the fleet is known to have spent the current slot.
#[derive(Debug, Default)]
pub struct QuotaShare {
    allowance: tokio::sync::Mutex<Allowance>,
    spent_until: AtomicI64,
}

impl QuotaShare {
    /// When the fleet's current slot was found spent: until when to wait (`None`: go on). No
    /// I/O: what the last refused lease taught.
    #[must_use]
    pub fn gate(&self, now: Millis) -> Option<Millis> {
        let until = self.spent_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    fn spent_until(&self, at: Millis) {
        self.spent_until.fetch_max(at, Ordering::Relaxed);
    }

    /// Take a call of `ask` under `quota` at `now` from the allowance, leasing from `ledger`
    /// when short; `Err(at)`: the fleet has spent the slot, try again at `at`. An ask larger
    /// than a slot is [`spread`] over the next slots (the caller waits until `Taken`'s slot
    /// starts: [`Taken::starts`]).
    pub async fn take<L: LimiterStore>(
        &self,
        ledger: &L,
        key: &LimitKey,
        slots: Slots,
        quota: &Quota,
        ask: Ask,
        now: Millis,
    ) -> StoreResult<Result<Taken, Millis>> {
        let slot = slots.of(now);
        let next = slots.start(slot + 1);
        let ask = Amounts::of_call(quota, ask);
        let caps = slots.caps(quota, slot);
        if !ask.fits_in(&caps) {
            if let Some(until) = self.gate(now) {
                return Ok(Err(until));
            }
            return self.take_spread(ledger, key, slots, quota, ask, slot + 1).await;
        }
        let mut allowance = self.allowance.lock().await;
        allowance.roll(slot);
        for exact in [false, true] {
            if allowance.try_spend(ask) {
                return Ok(Ok(Taken { slot, amounts: ask, spread: false }));
            }
            if let Some(until) = self.gate(now) {
                return Ok(Err(until)); // what is left here is too little, and the fleet is spent
            }
            let lease = allowance.lease_for(ask, caps, exact);
            if exact && lease == allowance.lease_for(ask, caps, false) {
                break; // the chunk was the shortfall: refused already
            }
            if ledger.lease_quota(key, slot, lease, caps).await? {
                allowance.add(lease);
            }
        }
        if allowance.try_spend(ask) {
            return Ok(Ok(Taken { slot, amounts: ask, spread: false }));
        }
        // The slot is spent for this ask: what is left here of the budgets it was short of
        // (less than an ask) goes back, so that with what the ledger has left it may serve
        // another process's shortfall (what is left of the others would serve nobody now).
        self.spent_until(next);
        let short = allowance.lease_for(ask, caps, true);
        let unused = allowance.take_unused_of(slot, short);
        if !unused.is_zero() {
            ledger.give_back_quota(key, slot, unused).await?;
        }
        Ok(Err(next))
    }

    async fn take_spread<L: LimiterStore>(
        &self,
        ledger: &L,
        key: &LimitKey,
        slots: Slots,
        quota: &Quota,
        ask: Amounts,
        first: u64,
    ) -> StoreResult<Result<Taken, Millis>> {
        let parts = spread(slots, quota, ask, first);
        for (i, (slot, part)) in parts.iter().enumerate() {
            if !ledger.lease_quota(key, *slot, *part, slots.caps(quota, *slot)).await? {
                for (slot, part) in &parts[..i] {
                    ledger.give_back_quota(key, *slot, *part).await?;
                }
                return Ok(Err(slots.start(slot + 1)));
            }
        }
        Ok(Ok(Taken { slot: first, amounts: ask, spread: true }))
    }

    /// The call of `taken` used `used` (under the same quota): [`Allowance::settle`] while its
    /// slot lasts (no I/O). A spread call's charge stands.
    pub async fn settle(&self, taken: Taken, used: Amounts) {
        if !taken.spread {
            self.allowance.lock().await.settle(taken.slot, taken.amounts, used);
        }
    }

    /// Give the current slot's unused allowance back to `ledger` (end of a batch): one write,
    /// none when nothing is left.
    pub async fn give_back<L: LimiterStore>(
        &self,
        ledger: &L,
        key: &LimitKey,
        slots: Slots,
        now: Millis,
    ) -> StoreResult<()> {
        let slot = slots.of(now);
        let unused = self.allowance.lock().await.take_unused(slot);
        if unused.is_zero() {
            return Ok(());
        }
        ledger.give_back_quota(key, slot, unused).await
    }
}

impl Taken {
    /// When the call may start: now for a call taken from the current slot, the start of its
    /// first slot for a spread one.
    #[must_use]
    pub fn starts(&self, slots: Slots, now: Millis) -> Millis {
        if self.spread { slots.start(self.slot).max(now) } else { now }
    }

    /// What the call took.
    #[must_use]
    pub fn amounts(&self) -> Amounts {
        self.amounts
    }
}

/// A quota ledger in memory: one count per (key, slot), leased under the slot's caps. What
/// several processes would share in DynamoDB, for tests that simulate a fleet in one process
/// (see [`crate::memory::MemoryLimiter::with_quota_ledger`]).
#[derive(Debug, Default)]
pub struct MemoryLedger {
    counts: std::sync::Mutex<BTreeMap<(LimitKey, u64), Amounts>>,
}

impl MemoryLedger {
    /// Lease `amounts` in `slot` if every field stays within `caps`.
    pub fn lease(&self, key: &LimitKey, slot: u64, amounts: Amounts, caps: Amounts) -> bool {
        let mut counts = self.counts.lock().expect("ledger poisoned");
        let count = counts.entry((key.clone(), slot)).or_default();
        let after = count.saturating_add(amounts);
        let fits = after.fits_in(&caps);
        if fits {
            *count = after;
        }
        fits
    }

    /// Give `amounts` back to `slot` (never below 0).
    pub fn give_back(&self, key: &LimitKey, slot: u64, amounts: Amounts) {
        let mut counts = self.counts.lock().expect("ledger poisoned");
        if let Some(count) = counts.get_mut(&(key.clone(), slot)) {
            *count = count.saturating_sub(amounts);
        }
    }

    /// What the fleet holds of `slot`.
    #[must_use]
    pub fn leased(&self, key: &LimitKey, slot: u64) -> Amounts {
        self.counts.lock().expect("ledger poisoned").get(&(key.clone(), slot)).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::memory::MemoryLimiter;

    const T0: Millis = 1_700_000_000_000;
    const W: Millis = MINUTE_SPAN;

    fn slots(ms: u64) -> Slots {
        Slots::new(Duration::from_millis(ms))
    }

    #[test]
    fn a_window_spans_ceil_w_over_l_plus_one_slots() {
        // (N − 2)·L < W ≤ (N − 1)·L: N slots can meet in one window, N + 1 cannot.
        for (l, n) in [(2_000, 32), (1_000, 62), (5_000, 14), (500, 123), (61_000, 2), (30_500, 3), (60_000, 3)] {
            let s = slots(l);
            assert_eq!(s.per_window(), n, "L = {l}");
            let (n, l) = (n as Millis, l as Millis);
            assert!((n - 2) * l < W && W <= (n - 1) * l, "L = {l}");
        }
        assert_eq!(slots(2_000).of(T0), 850_000_000);
        assert_eq!(slots(2_000).start(850_000_001), T0 + 2_000);
    }

    #[test]
    fn any_n_consecutive_caps_sum_to_the_budget() {
        for (l, budget) in [(2_000, 800), (2_000, 50), (2_000, 7), (1_000, 90_000), (5_000, 1_000_003)] {
            let s = slots(l);
            let n = s.per_window();
            for first in [0, 1, 5, s.of(T0), s.of(T0) + 17] {
                let sum: u64 = (first..first + n).map(|i| s.cap(budget, i)).sum();
                assert_eq!(sum, budget, "L = {l}, B = {budget}, from slot {first}");
            }
            // Caps differ by at most one: the budget is spread evenly.
            let caps: Vec<u64> = (0..n).map(|i| s.cap(budget, i)).collect();
            assert!(caps.iter().max().unwrap() - caps.iter().min().unwrap() <= 1, "{caps:?}");
        }
        // 60 s of every 64 s: at least 90 % of the quota per minute with the default slot.
        let s = slots(2_000);
        assert!(60 * 100 / (s.per_window() * 2) >= 93);
    }

    #[test]
    fn an_allowance_leases_chunks_and_gives_back_what_is_left() {
        let caps = Amounts { requests: 31, tokens: 800, input: u64::MAX, output: u64::MAX };
        let ask = Amounts { requests: 1, tokens: 40, ..Amounts::default() };
        let mut a = Allowance::default();
        a.roll(7);
        assert!(!a.try_spend(ask));
        // An eighth of the cap, or the shortfall if larger; fields without a budget are not leased.
        assert_eq!(a.lease_for(ask, caps, false), Amounts { requests: 3, tokens: 100, ..Amounts::default() });
        assert_eq!(a.lease_for(ask, caps, true), ask);
        let big = Amounts { requests: 1, tokens: 300, ..Amounts::default() };
        assert_eq!(a.lease_for(big, caps, false).tokens, 300);
        a.add(a.lease_for(ask, caps, false));
        assert!(a.try_spend(ask) && a.try_spend(ask));
        assert!(!a.try_spend(ask), "100 tokens leased, 80 spent");
        // A call reconciled lower gives the difference back to the allowance.
        a.settle(7, ask, Amounts { requests: 1, tokens: 10, ..Amounts::default() });
        assert!(a.try_spend(ask));
        assert_eq!(a.take_unused(7), Amounts { requests: 0, tokens: 10, ..Amounts::default() });
        assert_eq!(a.take_unused(7), Amounts::default(), "given back once");
        assert_eq!(a.take_unused(8), Amounts::default(), "another slot holds nothing");
        a.roll(8);
        assert!(!a.try_spend(ask), "a new slot starts empty");
        // A call that used more than its estimate: the excess is owed, the next lease covers it.
        a.add(ask);
        assert!(a.try_spend(ask));
        a.settle(8, ask, Amounts { requests: 1, tokens: 70, ..Amounts::default() });
        assert_eq!(a.take_unused(8), Amounts::default());
        assert_eq!(a.lease_for(ask, caps, true), Amounts { requests: 1, tokens: 70, ..Amounts::default() });
    }

    #[test]
    fn an_ask_larger_than_a_slot_is_spread_over_the_next_slots() {
        let s = slots(2_000);
        let quota = Quota { rpm: Some(10), tpm: Some(3_200), ..Quota::default() };
        let ask = Amounts::of_call(&quota, Ask { input_tokens: 50, output_tokens: 200 });
        assert_eq!(ask, Amounts { requests: 1, tokens: 250, ..Amounts::default() });
        // Caps of 100 tokens a slot; requests 0 or 1 (10 over 32 slots).
        let parts = spread(s, &quota, ask, 32);
        let tokens: Vec<u64> = parts.iter().map(|(_, p)| p.tokens).collect();
        let requests: Vec<u64> = parts.iter().map(|(_, p)| p.requests).collect();
        // Slots 32 to 34 have no request: the request is charged to slot 35.
        assert_eq!(tokens, [100, 100, 50, 0]);
        assert_eq!(requests, [0, 0, 0, 1]);
        assert_eq!(parts.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), [32, 33, 34, 35]);
        assert!(parts.iter().all(|(slot, p)| p.fits_in(&s.caps(&quota, *slot))));
        // An ask is counted as at most the whole budget, so it always fits N slots.
        let huge = Amounts::of_call(&quota, Ask { input_tokens: 0, output_tokens: 1_000_000 });
        assert_eq!(huge.tokens, 3_200);
        assert_eq!(spread(s, &quota, huge, 0).iter().map(|(_, p)| p.tokens).sum::<u64>(), 3_200);
    }

    /// One simulated process: its share, and the calls it made (time, tokens, requests).
    struct Process {
        limiter: MemoryLimiter,
        share: QuotaShare,
    }

    /// Most of `field` reserved in any window of `W` over `calls` (time, amounts).
    fn busiest(calls: &[(Millis, Amounts)], field: impl Fn(&Amounts) -> u64) -> u64 {
        calls
            .iter()
            .map(|(start, _)| calls.iter().filter(|(t, _)| t >= start && *t < start + W).map(|(_, a)| field(a)).sum())
            .max()
            .unwrap_or(0)
    }

    /// `processes` sharing one ledger on a virtual clock, each asking for calls at random (up to
    /// `max_tokens` each; with `lower`, reconciled to a random usage below the estimate) for
    /// `minutes`, giving back what is left at random "batch ends". Returns the calls (when, what
    /// they used) and the ledger.
    async fn simulate(
        processes: usize,
        quota: Quota,
        max_tokens: u64,
        lower: bool,
        minutes: i64,
        seed: u64,
    ) -> (Vec<(Millis, Amounts)>, Arc<MemoryLedger>) {
        let s = slots(2_000);
        let ledger = Arc::new(MemoryLedger::default());
        let fleet: Vec<Process> = (0..processes)
            .map(|_| Process {
                limiter: MemoryLimiter::with_quota_ledger(DEFAULT_SLOT, ledger.clone()),
                share: QuotaShare::default(),
            })
            .collect();
        let key = LimitKey::Deployment("d".into());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut calls = Vec::new();
        let mut now = T0 + 1_234;
        while now < T0 + minutes * 60_000 {
            now += rng.random_range(1..40);
            let p = &fleet[rng.random_range(0..processes)];
            if rng.random_ratio(1, 20) {
                p.share.give_back(&p.limiter, &key, s, now).await.unwrap();
                continue;
            }
            if p.share.gate(now).is_some() {
                continue;
            }
            let ask = Ask { input_tokens: rng.random_range(1..=max_tokens / 2), output_tokens: max_tokens / 2 };
            if let Ok(taken) = p.share.take(&p.limiter, &key, s, &quota, ask, now).await.unwrap() {
                let output_tokens = if lower { rng.random_range(0..=ask.output_tokens) } else { ask.output_tokens };
                let used = Ask { input_tokens: ask.input_tokens, output_tokens };
                let used = Amounts::of_call(&quota, used);
                // Spread calls are counted when their first slot starts, with what they took.
                let at = taken.starts(s, now);
                calls.push((at, if taken.spread { taken.amounts() } else { used }));
                p.share.settle(taken, used).await;
            }
        }
        (calls, ledger)
    }

    #[tokio::test]
    async fn many_processes_sharing_one_ledger_never_put_more_than_the_budget_in_a_window() {
        let quota = Quota { rpm: Some(600), tpm: Some(20_000), ..Quota::default() };
        for (processes, seed) in [(2, 1), (7, 2), (25, 3)] {
            for lower in [false, true] {
                let (calls, _) = simulate(processes, quota, 200, lower, 4, seed).await;
                let tokens = busiest(&calls, |a| a.tokens);
                let requests = busiest(&calls, |a| a.requests);
                eprintln!(
                    "{processes} processes (lower usage: {lower}): {tokens} tokens, {requests} requests a window"
                );
                assert!(tokens <= 20_000, "{processes} processes: {tokens} tokens in one window");
                assert!(requests <= 600, "{processes} processes: {requests} requests in one window");
                // Estimates that are right: saturated, the fleet spends at least 90 % of the quota
                // a window (of 94 %: the bound's share, less the chunks left in processes that
                // did not give back before their slot ended).
                assert!(lower || tokens >= 18_000, "{processes} processes: only {tokens} tokens in the busiest window");
            }
        }
    }

    #[tokio::test]
    async fn spread_calls_exceed_the_budget_by_at_most_one_calls_excess() {
        // Slot caps of 62 or 63 tokens; asks of up to 300 tokens are spread.
        let quota = Quota { tpm: Some(2_000), ..Quota::default() };
        let (calls, _) = simulate(5, quota, 300, true, 3, 9).await;
        let tokens = busiest(&calls, |a| a.tokens);
        assert!(calls.len() > 10, "{} calls", calls.len());
        assert!(tokens <= 2_000 + 300, "{tokens} tokens in one window");
    }

    #[tokio::test]
    async fn leftovers_go_back_to_the_ledger() {
        let s = slots(2_000);
        let ledger = Arc::new(MemoryLedger::default());
        let limiter = MemoryLimiter::with_quota_ledger(DEFAULT_SLOT, ledger.clone());
        let other = MemoryLimiter::with_quota_ledger(DEFAULT_SLOT, ledger.clone());
        let key = LimitKey::Deployment("d".into());
        let quota = Quota { tpm: Some(32 * 800), ..Quota::default() };
        let (share, other_share) = (QuotaShare::default(), QuotaShare::default());
        let ask = Ask { input_tokens: 10, output_tokens: 30 };
        let now = s.start(s.of(T0) + 1);
        let slot = s.of(now);
        let taken = share.take(&limiter, &key, s, &quota, ask, now).await.unwrap().unwrap();
        assert_eq!(ledger.leased(&key, slot).tokens, 100, "a chunk: an eighth of the slot's 800");
        share.settle(taken, Amounts::of_call(&quota, Ask { input_tokens: 10, output_tokens: 5 })).await;
        share.give_back(&limiter, &key, s, now + 10).await.unwrap();
        assert_eq!(ledger.leased(&key, slot).tokens, 15, "only what the call used stays leased");
        // The slot holds 800: what one process gave back, another can lease.
        for _ in 0..19 {
            other_share.take(&other, &key, s, &quota, ask, now + 20).await.unwrap().unwrap();
        }
        let refused = other_share.take(&other, &key, s, &quota, Ask { input_tokens: 30, output_tokens: 30 }, now + 20);
        assert_eq!(refused.await.unwrap(), Err(s.start(slot + 1)), "15 + 19 × 40 = 775: 60 more do not fit");
        assert_eq!(other_share.gate(now + 30), Some(s.start(slot + 1)), "known spent until the next slot");
        assert!(other_share.take(&other, &key, s, &quota, ask, s.start(slot + 1)).await.unwrap().is_ok());
        // Leftovers of a past slot are not given back to the current one.
        share.give_back(&limiter, &key, s, s.start(slot + 1)).await.unwrap();
        assert_eq!(ledger.leased(&key, slot + 1).tokens, 100);
    }

    #[tokio::test]
    async fn without_a_ledger_every_lease_is_granted() {
        let limiter = MemoryLimiter::default();
        assert_eq!(limiter.quota_slot(), None);
        let key = LimitKey::Global;
        let huge = Amounts { tokens: u64::MAX, ..Amounts::default() };
        assert!(limiter.lease_quota(&key, 1, huge, Amounts::default()).await.unwrap());
    }
}
