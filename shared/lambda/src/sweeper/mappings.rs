//! Rebalancing applied: the queues' backlogs in, [`rebalance`]'s shares out, written to the
//! three event source mappings' `ScalingConfig.MaximumConcurrency`.
//!
//! - **Backlog** of a queue = visible + delayed messages (`ApproximateNumberOfMessages` +
//!   `ApproximateNumberOfMessagesDelayed`). Delayed messages are retries and re-sends due within
//!   15 minutes: demand the mapping should be sized for. In-flight messages
//!   (`ApproximateNumberOfMessagesNotVisible`) are left out: they are either being processed
//!   (they already hold concurrency) or deferred behind a lease, a breaker or a limit (more
//!   concurrency would not run them sooner).
//! - **Total** = the sum of the mappings' current values, so the worker's reserved concurrency
//!   (sized to that sum at deploy time) is never exceeded and no mapping is throttled.
//! - Only mappings whose value changes are written, decreases before increases, so the sum never
//!   passes the total between two writes; when a decrease fails, the increases are skipped for
//!   the same reason. A write that fails is logged and counted; the next sweep tries again.

use std::future::Future;

use super::{MIN_CONCURRENCY, rebalance};
use crate::actions::ActionError;

/// The largest `MaximumConcurrency` an SQS event source mapping accepts.
pub const MAX_CONCURRENCY: u32 = 1_000;

/// Names of the three mappings/queues, in the order of every `[_; 3]` here.
pub const PRIORITY_NAMES: [&str; 3] = ["high", "normal", "low"];

/// The queues' backlogs, as a port (SQS `GetQueueAttributes` in `taskexec-aws`).
pub trait Backlogs: Send + Sync {
    /// Visible + delayed messages of the high, normal and low queues.
    fn backlogs(&self) -> impl Future<Output = Result<[u64; 3], ActionError>> + Send;
}

/// The event source mappings' weights, as a port (Lambda `GetEventSourceMapping` /
/// `UpdateEventSourceMapping` in `taskexec-aws`).
pub trait MappingWeights: Send + Sync {
    /// The current `MaximumConcurrency` of the high, normal and low mappings (`None` for a mapping
    /// without one).
    fn weights(&self) -> impl Future<Output = Result<[Option<u32>; 3], ActionError>> + Send;
    /// Set mapping `index`'s (0 high, 1 normal, 2 low) `MaximumConcurrency`.
    fn set_weight(&self, index: usize, value: u32) -> impl Future<Output = Result<(), ActionError>> + Send;
}

/// What a rebalancing did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebalanceReport {
    /// Visible + delayed messages per queue.
    pub backlogs: [u64; 3],
    /// `MaximumConcurrency` per mapping before.
    pub before: [u32; 3],
    /// The shares computed (what the mappings hold after a sweep without failures).
    pub after: [u32; 3],
    /// Mappings written.
    pub updated: usize,
    /// Writes that failed.
    pub failed: usize,
    /// Increases not written because a decrease failed (they would pass the total).
    pub skipped: usize,
}

/// Why nothing was rebalanced.
#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    /// Reading the backlogs or the mappings failed.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The SDK error.
        source: ActionError,
    },
    /// A mapping has no `MaximumConcurrency`: there is no total to share (set it in the template).
    #[error("the {0} queue's event source mapping has no ScalingConfig.MaximumConcurrency")]
    Unbounded(&'static str),
}

/// The shares for `backlogs` out of the mappings' current total, each capped at
/// [`MAX_CONCURRENCY`] (a cap only lowers the sum, so the total is still never exceeded).
#[must_use]
pub fn shares(backlogs: [u64; 3], current: [u32; 3]) -> [u32; 3] {
    let total = current.iter().sum::<u32>().max(3 * MIN_CONCURRENCY);
    rebalance(backlogs, total).map(|c| c.min(MAX_CONCURRENCY))
}

/// Read the backlogs and the mappings, and write the mappings whose share changed.
pub async fn rebalance_mappings<B: Backlogs, M: MappingWeights>(
    backlogs: &B,
    mappings: &M,
) -> Result<RebalanceReport, RebalanceError> {
    let queued = backlogs.backlogs().await.map_err(|source| RebalanceError::Read { what: "queue backlogs", source })?;
    let current =
        mappings.weights().await.map_err(|source| RebalanceError::Read { what: "event source mappings", source })?;
    let mut before = [0; 3];
    for (i, value) in current.into_iter().enumerate() {
        before[i] = value.ok_or(RebalanceError::Unbounded(PRIORITY_NAMES[i]))?;
    }
    let after = shares(queued, before);
    let mut report = RebalanceReport { backlogs: queued, before, after, ..RebalanceReport::default() };
    // Decreases first: the sum stays at or below the total between writes.
    let mut changes: Vec<usize> = (0..3).filter(|i| after[*i] != before[*i]).collect();
    changes.sort_by_key(|i| after[*i] > before[*i]);
    for i in changes {
        if after[i] > before[i] && report.failed > 0 {
            // A decrease did not happen: this increase would take the sum past the total.
            report.skipped += 1;
            continue;
        }
        match mappings.set_weight(i, after[i]).await {
            Ok(()) => report.updated += 1,
            Err(error) => {
                tracing::warn!(queue = PRIORITY_NAMES[i], %error, "sweeper could not update the event source mapping");
                report.failed += 1;
            }
        }
    }
    if report.updated + report.failed > 0 {
        tracing::info!(
            backlogs = ?report.backlogs, before = ?report.before, after = ?report.after,
            "sweeper rebalanced the queues' MaximumConcurrency"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Fixed([u64; 3]);

    impl Backlogs for Fixed {
        async fn backlogs(&self) -> Result<[u64; 3], ActionError> {
            Ok(self.0)
        }
    }

    struct FakeMappings {
        values: Mutex<[Option<u32>; 3]>,
        writes: Mutex<Vec<(usize, u32)>>,
        fail: Option<usize>,
    }

    impl FakeMappings {
        fn new(values: [Option<u32>; 3]) -> Self {
            Self { values: Mutex::new(values), writes: Mutex::default(), fail: None }
        }
    }

    impl MappingWeights for FakeMappings {
        async fn weights(&self) -> Result<[Option<u32>; 3], ActionError> {
            Ok(*self.values.lock().unwrap())
        }

        async fn set_weight(&self, index: usize, value: u32) -> Result<(), ActionError> {
            if self.fail == Some(index) {
                return Err("ResourceInUseException".into());
            }
            let mut values = self.values.lock().unwrap();
            values[index] = Some(value);
            let sum: u32 = values.iter().flatten().sum();
            assert!(sum <= 30, "the sum passed the total between writes: {values:?}");
            self.writes.lock().unwrap().push((index, value));
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_only_what_changes_decreases_first() {
        let m = FakeMappings::new([Some(10), Some(10), Some(10)]);
        let report = rebalance_mappings(&Fixed([100, 0, 0]), &m).await.unwrap();
        assert_eq!(report.after, [26, 2, 2]);
        assert_eq!((report.updated, report.failed), (3, 0));
        let writes = m.writes.lock().unwrap().clone();
        assert_eq!(writes.last(), Some(&(0, 26)), "the increase comes last: {writes:?}");
        // Same backlog again: nothing to write.
        let report = rebalance_mappings(&Fixed([100, 0, 0]), &m).await.unwrap();
        assert_eq!((report.before, report.updated), ([26, 2, 2], 0));
        assert_eq!(m.writes.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_failed_write_is_counted_and_a_mapping_without_a_value_stops_it() {
        let mut m = FakeMappings::new([Some(10), Some(10), Some(10)]);
        m.fail = Some(2);
        let report = rebalance_mappings(&Fixed([100, 0, 0]), &m).await.unwrap();
        assert_eq!((report.updated, report.failed, report.skipped), (1, 1, 1), "normal lowered, high not raised");
        assert_eq!(*m.values.lock().unwrap(), [Some(10), Some(2), Some(10)]);
        let m = FakeMappings::new([Some(10), None, Some(10)]);
        let err = rebalance_mappings(&Fixed([1, 1, 1]), &m).await.unwrap_err();
        assert!(err.to_string().contains("normal"), "{err}");
        assert!(m.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn shares_are_capped_per_mapping() {
        assert_eq!(shares([5, 0, 0], [1_000, 500, 500]), [1_000, 2, 2]);
        assert_eq!(shares([0, 0, 0], [2, 2, 2]), [2, 2, 2]);
    }
}
