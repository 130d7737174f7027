//! OpenAI's Responses API, and the routing of kind `openai` between it and chat completions,
//! against a local server replaying the documented wire format. Nothing here reaches the
//! internet.
//!
//! Fixture shapes follow <https://platform.openai.com/docs/api-reference/responses/create> (the
//! `response` object: `status`, `output` items of type `message`/`reasoning`,
//! `incomplete_details.reason`, `usage.input_tokens_details.cached_tokens`),
//! <https://platform.openai.com/docs/api-reference/responses-streaming> (named events
//! `response.created`, `response.output_text.delta`, `response.completed`, `error`) and
//! <https://platform.openai.com/docs/guides/error-codes> (error bodies shared with chat
//! completions). Ids and numbers are examples.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use support::fixtures::{STREAM_CHUNKS, error_body, sse_data};
use support::recording::{FAKE_KEY, RecordingServer, Reply, Seen, deployments};
use support::{assert_no_key, assert_transient, task_request};

use taskexec_core::error::ErrorClass;
use taskexec_core::provider::{Provider, ProviderRequest};
use taskexec_core::task::BenchmarkTask;
use taskexec_providers::check_parameters;
use taskexec_providers::config::DeploymentConfig;

const COMPLETED: &str = r#"{
  "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
  "object": "response",
  "created_at": 1741476542,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": "You are terse.",
  "max_output_tokens": 50,
  "model": "gpt-4o-2024-08-06",
  "output": [
    {"type": "reasoning", "id": "rs_1", "summary": []},
    {
      "type": "message",
      "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
      "status": "completed",
      "role": "assistant",
      "content": [{"type": "output_text", "text": "Hello! How can I help?", "annotations": []}]
    }
  ],
  "parallel_tool_calls": true,
  "store": false,
  "temperature": 0.2,
  "text": {"format": {"type": "text"}},
  "top_p": 0.9,
  "usage": {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 8},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 123
  }
}"#;

const INCOMPLETE: &str = r#"{
  "id": "resp_2", "object": "response", "created_at": 1741476542, "status": "incomplete",
  "incomplete_details": {"reason": "max_output_tokens"}, "model": "o3-pro-2025-06-10",
  "output": [{"type": "reasoning", "id": "rs_2", "summary": []},
             {"type": "message", "id": "msg_2", "status": "incomplete", "role": "assistant",
              "content": [{"type": "output_text", "text": "The answer is", "annotations": []}]}],
  "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 50,
            "output_tokens_details": {"reasoning_tokens": 40}, "total_tokens": 60}
}"#;

/// The events of a streamed response, as `(event name, data)`.
const EVENTS: [(&str, &str); 6] = [
    (
        "response.created",
        r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_s1","object":"response","status":"in_progress","model":"gpt-4o-2024-08-06","output":[],"usage":null}}"#,
    ),
    (
        "response.output_item.added",
        r#"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_s1","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
    ),
    (
        "response.output_text.delta",
        r#"{"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_s1","output_index":0,"content_index":0,"delta":"Hello"}"#,
    ),
    (
        "response.output_text.delta",
        r#"{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_s1","output_index":0,"content_index":0,"delta":" there!"}"#,
    ),
    (
        "response.output_text.done",
        r#"{"type":"response.output_text.done","sequence_number":4,"item_id":"msg_s1","output_index":0,"content_index":0,"text":"Hello there!"}"#,
    ),
    (
        "response.completed",
        r#"{"type":"response.completed","sequence_number":5,"response":{"id":"resp_s1","object":"response","status":"completed","model":"gpt-4o-2024-08-06","output":[{"type":"message","id":"msg_s1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello there!","annotations":[]}]}],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"total_tokens":12}}}"#,
    ),
];

fn sse(events: &[(&str, &str)]) -> String {
    events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect()
}

const CHAT_COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"from chat"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;

fn route(seen: &Seen) -> Reply {
    if seen.path.ends_with("/chat/completions") {
        return match seen.scenario() {
            // A chat stream cut after the finish_reason, before the usage chunk and `[DONE]`.
            "before_usage" => Reply::sse(sse_data(&STREAM_CHUNKS[..5], false)),
            _ => Reply::json(200, CHAT_COMPLETION),
        };
    }
    if seen.path.ends_with("/models") {
        return Reply::json(
            200,
            r#"{"object":"list","data":[{"id":"o3-pro","object":"model","created":1,"owned_by":"system"}]}"#,
        );
    }
    match seen.scenario() {
        "ok" => Reply::json(200, COMPLETED).with("x-request-id", "req_resp_1"),
        "stream" => Reply::sse(sse(&EVENTS)),
        "truncated" => Reply::sse(sse(&EVENTS[..4])),
        "incomplete" => Reply::json(200, INCOMPLETE),
        "incomplete_stream" => Reply::sse(sse(&[
            EVENTS[0],
            EVENTS[2],
            (
                "response.incomplete",
                &json!({"type": "response.incomplete", "sequence_number": 3,
                "response": serde_json::from_str::<serde_json::Value>(INCOMPLETE).unwrap()})
                .to_string(),
            ),
        ])),
        "failed" => Reply::json(
            200,
            r#"{"id":"resp_f","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"output":[]}"#,
        ),
        "error_event" => Reply::sse(sse(&[
            EVENTS[0],
            (
                "error",
                r#"{"type":"error","sequence_number":1,"code":"server_error","message":"The server had an error while processing your request.","param":null}"#,
            ),
        ])),
        "malformed" => Reply::json(200, r#"{"id":"resp_m","object":"response","status":"#),
        "rate_limit" => Reply::json(
            429,
            error_body(
                "Rate limit reached for o3-pro on tokens per min (TPM).",
                "tokens",
                None,
                Some("rate_limit_exceeded"),
            ),
        )
        .with("retry-after-ms", "1500")
        .with("retry-after", "2")
        .with("x-ratelimit-remaining-requests", "0"),
        "unauthorized" => {
            let key = seen.header("authorization").trim_start_matches("Bearer ").to_owned();
            let message = format!("Incorrect API key provided: {key}.");
            Reply::json(401, error_body(&message, "invalid_request_error", None, Some("invalid_api_key")))
        }
        _ => Reply::json(404, error_body("Unknown scenario", "invalid_request_error", None, None)),
    }
}

/// A deployment of kind `openai` at `{server}/{scenario}`, with `api`.
fn openai(server: &RecordingServer, scenario: &str, api: &str) -> taskexec_providers::Deployments {
    deployments(&format!(
        "kind = \"openai\"\nbase_url = \"{}/{scenario}/v1\"\napi_key_env = \"FAKE_KEY_VAR\"\napi = \"{api}\"",
        server.base
    ))
}

fn request(model: &str, stream: bool) -> ProviderRequest {
    task_request(
        json!({
            "id": "task-7", "providerId": "d", "modelId": model, "prompt": "Say hello",
            "parameters": {
                "system": "You are terse.", "temperature": 0.2, "topP": 0.9, "maxTokens": 50,
                "responseFormat": {"type": "json_schema", "json_schema": {"name": "greeting", "strict": true,
                    "schema": {"type": "object", "properties": {"text": {"type": "string"}}}}},
                "stream": stream, "extra": {"reasoning": {"effort": "low"}}
            }
        }),
        2,
    )
}

/// A request an o3-pro accepts: no sampling parameters.
fn bare(model: &str, stream: bool) -> ProviderRequest {
    let mut r = request(model, stream);
    (r.temperature, r.top_p) = (None, None);
    r
}

#[tokio::test]
async fn success_maps_the_request_and_reads_the_answer() {
    let server = RecordingServer::start(route).await;
    let answer = openai(&server, "ok", "responses").call(request("gpt-4o", false)).await.unwrap();
    assert_eq!(answer.text, "Hello! How can I help?");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.cached_tokens), (36, 87, Some(8)));
    assert_eq!(answer.model, "gpt-4o-2024-08-06");
    assert_eq!(answer.request_id.as_deref(), Some("req_resp_1"));
    assert!(answer.ttft.is_none());

    let seen = server.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", "/ok/v1/responses"));
    assert_eq!(seen.header("authorization"), format!("Bearer {FAKE_KEY}"));
    assert_eq!(seen.header("x-taskexec-task-id"), "task-7");
    assert_eq!(seen.header("x-taskexec-attempt"), "2");
    assert_eq!(
        seen.body,
        json!({
            "model": "gpt-4o",
            "instructions": "You are terse.",
            "input": [{"role": "user", "content": "Say hello"}],
            "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "text": {"format": {"type": "json_schema", "name": "greeting", "strict": true,
                "schema": {"type": "object", "properties": {"text": {"type": "string"}}}}},
            "store": false,
            "reasoning": {"effort": "low"}
        })
    );
}

#[tokio::test]
async fn streamed_success_reads_deltas_usage_and_ttft() {
    let server = RecordingServer::start(route).await;
    let answer = openai(&server, "stream", "responses").call(request("gpt-4o", true)).await.unwrap();
    assert_eq!(answer.text, "Hello there!");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (9, 3));
    assert_eq!(answer.request_id.as_deref(), Some("resp_s1"));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency);
    assert_eq!(server.last().body["stream"], json!(true));
}

#[tokio::test]
async fn incomplete_for_max_output_tokens_is_length() {
    let server = RecordingServer::start(route).await;
    let whole = openai(&server, "incomplete", "auto").call(bare("o3-pro", false)).await.unwrap();
    assert_eq!((whole.text.as_str(), whole.finish_reason.as_str()), ("The answer is", "length"));
    assert_eq!(whole.usage.output_tokens, 50);
    let streamed = openai(&server, "incomplete_stream", "auto").call(bare("o3-pro", true)).await.unwrap();
    assert_eq!((streamed.text.as_str(), streamed.finish_reason.as_str()), ("Hello", "length"));
}

#[tokio::test]
async fn failed_responses_and_error_events_are_transient_with_their_code() {
    let server = RecordingServer::start(route).await;
    for (scenario, stream) in [("failed", false), ("error_event", true)] {
        let e = openai(&server, scenario, "auto").call(bare("o3-pro", stream)).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient, "{scenario}");
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("server_error"), "{scenario}");
    }
}

#[tokio::test]
async fn malformed_and_truncated_answers_are_transient() {
    let server = RecordingServer::start(route).await;
    let e = openai(&server, "malformed", "auto").call(bare("o3-pro", false)).await.unwrap_err();
    assert_transient(&e, "malformed");
    let e = openai(&server, "truncated", "auto").call(bare("o3-pro", true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
}

#[tokio::test]
async fn rate_limit_prefers_retry_after_ms_and_keeps_the_limits() {
    let server = RecordingServer::start(route).await;
    let e = openai(&server, "rate_limit", "auto").call(bare("o3-pro", false)).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
    assert_eq!(e.to_task_error().provider_code.as_deref(), Some("rate_limit_exceeded"));
    let requests = e.limits().get(taskexec_core::provider::LimitKind::Requests).unwrap();
    assert_eq!(requests.remaining, Some(0));
}

#[tokio::test]
async fn an_echoed_key_is_scrubbed() {
    let server = RecordingServer::start(route).await;
    let e = openai(&server, "unauthorized", "auto").call(bare("o3-pro", false)).await.unwrap_err();
    assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(401)));
    assert_no_key(&[e.to_string(), format!("{e:?}")]);
}

#[tokio::test]
async fn kind_openai_routes_per_model_and_api() {
    let server = RecordingServer::start(route).await;
    let auto = openai(&server, "ok", "auto");
    auto.call(bare("o3-pro", false)).await.unwrap();
    let responses_peer = server.last().peer;
    assert_eq!(server.last().path, "/ok/v1/responses");
    let chat = auto.call(request("gpt-4o", false)).await.unwrap();
    assert_eq!((server.last().path.as_str(), chat.text.as_str()), ("/ok/v1/chat/completions", "from chat"));
    assert_eq!(server.last().peer, responses_peer, "both APIs share one connection pool");
    openai(&server, "ok", "responses").call(request("gpt-4o", false)).await.unwrap();
    assert_eq!(server.last().path, "/ok/v1/responses");
    openai(&server, "ok", "chat").call(bare("o3-pro", false)).await.unwrap();
    assert_eq!(server.last().path, "/ok/v1/chat/completions");
    let models = auto.get("d").unwrap().models().await.unwrap();
    assert_eq!((models[0].id.as_str(), server.last().path.as_str()), ("o3-pro", "/ok/v1/models"));
}

#[tokio::test]
async fn stop_and_seed_never_reach_the_responses_api() {
    let server = RecordingServer::start(route).await;
    // Responses-only models refuse them up front …
    let mut r = bare("o3-pro", false);
    r.seed = Some(7);
    let e = openai(&server, "ok", "auto").call(r).await.unwrap_err();
    assert_eq!(
        (e.class(), e.to_task_error().provider_code.as_deref()),
        (ErrorClass::Permanent, Some("unsupported_parameter"))
    );
    // … and so does a deployment forcing the Responses API, before anything is sent.
    let mut r = request("gpt-4o", false);
    r.stop = vec!["END".into()];
    let e = openai(&server, "ok", "responses").call(r).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(e.to_string().contains("stop"), "{e}");
    assert!(server.recorded().is_empty());
}

#[test]
fn check_parameters_rejects_stop_and_seed_on_a_responses_deployment() {
    let task: BenchmarkTask = serde_json::from_value(json!({
        "id": "t", "providerId": "d", "modelId": "gpt-4o", "prompt": "p",
        "parameters": {"stop": ["END"], "seed": 3}
    }))
    .unwrap();
    let fields = |api: &str| {
        let configs: BTreeMap<String, DeploymentConfig> =
            toml::from_str(&format!("[d]\nkind = \"openai\"\napi = \"{api}\"")).unwrap();
        check_parameters(&configs, &task).into_iter().map(|e| (e.field, e.message)).collect::<Vec<_>>()
    };
    let rejected = fields("responses");
    assert_eq!(rejected.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["parameters.stop", "parameters.seed"]);
    assert!(rejected[0].1.contains("`stop` is not accepted by model `gpt-4o`"), "{}", rejected[0].1);
    // The same model on chat completions takes both.
    assert!(fields("auto").is_empty());
    assert!(fields("chat").is_empty());
}

#[tokio::test]
async fn drop_leaves_stop_and_seed_out_of_a_responses_call() {
    let server = RecordingServer::start(route).await;
    let d = deployments(&format!(
        "kind = \"openai\"\nbase_url = \"{}/ok/v1\"\napi_key_env = \"FAKE_KEY_VAR\"\napi = \"responses\"\nunsupported_params = \"drop\"",
        server.base
    ));
    let mut r = request("gpt-4o", false);
    r.stop = vec!["END".into()];
    r.seed = Some(3);
    let answer = d.call(r).await.unwrap();
    assert_eq!(answer.text, "Hello! How can I help?");
    let seen = server.last();
    assert_eq!(seen.path, "/ok/v1/responses");
    assert!(seen.body.get("stop").is_none() && seen.body.get("seed").is_none(), "{}", seen.body);
    assert_eq!(seen.body["temperature"], json!(0.2));
}

#[tokio::test]
async fn a_chat_stream_cut_before_its_usage_is_truncated_for_openai_only() {
    let server = RecordingServer::start(route).await;
    let e = openai(&server, "before_usage", "chat").call(request("gpt-4o", true)).await.unwrap_err();
    assert_transient(&e, "truncated stream");
    assert_eq!(server.last().path, "/before_usage/v1/chat/completions");
    // Some compatible servers send neither usage nor `[DONE]`: the answer stands.
    let compatible = deployments(&format!(
        "kind = \"openai-compatible\"\nbase_url = \"{}/before_usage/v1\"\napi_key_env = \"FAKE_KEY_VAR\"",
        server.base
    ));
    let answer = compatible.call(request("gpt-4o", true)).await.unwrap();
    assert_eq!(
        (answer.text.as_str(), answer.finish_reason.as_str(), answer.usage.output_tokens),
        ("Hello there!", "stop", 0)
    );
}
