//! Stuck-run alerts. A run is stuck when it has unfinished tasks but none of its tasks finished
//! (completed, failed or cancelled) in the last `stuck_after` (default 15 minutes).
//!
//! **Finding candidates cheaply.** A run can only be stuck if it was submitted to at least
//! `stuck_after` ago and no task of it finished since. On DynamoDB the candidates come from a
//! sparse index of active runs kept on the run counter items ([`RunWatch::waiting_runs`]): the
//! submission's `ADD submitted` marks a run active (no extra write), the workers' counter `ADD`
//! sets `lastFinishedAt` (no extra write), so a run that finished something recently is not a
//! candidate. Only candidates are then confirmed ([`RunWatch::activity`]): that reads the run's
//! journal and the state item of each of its tasks (about 0.5 read unit per task, eventually
//! consistent), at most `limit` runs per sweep, and decides from them alone: unfinished tasks,
//! the earliest due time among them (submission or retry time, not moved by deferrals) at least
//! `stuck_after` ago, and no task finished since. A run found with nothing unfinished leaves the
//! index of active runs.
//!
//! Each stuck run is one `tracing::warn!` (a JSON line in Lambda, fields `runId`, `unfinished`,
//! `lastFinishedAt`, `oldestDueAt`, `stuckForMs`), and every sweep prints one EMF line with the
//! metric `StuckRuns` (the count, 0 included, so an alarm on it has data).

use std::future::Future;
use std::time::Duration;

use taskexec_core::error::StoreError;
use taskexec_core::time::{Clock, Millis};

/// Default of `stuck_after`.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// A run that may be stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingRun {
    /// The run.
    pub run_id: String,
    /// The earliest due time of its unfinished tasks as far as the candidates' source knows
    /// (for ordering; [`RunActivity::oldest_due_at`] decides).
    pub oldest_due_at: Millis,
}

/// A run's progress as the check needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunActivity {
    /// Tasks queued or running.
    pub unfinished: u64,
    /// When one of its tasks last reached a final state (`None`: none has).
    pub last_finished_at: Option<Millis>,
    /// The earliest due time of its unfinished tasks (`None`: none).
    pub oldest_due_at: Option<Millis>,
}

/// A stuck run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckRun {
    /// The run.
    pub run_id: String,
    /// Its unfinished tasks.
    pub unfinished: u64,
    /// When a task of it last finished.
    pub last_finished_at: Option<Millis>,
    /// The earliest due time of its unfinished tasks.
    pub oldest_due_at: Millis,
}

/// Where runs' progress is read, as a port (the DynamoDB store in `taskexec-aws`).
pub trait RunWatch: Send + Sync {
    /// Runs that may have an unfinished task due at or before `due_by` and no finish after it, at
    /// most `limit`, each once (a superset is fine: [`RunWatch::activity`] decides).
    fn waiting_runs(
        &self,
        due_by: Millis,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<WaitingRun>, StoreError>> + Send;
    /// A run's unfinished count, last finish and earliest due unfinished task, read exactly. A
    /// store may forget a run found with nothing unfinished (it is no candidate any more).
    fn activity(&self, run_id: &str) -> impl Future<Output = Result<RunActivity, StoreError>> + Send;
}

/// The stuck runs among at most `limit` candidates; logs a warning for each. A candidate whose
/// activity cannot be read is logged and skipped.
pub async fn stuck_runs<W: RunWatch, C: Clock>(
    watch: &W,
    clock: &C,
    stuck_after: Duration,
    limit: usize,
) -> Result<Vec<StuckRun>, StoreError> {
    let now = clock.now();
    let since = now - Millis::try_from(stuck_after.as_millis()).unwrap_or(Millis::MAX / 2);
    let mut stuck = Vec::new();
    for candidate in watch.waiting_runs(since, limit).await? {
        let activity = match watch.activity(&candidate.run_id).await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(runId = candidate.run_id, %error, "sweeper could not read the run's progress");
                continue;
            }
        };
        let Some(oldest_due_at) = activity.oldest_due_at.filter(|due| *due <= since) else { continue };
        if activity.unfinished == 0 || activity.last_finished_at.is_some_and(|at| at > since) {
            continue;
        }
        let stuck_for = now - activity.last_finished_at.unwrap_or(oldest_due_at);
        tracing::warn!(
            runId = candidate.run_id,
            unfinished = activity.unfinished,
            lastFinishedAt = activity.last_finished_at,
            oldestDueAt = oldest_due_at,
            stuckForMs = stuck_for,
            alert = "StuckRun",
            "run is stuck: unfinished tasks and none finished within the threshold"
        );
        stuck.push(StuckRun {
            run_id: candidate.run_id,
            unfinished: activity.unfinished,
            last_finished_at: activity.last_finished_at,
            oldest_due_at,
        });
    }
    Ok(stuck)
}

/// The EMF line (no newline) of the `StuckRuns` metric: `count` stuck runs at `timestamp`, in the
/// `taskexec` namespace without dimensions; the run ids are a property (searchable in Logs
/// Insights, not a dimension).
#[must_use]
pub fn stuck_runs_emf(stuck: &[StuckRun], timestamp: Millis) -> String {
    let ids: Vec<&str> = stuck.iter().map(|s| s.run_id.as_str()).collect();
    serde_json::json!({
        "_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [
            {"Namespace": "taskexec", "Dimensions": [[]], "Metrics": [{"Name": "StuckRuns", "Unit": "Count"}]}
        ]},
        "StuckRuns": stuck.len(),
        "runIds": ids,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use taskexec_core::time::FakeClock;

    use super::*;

    const MIN: Millis = 60_000;

    struct Runs(HashMap<&'static str, (Millis, RunActivity)>);

    impl RunWatch for Runs {
        async fn waiting_runs(&self, due_by: Millis, limit: usize) -> Result<Vec<WaitingRun>, StoreError> {
            let mut runs: Vec<WaitingRun> = self
                .0
                .iter()
                .filter(|(_, (due, a))| *due <= due_by && a.unfinished > 0)
                .map(|(id, (due, _))| WaitingRun { run_id: (*id).to_owned(), oldest_due_at: *due })
                .collect();
            runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
            runs.truncate(limit);
            Ok(runs)
        }

        async fn activity(&self, run_id: &str) -> Result<RunActivity, StoreError> {
            Ok(self.0[run_id].1)
        }
    }

    #[tokio::test]
    async fn a_run_is_stuck_when_nothing_finished_within_the_threshold() {
        let now = 100 * MIN;
        let act = |unfinished, last: Option<Millis>, due| RunActivity {
            unfinished,
            last_finished_at: last,
            oldest_due_at: (unfinished > 0).then_some(due),
        };
        let runs = Runs(HashMap::from([
            ("idle", (now - 30 * MIN, act(5, Some(now - 20 * MIN), now - 30 * MIN))),
            ("never", (now - 16 * MIN, act(3, None, now - 16 * MIN))),
            ("busy", (now - 40 * MIN, act(500, Some(now - MIN), now - 40 * MIN))),
            ("fresh", (now - 5 * MIN, act(2, None, now - 5 * MIN))),
            // A candidate by its hint, but its old tasks finished and its unfinished ones are new.
            ("renewed", (now - 40 * MIN, act(2, Some(now - 30 * MIN), now - 2 * MIN))),
        ]));
        let stuck = stuck_runs(&runs, &FakeClock::at(now), DEFAULT_STUCK_AFTER, 10).await.unwrap();
        let ids: Vec<&str> = stuck.iter().map(|s| s.run_id.as_str()).collect();
        assert_eq!(ids, ["idle", "never"]);
        assert_eq!(stuck[0].last_finished_at, Some(now - 20 * MIN));
        let line: serde_json::Value = serde_json::from_str(&stuck_runs_emf(&stuck, now)).unwrap();
        assert_eq!(line["StuckRuns"], 2);
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], "StuckRuns");
        assert_eq!(line["runIds"][1], "never");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&stuck_runs_emf(&[], now)).unwrap()["StuckRuns"], 0);
    }
}
