//! Execution metrics: the story's `ExecutionMetrics` and `ResourceUsage`, and the per
//! deployment/model summary they are computed from.
//!
//! Definitions (also in `docs/api.md`): times in ms, throughput in tasks/s.
//! - `averageExecutionTime`: mean latency of the successful attempt of completed tasks.
//! - `throughput`: terminal tasks / seconds between the first attempt's start and the last end.
//! - `errorRate`: failed / (completed + failed); cancelled tasks are neither.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ports::GroupSummary;
use crate::task::{TaskRecord, TaskState};
use crate::time::Millis;

/// The story's `ExecutionMetrics`, global or for one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecutionMetrics {
    /// `global` or `run`.
    pub scope: String,
    /// The run, when `scope` is `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Every task in scope.
    pub total_tasks: u64,
    /// Completed tasks.
    pub completed_tasks: u64,
    /// Failed tasks (any class).
    pub failed_tasks: u64,
    /// Cancelled tasks.
    pub cancelled_tasks: u64,
    /// Queued or running.
    pub pending_tasks: u64,
    /// Mean successful-attempt latency, ms.
    pub average_execution_time: f64,
    /// Latency percentiles of successful attempts, ms.
    pub p50_latency: f64,
    /// 95th percentile.
    pub p95_latency: f64,
    /// 99th percentile.
    pub p99_latency: f64,
    /// Terminal tasks per second of active time.
    pub throughput: f64,
    /// failed / (completed + failed).
    pub error_rate: f64,
    /// Attempts beyond each task's first (rate limits excluded).
    pub retries: u64,
    /// Rate-limit answers.
    pub throttles: u64,
    /// Tasks dead-lettered by the engine.
    pub dead_lettered: u64,
}

impl ExecutionMetrics {
    /// Aggregate group summaries.
    #[must_use]
    pub fn from_groups(groups: &[GroupSummary], run_id: Option<&str>) -> Self {
        let sum = |f: fn(&GroupSummary) -> u64| groups.iter().map(f).sum::<u64>();
        let failed = sum(|g| g.failed_by_class.values().sum());
        let completed = sum(|g| g.completed);
        let cancelled = sum(|g| g.cancelled);
        let mut latencies: Vec<f64> = groups.iter().flat_map(|g| g.latencies_ms.iter().copied()).collect();
        latencies.sort_by(f64::total_cmp);
        let first = groups.iter().filter_map(|g| g.first_start).min();
        let last = groups.iter().filter_map(|g| g.last_end).max();
        let terminal = completed + failed + cancelled;
        let secs = match (first, last) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => 0.0,
        };
        Self {
            scope: if run_id.is_some() { "run" } else { "global" }.into(),
            run_id: run_id.map(str::to_owned),
            total_tasks: terminal + sum(|g| g.queued + g.running),
            completed_tasks: completed,
            failed_tasks: failed,
            cancelled_tasks: cancelled,
            pending_tasks: sum(|g| g.queued + g.running),
            average_execution_time: mean(&latencies),
            p50_latency: percentile(&latencies, 0.50),
            p95_latency: percentile(&latencies, 0.95),
            p99_latency: percentile(&latencies, 0.99),
            throughput: if secs > 0.0 { terminal as f64 / secs } else { 0.0 },
            error_rate: if completed + failed > 0 { failed as f64 / (completed + failed) as f64 } else { 0.0 },
            retries: sum(|g| g.retries),
            throttles: sum(|g| g.throttles),
            dead_lettered: sum(|g| g.dead_lettered),
        }
    }
}

/// The story's `ResourceUsage`: a sample of this process's use of the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceUsage {
    /// CPU use of the process, percent of one core (may exceed 100 on several cores).
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
    /// Resident memory as a percentage of the machine's total.
    pub memory_percent: f64,
    /// Bytes received over the network since the previous sample.
    pub network_rx_bytes: u64,
    /// Bytes sent over the network since the previous sample.
    pub network_tx_bytes: u64,
    /// When the sample was taken (RFC 3339).
    pub sampled_at: String,
}

/// Nearest-rank percentile of sorted values (0 when empty).
#[must_use]
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// Group records per deployment/model (the one way summaries are computed from records).
pub fn summarise<'a>(records: impl Iterator<Item = &'a TaskRecord>) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<(String, String), GroupSummary> = BTreeMap::new();
    for r in records {
        let key = (r.task.provider_id.clone(), r.task.model_id.clone());
        let g = groups.entry(key).or_insert_with(|| GroupSummary {
            provider_id: r.task.provider_id.clone(),
            model_id: r.task.model_id.clone(),
            ..GroupSummary::default()
        });
        add_to_group(g, r);
    }
    groups.into_values().collect()
}

fn add_to_group(g: &mut GroupSummary, r: &TaskRecord) {
    match r.state {
        TaskState::Queued => g.queued += 1,
        TaskState::Running => g.running += 1,
        TaskState::Completed => g.completed += 1,
        TaskState::Cancelled => g.cancelled += 1,
        TaskState::Failed => {
            let class = r.error.as_ref().map_or("unknown", |e| e.class.as_str());
            *g.failed_by_class.entry(class.to_owned()).or_default() += 1;
        }
    }
    if r.dead_letter_reason.is_some() {
        g.dead_lettered += 1;
    }
    g.retries += u64::from(r.attempt.max(1) - 1);
    g.throttles += u64::from(r.throttles);
    if let Some(result) = &r.result {
        g.latencies_ms.push(result.latency_ms);
    }
    g.first_start = min_opt(g.first_start, r.started_at);
    g.last_end = g.last_end.max(r.ended_at);
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn metrics_follow_the_documented_definitions() {
        let mut failed = BTreeMap::new();
        failed.insert("transient".to_owned(), 1);
        let groups = [
            GroupSummary {
                completed: 3,
                failed_by_class: failed,
                cancelled: 1,
                queued: 2,
                latencies_ms: vec![10.0, 20.0, 30.0],
                first_start: Some(1_000),
                last_end: Some(3_000),
                retries: 4,
                ..GroupSummary::default()
            },
            GroupSummary { running: 1, ..GroupSummary::default() },
        ];
        let m = ExecutionMetrics::from_groups(&groups, Some("r1"));
        assert_eq!(m.scope, "run");
        assert_eq!(m.total_tasks, 8);
        assert_eq!(m.pending_tasks, 3);
        assert_eq!(m.average_execution_time, 20.0);
        assert_eq!(m.error_rate, 0.25, "1 failed of 4 finished with an outcome; cancelled excluded");
        assert_eq!(m.throughput, 2.5, "5 terminal tasks over 2 s");
        assert_eq!(m.retries, 4);
        let json = serde_json::to_value(&m).unwrap();
        for field in ["totalTasks", "completedTasks", "failedTasks", "averageExecutionTime", "throughput", "errorRate"]
        {
            assert!(json.get(field).is_some(), "{field}");
        }
        let empty = ExecutionMetrics::from_groups(&[], None);
        assert_eq!((empty.scope.as_str(), empty.error_rate, empty.throughput), ("global", 0.0, 0.0));
    }
}
