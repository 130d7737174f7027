//! [`EmfSink`]: metrics as CloudWatch Embedded Metric Format lines, one JSON line per metric on
//! stdout (Lambda ships stdout to CloudWatch Logs, which extracts the metrics). No API call on
//! the hot path. Namespace `taskexec`; dimensions `ErrorClass`, `Reason` and `Deployment` where
//! they apply; high-cardinality facts (a task id) are plain properties, searchable in Logs
//! Insights but not dimensions.
//!
//! Alarms read one series each (no metric math: LocalStack evaluates only those, and a total
//! over deployments would need Metrics Insights), so where an alarm needs a total over a
//! dimension the line also publishes the series without dimensions: `BreakerOpened` per
//! `Deployment` and in total, and `TasksFailedPercent`, one value per finished task (100 failed,
//! 0 completed, without dimensions) whose `Average` over a period is the error rate in percent
//! and whose `SampleCount` is the number of tasks finished.

use std::io::Write;
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use taskexec_core::breaker::BreakerState;
use taskexec_core::ports::{DeferReason, LimitKey, Metric, MetricsSink};
use taskexec_core::time::{Clock, Millis, SystemClock};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "taskexec";

/// The dimension sets a metric of a line is published under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollup {
    /// The line's dimensions.
    Line,
    /// The line's dimensions, and none: the total over every value of them.
    LineAndTotal,
    /// No dimensions: the total only.
    Total,
}

/// One metric line under construction.
#[derive(Debug, Default)]
struct Line {
    dimensions: Vec<(&'static str, String)>,
    metrics: Vec<(&'static str, &'static str, f64, Rollup)>,
    properties: Vec<(&'static str, String)>,
}

impl Line {
    fn metric(name: &'static str, unit: &'static str, value: f64) -> Self {
        Self { metrics: vec![(name, unit, value, Rollup::Line)], ..Self::default() }
    }

    fn count(name: &'static str) -> Self {
        Self::metric(name, "Count", 1.0)
    }

    fn and_with_total(mut self, name: &'static str, unit: &'static str, value: f64) -> Self {
        self.metrics.push((name, unit, value, Rollup::LineAndTotal));
        self
    }

    fn and_total(mut self, name: &'static str, unit: &'static str, value: f64) -> Self {
        self.metrics.push((name, unit, value, Rollup::Total));
        self
    }

    fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    fn property(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.properties.push((name, value.into()));
        self
    }

    /// The dimension sets of `rollup` on this line (no set twice: a line without dimensions
    /// has one set, the empty one).
    fn dimension_sets(&self, rollup: Rollup) -> Vec<Vec<&'static str>> {
        let names: Vec<&'static str> = self.dimensions.iter().map(|(name, _)| *name).collect();
        match rollup {
            Rollup::Line => vec![names],
            Rollup::LineAndTotal if !names.is_empty() => vec![names, Vec::new()],
            Rollup::LineAndTotal | Rollup::Total => vec![Vec::new()],
        }
    }

    /// One directive per distinct list of dimension sets, in the order the metrics were added.
    fn directives(&self) -> Vec<Value> {
        let mut directives: Vec<(Vec<Vec<&str>>, Vec<Value>)> = Vec::new();
        for (name, unit, _, rollup) in &self.metrics {
            let sets = self.dimension_sets(*rollup);
            let metric = json!({"Name": name, "Unit": unit});
            match directives.iter_mut().find(|(known, _)| *known == sets) {
                Some((_, metrics)) => metrics.push(metric),
                None => directives.push((sets, vec![metric])),
            }
        }
        directives
            .into_iter()
            .map(|(sets, metrics)| json!({"Namespace": NAMESPACE, "Dimensions": sets, "Metrics": metrics}))
            .collect()
    }

    fn to_json(&self, timestamp: Millis) -> String {
        let mut root = Map::new();
        root.insert("_aws".into(), json!({"Timestamp": timestamp, "CloudWatchMetrics": self.directives()}));
        for (name, value) in self.dimensions.iter().chain(&self.properties) {
            root.insert((*name).into(), json!(value));
        }
        for (name, _, value, _) in &self.metrics {
            root.insert((*name).into(), json!(value));
        }
        Value::Object(root).to_string()
    }
}

/// The EMF line of one metric at `timestamp` (ms since the epoch), without the newline.
#[must_use]
pub fn emf_line(metric: &Metric, timestamp: Millis) -> String {
    line_of(metric).to_json(timestamp)
}

fn line_of(metric: &Metric) -> Line {
    match metric {
        // Per deployment (a route's split) and in total (what the alarms and the dashboard's
        // totals read).
        Metric::AttemptStarted { deployment } => {
            Line::default().and_with_total("AttemptsStarted", "Count", 1.0).dimension("Deployment", deployment)
        }
        Metric::Completed { deployment, latency_ms } => Line::default()
            .and_with_total("TasksCompleted", "Count", 1.0)
            .and_with_total("AttemptLatency", "Milliseconds", *latency_ms)
            .dimension("Deployment", deployment)
            .and_total("TasksFailedPercent", "Percent", 0.0),
        Metric::Failed(class) => Line::count("TasksFailed").dimension("ErrorClass", class.as_str()).and_total(
            "TasksFailedPercent",
            "Percent",
            100.0,
        ),
        Metric::RetryScheduled(class) => Line::count("RetriesScheduled").dimension("ErrorClass", class.as_str()),
        Metric::Deferred(reason) => deferral(reason),
        Metric::DeadLettered { task_id, reason } => {
            Line::count("TasksDeadLettered").property("taskId", task_id).property("reason", reason)
        }
        Metric::Cancelled => Line::count("TasksCancelled"),
        Metric::BreakerChanged { deployment, state } => breaker(deployment, *state),
        Metric::ConcurrencyChanged { deployment, limit, .. } => {
            Line::metric("ConcurrencyLimit", "Count", f64::from(*limit)).dimension("Deployment", deployment)
        }
    }
}

fn deferral(reason: &DeferReason) -> Line {
    let (name, deployment) = match reason {
        DeferReason::Paused => ("paused", None),
        DeferReason::BreakerOpen(d) => ("breakerOpen", Some(d)),
        DeferReason::LimitReached(LimitKey::Global) | DeferReason::InLine(LimitKey::Global) => ("limitReached", None),
        DeferReason::LimitReached(LimitKey::Deployment(d) | LimitKey::Model(d, _))
        | DeferReason::InLine(LimitKey::Deployment(d) | LimitKey::Model(d, _)) => ("limitReached", Some(d)),
        DeferReason::LeaseHeld => ("leaseHeld", None),
        DeferReason::NotDue => ("notDue", None),
        DeferReason::StoreUnavailable => ("storeUnavailable", None),
        DeferReason::RateLimited(d) => ("rateLimited", Some(d)),
    };
    let line = Line::count("Deferrals").dimension("Reason", name);
    match deployment {
        Some(d) => line.dimension("Deployment", d),
        None => line,
    }
}

/// `BreakerState` is 0 closed, 1 half-open, 2 open, per deployment; `BreakerOpened` counts
/// opens per deployment and in total (the total is what `BreakerOpenAlarm` reads: the
/// deployments are named in the run config, not in the template).
fn breaker(deployment: &str, state: BreakerState) -> Line {
    let level = match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    let line = Line::metric("BreakerState", "None", level);
    let line = if state == BreakerState::Open { line.and_with_total("BreakerOpened", "Count", 1.0) } else { line };
    line.dimension("Deployment", deployment)
}

/// A metrics sink writing one EMF line per metric.
///
/// ```
/// use taskexec_aws::EmfSink;
/// use taskexec_core::ports::{Metric, MetricsSink};
/// use taskexec_core::time::FakeClock;
/// let sink = EmfSink::new(Vec::new(), FakeClock::at(1_700_000_000_000));
/// sink.record(Metric::AttemptStarted { deployment: "openai".into() });
/// let line = String::from_utf8(sink.into_inner()).unwrap();
/// assert!(line.starts_with(r#"{"AttemptsStarted":1.0,"Deployment":"openai","_aws":{"#), "{line}");
/// ```
#[derive(Debug)]
pub struct EmfSink<W = std::io::Stdout, C = SystemClock> {
    out: Mutex<W>,
    clock: C,
}

impl EmfSink {
    /// Lines on stdout, stamped with the system clock.
    #[must_use]
    pub fn stdout() -> Self {
        Self::new(std::io::stdout(), SystemClock)
    }
}

impl<W: Write + Send + 'static, C: Clock> EmfSink<W, C> {
    /// Lines written to `out`, stamped by `clock`.
    pub fn new(out: W, clock: C) -> Self {
        Self { out: Mutex::new(out), clock }
    }

    /// The writer back (tests read what was written).
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<W: Write + Send + 'static, C: Clock> MetricsSink for EmfSink<W, C> {
    fn record(&self, metric: Metric) {
        let mut line = emf_line(&metric, self.clock.now());
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A metric that cannot be written is dropped: metrics never fail the work they measure.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}
