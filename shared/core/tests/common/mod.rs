//! A scripted provider shared by the engine and runner tests.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::Usage;

/// What the scripted provider does on one call.
#[derive(Clone)]
pub enum Step {
    Ok,
    Fail(ProviderError),
    Hang,
}

#[derive(Default)]
pub struct Scripted {
    pub steps: Mutex<HashMap<String, VecDeque<Step>>>,
    pub calls: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
    pub dropped: AtomicUsize,
    /// Task ids in the order their calls started.
    pub started: Mutex<Vec<String>>,
}

impl Scripted {
    pub fn script(&self, task: &str, steps: impl IntoIterator<Item = Step>) {
        self.steps.lock().unwrap().insert(task.into(), steps.into_iter().collect());
    }
}

pub struct InFlight<'a>(&'a Scripted, bool);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Provider for Scripted {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.lock().unwrap().push(request.task_id.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let mut guard = InFlight(self, false);
        let step =
            self.steps.lock().unwrap().get_mut(&request.task_id).and_then(VecDeque::pop_front).unwrap_or(Step::Ok);
        // Every call takes a little (virtual) time so concurrent calls overlap.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let out = match step {
            Step::Ok => Ok(ProviderResponse {
                text: format!("answer to {}", request.task_id),
                finish_reason: "stop".into(),
                usage: Usage { input_tokens: 3, output_tokens: 5, cached_tokens: None },
                model: request.model,
                request_id: Some("req-1".into()),
                latency: Duration::from_millis(10),
                ttft: None,
                limits: Default::default(),
                raw: None,
            }),
            Step::Fail(e) => Err(e),
            Step::Hang => std::future::pending().await,
        };
        guard.1 = true;
        out
    }
}

pub fn rate_limited(retry_after_ms: u64) -> Step {
    Step::Fail(ProviderError::RateLimited {
        retry_after: Some(Duration::from_millis(retry_after_ms)),
        status: Some(429),
        code: Some("rate_limit_exceeded".into()),
        detail: "slow down".into(),
        limits: Default::default(),
    })
}

pub fn transient() -> Step {
    Step::Fail(ProviderError::Transient {
        retry_after: None,
        status: Some(503),
        code: None,
        detail: "unavailable".into(),
        limits: Default::default(),
    })
}

pub fn permanent() -> Step {
    Step::Fail(ProviderError::Permanent {
        status: Some(400),
        code: None,
        detail: "bad".into(),
        limits: Default::default(),
    })
}
