//! The provider port: one call to a model, in core terms. Adapters (in `taskexec-providers`)
//! translate a [`ProviderRequest`] to a provider's wire format, and classify every failure into
//! a [`ProviderError`] once, at the adapter.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::error::ProviderError;
use crate::task::{BenchmarkTask, ChatMessage, Role, Usage};

/// A standard request: messages with roles (system first when given) and sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRequest {
    /// The deployment to call (a name from the config).
    pub deployment: String,
    /// The model.
    pub model: String,
    /// System prompt, earlier conversation, then the prompt as the last user message.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Seed.
    pub seed: Option<i64>,
    /// Response format, passed as given.
    pub response_format: Option<serde_json::Value>,
    /// Stream the answer.
    pub stream: bool,
    /// Provider-specific body fields.
    pub extra: BTreeMap<String, serde_json::Value>,
    /// The task id (sent as a header so servers and logs can correlate).
    pub task_id: String,
    /// The attempt number of this call.
    pub attempt: u32,
}

impl ProviderRequest {
    /// The request for `task` on `deployment`.
    #[must_use]
    pub fn for_task(task: &BenchmarkTask, deployment: &str, attempt: u32) -> Self {
        let p = &task.parameters;
        let mut messages = Vec::with_capacity(p.messages.len() + 2);
        if let Some(system) = &p.system {
            messages.push(ChatMessage { role: Role::System, content: system.clone() });
        }
        messages.extend(p.messages.iter().cloned());
        messages.push(ChatMessage { role: Role::User, content: task.prompt.clone() });
        Self {
            deployment: deployment.to_owned(),
            model: task.model_id.clone(),
            messages,
            temperature: p.temperature,
            top_p: p.top_p,
            max_tokens: p.max_tokens,
            stop: p.stop.clone(),
            seed: p.seed,
            response_format: p.response_format.clone(),
            stream: p.stream.unwrap_or(false),
            extra: p.extra.clone(),
            task_id: task.id.clone(),
            attempt,
        }
    }
}

/// Which budget a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitKind {
    /// Requests.
    Requests,
    /// Tokens (input and output together).
    Tokens,
    /// Input tokens only (Anthropic counts them apart).
    InputTokens,
    /// Output tokens only.
    OutputTokens,
}

impl LimitKind {
    /// A stable name (`requests`, `tokens`, `input_tokens`, `output_tokens`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
        }
    }
}

/// One rate limit a provider reported in its response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// What it counts.
    pub kind: LimitKind,
    /// The budget per window, when sent.
    pub limit: Option<u64>,
    /// What is left of it, when sent.
    pub remaining: Option<u64>,
    /// Time until the budget is fully restored, measured from the response, when sent.
    pub reset: Option<Duration>,
}

/// The rate limits a provider reported with one response (success or error): the input of the
/// provider-aware rate limiter. Empty when the provider sent none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits(pub Vec<RateLimit>);

impl RateLimits {
    /// No limits reported.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limit of `kind`, if reported.
    #[must_use]
    pub fn get(&self, kind: LimitKind) -> Option<&RateLimit> {
        self.0.iter().find(|l| l.kind == kind)
    }
}

/// A normalised answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderResponse {
    /// The text.
    pub text: String,
    /// `stop`, `length`, `content_filter`, `tool_calls` or `other`.
    pub finish_reason: String,
    /// Token usage.
    pub usage: Usage,
    /// The model the provider says it served.
    pub model: String,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// Time of the HTTP exchange only (monotonic clock).
    pub latency: Duration,
    /// Time to first token, for streamed answers.
    pub ttft: Option<Duration>,
    /// Rate limits from the response headers.
    pub limits: RateLimits,
    /// The raw response body (the SSE text of a stream), kept only when the deployment sets
    /// `keep_raw = true`, for audit.
    pub raw: Option<String>,
}

/// A provider (or a set of deployments, each served by an adapter).
///
/// Dropping the returned future must abort the call (close the connection): that is how a
/// running task is cancelled.
pub trait Provider: Send + Sync + 'static {
    /// Make one call.
    fn call(&self, request: ProviderRequest) -> impl Future<Output = Result<ProviderResponse, ProviderError>> + Send;
}

impl<T: Provider> Provider for std::sync::Arc<T> {
    fn call(&self, request: ProviderRequest) -> impl Future<Output = Result<ProviderResponse, ProviderError>> + Send {
        (**self).call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_places_system_history_then_prompt() {
        let task: BenchmarkTask = serde_json::from_str(
            r#"{"id":"t","providerId":"d","modelId":"m","prompt":"now",
                "parameters":{"system":"be brief","messages":[{"role":"user","content":"before"},
                {"role":"assistant","content":"ok"}],"maxTokens":5,"stream":true}}"#,
        )
        .unwrap();
        let r = ProviderRequest::for_task(&task, "d", 2);
        let roles: Vec<_> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::User]);
        assert_eq!(r.messages.last().unwrap().content, "now");
        assert_eq!(r.max_tokens, Some(5));
        assert!(r.stream);
        assert_eq!(r.attempt, 2);
    }
}
