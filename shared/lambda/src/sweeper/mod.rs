//! The sweeper (scheduled): the backstop that keeps "every unfinished task has a live message"
//! true. It re-sends unfinished tasks whose lease expired or whose retry is overdue (a send that
//! failed after the record was written, a worker that died); rebalances the queues'
//! `MaximumConcurrency` weights from their backlogs — weighted priority with a floor, never low
//! below 2 ([`mappings`]); writes breakers whose cool-down passed as half-open ([`breakers`]);
//! and alerts on stuck runs ([`stuck`]). It calls no provider. [`SweeperPorts::run`] does all
//! four, each independent of the others' failures.

pub mod breakers;
pub mod env;
pub mod mappings;
pub mod stuck;

use std::future::Future;
use std::time::Duration;

use taskexec_core::error::StoreError;
use taskexec_core::message::Envelope;
use taskexec_core::ports::{DeliveryBuilder, MetricsSink, PendingTask};
use taskexec_core::time::{Clock, Millis};

use self::breakers::{BreakerBoard, half_open_breakers};
use self::mappings::{Backlogs, MappingWeights, RebalanceReport, rebalance_mappings};
use self::stuck::{RunWatch, StuckRun, stuck_runs, stuck_runs_emf};
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

/// How the sweeper runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperSettings {
    /// Tasks re-sent per invocation at most.
    pub resend_limit: usize,
    /// A run with unfinished tasks and no finish for this long is stuck.
    pub stuck_after: Duration,
    /// Candidate runs checked per invocation at most.
    pub stuck_run_limit: usize,
    /// Deployments whose breakers are looked at (the run config's).
    pub deployments: Vec<String>,
}

impl Default for SweeperSettings {
    fn default() -> Self {
        Self {
            resend_limit: 1_000,
            stuck_after: stuck::DEFAULT_STUCK_AFTER,
            stuck_run_limit: 20,
            deployments: Vec::new(),
        }
    }
}

/// Everything one sweep did.
#[derive(Debug, Default)]
pub struct SweepSummary {
    /// Re-sending (`None`: the overdue index could not be read).
    pub resend: Option<SweepReport>,
    /// Rebalancing (`None`: not configured, or it failed — logged).
    pub rebalance: Option<RebalanceReport>,
    /// Breakers moved to half-open.
    pub half_opened: Vec<String>,
    /// Stuck runs (`None`: the check failed — logged).
    pub stuck: Option<Vec<StuckRun>>,
}

impl std::fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resend {
            Some(r) => write!(f, "re-sent {} overdue task(s), {} failed", r.resent, r.failed)?,
            None => write!(f, "re-send skipped (index unreadable)")?,
        }
        match &self.rebalance {
            Some(r) => {
                write!(f, "; weights {:?} -> {:?} ({} updated, {} failed)", r.before, r.after, r.updated, r.failed)?
            }
            None => write!(f, "; no rebalancing")?,
        }
        write!(f, "; {} breaker(s) half-opened", self.half_opened.len())?;
        match &self.stuck {
            Some(s) => write!(f, "; {} stuck run(s)", s.len()),
            None => write!(f, "; stuck-run check failed"),
        }
    }
}

/// The sweeper's ports, borrowed for a sweep.
#[derive(Debug)]
pub struct SweeperPorts<'a, I, A, K, B, M, W, S> {
    /// Overdue tasks (the store).
    pub index: &'a I,
    /// Message sends (SQS).
    pub actions: &'a A,
    /// The queues.
    pub topology: &'a Topology,
    /// Stored breakers (the store).
    pub breakers: &'a K,
    /// Backlogs and mappings, when rebalancing is configured.
    pub weights: Option<(&'a B, &'a M)>,
    /// Runs' progress (the store).
    pub runs: &'a W,
    /// Metrics (EMF in Lambda).
    pub metrics: &'a S,
}

impl<I, A, K, B, M, W, S> SweeperPorts<'_, I, A, K, B, M, W, S>
where
    I: OverdueIndex,
    A: QueueActions,
    K: BreakerBoard,
    B: Backlogs,
    M: MappingWeights,
    W: RunWatch,
    S: MetricsSink,
{
    /// One sweep: re-send, rebalance, half-open breakers, stuck runs. A part that fails is logged
    /// and the others still run; the `StuckRuns` EMF line goes to stdout.
    pub async fn run<C: Clock>(&self, clock: &C, settings: &SweeperSettings) -> SweepSummary {
        let mut summary = SweepSummary::default();
        // Each part boxed: one flat future instead of four nested state machines.
        match Box::pin(sweep(self.index, self.actions, self.topology, clock, settings.resend_limit)).await {
            Ok(r) => summary.resend = Some(r),
            Err(error) => tracing::error!(%error, "sweeper could not read the overdue index"),
        }
        if let Some((backlogs, mappings)) = self.weights {
            match Box::pin(rebalance_mappings(backlogs, mappings)).await {
                Ok(r) => summary.rebalance = Some(r),
                Err(error) => tracing::error!(%error, "sweeper could not rebalance the queues"),
            }
        }
        summary.half_opened =
            Box::pin(half_open_breakers(self.breakers, &settings.deployments, self.metrics, clock)).await;
        match Box::pin(stuck_runs(self.runs, clock, settings.stuck_after, settings.stuck_run_limit)).await {
            Ok(stuck) => {
                println!("{}", stuck_runs_emf(&stuck, clock.now()));
                summary.stuck = Some(stuck);
            }
            Err(error) => tracing::error!(%error, "sweeper could not look for stuck runs"),
        }
        summary
    }
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
