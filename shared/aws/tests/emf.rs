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

/// Every metric named in the directive is a number field of the line, and every dimension a
/// string field.
fn assert_well_formed(line: &Value) {
    let directive = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(line["_aws"]["Timestamp"], 1_700_000_000_000_i64);
    assert_eq!(directive["Namespace"], "taskexec");
    for metric in directive["Metrics"].as_array().unwrap() {
        assert!(line[metric["Name"].as_str().unwrap()].is_number(), "{line}");
    }
    for dimension in directive["Dimensions"][0].as_array().unwrap() {
        assert!(line[dimension.as_str().unwrap()].is_string(), "{line}");
    }
}

#[test]
fn one_well_formed_line_per_metric() {
    let metrics = vec![
        Metric::AttemptStarted,
        Metric::Completed { latency_ms: 812.5 },
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
