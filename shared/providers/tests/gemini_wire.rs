//! The Gemini adapter against a local server replaying the Gemini API's wire format
//! (`support/gemini_fixtures.rs`): answers, streams, every error class, blocked prompts, the
//! paged model list, cancellation by drop, and key redaction. Nothing here reaches the internet.

mod support;

#[path = "support/gemini_fixtures.rs"]
mod fixtures;
#[path = "support/gemini.rs"]
mod gemini;

use std::time::Duration;

use gemini::{deployments_at, gemini_server};
use serde_json::json;
use support::logs::capture_logs;
use support::recording::RecordingServer;
use support::{
    FAKE_KEY, HangServer, assert_drop_closes_connection, assert_no_key, assert_transient, refused_base, task_request,
};
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{Provider, ProviderRequest};

fn request(model: &str, stream: bool) -> ProviderRequest {
    task_request(
        json!({
            "id": "task-42", "providerId": "d", "modelId": model, "prompt": "Say hello",
            "parameters": {
                "system": "You are terse.", "temperature": 0.2, "topP": 0.9, "maxTokens": 50,
                "stop": ["END"], "seed": 7, "responseFormat": {"type": "json_object"}, "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                "extra": {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]}
            }
        }),
        3,
    )
}

async fn fail(server: &RecordingServer, scenario: &str) -> ProviderError {
    server.deployments(scenario).call(request("gemini-2.5-flash", false)).await.unwrap_err()
}

#[tokio::test]
async fn success_maps_the_request_and_reads_the_answer() {
    let server = gemini_server().await;
    let answer = server.deployments("ok").call(request("models/gemini-2.5-flash", false)).await.unwrap();
    assert_eq!(answer.text, "Hello! How can I help you today?");
    assert_eq!(answer.finish_reason, "stop");
    // Output = candidates (9) + thoughts (24).
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.cached_tokens), (12, 33, Some(4)));
    assert_eq!(answer.model, "gemini-2.5-flash");
    assert_eq!(answer.request_id.as_deref(), Some("mL0hacqVHaGhz7IPr-K_oAQ"));
    assert!(answer.latency > Duration::ZERO && answer.ttft.is_none());

    let seen = server.recorded().pop().unwrap();
    assert_eq!((seen.call(), seen.query.as_deref()), ("gemini-2.5-flash:generateContent", None));
    let header = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-goog-api-key").as_deref(), Some(FAKE_KEY));
    assert_eq!(header("authorization"), None);
    assert_eq!(header("x-taskexec-task-id").as_deref(), Some("task-42"));
    assert_eq!(header("x-taskexec-attempt").as_deref(), Some("3"));
    assert_eq!(
        seen.body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Hello."}]},
                {"role": "user", "parts": [{"text": "Say hello"}]}
            ],
            "systemInstruction": {"parts": [{"text": "You are terse."}]},
            "generationConfig": {
                "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["END"], "seed": 7,
                "responseMimeType": "application/json"
            },
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
        })
    );
}

#[tokio::test]
async fn streamed_success_reads_chunks_usage_and_ttft() {
    let server = gemini_server().await;
    let answer = server.deployments("stream").call(request("gemini-2.5-flash", true)).await.unwrap();
    assert_eq!(answer.text, "Hello there!");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (12, 18));
    assert_eq!(answer.request_id.as_deref(), Some("nL0hacWzFp2Oz7IP3ZmT0Qg"));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency);
    let seen = server.recorded().pop().unwrap();
    assert_eq!((seen.call(), seen.query.as_deref()), ("gemini-2.5-flash:streamGenerateContent", Some("alt=sse")));
    assert!(seen.body.get("stream").is_none());
}

#[tokio::test]
async fn resource_exhausted_waits_for_retry_info() {
    let server = gemini_server().await;
    let e = fail(&server, "rate_limit").await;
    assert_eq!(
        (e.class(), e.status(), e.retry_after()),
        (ErrorClass::RateLimited, Some(429), Some(Duration::from_secs(34)))
    );
    let t = e.to_task_error();
    assert_eq!(t.provider_code.as_deref(), Some("RESOURCE_EXHAUSTED"));
    assert!(t.message.starts_with("You exceeded your current quota"), "{}", t.message);
    // Wrapped in an array and without RetryInfo: the Retry-After header is the hint.
    let e = fail(&server, "rate_limit_array").await;
    assert_eq!((e.class(), e.retry_after()), (ErrorClass::RateLimited, Some(Duration::from_secs(5))));
    assert_eq!(e.to_task_error().message, "Resource has been exhausted (e.g. check quota).");
}

#[tokio::test]
async fn every_error_class_from_real_bodies() {
    let server = gemini_server().await;
    let table = [
        ("invalid_argument", ErrorClass::Permanent, 400, "INVALID_ARGUMENT", None),
        ("failed_precondition", ErrorClass::Permanent, 400, "FAILED_PRECONDITION", None),
        ("permission_denied", ErrorClass::Permanent, 403, "PERMISSION_DENIED", None),
        ("unauthenticated", ErrorClass::Permanent, 401, "UNAUTHENTICATED", None),
        ("not_found", ErrorClass::Permanent, 404, "NOT_FOUND", None),
        ("internal", ErrorClass::Transient, 500, "INTERNAL", None),
        ("unavailable", ErrorClass::Transient, 503, "UNAVAILABLE", Some(Duration::from_secs(3))),
        ("deadline", ErrorClass::Transient, 504, "DEADLINE_EXCEEDED", None),
    ];
    for (scenario, class, status, code, wait) in table {
        let e = fail(&server, scenario).await;
        assert_eq!((e.class(), e.status(), e.retry_after()), (class, Some(status), wait), "{scenario}: {e}");
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some(code), "{scenario}");
    }
    let e = fail(&server, "not_found").await;
    assert!(e.to_string().contains("is not found for API version v1beta"), "{e}");
}

#[tokio::test]
async fn a_malformed_200_is_transient() {
    let server = gemini_server().await;
    let e = fail(&server, "malformed").await;
    assert_transient(&e, "malformed response body");
}

#[tokio::test]
async fn a_stream_cut_before_a_finish_reason_is_transient() {
    let server = gemini_server().await;
    let e = server.deployments("truncated_stream").call(request("gemini-2.5-flash", true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
}

#[tokio::test]
async fn a_blocked_prompt_is_permanent_with_the_block_reason() {
    let server = gemini_server().await;
    for stream in [false, true] {
        let e = server.deployments("blocked").call(request("gemini-2.5-flash", stream)).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent, "stream {stream}");
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("PROHIBITED_CONTENT"));
        assert!(e.to_string().contains("the prompt was blocked"), "{e}");
    }
}

#[tokio::test]
async fn the_model_list_follows_pages_and_keeps_generate_content_models() {
    let server = gemini_server().await;
    let deployments = server.deployments("list");
    let models = deployments.get("d").unwrap().models().await.unwrap();
    let ids: Vec<_> = models.iter().map(|m| (m.id.as_str(), m.display_name.as_deref())).collect();
    assert_eq!(ids, [("gemini-2.5-flash", Some("Gemini 2.5 Flash")), ("gemini-2.5-pro", Some("Gemini 2.5 Pro"))]);
    let queries: Vec<_> =
        server.recorded().into_iter().map(|r| (r.call().to_owned(), r.query.unwrap_or_default())).collect();
    let page_2 = format!("pageSize=1000&pageToken={}", fixtures::PAGE_2_TOKEN.replace('=', "%3D"));
    assert_eq!(queries, [("models".to_owned(), "pageSize=1000".to_owned()), ("models".to_owned(), page_2)]);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let e = deployments_at(&refused_base()).call(request("gemini-2.5-flash", false)).await.unwrap_err();
    assert_transient(&e, "connect failed");
}

#[tokio::test]
async fn dropping_the_call_closes_the_connection() {
    assert_drop_closes_connection(HangServer::start().await, deployments_at, request("gemini-2.5-flash", false)).await;
}

#[tokio::test]
async fn dropping_a_streamed_call_mid_stream_closes_the_connection() {
    // The hanging server's first event is not a Gemini chunk, but parses as one without text.
    assert_drop_closes_connection(
        HangServer::start_streaming().await,
        deployments_at,
        request("gemini-2.5-flash", true),
    )
    .await;
}

#[tokio::test]
async fn the_key_never_appears_in_debug_errors_or_logs() {
    let logs = capture_logs();
    let server = gemini_server().await;
    let mut seen = vec![format!("{:?}", server.deployments("ok")), format!("{:#?}", server.deployments("ok"))];
    server.deployments("ok").call(request("gemini-2.5-flash", false)).await.unwrap();
    for scenario in ["unauthenticated", "rate_limit", "malformed", "blocked", "nope"] {
        let e = fail(&server, scenario).await;
        seen.extend([e.to_string(), format!("{e:?}"), format!("{:?}", e.to_task_error())]);
    }
    let echoed = fail(&server, "unauthenticated").await;
    assert!(echoed.to_string().contains("credentials ([redacted])"), "{echoed}");
    let e = server.deployments("list").get("d").unwrap().models().await.map(|m| format!("{m:?}"));
    seen.push(format!("{e:?}"));
    let e = deployments_at("http://127.0.0.1:1").call(request("gemini-2.5-flash", false)).await.unwrap_err();
    seen.push(e.to_string());
    let log_text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(log_text.contains("provider call"), "the adapter logs its calls: {log_text}");
    seen.push(log_text);
    assert_no_key(&seen);
}
