//! The closing summary: per deployment/model, what completed, what failed (by class), retries
//! and latency percentiles; and the story's `ExecutionMetrics` for `--json`.

use std::fmt::Write as _;

use taskexec_core::metrics::{ExecutionMetrics, percentile};
use taskexec_core::ports::GroupSummary;

/// A text table of the groups of one run.
#[must_use]
pub fn table(run_id: &str, groups: &[GroupSummary]) -> String {
    let mut out = String::new();
    let metrics = ExecutionMetrics::from_groups(groups, Some(run_id));
    let _ = writeln!(
        out,
        "run {run_id}: {} tasks · {} completed · {} failed · {} cancelled · {} pending · error rate {:.1}% · {:.1} tasks/s",
        metrics.total_tasks,
        metrics.completed_tasks,
        metrics.failed_tasks,
        metrics.cancelled_tasks,
        metrics.pending_tasks,
        metrics.error_rate * 100.0,
        metrics.throughput,
    );
    let _ = writeln!(
        out,
        "  {:<18} {:<18} {:>6} {:>7} {:<30} {:>5} {:>8} {:>6} {:>8} {:>8} {:>8}",
        "deployment",
        "model",
        "ok",
        "failed",
        "failed by class",
        "dead",
        "retries",
        "429s",
        "p50 ms",
        "p95 ms",
        "p99 ms"
    );
    for g in groups {
        let mut latencies = g.latencies_ms.clone();
        latencies.sort_by(f64::total_cmp);
        let failed: u64 = g.failed_by_class.values().sum();
        let classes = g.failed_by_class.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "  {:<18} {:<18} {:>6} {:>7} {:<30} {:>5} {:>8} {:>6} {:>8.1} {:>8.1} {:>8.1}",
            g.provider_id,
            g.model_id,
            g.completed,
            failed,
            if classes.is_empty() { "-".to_owned() } else { classes },
            g.dead_lettered,
            g.retries,
            g.throttles,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
        );
    }
    out
}

/// What each deployment served in this process (routes spread tasks over deployments; the
/// tables above group them by the name they were submitted under).
pub fn served(served: &std::collections::BTreeMap<String, taskexec_core::memory::Served>) -> String {
    let mut out = String::from("served by deployment (this run's process):\n");
    let width = served.keys().map(String::len).max().unwrap_or(0).max("deployment".len());
    out.push_str(&format!("  {:<width$}  {:>8}  {:>9}\n", "deployment", "attempts", "completed"));
    for (deployment, s) in served {
        out.push_str(&format!("  {deployment:<width$}  {:>8}  {:>9}\n", s.attempts, s.completed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_classes_and_percentiles() {
        let g = GroupSummary {
            provider_id: "sim-a".into(),
            model_id: "m".into(),
            completed: 4,
            failed_by_class: [("transient".to_owned(), 2), ("permanent".to_owned(), 1)].into(),
            dead_lettered: 2,
            retries: 7,
            throttles: 3,
            latencies_ms: vec![40.0, 10.0, 30.0, 20.0],
            ..GroupSummary::default()
        };
        let text = table("r", &[g]);
        assert!(
            text.starts_with("run r: 7 tasks · 4 completed · 3 failed · 0 cancelled · 0 pending · error rate 42.9%"),
            "{text}"
        );
        let row = text.lines().nth(2).unwrap();
        assert!(row.contains("permanent 1, transient 2"), "{row}");
        assert!(row.trim_end().ends_with("7      3     20.0     40.0     40.0"), "{row}");
    }
}
