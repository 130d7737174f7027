//! Azure OpenAI (kind `azure-openai`) against a local server replaying Azure's wire format:
//! both URL forms (deployment-scoped with `api-version`, and the v1 API), the `api-key` header,
//! streams, Azure's 429s and content filter, key scrubbing and model lists. Nothing here reaches
//! the internet.
//!
//! Fixture shapes follow <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/reference>
//! (chat completions with `prompt_filter_results` and `content_filter_results`, the
//! `apim-request-id` header), <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/api-version-lifecycle>
//! (the v1 API at `/openai/v1/`), <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/quotas-limits>
//! (429 bodies with code `"429"`, `retry-after`, `retry-after-ms`, `x-ratelimit-remaining-*`) and
//! <https://learn.microsoft.com/en-us/azure/ai-foundry/openai/concepts/content-filter> (400 with
//! code `content_filter` and `innererror.content_filter_result`; `finish_reason: "content_filter"`).
//! Ids and numbers are examples.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fixtures::sse_data;
use support::recording::{FAKE_KEY, RecordingServer, Reply, Seen, deployments};
use support::{assert_no_key, assert_transient, task_request};
use taskexec_core::error::ErrorClass;
use taskexec_core::provider::{LimitKind, Provider, ProviderRequest};

const VERSION: &str = "2024-10-21";

const COMPLETION: &str = r#"{
  "choices": [{
    "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}, "self_harm": {"filtered": false, "severity": "safe"},
                               "sexual": {"filtered": false, "severity": "safe"}, "violence": {"filtered": false, "severity": "safe"}},
    "finish_reason": "stop", "index": 0, "logprobs": null,
    "message": {"content": "Hello! How can I help?", "refusal": null, "role": "assistant"}
  }],
  "created": 1741569952,
  "id": "chatcmpl-AzureB9MBs8CjcvOU2jLn4n570S5q",
  "model": "gpt-4o-2024-11-20",
  "object": "chat.completion",
  "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": false, "severity": "safe"}}}],
  "system_fingerprint": "fp_b705f0c291",
  "usage": {"completion_tokens": 7, "prompt_tokens": 18, "total_tokens": 25, "prompt_tokens_details": {"cached_tokens": 0}}
}"#;

const FILTERED: &str = r#"{"choices":[{"content_filter_results":{"violence":{"filtered":true,"severity":"medium"}},"finish_reason":"content_filter","index":0,"message":{"content":"I cannot","role":"assistant"}}],"id":"chatcmpl-f","model":"gpt-4o-2024-11-20","object":"chat.completion","usage":{"completion_tokens":2,"prompt_tokens":9,"total_tokens":11}}"#;

/// A streamed answer: Azure first sends the prompt's filter results with no choices.
const CHUNKS: [&str; 5] = [
    r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}"#,
    r#"{"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"created":1741569952,"id":"chatcmpl-az1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk"}"#,
    r#"{"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"delta":{"content":"Hello"},"finish_reason":null,"index":0}],"created":1741569952,"id":"chatcmpl-az1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk"}"#,
    r#"{"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0}],"created":1741569952,"id":"chatcmpl-az1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk"}"#,
    r#"{"choices":[],"created":1741569952,"id":"chatcmpl-az1","model":"gpt-4o-2024-11-20","object":"chat.completion.chunk","usage":{"completion_tokens":1,"prompt_tokens":9,"total_tokens":10}}"#,
];

const RATE_LIMIT: &str = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}}"#;

const CONTENT_FILTER: &str = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":true,"severity":"medium"}}}}}"#;

const MODELS: &str = r#"{"data":[{"status":"succeeded","capabilities":{"chat_completion":true},"lifecycle_status":"generally-available","id":"gpt-4o-2024-11-20","created_at":1732060800,"object":"model"}],"object":"list"}"#;

fn route(seen: &Seen) -> Reply {
    if seen.path.ends_with("/models") {
        return Reply::json(200, MODELS);
    }
    match seen.scenario() {
        "ok" => Reply::json(200, COMPLETION).with("apim-request-id", "5b7b9d3c-0c1e-4a52-9f55-2a1d8b8f0e11"),
        "stream" => Reply::sse(sse_data(&CHUNKS, true)),
        "truncated" => Reply::sse(sse_data(&CHUNKS[..3], false)),
        // Cut after the finish_reason, before the usage chunk and `[DONE]`.
        "before_usage" => Reply::sse(sse_data(&CHUNKS[..4], false)),
        "usage_without_done" => Reply::sse(sse_data(&CHUNKS, false)),
        "filtered" => Reply::json(200, FILTERED),
        "malformed" => Reply::json(200, r#"{"choices":[{"index":0,"#),
        "rate_limit" => Reply::json(429, RATE_LIMIT)
            .with("retry-after", "6")
            .with("retry-after-ms", "5800")
            .with("x-ratelimit-remaining-requests", "119")
            .with("x-ratelimit-remaining-tokens", "0"),
        "content_filter" => Reply::json(400, CONTENT_FILTER),
        // A careless proxy echoing the key back.
        "unauthorized" => Reply::json(
            401,
            json!({"error": {"code": "401", "message": format!("Access denied due to invalid subscription key {}.", seen.header("api-key"))}})
                .to_string(),
        ),
        _ => Reply::json(404, r#"{"error":{"code":"404","message":"Resource not found"}}"#),
    }
}

/// An `azure-openai` deployment at `{server}/{scenario}`; `api_version` selects the URL form.
fn azure(server: &RecordingServer, scenario: &str, api_version: Option<&str>) -> taskexec_providers::Deployments {
    let version = api_version.map(|v| format!("\napi_version = \"{v}\"")).unwrap_or_default();
    deployments(&format!(
        "kind = \"azure-openai\"\nbase_url = \"{}/{scenario}\"\napi_key_env = \"FAKE_KEY_VAR\"{version}",
        server.base
    ))
}

fn request(model: &str, stream: bool) -> ProviderRequest {
    task_request(
        json!({
            "id": "task-az", "providerId": "d", "modelId": model, "prompt": "Say hello",
            "parameters": {"system": "You are terse.", "temperature": 0.2, "maxTokens": 50, "stop": ["END"],
                           "seed": 3, "stream": stream}
        }),
        1,
    )
}

async fn fail(server: &RecordingServer, scenario: &str) -> taskexec_core::error::ProviderError {
    azure(server, scenario, Some(VERSION)).call(request("gpt-4o-prod", false)).await.unwrap_err()
}

#[tokio::test]
async fn deployment_scoped_success_maps_url_headers_and_body() {
    let server = RecordingServer::start(route).await;
    let answer = azure(&server, "ok", Some(VERSION)).call(request("gpt-4o prod", false)).await.unwrap();
    assert_eq!((answer.text.as_str(), answer.finish_reason.as_str()), ("Hello! How can I help?", "stop"));
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (18, 7));
    assert_eq!(answer.model, "gpt-4o-2024-11-20");
    assert_eq!(answer.request_id.as_deref(), Some("5b7b9d3c-0c1e-4a52-9f55-2a1d8b8f0e11"));

    let seen = server.last();
    assert_eq!(seen.path, "/ok/openai/deployments/gpt-4o%20prod/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), FAKE_KEY);
    assert_eq!(seen.header("authorization"), "");
    assert_eq!(seen.header("x-taskexec-task-id"), "task-az");
    assert_eq!(
        seen.body,
        json!({
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}],
            "temperature": 0.2, "max_completion_tokens": 50, "stop": ["END"], "seed": 3
        })
    );
}

#[tokio::test]
async fn the_v1_api_puts_the_deployment_in_the_body() {
    let server = RecordingServer::start(route).await;
    azure(&server, "ok", None).call(request("gpt-4o-prod", false)).await.unwrap();
    let seen = server.last();
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/ok/openai/v1/chat/completions", None));
    assert_eq!(seen.body["model"], json!("gpt-4o-prod"));
    assert_eq!(seen.header("api-key"), FAKE_KEY);
}

#[tokio::test]
async fn streamed_success_skips_the_prompt_filter_chunk() {
    let server = RecordingServer::start(route).await;
    let answer = azure(&server, "stream", Some(VERSION)).call(request("gpt-4o-prod", true)).await.unwrap();
    assert_eq!((answer.text.as_str(), answer.finish_reason.as_str()), ("Hello", "stop"));
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (9, 1));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency);
    assert_eq!(server.last().body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn a_filtered_answer_finishes_with_content_filter() {
    let server = RecordingServer::start(route).await;
    let answer = azure(&server, "filtered", Some(VERSION)).call(request("gpt-4o-prod", false)).await.unwrap();
    assert_eq!((answer.text.as_str(), answer.finish_reason.as_str()), ("I cannot", "content_filter"));
}

#[tokio::test]
async fn rate_limit_prefers_retry_after_ms_and_keeps_the_limits() {
    let server = RecordingServer::start(route).await;
    let e = fail(&server, "rate_limit").await;
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_millis(5800)));
    let t = e.to_task_error();
    assert_eq!((t.provider_status, t.provider_code.as_deref()), (Some(429), Some("429")));
    assert!(t.message.contains("exceeded token rate limit"));
    assert_eq!(e.limits().get(LimitKind::Tokens).and_then(|l| l.remaining), Some(0));
    assert_eq!(e.limits().get(LimitKind::Requests).and_then(|l| l.remaining), Some(119));
}

#[tokio::test]
async fn a_blocked_prompt_is_permanent_content_filter() {
    let server = RecordingServer::start(route).await;
    let e = fail(&server, "content_filter").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(400)));
    let t = e.to_task_error();
    assert_eq!(t.provider_code.as_deref(), Some("content_filter"));
    assert!(t.message.contains("content management policy"));
}

#[tokio::test]
async fn an_echoed_key_is_scrubbed() {
    let server = RecordingServer::start(route).await;
    let e = fail(&server, "unauthorized").await;
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(401)));
    assert!(e.to_string().contains("invalid subscription key"), "{e}");
    assert_no_key(&[e.to_string(), format!("{e:?}")]);
}

#[tokio::test]
async fn malformed_and_truncated_answers_are_transient() {
    let server = RecordingServer::start(route).await;
    assert_eq!(fail(&server, "malformed").await.class(), ErrorClass::Transient);
    let e = azure(&server, "truncated", Some(VERSION)).call(request("gpt-4o-prod", true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
}

#[tokio::test]
async fn models_are_listed_in_both_url_forms() {
    let server = RecordingServer::start(route).await;
    let scoped = azure(&server, "m", Some(VERSION)).get("d").unwrap().models().await.unwrap();
    assert_eq!(scoped[0].id, "gpt-4o-2024-11-20");
    let seen = server.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/m/openai/models"));
    assert_eq!((seen.query.as_deref(), seen.header("api-key")), (Some("api-version=2024-10-21"), FAKE_KEY.to_owned()));
    let v1 = azure(&server, "m", None).get("d").unwrap().models().await.unwrap();
    assert_eq!(v1.len(), 1);
    let seen = server.last();
    assert_eq!((seen.path.as_str(), seen.query.as_deref()), ("/m/openai/v1/models", None));
}

#[tokio::test]
async fn a_stream_cut_before_its_usage_is_truncated() {
    let server = RecordingServer::start(route).await;
    let e = azure(&server, "before_usage", Some(VERSION)).call(request("gpt-4o-prod", true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
    // The usage arrived: a missing `[DONE]` alone loses nothing.
    let answer = azure(&server, "usage_without_done", Some(VERSION)).call(request("gpt-4o-prod", true)).await.unwrap();
    assert_eq!((answer.text.as_str(), answer.usage.output_tokens), ("Hello", 1));
}
