//! The `sim` provider under `tokio::time::pause()`: latency distribution, fault rates, forced
//! faults, outage windows, hangs, and the shape of its answers. No test sleeps for real.

use std::time::Duration;

use serde_json::json;
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{Provider, ProviderRequest};
use taskexec_core::task::BenchmarkTask;
use taskexec_providers::config::{FaultRates, LatencyConfig, Outage, SimConfig};
use taskexec_providers::sim::SimProvider;

fn request(prompt: &str, parameters: serde_json::Value) -> ProviderRequest {
    let task: BenchmarkTask = serde_json::from_value(json!({
        "id": "t1", "providerId": "sim", "modelId": "sim-large", "prompt": prompt, "parameters": parameters
    }))
    .unwrap();
    ProviderRequest::for_task(&task, "sim", 1)
}

fn forced(fault: &str) -> ProviderRequest {
    request("hello", json!({"extra": {"sim_fault": fault}}))
}

fn fixed(ms: f64) -> SimConfig {
    SimConfig { latency: LatencyConfig { median_ms: ms, p99_ms: ms }, seed: Some(1), ..SimConfig::default() }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::test(start_paused = true)]
async fn latency_quantiles_match_the_configured_median_and_p99() {
    let sim = SimProvider::new(SimConfig {
        latency: LatencyConfig { median_ms: 100.0, p99_ms: 500.0 },
        seed: Some(7),
        ..SimConfig::default()
    });
    let mut latencies = Vec::new();
    for _ in 0..3000 {
        latencies.push(sim.call(request("q", json!({}))).await.unwrap().latency);
    }
    latencies.sort();
    let (median, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    assert!((90.0..=112.0).contains(&median), "median {median} ms");
    assert!((400.0..=620.0).contains(&p99), "p99 {p99} ms");
}

#[tokio::test(start_paused = true)]
async fn every_forced_fault_has_its_class() {
    let sim = SimProvider::new(SimConfig {
        faults: FaultRates { retry_after_ms: 2500, ..FaultRates::default() },
        ..fixed(20.0)
    });
    let expected: [(&str, ErrorClass, Option<u16>); 5] = [
        ("rate_limit", ErrorClass::RateLimited, Some(429)),
        ("server_error", ErrorClass::Transient, Some(503)),
        ("malformed", ErrorClass::Transient, None),
        ("reset", ErrorClass::Transient, None),
        ("bad_request", ErrorClass::Permanent, Some(400)),
    ];
    for (fault, class, status) in expected {
        let started = tokio::time::Instant::now();
        let e = sim.call(forced(fault)).await.unwrap_err();
        assert_eq!((e.class(), e.status()), (class, status), "{fault}");
        assert_eq!(started.elapsed(), Duration::from_millis(20), "{fault} waits its latency first");
    }
    let e = sim.call(forced("rate_limit")).await.unwrap_err();
    assert_eq!(
        e,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_millis(2500)),
            status: Some(429),
            code: Some("rate_limit_exceeded".into()),
            detail: "simulated rate limit".into(),
            limits: Default::default(),
        }
    );
    assert!(sim.call(forced("malformed")).await.unwrap_err().to_string().contains("malformed response body"));
    assert!(sim.call(forced("reset")).await.unwrap_err().to_string().contains("connection reset"));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_forced_fault_is_a_bad_request() {
    let sim = SimProvider::new(fixed(1.0));
    for value in [json!("explode"), json!(3)] {
        let e = sim.call(request("x", json!({"extra": {"sim_fault": value}}))).await.unwrap_err();
        assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(400)));
        assert!(e.to_string().contains("rate_limit, server_error, hang"), "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hang_stays_pending_until_dropped() {
    let sim = SimProvider::new(fixed(10.0));
    let outcome = tokio::time::timeout(Duration::from_secs(3600), sim.call(forced("hang"))).await;
    assert!(outcome.is_err(), "a hang must never complete");
    // Configured as a rate, a hang is just as silent.
    let always =
        SimProvider::new(SimConfig { faults: FaultRates { hang: 1.0, ..FaultRates::default() }, ..fixed(10.0) });
    assert!(tokio::time::timeout(Duration::from_secs(3600), always.call(request("x", json!({})))).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn outages_fail_with_503_inside_the_window_only() {
    let sim =
        SimProvider::new(SimConfig { outages: vec![Outage { start_ms: 1_000, duration_ms: 2_000 }], ..fixed(10.0) });
    let start = tokio::time::Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut outcomes = Vec::new();
    for ms in [0, 990, 1_000, 2_000, 2_999, 3_000, 5_000] {
        tokio::time::sleep_until(at(ms)).await;
        outcomes.push((ms, sim.call(request("x", json!({}))).await.map_err(|e| (e.class(), e.status()))));
    }
    let down: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).map(|(ms, _)| *ms).collect();
    assert_eq!(down, [1_000, 2_000, 2_999]);
    for (_, result) in outcomes.iter().filter(|(_, r)| r.is_err()) {
        assert_eq!(result.as_ref().unwrap_err(), &(ErrorClass::Transient, Some(503)));
    }
}

#[tokio::test(start_paused = true)]
async fn fault_rates_are_roughly_honoured_and_seeded_runs_repeat() {
    let config = SimConfig {
        faults: FaultRates { rate_limit: 0.2, server_error: 0.1, bad_request: 0.05, ..FaultRates::default() },
        seed: Some(42),
        ..SimConfig::default()
    };
    let run = |sim: SimProvider| async move {
        let mut classes = Vec::new();
        for _ in 0..2000 {
            let result = sim.call(request("x", json!({}))).await;
            classes.push(result.as_ref().err().map(ProviderError::class));
        }
        classes
    };
    let first = run(SimProvider::new(config.clone())).await;
    let count = |class| first.iter().filter(|c| **c == Some(class)).count();
    assert!((330..=470).contains(&count(ErrorClass::RateLimited)), "{}", count(ErrorClass::RateLimited));
    assert!((140..=260).contains(&count(ErrorClass::Transient)), "{}", count(ErrorClass::Transient));
    assert!((60..=140).contains(&count(ErrorClass::Permanent)), "{}", count(ErrorClass::Permanent));
    assert_eq!(run(SimProvider::new(config)).await, first, "the same seed gives the same run");
}

#[tokio::test(start_paused = true)]
async fn answers_are_deterministic_and_well_formed() {
    let sim = SimProvider::new(SimConfig { output_tokens: 40, ..fixed(50.0) });
    let prompt = "x".repeat(100);
    let a = sim.call(request(&prompt, json!({}))).await.unwrap();
    let b = sim.call(request(&prompt, json!({}))).await.unwrap();
    let c = sim.call(request("something else", json!({}))).await.unwrap();
    assert_eq!(a.text, b.text);
    assert_ne!(a.text, c.text);
    assert_eq!((a.finish_reason.as_str(), a.model.as_str()), ("stop", "sim-large"));
    assert_eq!((a.usage.input_tokens, a.usage.output_tokens), (25, 40));
    assert_ne!(a.request_id, b.request_id);
    assert_eq!((a.latency, a.ttft), (Duration::from_millis(50), None));

    let capped = sim.call(request("y", json!({"maxTokens": 8, "stream": true}))).await.unwrap();
    assert_eq!((capped.finish_reason.as_str(), capped.usage.output_tokens), ("length", 8));
    let ttft = capped.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft < capped.latency, "{ttft:?} vs {:?}", capped.latency);
}
