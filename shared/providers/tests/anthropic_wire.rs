//! The Anthropic adapter against a local server replaying Anthropic's wire format
//! (`anthropic_support/fixtures.rs`): answers, streams, every error class, rate-limit headers,
//! the model list, cancellation by drop, and key redaction. Nothing here reaches the internet.

mod anthropic_support;
mod support;

use std::time::Duration;

use anthropic_support::{ERRORS, anthropic_at, anthropic_server, fixtures};
use serde_json::json;
use support::logs::capture_logs;
use support::recording::RecordingServer;
use support::{
    FAKE_KEY, HangServer, assert_drop_closes_connection, assert_no_key, assert_transient, stream_prelude, task_request,
};
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{LimitKind, Provider, ProviderRequest, RateLimits};
use taskexec_core::task::Usage;
use taskexec_providers::ModelInfo;

const MODEL: &str = "claude-3-5-haiku-20241022";

fn task(parameters: serde_json::Value) -> ProviderRequest {
    task_request(
        json!({
            "id": "task-42", "providerId": "d", "modelId": MODEL, "prompt": "Say hello", "parameters": parameters
        }),
        3,
    )
}

fn request(stream: bool) -> ProviderRequest {
    task(json!({
        "system": "You are terse.", "temperature": 0.2, "topP": 0.9, "maxTokens": 50, "stop": ["END"],
        "stream": stream, "extra": {"metadata": {"user_id": "bench"}}
    }))
}

async fn fail(server: &RecordingServer, scenario: &str) -> ProviderError {
    server.deployments(scenario).call(request(false)).await.unwrap_err()
}

fn assert_limits(limits: &RateLimits) {
    let input = limits.get(LimitKind::InputTokens).expect("input-token limit");
    let output = limits.get(LimitKind::OutputTokens).expect("output-token limit");
    assert_eq!((input.limit, input.remaining), (Some(40_000), Some(120)));
    assert_eq!((output.limit, output.remaining), (Some(8000), Some(7990)));
    assert_eq!(limits.get(LimitKind::Requests).and_then(|r| r.remaining), Some(49));
}

#[tokio::test]
async fn success_maps_the_request_and_reads_the_answer() {
    let server = anthropic_server().await;
    let answer = server.deployments("ok").call(request(false)).await.unwrap();
    assert_eq!(answer.text, "Hi! My name is Claude.");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!(answer.usage, Usage { input_tokens: 2095 + 100 + 1000, output_tokens: 503, cached_tokens: Some(1000) });
    assert_eq!(answer.model, MODEL);
    assert_eq!(answer.request_id.as_deref(), Some(fixtures::REQUEST_ID));
    assert!(answer.latency > Duration::ZERO && answer.ttft.is_none());
    assert_limits(&answer.limits);

    let seen = server.recorded().pop().unwrap();
    let header = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-api-key").as_deref(), Some(FAKE_KEY));
    assert_eq!(header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(header("x-taskexec-task-id").as_deref(), Some("task-42"));
    assert_eq!(header("authorization"), None);
    assert_eq!(
        seen.body,
        json!({
            "model": MODEL, "max_tokens": 50, "system": "You are terse.",
            "messages": [{"role": "user", "content": "Say hello"}],
            "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
            "metadata": {"user_id": "bench"}
        })
    );
}

#[tokio::test]
async fn max_tokens_defaults_and_consecutive_turns_merge() {
    let server = anthropic_server().await;
    let r = task(json!({"messages": [
        {"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes?"},
        {"role": "assistant", "content": "Go on."}, {"role": "user", "content": "Context:"}
    ]}));
    server.deployments("ok").call(r).await.unwrap();
    assert_eq!(
        server.recorded().pop().unwrap().body,
        json!({
            "model": MODEL, "max_tokens": taskexec_providers::capability::ANTHROPIC_DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": "user", "content": "Earlier"},
                {"role": "assistant", "content": "Yes?\n\nGo on."},
                {"role": "user", "content": "Context:\n\nSay hello"}
            ]
        })
    );
}

#[tokio::test]
async fn a_conversation_starting_with_the_assistant_is_permanent_and_not_sent() {
    let server = anthropic_server().await;
    let r = task(json!({"system": "s", "messages": [{"role": "assistant", "content": "Hi"}]}));
    let e = server.deployments("ok").call(r).await.unwrap_err();
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, None));
    assert!(e.to_string().contains("start with a user message"), "{e}");
    assert!(server.recorded().is_empty());
}

#[tokio::test]
async fn streamed_success_reads_deltas_usage_and_ttft() {
    let server = anthropic_server().await;
    let answer = server.deployments("stream").call(request(true)).await.unwrap();
    assert_eq!(answer.text, "Hello!");
    assert_eq!(answer.finish_reason, "length");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (25, 15));
    assert_eq!(answer.request_id.as_deref(), Some(fixtures::REQUEST_ID));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency);
    assert_eq!(server.recorded().pop().unwrap().body["stream"], json!(true));
}

#[tokio::test]
async fn every_error_type_has_its_class_code_and_retry_hint() {
    let server = anthropic_server().await;
    for (scenario, status, kind, headers) in ERRORS {
        let class = match kind {
            "rate_limit_error" => ErrorClass::RateLimited,
            "overloaded_error" | "api_error" | "timeout_error" => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        let retry_after = headers.iter().find(|(h, _)| *h == "retry-after").map(|(_, v)| v.parse().unwrap());
        let e = fail(&server, scenario).await;
        assert_eq!((e.class(), e.status()), (class, Some(status)), "{scenario}: {e}");
        assert_eq!(e.retry_after(), retry_after.map(Duration::from_secs), "{scenario}");
        let t = e.to_task_error();
        assert_eq!(t.provider_code.as_deref(), Some(kind), "{scenario}");
        assert_eq!(t.message, format!("{kind} happened"));
    }
}

#[tokio::test]
async fn a_rate_limited_call_carries_the_rate_limit_headers() {
    let server = anthropic_server().await;
    let e = fail(&server, "rate_limit_with_limits").await;
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::RateLimited, Some(Duration::from_secs(12))));
    assert_limits(e.limits());
}

#[tokio::test]
async fn unauthorized_is_permanent_and_the_echoed_key_is_scrubbed() {
    let server = anthropic_server().await;
    let e = fail(&server, "unauthorized").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(401)));
    assert_eq!(e.to_task_error().provider_code.as_deref(), Some("authentication_error"));
    assert!(e.to_string().contains("invalid x-api-key: [redacted]"), "{e}");
    assert_no_key(&[e.to_string(), format!("{e:?}"), format!("{:?}", e.to_task_error())]);
}

#[tokio::test]
async fn a_malformed_200_is_transient() {
    let server = anthropic_server().await;
    let e = fail(&server, "malformed").await;
    assert_transient(&e, "malformed response body");
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_transient() {
    let server = anthropic_server().await;
    let e = server.deployments("truncated_stream").call(request(true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
}

#[tokio::test]
async fn an_error_event_mid_stream_is_classed_by_its_type() {
    let server = anthropic_server().await;
    let e = server.deployments("error_event").call(request(true)).await.unwrap_err();
    assert_eq!((e.class(), e.status()), (ErrorClass::Transient, None));
    let t = e.to_task_error();
    assert_eq!((t.provider_code.as_deref(), t.message.as_str()), (Some("overloaded_error"), "Overloaded"));
}

#[tokio::test]
async fn the_model_list_follows_its_pages() {
    let server = anthropic_server().await;
    let deployments = server.deployments("models");
    let models = deployments.get("d").unwrap().models().await.unwrap();
    let info = |id: &str, name: &str| ModelInfo { id: id.into(), display_name: Some(name.into()) };
    assert_eq!(
        models,
        [
            info("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5"),
            info("claude-opus-4-1-20250805", "Claude Opus 4.1"),
            info("claude-3-5-haiku-20241022", "Claude Haiku 3.5"),
        ]
    );
    let seen = server.recorded();
    let queries: Vec<_> = seen.iter().map(|r| r.query.as_deref().unwrap_or_default()).collect();
    assert_eq!(queries, ["limit=1000", "limit=1000&after_id=claude-opus-4-1-20250805"]);
    assert!(seen.iter().all(|r| r.headers.get("x-api-key").is_some() && r.headers.get("anthropic-version").is_some()));
}

#[tokio::test]
async fn dropping_the_call_closes_the_connection() {
    assert_drop_closes_connection(HangServer::start().await, anthropic_at, request(false)).await;
}

#[tokio::test]
async fn dropping_a_streamed_call_mid_stream_closes_the_connection() {
    let prelude = stream_prelude(&fixtures::stream_prelude());
    assert_drop_closes_connection(HangServer::start_with(prelude).await, anthropic_at, request(true)).await;
}

#[tokio::test]
async fn the_key_never_appears_in_debug_errors_or_logs() {
    let logs = capture_logs();
    let server = anthropic_server().await;
    let mut seen = vec![format!("{:?}", server.deployments("ok")), format!("{:#?}", server.deployments("ok"))];
    server.deployments("ok").call(request(false)).await.unwrap();
    for scenario in ["unauthorized", "invalid_request", "rate_limit", "overloaded", "malformed", "nope"] {
        let e = fail(&server, scenario).await;
        seen.extend([e.to_string(), format!("{e:?}")]);
    }
    let e = server.deployments("error_event").call(request(true)).await.unwrap_err();
    seen.extend([e.to_string(), format!("{e:?}")]);
    let e = anthropic_at("http://127.0.0.1:1").call(request(false)).await.unwrap_err();
    seen.push(e.to_string());
    let log_text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(log_text.contains("provider call"), "the adapter logs its calls: {log_text}");
    seen.push(log_text);
    assert_no_key(&seen);
}
