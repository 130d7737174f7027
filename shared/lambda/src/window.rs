//! The breaker's shared window: per deployment, outcome counts in time buckets that every worker
//! adds its invocation's totals to (one write per deployment per invocation) and reads summed
//! over the breaker's window, so the failure-rate rule is judged on all workers' outcomes
//! (DESIGN.md, "Circuit breaker").

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use taskexec_core::error::StoreError;
use taskexec_core::time::Millis;

/// Buckets per breaker window (as the local breaker's).
pub const BUCKETS: i64 = 10;

/// The width of a shared bucket for a breaker window of `window_ms`.
#[must_use]
pub fn bucket_width(window_ms: u64) -> Millis {
    (Millis::try_from(window_ms).unwrap_or(Millis::MAX) / BUCKETS).max(1)
}

/// The start of the bucket of width `width` that holds `now`.
#[must_use]
pub fn bucket_start(now: Millis, width: Millis) -> Millis {
    now - now.rem_euclid(width.max(1))
}

/// Time-bucketed outcome counters shared between workers.
pub trait OutcomeWindow: Send + Sync {
    /// Add `calls` and `failures` to `deployment`'s bucket starting at `bucket_start`.
    fn add(
        &self,
        deployment: &str,
        bucket_start: Millis,
        calls: u32,
        failures: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// `deployment`'s calls and failures summed over the buckets starting at or after `since`.
    fn window(&self, deployment: &str, since: Millis) -> impl Future<Output = Result<(u32, u32), StoreError>> + Send;
}

impl<T: OutcomeWindow> OutcomeWindow for Arc<T> {
    fn add(
        &self,
        deployment: &str,
        bucket_start: Millis,
        calls: u32,
        failures: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).add(deployment, bucket_start, calls, failures)
    }

    fn window(&self, deployment: &str, since: Millis) -> impl Future<Output = Result<(u32, u32), StoreError>> + Send {
        (**self).window(deployment, since)
    }
}

/// An in-process [`OutcomeWindow`] (tests; workers that share nothing).
#[derive(Debug, Default)]
pub struct MemoryWindow {
    buckets: Mutex<BTreeMap<(String, Millis), (u32, u32)>>,
}

impl OutcomeWindow for MemoryWindow {
    async fn add(&self, deployment: &str, bucket_start: Millis, calls: u32, failures: u32) -> Result<(), StoreError> {
        let mut buckets = self.buckets.lock().expect("window poisoned");
        let bucket = buckets.entry((deployment.to_owned(), bucket_start)).or_default();
        bucket.0 = bucket.0.saturating_add(calls);
        bucket.1 = bucket.1.saturating_add(failures);
        Ok(())
    }

    async fn window(&self, deployment: &str, since: Millis) -> Result<(u32, u32), StoreError> {
        let buckets = self.buckets.lock().expect("window poisoned");
        Ok(buckets
            .range((deployment.to_owned(), since)..=(deployment.to_owned(), Millis::MAX))
            .fold((0, 0), |(c, f), (_, (calls, failures))| (c.saturating_add(*calls), f.saturating_add(*failures))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_window_sums_the_buckets_in_range() {
        let w = MemoryWindow::default();
        w.add("dep", 0, 5, 1).await.unwrap();
        w.add("dep", 1_000, 2, 2).await.unwrap();
        w.add("dep", 1_000, 1, 0).await.unwrap();
        w.add("other", 1_000, 9, 9).await.unwrap();
        assert_eq!(w.window("dep", 0).await.unwrap(), (8, 3));
        assert_eq!(w.window("dep", 1).await.unwrap(), (3, 2));
        assert_eq!(w.window("none", 0).await.unwrap(), (0, 0));
    }

    #[test]
    fn buckets_are_a_tenth_of_the_window() {
        assert_eq!(bucket_width(30_000), 3_000);
        assert_eq!(bucket_width(5), 1);
        assert_eq!(bucket_start(7_500, 3_000), 6_000);
    }
}
