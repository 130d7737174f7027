//! The rate limiter's own cost per call: what the engine does around each provider call when a
//! deployment has a quota (`RateLimiter::earliest` at the gate, `try_reserve` after the claim,
//! `reconcile` and `observe` after the answer), at steady state with a full minute of
//! reservations in the windows. Prints nanoseconds per call for a deployment's quota (requests
//! and tokens per minute) and for a per-model quota on top.
//!
//! `cargo run --release -p taskexec-core --example limiter_cost`

use std::hint::black_box;
use std::time::{Duration, Instant};

use taskexec_core::provider::RateLimits;
use taskexec_core::rate::{Ask, Quota, RateLimiter};

/// Calls a second (steady state): a minute's window holds 60 × this many reservations.
const RATE: i64 = 100;
const CALLS: i64 = 2_000_000;

fn run(limiters: &mut [RateLimiter]) -> Duration {
    let ask = Ask { input_tokens: 120, output_tokens: 256 };
    let limits = RateLimits::default();
    let started = Instant::now();
    for i in 0..CALLS {
        // Virtual time: RATE calls a second, so each window holds one minute of them.
        let now = 1_000_000 + i * 1_000 / RATE;
        let mut reserved = Vec::with_capacity(limiters.len());
        for limiter in limiters.iter_mut() {
            black_box(limiter.earliest(Ask { input_tokens: 1, output_tokens: 0 }, now));
            reserved.push(limiter.try_reserve(ask, now).expect("the quota is sized to fit"));
        }
        for (limiter, reservation) in limiters.iter_mut().zip(reserved) {
            limiter.reconcile(reservation, Some((100, 200)));
            limiter.observe(&limits, now);
        }
    }
    started.elapsed()
}

fn per_call(d: Duration) -> f64 {
    d.as_nanos() as f64 / CALLS as f64
}

fn main() {
    let quota = Quota { rpm: Some(10_000), tpm: Some(10_000_000), ..Quota::default() };
    let deployment = per_call(run(&mut [RateLimiter::new(&quota)]));
    let with_model = per_call(run(&mut [RateLimiter::new(&quota), RateLimiter::new(&quota)]));
    println!("deployment quota (rpm + tpm windows of {} entries each): {deployment:.0} ns per call", 60 * RATE);
    println!("deployment and model quotas: {with_model:.0} ns per call");
}
