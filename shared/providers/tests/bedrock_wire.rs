//! The Bedrock adapter (kind `bedrock`, cargo feature `aws`) through the AWS SDK against a local
//! server speaking Bedrock's REST-JSON and event-stream wire formats (`bedrock_support/`):
//! answers, streams, every error class, the SDK's retries being off, cut streams and the model
//! list. Run with `cargo nextest run -p taskexec-providers --features aws bedrock`.
#![cfg(feature = "aws")]

mod bedrock_support;

use bedrock_support::{BedrockServer, FAKE_ACCESS_KEY, FAKE_SECRET, REQUEST_ID};
use serde_json::json;
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::BenchmarkTask;

fn request(model: &str, stream: bool) -> ProviderRequest {
    let task: BenchmarkTask = serde_json::from_value(json!({
        "id": "task-7", "providerId": "b", "modelId": model, "prompt": "Say hello",
        "parameters": {
            "system": "You are terse.", "temperature": 0.5, "topP": 0.25, "maxTokens": 50,
            "stop": ["END"], "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi!"}],
            "extra": {"top_k": 5}
        }
    }))
    .unwrap();
    ProviderRequest::for_task(&task, "b", 1)
}

async fn call(server: &BedrockServer, model: &str, stream: bool) -> Result<ProviderResponse, ProviderError> {
    server.deployments().call(request(model, stream)).await
}

#[tokio::test]
async fn bedrock_converse_maps_the_request_and_reads_the_answer() {
    let server = BedrockServer::start().await;
    let answer = call(&server, "amazon.nova-pro-v1:0", false).await.unwrap();
    assert_eq!(answer.text, "Hello there.");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.cached_tokens), (12, 5, Some(3)));
    assert_eq!(answer.request_id.as_deref(), Some(REQUEST_ID));
    assert_eq!(answer.model, "amazon.nova-pro-v1:0");
    assert_eq!(answer.ttft, None);

    let sent = server.recorded();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/model/amazon.nova-pro-v1%3A0/converse");
    assert_eq!(
        sent[0].body,
        json!({
            "messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"text": "Hi!"}]},
                {"role": "user", "content": [{"text": "Say hello"}]}
            ],
            "system": [{"text": "You are terse."}],
            "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 0.25, "stopSequences": ["END"]},
            "additionalModelRequestFields": {"top_k": 5}
        })
    );
    // Signed with the credentials from the lookup; the secret itself is never sent.
    let auth = &sent[0].authorization;
    assert!(auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={FAKE_ACCESS_KEY}/")), "{auth}");
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert!(!auth.contains(FAKE_SECRET));
}

#[tokio::test]
async fn bedrock_converse_stream_reads_the_events_with_time_to_first_token() {
    let server = BedrockServer::start().await;
    let answer = call(&server, "amazon.nova-pro-v1:0", true).await.unwrap();
    assert_eq!(answer.text, "Hello.");
    assert_eq!(answer.finish_reason, "length");
    assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.cached_tokens), (9, 2, None));
    assert_eq!(answer.request_id.as_deref(), Some(REQUEST_ID));
    let ttft = answer.ttft.expect("a streamed answer has a time to first token");
    assert!(ttft <= answer.latency, "{ttft:?} > {:?}", answer.latency);
    assert_eq!(server.recorded()[0].path, "/model/amazon.nova-pro-v1%3A0/converse-stream");
}

fn assert_error(e: &ProviderError, class: ErrorClass, status: Option<u16>, code: &str) {
    assert_eq!(e.class(), class, "{e}");
    assert_eq!(e.status(), status, "{e}");
    assert_eq!(e.to_task_error().provider_code.as_deref(), Some(code), "{e}");
}

#[tokio::test]
async fn bedrock_throttling_is_a_rate_limit_sent_once() {
    let server = BedrockServer::start().await;
    let e = call(&server, "throttle", false).await.unwrap_err();
    assert_error(&e, ErrorClass::RateLimited, Some(429), "ThrottlingException");
    assert!(e.to_string().contains("Too many requests"), "{e}");
    // The SDK's own retries are off: the engine is the only retry loop.
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn bedrock_a_model_not_ready_is_transient_and_not_retried_by_the_sdk() {
    let server = BedrockServer::start().await;
    let e = call(&server, "not-ready", false).await.unwrap_err();
    assert_error(&e, ErrorClass::Transient, Some(429), "ModelNotReadyException");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn bedrock_service_unavailable_is_transient_and_sent_once() {
    let server = BedrockServer::start().await;
    let e = call(&server, "unavailable", true).await.unwrap_err();
    assert_error(&e, ErrorClass::Transient, Some(503), "ServiceUnavailableException");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn bedrock_a_validation_error_is_permanent() {
    let server = BedrockServer::start().await;
    let e = call(&server, "invalid", false).await.unwrap_err();
    assert_error(&e, ErrorClass::Permanent, Some(400), "ValidationException");
    assert!(e.to_string().contains("model identifier is invalid"), "{e}");
}

#[tokio::test]
async fn bedrock_a_stream_without_message_stop_is_transient() {
    let server = BedrockServer::start().await;
    let e = call(&server, "no-stop", true).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[tokio::test]
async fn bedrock_a_stream_cut_mid_frame_is_transient() {
    let server = BedrockServer::start().await;
    let e = call(&server, "cut", true).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
}

#[tokio::test]
async fn bedrock_an_exception_event_mid_stream_is_classified_by_its_name() {
    let server = BedrockServer::start().await;
    let e = call(&server, "stream-throttle", true).await.unwrap_err();
    assert_error(&e, ErrorClass::RateLimited, None, "ThrottlingException");
    let e = call(&server, "stream-error", true).await.unwrap_err();
    assert_error(&e, ErrorClass::Transient, None, "ModelStreamErrorException");
    assert!(e.to_string().contains("The model stream failed"), "{e}");
}

#[tokio::test]
async fn bedrock_models_lists_the_on_demand_foundation_models() {
    let server = BedrockServer::start().await;
    let deployments = server.deployments();
    let models = deployments.get("b").unwrap().models().await.unwrap();
    let ids: Vec<_> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["amazon.nova-pro-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0"]);
    assert_eq!(models[0].display_name.as_deref(), Some("Nova Pro"));
    assert_eq!(server.recorded()[0].path, "/foundation-models");
}

#[tokio::test]
async fn bedrock_an_unreachable_endpoint_is_transient() {
    // Bind then drop a listener: the port is closed, so the connection is refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let text = format!("[b]\nkind = \"bedrock\"\nbase_url = \"{base}\"\nregion = \"us-east-1\"");
    let configs = toml::from_str(&text).unwrap();
    let deployments = taskexec_providers::Deployments::from_config(&configs, |var| match var {
        "AWS_ACCESS_KEY_ID" => Some(FAKE_ACCESS_KEY.to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some(FAKE_SECRET.to_owned()),
        _ => None,
    })
    .unwrap();
    let e = deployments.call(request("amazon.nova-pro-v1:0", false)).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(!e.to_string().contains(FAKE_SECRET));
}
