//! What the handler tests share: a stub provider and the test queues' topology.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskexec_core::error::ProviderError;
use taskexec_core::ports::{QueuePair, Topology};
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::Usage;

/// A provider that answers after 50 ms, fails tasks whose id starts with `flaky` with a transient
/// error, and makes tasks whose id starts with `slow` take 5 s more.
#[derive(Default)]
pub struct Stub {
    pub calls: AtomicUsize,
}

impl Provider for Stub {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if request.task_id.starts_with("crash") {
            // A test-only fault: a handler bug, as a panic in the middle of an attempt.
            panic!("test fault: {} crashes its handler", request.task_id);
        }
        if request.task_id.starts_with("flaky") {
            return Err(ProviderError::transient("connection reset"));
        }
        if request.task_id.starts_with("slow") {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(ProviderResponse {
            text: "ok".into(),
            finish_reason: "stop".into(),
            usage: Usage::default(),
            model: request.model,
            request_id: None,
            latency: Duration::from_millis(50),
            ttft: None,
            limits: Default::default(),
            raw: None,
        })
    }
}

/// Queues named `taskexec-{high,normal,low}` with `-dlq` beside them.
pub fn topology() -> Topology {
    let pair = |priority, name: &str| QueuePair {
        priority,
        url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}"),
        dlq_url: format!("https://sqs.us-east-1.amazonaws.com/123456789012/taskexec-{name}-dlq"),
    };
    use taskexec_core::task::TaskPriority as P;
    Topology { queues: [pair(P::High, "high"), pair(P::Normal, "normal"), pair(P::Low, "low")] }
}

/// The engine of the handler tests: in-memory ports, the [`Stub`] provider, tokio's clock.
pub type TestEngine = taskexec_core::engine::Engine<
    taskexec_core::memory::MemoryStore,
    taskexec_core::memory::MemoryStore,
    taskexec_core::memory::MemoryLimiter,
    std::sync::Arc<taskexec_core::memory::CountingSink>,
    std::sync::Arc<Stub>,
    taskexec_core::time::TokioClock,
>;

/// An engine over fresh in-memory ports, and its stub provider.
pub fn engine(config: taskexec_core::engine::EngineConfig) -> (std::sync::Arc<TestEngine>, std::sync::Arc<Stub>) {
    let stub = std::sync::Arc::new(Stub::default());
    let ports = taskexec_core::engine::Ports {
        store: Default::default(),
        breakers: Default::default(),
        limiter: Default::default(),
        metrics: Default::default(),
        provider: stub.clone(),
        clock: taskexec_core::time::TokioClock::starting_at(1_700_000_000_000),
    };
    (std::sync::Arc::new(taskexec_core::engine::Engine::new(ports, config)), stub)
}
