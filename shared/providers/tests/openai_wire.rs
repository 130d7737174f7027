//! The OpenAI-compatible adapter against a local server replaying OpenAI's wire format
//! (`support/fixtures.rs`): answers, streams, every error class, transport failures,
//! cancellation by drop, and key redaction. Nothing here reaches the internet.

mod support;

use std::time::Duration;

use serde_json::json;
use support::logs::capture_logs;
use support::recording::RecordingServer;
use support::{
    FAKE_KEY, HangServer, RawFault, assert_drop_closes_connection, assert_no_key, assert_transient, deployments_at,
    openai_server, raw_server, refused_base, task_request,
};
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{Provider, ProviderRequest};

fn request(stream: bool) -> ProviderRequest {
    task_request(
        json!({
            "id": "task-42", "providerId": "d", "modelId": "gpt-4o-mini", "prompt": "Say hello",
            "parameters": {
                "system": "You are terse.", "temperature": 0.2, "topP": 0.9, "maxTokens": 50,
                "stop": ["END"], "seed": 7, "responseFormat": {"type": "text"}, "stream": stream,
                "extra": {"logit_bias": {"50256": -100}, "user": "bench"}
            }
        }),
        3,
    )
}

async fn fail(server: &RecordingServer, scenario: &str) -> ProviderError {
    server.deployments(scenario).call(request(false)).await.unwrap_err()
}

#[tokio::test]
async fn success_maps_the_request_and_reads_the_answer() {
    let server = openai_server().await;
    let answer = server.deployments("ok").call(request(false)).await.unwrap();
    assert_eq!(answer.text, "Hello! How can I assist you today?");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.cached_tokens), (19, 10, Some(4)));
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(answer.request_id.as_deref(), Some("req_8f2c"));
    assert!(answer.latency > Duration::ZERO && answer.ttft.is_none());

    let seen = server.recorded().pop().unwrap();
    let header = |name: &str| seen.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("x-taskexec-task-id"), "task-42");
    assert_eq!(header("x-taskexec-attempt"), "3");
    assert_eq!(header("authorization"), format!("Bearer {FAKE_KEY}"));
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(
        seen.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}],
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "stop": ["END"], "seed": 7,
            "response_format": {"type": "text"},
            "logit_bias": {"50256": -100}, "user": "bench"
        })
    );
}

#[tokio::test]
async fn streamed_success_reads_deltas_usage_and_ttft() {
    let server = openai_server().await;
    let answer = server.deployments("stream").call(request(true)).await.unwrap();
    assert_eq!(answer.text, "Hello there!");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (9, 3));
    assert_eq!(answer.request_id.as_deref(), Some("chatcmpl-123"));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency);
    let body = server.recorded().pop().unwrap().body;
    assert_eq!(body["stream"], json!(true));
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let server = openai_server().await;
    for (scenario, stream) in [("ok", false), ("stream", true), ("stream_lingering", true)] {
        let deployments = server.deployments(scenario);
        for _ in 0..3 {
            deployments.call(request(stream)).await.unwrap();
        }
    }
    let peers: Vec<_> = server.recorded().iter().map(|r| r.peer).collect();
    // Per deployment (each has its own pool): a stream read up to `[DONE]` gives its
    // connection back too, even when the server ends the body a little after the marker (the
    // rest of the body is drained instead of the connection being dropped).
    for calls in peers.chunks(3) {
        assert!(calls.windows(2).all(|w| w[0] == w[1]), "{peers:?}");
    }
}

#[tokio::test]
async fn rate_limit_uses_retry_after_seconds() {
    let server = openai_server().await;
    let e = fail(&server, "rate_limit_s").await;
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    let t = e.to_task_error();
    assert_eq!((t.provider_status, t.provider_code.as_deref()), (Some(429), Some("rate_limit_exceeded")));
    assert!(t.message.starts_with("Rate limit reached for gpt-4o-mini"));
}

#[tokio::test]
async fn rate_limit_prefers_retry_after_ms() {
    let server = openai_server().await;
    let e = fail(&server, "rate_limit_ms").await;
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
}

#[tokio::test]
async fn insufficient_quota_is_permanent() {
    let server = openai_server().await;
    let e = fail(&server, "quota").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(429)));
    assert_eq!(e.to_task_error().provider_code.as_deref(), Some("insufficient_quota"));
}

#[tokio::test]
async fn context_length_exceeded_is_permanent() {
    let server = openai_server().await;
    let e = fail(&server, "context").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(400)));
    let t = e.to_task_error();
    assert_eq!(t.provider_code.as_deref(), Some("context_length_exceeded"));
    assert!(t.message.contains("maximum context length is 128000 tokens"));
}

#[tokio::test]
async fn unauthorized_is_permanent_and_the_echoed_key_is_scrubbed() {
    let server = openai_server().await;
    let e = fail(&server, "unauthorized").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(401)));
    assert_eq!(e.to_task_error().provider_code.as_deref(), Some("invalid_api_key"));
    assert!(e.to_string().contains("Incorrect API key provided: [redacted]"), "{e}");
    assert_no_key(&[e.to_string(), format!("{e:?}"), format!("{:?}", e.to_task_error())]);
}

#[tokio::test]
async fn server_errors_are_transient_and_keep_retry_after() {
    let server = openai_server().await;
    let e500 = fail(&server, "server_error").await;
    assert_eq!((e500.class(), e500.status(), e500.retry_after()), (ErrorClass::Transient, Some(500), None));
    assert_eq!(e500.to_task_error().provider_code.as_deref(), Some("server_error"));
    let e503 = fail(&server, "unavailable").await;
    assert_eq!((e503.class(), e503.status()), (ErrorClass::Transient, Some(503)));
    assert_eq!(e503.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn a_malformed_200_is_transient() {
    let server = openai_server().await;
    let e = fail(&server, "malformed").await;
    assert_transient(&e, "malformed response body");
}

#[tokio::test]
async fn a_stream_cut_before_done_is_transient() {
    let server = openai_server().await;
    let e = server.deployments("truncated_stream").call(request(true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
}

#[tokio::test]
async fn transport_failures_are_transient() {
    for (fault, stream) in
        [(RawFault::CloseBeforeResponse, false), (RawFault::ResetMidBody, false), (RawFault::ResetMidStream, true)]
    {
        let base = raw_server(fault).await;
        let e = deployments_at(&base).call(request(stream)).await.unwrap_err();
        assert_eq!((e.class(), e.status()), (ErrorClass::Transient, None), "{fault:?}: {e}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let e = deployments_at(&format!("{}/v1", refused_base())).call(request(false)).await.unwrap_err();
    assert_transient(&e, "connect failed");
}

#[tokio::test]
async fn dropping_the_call_closes_the_connection() {
    assert_drop_closes_connection(HangServer::start().await, deployments_at, request(false)).await;
}

#[tokio::test]
async fn dropping_a_streamed_call_mid_stream_closes_the_connection() {
    assert_drop_closes_connection(HangServer::start_streaming().await, deployments_at, request(true)).await;
}

#[tokio::test]
async fn the_key_never_appears_in_debug_errors_or_logs() {
    let logs = capture_logs();
    let server = openai_server().await;
    let mut seen = vec![format!("{:?}", server.deployments("ok")), format!("{:#?}", server.deployments("ok"))];
    server.deployments("ok").call(request(false)).await.unwrap();
    for scenario in ["unauthorized", "context", "rate_limit_s", "malformed", "nope"] {
        let e = fail(&server, scenario).await;
        seen.extend([e.to_string(), format!("{e:?}")]);
    }
    let e = deployments_at("http://127.0.0.1:1/v1").call(request(false)).await.unwrap_err();
    seen.push(e.to_string());
    let log_text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(log_text.contains("provider call"), "the adapter logs its calls: {log_text}");
    seen.push(log_text);
    assert_no_key(&seen);
}

#[tokio::test]
async fn keep_raw_keeps_the_body_and_rate_limit_headers_travel_on_answers_and_errors() {
    let server = openai_server().await;
    let text = format!(
        "[d]\nkind = \"openai-compatible\"\nbase_url = \"{}/ok\"\napi_key_env = \"K\"\nkeep_raw = true",
        server.base
    );
    let configs = toml::from_str(&text).unwrap();
    let d = taskexec_providers::Deployments::from_config(&configs, |_| Some(FAKE_KEY.to_owned())).unwrap();
    let answer = d.call(request(false)).await.unwrap();
    let raw: serde_json::Value = serde_json::from_str(answer.raw.as_deref().expect("raw kept")).unwrap();
    assert_eq!(raw["id"], "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    let streamed = server.deployments("stream").call(request(true)).await.unwrap();
    assert_eq!(streamed.raw, None, "not kept unless asked");

    let limited = fail(&server, "rate_limit_s").await;
    let requests = limited.limits().get(taskexec_core::provider::LimitKind::Requests).expect("x-ratelimit-* parsed");
    assert_eq!((requests.limit, requests.remaining), (Some(500), Some(0)));
    assert_eq!(requests.reset, Some(Duration::from_millis(1_500)));
}
