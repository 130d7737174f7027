//! What the handler tests share: a stub provider and the test queues' topology.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::Usage;
use taskexec_lambda::actions::{QueuePair, Topology};

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
