//! [`EmfSink`] writes one CloudWatch Embedded Metric Format line per metric: valid JSON whose
//! `_aws` directive names the namespace, dimensions and metrics that the line's own fields hold.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use taskexec_aws::EmfSink;
use taskexec_core::breaker::BreakerState;
use taskexec_core::error::ErrorClass;
use taskexec_core::ports::{DeferReason, LimitKey, Metric, MetricsSink};
use taskexec_core::time::FakeClock;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines(metrics: Vec<Metric>) -> Vec<Value> {
    let buffer = Buffer::default();
    let sink = EmfSink::new(buffer.clone(), FakeClock::at(1_700_000_000_000));
    for metric in metrics {
        sink.record(metric);
    }
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
}

/// Every metric named in a directive is a number field of the line, and every dimension of
/// every dimension set a string field.
fn assert_well_formed(line: &Value) {
    assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000_i64);
    for directive in line["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
        assert_eq!(directive["Namespace"], "taskexec");
        for metric in directive["Metrics"].as_array().unwrap() {
            assert!(line[metric["Name"].as_str().unwrap()].is_number(), "{line}");
        }
        for set in directive["Dimensions"].as_array().unwrap() {
            for dimension in set.as_array().unwrap() {
                assert!(line[dimension.as_str().unwrap()].is_string(), "{line}");
            }
        }
    }
}

#[test]
fn one_well_formed_line_per_metric() {
    let metrics = vec![
        Metric::AttemptStarted { deployment: "openai-east".into() },
        Metric::Completed { deployment: "openai-east".into(), latency_ms: 812.5 },
        Metric::Failed(ErrorClass::Permanent),
        Metric::RetryScheduled(ErrorClass::RateLimited),
        Metric::Deferred(DeferReason::BreakerOpen("openai-east".into())),
        Metric::Deferred(DeferReason::LimitReached(LimitKey::Global)),
        Metric::DeadLettered { task_id: "t1".into(), reason: "attempts exhausted".into() },
        Metric::Cancelled,
        Metric::BreakerChanged { deployment: "openai-east".into(), state: BreakerState::Open },
    ];
    let lines = lines(metrics);

    assert_eq!(lines.len(), 9);
    lines.iter().for_each(assert_well_formed);
    assert_eq!(lines[1]["AttemptLatency"], 812.5);
    assert_eq!(lines[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Deployment"], []]));
    assert_eq!(lines[0]["Deployment"], "openai-east", "attempts per deployment and in total");
    assert_eq!(
        lines[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"][1],
        json!({"Name": "AttemptLatency", "Unit": "Milliseconds"})
    );
    assert_eq!(lines[2]["ErrorClass"], "permanent");
    assert_eq!(lines[4]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Reason", "Deployment"]]));
    assert_eq!(
        (lines[4]["Reason"].as_str(), lines[4]["Deployment"].as_str()),
        (Some("breakerOpen"), Some("openai-east"))
    );
    assert_eq!(lines[5]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Reason"]]));
    assert_eq!(lines[6]["taskId"], "t1", "a task id is a property, not a dimension");
    assert_eq!(lines[6]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
    assert_eq!((lines[8]["BreakerState"].as_f64(), lines[8]["BreakerOpened"].as_f64()), (Some(2.0), Some(1.0)));
}

/// The totals alarms read without metric math: openings over every deployment, and the error
/// rate as the average of one value per finished task.
#[test]
fn totals_for_the_alarms_are_published_without_dimensions() {
    let lines = lines(vec![
        Metric::BreakerChanged { deployment: "openai-east".into(), state: BreakerState::Open },
        Metric::BreakerChanged { deployment: "openai-east".into(), state: BreakerState::Closed },
        Metric::Completed { deployment: "openai-east".into(), latency_ms: 1.0 },
        Metric::Failed(ErrorClass::Transient),
    ]);
    lines.iter().for_each(assert_well_formed);
    let directives = |i: usize| lines[i]["_aws"]["CloudWatchMetrics"].clone();
    assert_eq!(
        directives(0),
        json!([
            {"Namespace": "taskexec", "Dimensions": [["Deployment"]], "Metrics": [{"Name": "BreakerState", "Unit": "None"}]},
            {"Namespace": "taskexec", "Dimensions": [["Deployment"], []], "Metrics": [{"Name": "BreakerOpened", "Unit": "Count"}]},
        ])
    );
    assert_eq!(directives(1).as_array().unwrap().len(), 1, "no opening, no total: {}", lines[1]);
    assert_eq!(lines[2]["TasksFailedPercent"], 0.0);
    assert_eq!(
        directives(2),
        json!([
            {"Namespace": "taskexec", "Dimensions": [["Deployment"], []], "Metrics": [
                {"Name": "TasksCompleted", "Unit": "Count"},
                {"Name": "AttemptLatency", "Unit": "Milliseconds"},
            ]},
            {"Namespace": "taskexec", "Dimensions": [[]], "Metrics": [{"Name": "TasksFailedPercent", "Unit": "Percent"}]},
        ])
    );
    assert_eq!(lines[2]["Deployment"], "openai-east", "a route's split: completions per deployment");
    assert_eq!(lines[3]["TasksFailedPercent"], 100.0);
    assert_eq!(
        directives(3),
        json!([
            {"Namespace": "taskexec", "Dimensions": [["ErrorClass"]], "Metrics": [{"Name": "TasksFailed", "Unit": "Count"}]},
            {"Namespace": "taskexec", "Dimensions": [[]], "Metrics": [{"Name": "TasksFailedPercent", "Unit": "Percent"}]},
        ])
    );
}
