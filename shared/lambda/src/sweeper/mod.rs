//! The sweeper (scheduled): the backstop that keeps "every unfinished task has a live message"
//! true. It re-sends the unfinished tasks whose message is missing — never a task whose message
//! is only waiting in a backlog ([`resend`] says how it tells them apart); rebalances the queues'
//! `MaximumConcurrency` weights from their backlogs — weighted priority with a floor, never low
//! below 2 ([`mappings`]); writes breakers whose cool-down passed as half-open ([`breakers`]);
//! and alerts on stuck runs ([`stuck`]). It calls no provider. [`SweeperPorts::run`] does all
//! four, each whatever the others' failures, and its [`SweepSummary`] names every part that
//! failed ([`summary`]), so the function can return an error that the `Errors` alarm sees.

pub mod breakers;
pub mod env;
pub mod mappings;
pub mod resend;
pub mod stuck;
pub mod summary;

use std::time::Duration;

use taskexec_core::engine::Limits;
use taskexec_core::ports::{ControlState, LimitKey, MetricsSink};
use taskexec_core::time::Clock;

use self::breakers::{BreakerBoard, half_open_breakers};
use self::mappings::{Backlogs, MappingWeights, rebalance_mappings};
pub use self::resend::{QueueDepths, ResendError, ResendIndex, ResendSettings, SweepReport};
use self::resend::{resend_in_stuck_runs, resend_missing};
use self::stuck::{RunWatch, stuck_runs, stuck_runs_emf};
pub use self::summary::{Incomplete, PartFailure, SweepError, SweepPart, SweepSummary};
use taskexec_core::ports::WorkQueue;

/// How the sweeper runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweeperSettings {
    /// Re-sending: the grace, tasks re-sent and index entries read per invocation at most.
    pub resend: ResendSettings,
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
            resend: ResendSettings::default(),
            stuck_after: stuck::DEFAULT_STUCK_AFTER,
            stuck_run_limit: 20,
            deployments: Vec::new(),
        }
    }
}

/// The sweeper's ports, borrowed for a sweep.
#[derive(Debug)]
pub struct SweeperPorts<'a, I, Q, K, B, M, W, S> {
    /// Unfinished tasks, and the record of re-sends (the store).
    pub index: &'a I,
    /// The work queue, and its depths (SQS).
    pub queue: &'a Q,
    /// Stored breakers (the store).
    pub breakers: &'a K,
    /// Backlogs and mappings, when rebalancing is configured.
    pub weights: Option<(&'a B, &'a M)>,
    /// Runs' progress (the store).
    pub runs: &'a W,
    /// Metrics (EMF in Lambda).
    pub metrics: &'a S,
}

impl<I, Q, K, B, M, W, S> SweeperPorts<'_, I, Q, K, B, M, W, S>
where
    I: ResendIndex,
    Q: WorkQueue + QueueDepths,
    K: BreakerBoard,
    B: Backlogs,
    M: MappingWeights,
    W: RunWatch,
    S: MetricsSink,
{
    /// One sweep: re-send, rebalance, half-open breakers, stuck runs. Every part runs whatever
    /// the others did; each failure is logged and recorded in the summary
    /// ([`SweepSummary::into_result`]). The `StuckRuns` EMF line goes to stdout whenever the
    /// stuck-run check ran, whatever the other parts did.
    pub async fn run<C: Clock>(&self, clock: &C, settings: &SweeperSettings) -> SweepSummary {
        let mut summary = SweepSummary::default();
        // Each part boxed: one flat future instead of four nested state machines.
        match Box::pin(resend_missing(self.index, self.queue, clock, settings.resend)).await {
            Ok(report) => {
                let failed = report.failed + report.unrecorded;
                summary.fail_if(SweepPart::Resend, "re-sends", failed, report.resent + report.failed);
                summary.resend = Some(report);
            }
            Err(error) => summary.fail(SweepPart::Resend, error),
        }
        if let Some((backlogs, mappings)) = self.weights {
            match Box::pin(rebalance_mappings(backlogs, mappings)).await {
                Ok(report) => {
                    summary.fail_if(
                        SweepPart::Rebalance,
                        "mapping updates",
                        report.failed,
                        report.updated + report.failed,
                    );
                    summary.rebalance = Some(report);
                }
                Err(error) => summary.fail(SweepPart::Rebalance, error),
            }
        }
        let breakers = Box::pin(half_open_breakers(self.breakers, &settings.deployments, self.metrics, clock)).await;
        summary.fail_if(SweepPart::Breakers, "breaker reads or writes", breakers.failed, settings.deployments.len());
        summary.half_opened = breakers.moved;
        match Box::pin(stuck_runs(self.runs, clock, settings.stuck_after, settings.stuck_run_limit)).await {
            Ok(stuck) => {
                println!("{}", stuck_runs_emf(&stuck, clock.now()));
                summary.stuck = Some(stuck);
            }
            Err(error) => summary.fail(SweepPart::StuckRuns, error),
        }
        self.resend_in_stuck_runs(clock, settings, &mut summary).await;
        summary
    }

    /// A stuck run may hold a task whose message was lost after it was sent: its unfinished tasks
    /// go through the re-send rule, and what is re-sent adds to the re-send report.
    async fn resend_in_stuck_runs<C: Clock>(&self, clock: &C, settings: &SweeperSettings, summary: &mut SweepSummary) {
        let runs: Vec<String> = summary.stuck.iter().flatten().map(|s| s.run_id.clone()).collect();
        match Box::pin(resend_in_stuck_runs(self.index, self.queue, clock, settings.resend, &runs)).await {
            Ok(report) if report.resent + report.failed > 0 => {
                let failed = report.failed + report.unrecorded;
                summary.fail_if(SweepPart::Resend, "re-sends in stuck runs", failed, report.resent + report.failed);
                let total = summary.resend.get_or_insert_with(SweepReport::default);
                total.resent += report.resent;
                total.failed += report.failed;
                total.unrecorded += report.unrecorded;
            }
            Ok(_) => {}
            Err(error) => summary.fail(SweepPart::Resend, error),
        }
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

/// The limit keys whose expired leases the sweeper returns: the configured limits' and those of
/// concurrency limits set at run time (`taskexec limits set … --concurrency`, in the control
/// state), each once.
#[must_use]
pub fn reclaim_keys(configured: &Limits, control: &ControlState) -> Vec<LimitKey> {
    let mut keys: Vec<LimitKey> = configured.keys().into_iter().map(|(key, _)| key).collect();
    for (deployment, _) in control.limits.iter().filter(|(_, o)| o.concurrency.is_some()) {
        let key = LimitKey::Deployment(deployment.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_reclaims_configured_and_run_time_limit_keys_once() {
        use taskexec_core::ports::LimitOverride;
        let mut configured = Limits { global: Some(4), ..Limits::default() };
        configured.deployments.insert("a".into(), 2);
        let mut control = ControlState::default();
        control.limits.insert("a".into(), LimitOverride { concurrency: Some(1), ..LimitOverride::default() });
        control.limits.insert("b".into(), LimitOverride { concurrency: Some(3), ..LimitOverride::default() });
        control.limits.insert("c".into(), LimitOverride { rpm: Some(5), ..LimitOverride::default() });
        let keys = reclaim_keys(&configured, &control);
        let want = [LimitKey::Global, LimitKey::Deployment("a".into()), LimitKey::Deployment("b".into())];
        assert_eq!(keys, want, "c has a quota set, no concurrency limit");
    }

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

/// A sweep whose parts fail: every part still runs and the error names each failure.
#[cfg(test)]
mod failure_tests {
    use taskexec_core::breaker::BreakerSnapshot;
    use taskexec_core::error::StoreError;
    use taskexec_core::memory::CountingSink;
    use taskexec_core::time::{FakeClock, Millis};

    use super::mappings::RebalanceReport;
    use super::resend::{Candidate, QueueDepth, ResendRule};
    use super::stuck::{RunActivity, WaitingRun};
    use super::*;
    use crate::actions::{ActionError, RecordingQueue};

    fn broken() -> StoreError {
        StoreError::backend(std::io::Error::other("ProvisionedThroughputExceededException"))
    }

    /// Every port, each failing or not as told.
    #[derive(Default)]
    struct Ports {
        queue: RecordingQueue,
        index_fails: bool,
        breakers_fail: bool,
        mappings_fail: bool,
    }

    impl ResendIndex for Ports {
        async fn missing(&self, _: &ResendRule, _: usize, _: usize) -> Result<Vec<Candidate>, StoreError> {
            if self.index_fails { Err(broken()) } else { Ok(Vec::new()) }
        }

        async fn mark_resent(&self, _: &Candidate, _: Millis) -> Result<bool, StoreError> {
            Ok(true)
        }
    }

    impl QueueDepths for RecordingQueue {
        async fn depths(&self) -> Result<[QueueDepth; 3], ActionError> {
            Ok([QueueDepth { messages: 0, retention: Duration::from_secs(86_400) }; 3])
        }
    }

    impl BreakerBoard for Ports {
        async fn load(&self, _: &str) -> Result<Option<BreakerSnapshot>, StoreError> {
            if self.breakers_fail { Err(broken()) } else { Ok(None) }
        }

        async fn replace_if(&self, _: &str, _: &BreakerSnapshot, _: &BreakerSnapshot) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    impl Backlogs for Ports {
        async fn backlogs(&self) -> Result<[u64; 3], ActionError> {
            Ok([0, 0, 0])
        }
    }

    impl MappingWeights for Ports {
        async fn weights(&self) -> Result<[Option<u32>; 3], ActionError> {
            if self.mappings_fail { Err("ResourceNotFoundException: no such mapping".into()) } else { Ok([Some(2); 3]) }
        }

        async fn set_weight(&self, _: usize, _: u32) -> Result<(), ActionError> {
            Ok(())
        }
    }

    impl RunWatch for Ports {
        async fn waiting_runs(&self, _: Millis, _: usize) -> Result<Vec<WaitingRun>, StoreError> {
            Ok(Vec::new())
        }

        async fn activity(&self, _: &str) -> Result<RunActivity, StoreError> {
            Ok(RunActivity::default())
        }
    }

    async fn sweep_with(ports: &Ports) -> SweepSummary {
        let sink = CountingSink::default();
        let sweeper = SweeperPorts {
            index: ports,
            queue: &ports.queue,
            breakers: ports,
            weights: Some((ports, ports)),
            runs: ports,
            metrics: &sink,
        };
        let settings = SweeperSettings { deployments: vec!["a".into(), "b".into()], ..SweeperSettings::default() };
        sweeper.run(&FakeClock::at(1_000_000_000), &settings).await
    }

    #[tokio::test]
    async fn a_clean_sweep_is_ok() {
        let summary = sweep_with(&Ports::default()).await.into_result().unwrap();
        assert_eq!(summary.resend, Some(SweepReport::default()));
        assert_eq!(summary.rebalance.as_ref().map(|r: &RebalanceReport| r.after), Some([2, 2, 2]));
        assert_eq!(summary.stuck, Some(Vec::new()));
    }

    #[tokio::test]
    async fn every_failed_part_is_named_and_the_others_still_run() {
        let ports = Ports { index_fails: true, breakers_fail: true, mappings_fail: true, ..Ports::default() };
        let mut summary = sweep_with(&ports).await;
        // The stuck-run check ran (and printed its EMF line) although the parts before it failed.
        assert_eq!(summary.stuck, Some(Vec::new()));
        assert!(summary.resend.is_none() && summary.rebalance.is_none());
        summary.fail(SweepPart::LimiterReclaim, broken());
        let parts: Vec<SweepPart> = summary.failures.iter().map(|f| f.part).collect();
        assert_eq!(parts, [SweepPart::Resend, SweepPart::Rebalance, SweepPart::Breakers, SweepPart::LimiterReclaim]);
        let error = summary.into_result().unwrap_err();
        let text = error.to_string();
        for expected in [
            "4 sweeper part(s) failed",
            "re-send: cannot read the store's unsent submissions",
            "rebalance: cannot read event source mappings: ResourceNotFoundException",
            "breakers: 2 of 2 breaker reads or writes failed",
            "limiter reclaim: store backend failed",
            "0 stuck run(s)",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert!(std::error::Error::source(&error).is_some(), "the first failure is the source");
    }
}
