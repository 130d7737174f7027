//! The sweeper (scheduled): the backstop that keeps "every unfinished task has a live message"
//! true. It re-sends unfinished tasks whose lease expired or whose retry is overdue (a send that
//! failed after the record was written, a worker that died), and computes the queues'
//! `MaximumConcurrency` weights from their backlogs — weighted priority with a floor, never low
//! below 2. It calls no provider.

use std::future::Future;

use taskexec_core::error::StoreError;
use taskexec_core::message::Envelope;
use taskexec_core::ports::{DeliveryBuilder, PendingTask};
use taskexec_core::time::{Clock, Millis};

use crate::actions::{QueueActions, Topology};

/// Unfinished tasks that need a message: lease expired, or retry overdue by more than a grace.
pub trait OverdueIndex: Send + Sync {
    /// Up to `limit` such tasks at `now`.
    fn overdue(&self, now: Millis, limit: usize) -> impl Future<Output = Result<Vec<PendingTask>, StoreError>> + Send;
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Tasks re-sent.
    pub resent: usize,
    /// Sends that failed (they are found again next sweep).
    pub failed: usize,
}

/// Re-send every overdue task (up to `limit`) to the queue of its priority.
pub async fn sweep<I: OverdueIndex, A: QueueActions, C: Clock>(
    index: &I,
    actions: &A,
    topology: &Topology,
    clock: &C,
    limit: usize,
) -> Result<SweepReport, StoreError> {
    let overdue = index.overdue(clock.now(), limit).await?;
    let mut builder = DeliveryBuilder::default();
    let mut report = SweepReport::default();
    for task in overdue {
        let delivery = builder.build(task);
        let queue = topology.for_priority(delivery.priority);
        match actions.send(&queue.url, Envelope::of(&delivery).to_body(), 0).await {
            Ok(()) => report.resent += 1,
            Err(error) => {
                tracing::warn!(task_id = %delivery.task_id, %error, "sweeper could not re-send");
                report.failed += 1;
            }
        }
    }
    if report.resent + report.failed > 0 {
        tracing::info!(resent = report.resent, failed = report.failed, "sweep re-sent overdue tasks");
    }
    Ok(report)
}

/// Weight of a waiting message per priority (high, normal, low) when sharing concurrency.
pub const PRIORITY_WEIGHTS: [u64; 3] = [4, 2, 1];
/// The smallest `MaximumConcurrency` SQS event source mappings accept.
pub const MIN_CONCURRENCY: u32 = 2;

/// Share `total` concurrency among the high, normal and low queues by backlog × priority weight,
/// each getting at least [`MIN_CONCURRENCY`]; with no backlog anywhere, evenly. The result always
/// sums to `total` (when `total` ≥ 3 × the floor).
#[must_use]
pub fn rebalance(backlogs: [u64; 3], total: u32) -> [u32; 3] {
    let total = total.max(3 * MIN_CONCURRENCY);
    let spare = u64::from(total - 3 * MIN_CONCURRENCY);
    let mut weights: Vec<u64> = backlogs.iter().zip(PRIORITY_WEIGHTS).map(|(b, w)| b.saturating_mul(w)).collect();
    if weights.iter().all(|w| *w == 0) {
        weights = vec![1, 1, 1];
    }
    let sum: u64 = weights.iter().sum();
    // Largest remainder: floor shares, then the leftover units to the largest fractions.
    let mut shares: Vec<(u64, u64, usize)> =
        weights.iter().enumerate().map(|(i, w)| ((spare * w) / sum, (spare * w) % sum, i)).collect();
    let mut left = spare - shares.iter().map(|s| s.0).sum::<u64>();
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by_key(|i| (std::cmp::Reverse(shares[*i].1), *i));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].0 += 1;
        left -= 1;
    }
    let mut out = [MIN_CONCURRENCY; 3];
    for (share, _, i) in shares {
        out[i] += u32::try_from(share).unwrap_or(u32::MAX);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_follows_backlog_and_priority_with_a_floor() {
        assert_eq!(rebalance([0, 0, 0], 30), [10, 10, 10], "no backlog: even");
        let r = rebalance([100, 0, 0], 30);
        assert_eq!(r, [26, 2, 2], "only high waits: it takes all but the floors");
        let r = rebalance([0, 0, 1_000_000], 30);
        assert_eq!(r, [2, 2, 26]);
        let r = rebalance([10, 10, 10], 30);
        assert!(r[0] > r[1] && r[1] > r[2], "equal backlogs: weighted by priority {r:?}");
        assert!(r[2] >= MIN_CONCURRENCY);
        for backlogs in [[1, 2, 3], [7, 0, 9], [1_000, 1, 1], [0, 5, 0]] {
            for total in [6, 7, 20, 31, 100] {
                let r = rebalance(backlogs, total);
                assert_eq!(r.iter().sum::<u32>(), total, "{backlogs:?} {total}");
                assert!(r.iter().all(|c| *c >= MIN_CONCURRENCY));
            }
        }
        assert_eq!(rebalance([1, 1, 1], 2).iter().sum::<u32>(), 6, "never below three floors");
    }
}
