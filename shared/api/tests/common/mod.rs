//! Shared helpers of the API's tests: the router over the in-memory store and queue with a
//! fake clock, and one-shot requests (no network).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use taskexec_api::{ApiSettings, ApiState, SystemSampler, router};
use taskexec_core::error::{ErrorClass, TaskError};
use taskexec_core::memory::{MemoryQueue, MemoryStore};
use taskexec_core::ports::{ClaimOutcome, ClaimRequest, FinishRequest, Outcome, TaskStore, WorkQueue};
use taskexec_core::task::{TaskResult, Usage};
use taskexec_core::time::{Clock, FakeClock};
use tower::ServiceExt;

pub const NOW: i64 = 1_800_000_000_000;

/// The router and the ports behind it.
pub struct Api {
    pub app: Router,
    pub store: Arc<MemoryStore>,
    pub queue: Arc<MemoryQueue<FakeClock>>,
    pub clock: FakeClock,
    pub counters: Arc<Counters>,
}

/// Run counters the API adds to: (run, delta) per call.
#[derive(Default)]
pub struct Counters(pub std::sync::Mutex<Vec<(String, taskexec_core::ports::RunDelta)>>);

impl taskexec_core::ports::RunCounter for Counters {
    fn add(
        &self,
        run_id: String,
        delta: taskexec_core::ports::RunDelta,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = taskexec_core::ports::StoreResult<()>> + Send + '_>> {
        self.0.lock().unwrap().push((run_id, delta));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The API over memory ports: deployments `sim` and `mock`, a worker timeout of 60 s with a
/// 10 s margin (so a task timeout may be at most 50 s); the host's task check refuses `seed`
/// on `mock` (as the capability table does for models that take none).
pub fn api() -> Api {
    api_with(|settings| settings)
}

/// [`api`] with its settings changed by `configure` last.
pub fn api_with(configure: impl FnOnce(ApiSettings) -> ApiSettings) -> Api {
    let clock = FakeClock::at(NOW);
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), clock.clone()));
    let settings = ApiSettings::new(["sim", "mock"], Arc::new(SystemSampler::new().unwrap()))
        .with_worker_timeout(Duration::from_secs(60))
        .with_timeout_margin(Duration::from_secs(10))
        .with_clock(Arc::new(clock.clone()))
        .with_task_check(Arc::new(|task: &taskexec_core::task::BenchmarkTask| {
            let refused = task.provider_id == "mock" && task.parameters.seed.is_some();
            let message = "`seed` is not accepted by model `m` on deployment `mock`".to_owned();
            refused
                .then(|| taskexec_core::validate::FieldError { field: "parameters.seed".into(), message })
                .into_iter()
                .collect()
        }));
    let counters = Arc::new(Counters::default());
    let settings = configure(settings.with_run_counter(counters.clone()));
    let app = router(ApiState::new(store.clone(), queue.clone(), settings));
    Api { app, store, queue, clock, counters }
}

impl Api {
    /// One request; returns the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        send(&self.app, method, uri, body, None).await
    }

    /// Ids of the deliveries waiting in the queue, draining it.
    pub async fn drain_queue(&self) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let batch = self.queue.receive(100, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return ids;
            }
            ids.extend(batch.into_iter().map(|d| d.task_id));
        }
    }

    /// Claim a task and finish its attempt with `outcome`.
    pub async fn finish(&self, id: &str, outcome: Outcome) {
        let now = self.clock.now();
        let request = ClaimRequest { task_id: id.into(), owner: "test".into(), now, lease_until: now + 30_000 };
        let ClaimOutcome::Claimed(record) = self.store.claim(request).await.unwrap() else { panic!("claim {id}") };
        let finish = FinishRequest {
            task_id: id.into(),
            epoch: record.epoch,
            outcome,
            attempt: record.attempt,
            throttles: 0,
            record: None,
            now: now + 100,
        };
        self.store.finish(finish).await.unwrap();
    }

    /// Complete a task with a result of `latency_ms`.
    pub async fn complete(&self, id: &str, latency_ms: f64) {
        self.finish(id, Outcome::Completed(result(latency_ms))).await;
    }

    /// Fail a task for good with a permanent error.
    pub async fn fail(&self, id: &str) {
        let error = TaskError::new(ErrorClass::Permanent, "bad request");
        self.finish(id, Outcome::Failed { error, dead_letter_reason: None }).await;
    }
}

/// One request to `app`, with an optional bearer token.
pub async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.header(header::CONTENT_TYPE, "application/json").body(body).unwrap());
    let response = response.await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (status, value)
}

/// A valid task for deployment `sim`.
pub fn task(id: &str) -> Value {
    json!({"id": id, "providerId": "sim", "modelId": "m", "prompt": format!("question {id}"), "runId": "r1"})
}

fn result(latency_ms: f64) -> TaskResult {
    TaskResult {
        text: "42".into(),
        finish_reason: "stop".into(),
        usage: Usage { input_tokens: 3, output_tokens: 1, cached_tokens: None },
        deployment: "sim".into(),
        model: "m".into(),
        request_id: None,
        latency_ms,
        ttft_ms: None,
        attempts: Vec::new(),
        raw_response: None,
    }
}
