//! The template's CloudWatch alarms, read from `template.yaml` and evaluated by LocalStack.
//!
//! Every `AWS::CloudWatch::Alarm` of the template is read (namespace, metric, dimensions,
//! statistic, threshold from the parameter's default, comparison, evaluation periods, missing
//! data) and created in LocalStack's CloudWatch with each period shortened to [`PERIOD`] seconds.
//! Metrics of the `taskexec` namespace are published exactly as the code prints them: the EMF
//! lines of `taskexec_aws::emf_line` and of the sweeper's `stuck_runs_emf` are turned into
//! `PutMetricData` calls (namespace, name, every dimension set of every directive, value taken
//! from the line), so a template that names a metric or a dimension the code does not print
//! never sees data. Metrics of the `AWS/*` namespaces (SQS, Lambda, API Gateway) are AWS's own:
//! they are published under the template's names.
//!
//! LocalStack 2026.3.0 evaluates single-metric alarms only (its alarm scheduler skips alarms
//! defined by `Metrics` queries), and every alarm of the template is one, except those of
//! [`NOT_EVALUATED`]. Each is driven through a scenario whose values are this file's statement of
//! what must alarm: a value just below the intended threshold keeps the alarm OK, the intended
//! value sends it to ALARM, and it returns to OK when the condition clears. So a threshold moved
//! in the template (either way) fails the test. A metric-math alarm outside [`NOT_EVALUATED`]
//! fails the test: it would not be evaluated.
//!
//! Needs LocalStack (`TASKEXEC_TEST_EMULATOR` other than `moto`): moto stores alarms but never
//! evaluates them, and this test fails on it rather than pass vacuously.

#[path = "../../shared/aws/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric as CwMetric, MetricDataQuery, MetricDatum, MetricStat, StateValue, Statistic,
};
use serde_yaml::Value;
use taskexec_core::breaker::BreakerState;
use taskexec_core::error::ErrorClass;
use taskexec_core::ports::{DeferReason, LimitKey, Metric};
use taskexec_lambda::sweeper::stuck::{StuckRun, stuck_runs_emf};

/// Every alarm period, shortened for the test (CloudWatch's high-resolution alarm period).
const PERIOD: i32 = 10;

/// How often a continuously published value is sent.
const TICK: Duration = Duration::from_secs(2);

/// One metric series: namespace, name, dimensions (name, value) in order.
type Series = (String, String, Vec<(String, String)>);

/// An alarm as the template defines it.
#[derive(Debug, Clone)]
struct AlarmDef {
    logical_id: String,
    threshold: f64,
    comparison: String,
    evaluation_periods: i32,
    missing: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Single {
        series: Series,
        statistic: String,
    },
    /// `Metrics` queries: each `MetricStat` series, and the expressions.
    Math {
        stats: Vec<(String, Series, String)>,
        expressions: Vec<(String, String)>,
    },
}

fn template() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(&path).expect("read template.yaml")).expect("parse template.yaml")
}

/// A scalar of the template with `!Ref` (to a parameter: its default; to a resource: its test
/// name) and `!GetAtt X.QueueName` resolved; `!Sub` is left as its string.
fn scalar(value: &Value, template: &Value, prefix: &str) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let inner = tagged.value.as_str().unwrap_or_default();
            match tag.trim_start_matches('!') {
                "Ref" => match template["Parameters"][inner]["Default"].clone() {
                    Value::Null => format!("{prefix}-{inner}"),
                    default => scalar(&default, template, prefix),
                },
                "GetAtt" => format!("{prefix}-{}", inner.split('.').next().unwrap_or_default()),
                "Sub" => inner.to_owned(),
                other => panic!("unexpected tag !{other} in an alarm: {value:?}"),
            }
        }
        other => panic!("unexpected value in an alarm: {other:?}"),
    }
}

fn series(metric: &Value, template: &Value, prefix: &str) -> Series {
    let dimensions = metric["Dimensions"]
        .as_sequence()
        .map(|dims| {
            dims.iter().map(|d| (scalar(&d["Name"], template, prefix), scalar(&d["Value"], template, prefix))).collect()
        })
        .unwrap_or_default();
    (scalar(&metric["Namespace"], template, prefix), scalar(&metric["MetricName"], template, prefix), dimensions)
}

/// Every alarm of the template, resource names given `prefix`.
fn alarms(template: &Value, prefix: &str) -> Vec<AlarmDef> {
    let resources = template["Resources"].as_mapping().expect("Resources");
    let mut out = Vec::new();
    for (id, resource) in resources {
        if resource["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        let p = &resource["Properties"];
        let kind = if let Some(metrics) = p["Metrics"].as_sequence() {
            let mut stats = Vec::new();
            let mut expressions = Vec::new();
            for query in metrics {
                let id = scalar(&query["Id"], template, prefix);
                if query["MetricStat"].is_mapping() {
                    let stat = &query["MetricStat"];
                    stats.push((
                        id,
                        series(&stat["Metric"], template, prefix),
                        scalar(&stat["Stat"], template, prefix),
                    ));
                } else {
                    expressions.push((id, scalar(&query["Expression"], template, prefix)));
                }
            }
            Kind::Math { stats, expressions }
        } else {
            Kind::Single { series: series(p, template, prefix), statistic: scalar(&p["Statistic"], template, prefix) }
        };
        out.push(AlarmDef {
            logical_id: id.as_str().unwrap().to_owned(),
            threshold: scalar(&p["Threshold"], template, prefix).parse().expect("a numeric threshold"),
            comparison: scalar(&p["ComparisonOperator"], template, prefix),
            evaluation_periods: scalar(&p["EvaluationPeriods"], template, prefix).parse().unwrap(),
            missing: scalar(&p["TreatMissingData"], template, prefix),
            kind,
        });
    }
    out
}

/// The data points an EMF line stands for (what CloudWatch Logs extracts from it).
fn emf_points(line: &str) -> Vec<(Series, f64)> {
    let root: serde_json::Value = serde_json::from_str(line).expect("an EMF line is JSON");
    let mut out = Vec::new();
    for directive in root["_aws"]["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics") {
        let namespace = directive["Namespace"].as_str().unwrap().to_owned();
        for set in directive["Dimensions"].as_array().unwrap() {
            let dims: Vec<(String, String)> = set
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let n = n.as_str().unwrap();
                    (n.to_owned(), root[n].as_str().expect("a dimension value is a string").to_owned())
                })
                .collect();
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                let value = root[name].as_f64().expect("a metric value");
                out.push(((namespace.clone(), name.to_owned(), dims.clone()), value));
            }
        }
    }
    out
}

/// Every error class the code emits (`ErrorClass::as_str`).
const ERROR_CLASSES: [ErrorClass; 5] = [
    ErrorClass::RateLimited,
    ErrorClass::Transient,
    ErrorClass::Permanent,
    ErrorClass::Cancelled,
    ErrorClass::DeadlineExceeded,
];

/// Every series the code prints: one sample of each metric, each error class, each deferral
/// reason shape, each breaker state.
fn emitted_series() -> Vec<Series> {
    let classes = ERROR_CLASSES;
    let mut metrics = vec![
        Metric::AttemptStarted { deployment: "d".into() },
        Metric::Completed { deployment: "d".into(), latency_ms: 1.0 },
        Metric::DeadLettered { task_id: "t".into(), reason: "r".into() },
        Metric::Cancelled,
        Metric::Deferred(DeferReason::Paused),
        Metric::Deferred(DeferReason::LimitReached(LimitKey::Deployment("d".into()))),
        Metric::BreakerChanged { deployment: "d".into(), state: BreakerState::Open },
    ];
    for class in classes {
        metrics.push(Metric::Failed(class));
        metrics.push(Metric::RetryScheduled(class));
    }
    let mut lines: Vec<String> = metrics.iter().map(|m| taskexec_aws::emf_line(m, 0)).collect();
    lines.push(stuck_runs_emf(&[], 0));
    lines.iter().flat_map(|l| emf_points(l)).map(|(s, _)| s).collect()
}

/// Whether the code prints `series` (dimension values of a deployment are the run config's).
fn printed(series: &Series, emitted: &[Series]) -> bool {
    emitted.iter().any(|(ns, name, dims)| {
        *ns == series.0
            && *name == series.1
            && dims.len() == series.2.len()
            && dims.iter().zip(&series.2).all(|(a, b)| a.0 == b.0 && (a.0 == "Deployment" || a.1 == b.1))
    })
}

fn cloudwatch() -> aws_sdk_cloudwatch::Client {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
        .endpoint_url(common::endpoint())
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

fn dimensions(dims: &[(String, String)]) -> Vec<Dimension> {
    dims.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect()
}

/// Publishes `points`, stamped `at`.
async fn publish(cw: &aws_sdk_cloudwatch::Client, points: &[(Series, f64)], at: SystemTime) {
    let at = DateTime::from(at);
    let mut by_namespace: BTreeMap<&str, Vec<MetricDatum>> = BTreeMap::new();
    for ((namespace, name, dims), value) in points {
        let datum =
            MetricDatum::builder().metric_name(name).set_dimensions(Some(dimensions(dims))).value(*value).timestamp(at);
        by_namespace.entry(namespace).or_default().push(datum.build());
    }
    for (namespace, data) in by_namespace {
        cw.put_metric_data().namespace(namespace).set_metric_data(Some(data)).send().await.expect("PutMetricData");
    }
}

async fn state(cw: &aws_sdk_cloudwatch::Client, name: &str) -> StateValue {
    let out = cw.describe_alarms().alarm_names(name).send().await.expect("DescribeAlarms");
    out.metric_alarms()[0].state_value().cloned().expect("a state")
}

async fn create(cw: &aws_sdk_cloudwatch::Client, name: &str, alarm: &AlarmDef) {
    let put = cw
        .put_metric_alarm()
        .alarm_name(name)
        .threshold(alarm.threshold)
        .comparison_operator(ComparisonOperator::from(alarm.comparison.as_str()))
        .evaluation_periods(alarm.evaluation_periods)
        .treat_missing_data(&alarm.missing);
    let put = match &alarm.kind {
        Kind::Single { series: (namespace, metric, dims), statistic } => put
            .namespace(namespace)
            .metric_name(metric)
            .set_dimensions(Some(dimensions(dims)))
            .statistic(Statistic::from(statistic.as_str()))
            .period(PERIOD),
        Kind::Math { stats, expressions } => {
            let mut put = put;
            for (id, (namespace, metric, dims), stat) in stats {
                let metric = CwMetric::builder()
                    .namespace(namespace)
                    .metric_name(metric)
                    .set_dimensions(Some(dimensions(dims)))
                    .build();
                let stat = MetricStat::builder().metric(metric).period(PERIOD).stat(stat).build();
                put = put.metrics(MetricDataQuery::builder().id(id).metric_stat(stat).return_data(false).build());
            }
            let last = expressions.len().saturating_sub(1);
            for (i, (id, expression)) in expressions.iter().enumerate() {
                let query = MetricDataQuery::builder().id(id).expression(expression).return_data(i == last);
                put = put.metrics(query.period(PERIOD).build());
            }
            put
        }
    };
    put.send().await.unwrap_or_else(|e| panic!("PutMetricAlarm {name}: {e:?}"));
}

/// What a scenario publishes, each call a fresh set of points stamped now.
type Points = Box<dyn Fn(f64) -> Vec<(Series, f64)> + Send + Sync>;

/// How a single-metric alarm is driven: the points for a level, whether the level is published
/// every [`TICK`] (gauges) or once (events: counts summed over a period, or the finished tasks
/// whose values are averaged), the level that must not alarm, and the level that must.
struct Scenario {
    points: Points,
    continuous: bool,
    below: f64,
    at: f64,
}

/// `n` copies of the points of one EMF line (a count of `n` events).
fn emf_count(line: impl Fn() -> String + Send + Sync + 'static) -> Points {
    Box::new(move |n| (0..n as usize).flat_map(|_| emf_points(&line())).collect())
}

/// The intended behaviour of every single-metric alarm, by logical id: what the operators were
/// promised (docs/deploy.md's alarm table), independent of the template's numbers.
fn scenarios(alarms: &[AlarmDef]) -> BTreeMap<String, Scenario> {
    let series_of = |id: &str| {
        let alarm = alarms.iter().find(|a| a.logical_id == id).unwrap_or_else(|| panic!("{id} is in the template"));
        match &alarm.kind {
            Kind::Single { series, .. } => series.clone(),
            Kind::Math { .. } => panic!("{id} is a single-metric alarm"),
        }
    };
    let gauge = |id: &str| -> Points {
        let series = series_of(id);
        Box::new(move |v| vec![(series.clone(), v)])
    };
    let stuck = |n: f64| {
        let runs: Vec<StuckRun> = (0..n as usize)
            .map(|i| StuckRun { run_id: format!("run-{i}"), unfinished: 1, last_finished_at: None, oldest_due_at: 0 })
            .collect();
        emf_points(&stuck_runs_emf(&runs, 0))
    };
    let mut out = BTreeMap::new();
    // One dead-lettered task alarms.
    let dead = emf_count(|| {
        taskexec_aws::emf_line(&Metric::DeadLettered { task_id: "t".into(), reason: "attempts".into() }, 0)
    });
    out.insert("DeadLetteredAlarm".into(), Scenario { points: dead, continuous: false, below: 0.0, at: 1.0 });
    // A hundred rate-limited retries in a period alarm, ninety-nine do not.
    let retries = emf_count(|| taskexec_aws::emf_line(&Metric::RetryScheduled(ErrorClass::RateLimited), 0));
    out.insert(
        "RateLimitedRetriesAlarm".into(),
        Scenario { points: retries, continuous: false, below: 99.0, at: 100.0 },
    );
    // One stuck run alarms (the sweeper prints the count every sweep, 0 included).
    out.insert("StuckRunsAlarm".into(), Scenario { points: Box::new(stuck), continuous: true, below: 0.0, at: 1.0 });
    // Oldest message: 5 minutes on the high queue, 15 on the normal one, an hour on the low one.
    for (id, seconds) in [("HighQueueAgeAlarm", 300.0), ("NormalQueueAgeAlarm", 900.0), ("LowQueueAgeAlarm", 3600.0)] {
        out.insert(id.into(), Scenario { points: gauge(id), continuous: true, below: seconds - 1.0, at: seconds });
    }
    // Five HTTP API 5xx answers in a period alarm, four do not.
    out.insert(
        "ApiServerErrorsAlarm".into(),
        Scenario { points: gauge("ApiServerErrorsAlarm"), continuous: false, below: 4.0, at: 5.0 },
    );
    // One throttled worker invocation alarms.
    out.insert(
        "WorkerThrottlesAlarm".into(),
        Scenario { points: gauge("WorkerThrottlesAlarm"), continuous: false, below: 0.0, at: 1.0 },
    );
    // Each dead-letter queue: ten visible messages alarm, nine do not; its oldest message 15
    // minutes old, three periods in a row, alarms.
    for queue in ["High", "Normal", "Low"] {
        let depth = format!("{queue}DeadLetterQueueDepthAlarm");
        out.insert(depth.clone(), Scenario { points: gauge(&depth), continuous: true, below: 9.0, at: 10.0 });
        let age = format!("{queue}DeadLetterQueueAgeAlarm");
        out.insert(age.clone(), Scenario { points: gauge(&age), continuous: true, below: 899.0, at: 900.0 });
    }
    // Each function: five crashed invocations in a period alarm, four do not.
    for function in ["Api", "Worker", "Dlq", "Sweeper"] {
        let id = format!("{function}FunctionErrorsAlarm");
        out.insert(id.clone(), Scenario { points: gauge(&id), continuous: false, below: 4.0, at: 5.0 });
    }
    // One breaker opening alarms, whichever deployment it is (the code names them, not the
    // template): each opening below is another deployment's.
    let openings: Points = Box::new(|n| {
        (0..n as usize)
            .flat_map(|i| {
                let open = Metric::BreakerChanged { deployment: format!("deployment-{i}"), state: BreakerState::Open };
                emf_points(&taskexec_aws::emf_line(&open, 0))
            })
            .collect()
    });
    out.insert("BreakerOpenAlarm".into(), Scenario { points: openings, continuous: false, below: 0.0, at: 1.0 });
    // Twenty failed tasks in a hundred finished (20 %) alarm, nineteen do not; the failures are
    // spread over every error class.
    out.insert(
        "ErrorRateAlarm".into(),
        Scenario { points: Box::new(finished_tasks), continuous: false, below: 19.0, at: 20.0 },
    );
    out
}

/// The lines of a hundred finished tasks, `failed` of them failed (every error class in turn)
/// and the others completed: an error rate of `failed` percent.
fn finished_tasks(failed: f64) -> Vec<(Series, f64)> {
    let classes = ERROR_CLASSES;
    let failed = failed as usize;
    (0..100)
        .map(|i| {
            if i < failed {
                Metric::Failed(classes[i % classes.len()])
            } else {
                Metric::Completed { deployment: "d".into(), latency_ms: 1.0 }
            }
        })
        .flat_map(|metric| emf_points(&taskexec_aws::emf_line(&metric, 0)))
        .collect()
}

/// The metric-math alarms LocalStack cannot evaluate, with their intended thresholds: created in
/// LocalStack, their `taskexec` series checked against the code and their thresholds as
/// numbers. Any other alarm must be a single-metric alarm with a scenario.
const NOT_EVALUATED: &[(&str, f64)] = &[("DynamoThrottlesAlarm", 1.0)];

/// How far back LocalStack reads when it evaluates an alarm: EvaluationPeriods periods and
/// max(EvaluationPeriods / 3, 2) more (`collect_metric_data` of its alarm scheduler).
fn lookback(alarm: &AlarmDef) -> Duration {
    let periods = alarm.evaluation_periods + (alarm.evaluation_periods / 3).max(2);
    Duration::from_secs(u64::try_from(periods * PERIOD).unwrap())
}

/// Puts the level that must not alarm in place before the alarm exists, so that the alarm's
/// first evaluation (LocalStack runs it as the alarm is created) reads nothing else and decides:
/// a gauge's value every [`TICK`] back over the whole lookback (each evaluated period holds
/// it), events once, a period and a second back (inside the lookback, never in one period with
/// the events of the level that must alarm, published later at the time they happen: an
/// `Average` must not mix the two).
async fn publish_below(cw: &aws_sdk_cloudwatch::Client, alarm: &AlarmDef, scenario: &Scenario) {
    let now = SystemTime::now();
    if scenario.continuous {
        let mut back = Duration::ZERO;
        while back <= lookback(alarm) {
            publish(cw, &(scenario.points)(scenario.below), now - back).await;
            back += TICK;
        }
    } else if scenario.below > 0.0 {
        let back = Duration::from_secs(u64::try_from(PERIOD).unwrap() + 1);
        publish(cw, &(scenario.points)(scenario.below), now - back).await;
    }
}

/// Waits until the state of `name` satisfies `done` (publishing `level` every tick if
/// `continuous`), at most `limit`; the time it took and the state. A state lasts one evaluation
/// cycle (at least [`PERIOD`]), so polling every [`TICK`] sees each one.
async fn until(
    cw: &aws_sdk_cloudwatch::Client,
    name: &str,
    done: impl Fn(&StateValue) -> bool,
    scenario: &Scenario,
    level: Option<f64>,
    limit: Duration,
) -> Result<(Duration, StateValue), String> {
    let started = Instant::now();
    loop {
        if let (true, Some(level)) = (scenario.continuous, level) {
            publish(cw, &(scenario.points)(level), SystemTime::now()).await;
        }
        let now = state(cw, name).await;
        if done(&now) {
            return Ok((started.elapsed(), now));
        }
        if started.elapsed() > limit {
            return Err(format!("{name}: still {now:?} after {limit:?}"));
        }
        tokio::time::sleep(TICK).await;
    }
}

/// One single-metric alarm through its scenario: below → OK (the first evaluation), at →
/// ALARM, cleared → OK.
async fn drive(
    cw: aws_sdk_cloudwatch::Client,
    name: String,
    alarm: AlarmDef,
    scenario: Scenario,
) -> Result<String, String> {
    // LocalStack evaluates an alarm when it is created, then every EvaluationPeriods × Period
    // (one scheduler thread for every alarm: late under load): allow two evaluations and a
    // margin for each step.
    let cycle = Duration::from_secs(u64::try_from(alarm.evaluation_periods * PERIOD).unwrap());
    let limit = cycle * 3 + Duration::from_secs(3 * u64::try_from(PERIOD).unwrap());
    publish_below(&cw, &alarm, &scenario).await;
    create(&cw, &name, &alarm).await;
    // Below the intended threshold: the first evaluation says OK (a lowered threshold: ALARM).
    let evaluated = |s: &StateValue| *s != StateValue::InsufficientData;
    let (_, first) = until(&cw, &name, evaluated, &scenario, Some(scenario.below), limit)
        .await
        .map_err(|e| format!("{e}: never evaluated"))?;
    if first != StateValue::Ok {
        return Err(format!("{name}: {first:?} at {} (below the intended threshold)", scenario.below));
    }
    if !scenario.continuous {
        publish(&cw, &(scenario.points)(scenario.at), SystemTime::now()).await;
    }
    let (alarmed, _) = until(&cw, &name, |s| *s == StateValue::Alarm, &scenario, Some(scenario.at), limit)
        .await
        .map_err(|e| format!("{e}, expected Alarm (the condition holds: {} published)", scenario.at))?;
    let (cleared, _) = until(&cw, &name, |s| *s == StateValue::Ok, &scenario, Some(scenario.below), limit + cycle * 2)
        .await
        .map_err(|e| format!("{e}, expected Ok (the condition cleared)"))?;
    Ok(format!("{}: OK → ALARM in {alarmed:.0?}, back to OK in {cleared:.0?}", alarm.logical_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_alarms_go_to_alarm_when_their_condition_holds_and_back_to_ok() {
    assert_eq!(
        common::emulator(),
        common::Emulator::LocalStack,
        "the alarm test needs LocalStack (moto never evaluates alarms): unset TASKEXEC_TEST_EMULATOR"
    );
    let template = template();
    let prefix = common::unique_name("alarms");
    let alarms = alarms(&template, &prefix);
    assert!(alarms.len() >= 10, "the template's alarms: {alarms:?}");
    let emitted = emitted_series();
    let cw = cloudwatch();
    let mut scenarios = scenarios(&alarms);
    let mut tasks = Vec::new();
    for alarm in &alarms {
        let name = format!("{prefix}-{}", alarm.logical_id);
        match &alarm.kind {
            Kind::Single { series, .. } => {
                if series.0 == taskexec_aws::NAMESPACE {
                    assert!(printed(series, &emitted), "{}: the code prints no {series:?}", alarm.logical_id);
                }
                let scenario = scenarios
                    .remove(&alarm.logical_id)
                    .unwrap_or_else(|| panic!("{}: a new alarm needs its scenario here", alarm.logical_id));
                tasks.push(tokio::spawn(drive(cw.clone(), name, alarm.clone(), scenario)));
            }
            Kind::Math { stats, .. } => {
                let intended = NOT_EVALUATED.iter().find(|(id, _)| *id == alarm.logical_id);
                let (_, intended) = intended.unwrap_or_else(|| {
                    panic!("{}: a metric-math alarm, which LocalStack does not evaluate", alarm.logical_id)
                });
                for (id, series, _) in stats {
                    if series.0 == taskexec_aws::NAMESPACE {
                        assert!(printed(series, &emitted), "{}/{id}: the code prints no {series:?}", alarm.logical_id);
                    }
                }
                assert_eq!(alarm.threshold, *intended, "{}: threshold", alarm.logical_id);
                create(&cw, &name, alarm).await;
            }
        }
    }
    assert!(scenarios.is_empty(), "scenarios for alarms the template no longer has: {:?}", scenarios.keys());
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.expect("the alarm task") {
            Ok(report) => eprintln!("{report}"),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "alarms that did not behave:\n{}", failures.join("\n"));
}
