//! A route over three deployments, on a fake clock: traffic splits by weight; when one
//! deployment starts failing its breaker opens and its traffic moves to the others; when it
//! recovers (the breaker's probe succeeds after the cool-down) it gets traffic again. Every
//! result and attempt record says which deployment and model served it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use taskexec_core::breaker::BreakerPolicy;
use taskexec_core::engine::{Decision, Engine, EngineConfig, Ports};
use taskexec_core::error::ProviderError;
use taskexec_core::memory::{CountingSink, MemoryLimiter, MemoryStore};
use taskexec_core::ports::{Delivery, DeliveryBuilder, TaskStore};
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::retry::RetryPolicy;
use taskexec_core::routing::{RouteSpec, RouteTarget};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState, Usage};
use taskexec_core::time::FakeClock;

/// Answers from every deployment except those marked down (503), and logs who was asked for what.
#[derive(Default)]
struct Fleet {
    down: Mutex<HashSet<String>>,
    asked: Mutex<Vec<(String, String)>>,
}

impl Provider for Fleet {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        self.asked.lock().unwrap().push((request.deployment.clone(), request.model.clone()));
        if self.down.lock().unwrap().contains(&request.deployment) {
            return Err(ProviderError::Transient {
                retry_after: None,
                status: Some(503),
                code: None,
                detail: "unavailable".into(),
                limits: Default::default(),
            });
        }
        Ok(ProviderResponse {
            text: "ok".into(),
            finish_reason: "stop".into(),
            usage: Usage::default(),
            model: request.model,
            request_id: None,
            latency: Duration::from_millis(5),
            ttft: None,
            limits: Default::default(),
            raw: None,
        })
    }
}

type RouteEngine = Engine<MemoryStore, MemoryStore, MemoryLimiter, Arc<CountingSink>, Arc<Fleet>, FakeClock>;

fn engine(clock: &FakeClock, fleet: &Arc<Fleet>) -> RouteEngine {
    let target = |deployment: &str, model: &str, weight| RouteTarget {
        deployment: deployment.into(),
        model: Some(model.into()),
        weight,
    };
    let route = RouteSpec {
        targets: vec![target("east", "gpt-4o", 2), target("west", "gpt-4o-2024", 1), target("azure", "prod-4o", 1)],
    };
    let config = EngineConfig {
        retry: RetryPolicy { max_attempts: 5, base_delay_ms: 100, max_delay_ms: 100, throttle_budget: 5 },
        breaker: BreakerPolicy {
            consecutive_failures: 2,
            min_calls: 100,
            cooldown_ms: 5_000,
            half_open_probes: 1,
            ..BreakerPolicy::default()
        },
        routes: BTreeMap::from([("gpt4o".to_owned(), route)]),
        seed: Some(1),
        ..EngineConfig::default()
    };
    let ports = Ports {
        store: MemoryStore::default(),
        breakers: MemoryStore::default(),
        limiter: MemoryLimiter::default(),
        metrics: Arc::new(CountingSink::default()),
        provider: fleet.clone(),
        clock: clock.clone(),
    };
    Engine::new(ports, config)
}

async fn submit(engine: &RouteEngine, id: &str) -> Delivery {
    let task: BenchmarkTask = serde_json::from_str(&format!(
        r#"{{"id":"{id}","providerId":"gpt4o","modelId":"gpt-4o","prompt":"p","runId":"run"}}"#
    ))
    .unwrap();
    let delivery = DeliveryBuilder::default().of_task(&task, "run", 0);
    engine.ports().store.submit(vec![TaskRecord::new(task, 0)]).await.unwrap();
    delivery
}

/// Process until the task is finished (retries are re-processed once due); returns who served it.
async fn run_task(engine: &RouteEngine, clock: &FakeClock, id: &str) -> String {
    let d = submit(engine, id).await;
    for _ in 0..20 {
        match engine.process(&d).await {
            Decision::Ack => break,
            Decision::Retry { delay } | Decision::Defer { delay, .. } => clock.advance(delay),
            other => panic!("{id}: {other:?}"),
        }
    }
    let record = engine.ports().store.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Completed, "{id}: {record:?}");
    let result = record.result.unwrap();
    let last = result.attempts.last().unwrap();
    assert_eq!(last.deployment.as_deref(), Some(result.deployment.as_str()), "the attempt names who served");
    assert_eq!(last.model.as_deref(), Some(result.model.as_str()), "and the model it was asked for");
    result.deployment
}

fn count(served: &[String], deployment: &str) -> usize {
    served.iter().filter(|d| *d == deployment).count()
}

#[tokio::test(start_paused = true)]
async fn traffic_moves_off_a_failing_deployment_and_back_when_it_recovers() {
    let clock = FakeClock::at(1_000_000);
    let fleet = Arc::new(Fleet::default());
    let engine = engine(&clock, &fleet);

    // Healthy: split 2 : 1 : 1.
    let mut served = Vec::new();
    for i in 0..40 {
        served.push(run_task(&engine, &clock, &format!("a{i}")).await);
    }
    assert_eq!((count(&served, "east"), count(&served, "west"), count(&served, "azure")), (20, 10, 10));
    let asked = fleet.asked.lock().unwrap().clone();
    assert!(asked.contains(&("azure".into(), "prod-4o".into())), "each deployment gets its own model id");

    // West goes down: two failures open its breaker, and everything goes to the others.
    fleet.down.lock().unwrap().insert("west".into());
    let mut served = Vec::new();
    for i in 0..40 {
        served.push(run_task(&engine, &clock, &format!("b{i}")).await);
    }
    assert_eq!(count(&served, "west"), 0, "nothing is served by the failing deployment");
    let west_calls = fleet.asked.lock().unwrap().iter().filter(|(d, _)| d == "west").count();
    assert!(west_calls <= 10 + 3, "west was asked only until its breaker opened (and by its probes): {west_calls}");
    assert!(count(&served, "east") > count(&served, "azure"), "the rest still split by weight: {served:?}");

    // West recovers: after its cool-down a probe succeeds and it gets traffic again.
    fleet.down.lock().unwrap().clear();
    clock.advance(Duration::from_secs(60));
    let mut served = Vec::new();
    for i in 0..40 {
        served.push(run_task(&engine, &clock, &format!("c{i}")).await);
    }
    assert!(count(&served, "west") >= 5, "west serves again: {served:?}");
}
