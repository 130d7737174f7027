//! A local server speaking Bedrock's REST-JSON wire format, for `bedrock_wire.rs`: Converse,
//! ConverseStream (AWS event-stream frames) and the foundation-model list. The scenario is the
//! model id of the call. Nothing here reaches the internet.
//!
//! References:
//! - Converse: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html>
//! - ConverseStream: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html>
//!   and its events <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html>
//! - Event-stream framing: <https://docs.aws.amazon.com/AmazonS3/latest/API/RESTSelectObjectAppendix.html>
//! - restJson1 errors (`X-Amzn-Errortype`, a `:`-suffix is ignored):
//!   <https://smithy.io/2.0/aws/protocols/aws-restjson1-protocol.html#operation-error-serialization>
//! - ListFoundationModels: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_ListFoundationModels.html>

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::net::TcpListener;

/// The fake access key id the deployments sign with (never a real one).
pub const FAKE_ACCESS_KEY: &str = "AKIDTASKEXECFAKE";
/// The fake secret: it must never appear anywhere (it only signs).
pub const FAKE_SECRET: &str = "fake-secret-0123456789abcdefghijklmnopqrstuv";
/// The request id every response carries.
pub const REQUEST_ID: &str = "5d1c8f4e-0000-4000-8000-bedrock00001";

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path as sent (percent-encoded).
    pub path: String,
    /// The JSON body (`Null` for a GET).
    pub body: Value,
    /// The `Authorization` header.
    pub authorization: String,
}

#[derive(Clone, Default)]
struct Shared {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    hits: Arc<AtomicUsize>,
}

/// The running server.
pub struct BedrockServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shared: Shared,
}

impl BedrockServer {
    /// Start on 127.0.0.1:0.
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route("/model/{model}/{operation}", post(call))
            .route("/foundation-models", get(foundation_models))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, shared }
    }

    /// What the server received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Deployments with one Bedrock deployment, `b`, at this server, with fake static
    /// credentials from the environment lookup (the process environment is left alone).
    pub fn deployments(&self) -> Deployments {
        let text = format!(
            "[b]\nkind = \"bedrock\"\nbase_url = \"{}\"\nregion = \"us-east-1\"\nconnect_timeout_ms = 2000",
            self.base
        );
        let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
        Deployments::from_config(&configs, |var| match var {
            "AWS_ACCESS_KEY_ID" => Some(FAKE_ACCESS_KEY.to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some(FAKE_SECRET.to_owned()),
            _ => None,
        })
        .unwrap()
    }
}

fn record(shared: &Shared, uri: &Uri, headers: &HeaderMap, body: &[u8]) {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    shared.recorded.lock().unwrap().push(Recorded { path: uri.path().to_owned(), body, authorization });
}

/// An error response as restJson1 sends it: the type in `X-Amzn-Errortype`, a `message` body.
fn exception(status: u16, error_type: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("x-amzn-errortype", error_type), ("x-amzn-requestid", REQUEST_ID), ("content-type", "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// The error scenarios, by model id; `None` for a model that answers.
fn error_scenario(model: &str) -> Option<Response> {
    Some(match model {
        // The suffix after `:` is the error's namespace, which clients must ignore.
        "throttle" => exception(
            429,
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "Too many requests, please wait before trying again.",
        ),
        "not-ready" => exception(429, "ModelNotReadyException", "Model is not ready for inference."),
        "invalid" => exception(400, "ValidationException", "The provided model identifier is invalid."),
        "unavailable" => exception(503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
        _ => return None,
    })
}

/// Converse or ConverseStream (the last path segment), answering per model id.
async fn call(
    State(shared): State<Shared>,
    Path((model, operation)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if operation != "converse" && operation != "converse-stream" {
        return StatusCode::NOT_FOUND.into_response();
    }
    record(&shared, &uri, &headers, &body);
    if let Some(error) = error_scenario(&model) {
        return error;
    }
    if operation == "converse-stream" {
        let chunks = stream_frames(&model).into_iter().map(|f| Ok::<_, Infallible>(Bytes::from(f)));
        let body = Body::from_stream(futures::stream::iter(chunks));
        return ([("x-amzn-requestid", REQUEST_ID), ("content-type", "application/vnd.amazon.eventstream")], body)
            .into_response();
    }
    let answer = json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17, "cacheReadInputTokens": 3},
        "metrics": {"latencyMs": 120}
    });
    ([("x-amzn-requestid", REQUEST_ID), ("content-type", "application/json")], answer.to_string()).into_response()
}

/// One event-stream frame.
fn frame(headers: Vec<(&'static str, &str)>, payload: &Value) -> Vec<u8> {
    let headers =
        headers.into_iter().map(|(name, value)| Header::new(name, HeaderValue::String(value.to_owned().into())));
    let message = Message::new_from_parts(headers.collect(), payload.to_string().into_bytes());
    let mut out = Vec::new();
    write_message_to(&message, &mut out).unwrap();
    out
}

fn event(event_type: &'static str, payload: Value) -> Vec<u8> {
    frame(
        vec![(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        &payload,
    )
}

fn stream_exception(exception_type: &'static str, message: &str) -> Vec<u8> {
    let headers = vec![
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ];
    frame(headers, &json!({ "message": message }))
}

/// The frames of a stream scenario.
fn stream_frames(model: &str) -> Vec<Vec<u8>> {
    let mut frames = vec![
        event("messageStart", json!({"role": "assistant"})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
        event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo."}})),
    ];
    match model {
        "no-stop" => {}
        "cut" => {
            let next = event("contentBlockStop", json!({"contentBlockIndex": 0}));
            frames.push(next[..next.len() / 2].to_vec());
        }
        "stream-throttle" => frames.push(stream_exception("throttlingException", "Too many tokens, please wait.")),
        "stream-error" => frames.push(stream_exception("modelStreamErrorException", "The model stream failed.")),
        _ => frames.extend([
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event("messageStop", json!({"stopReason": "max_tokens"})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11}, "metrics": {"latencyMs": 80}}),
            ),
        ]),
    }
    frames
}

fn summary(id: &str, name: &str, inference: &[&str]) -> Value {
    json!({
        "modelArn": format!("arn:aws:bedrock:us-east-1::foundation-model/{id}"),
        "modelId": id, "modelName": name, "providerName": "Test",
        "inputModalities": ["TEXT"], "outputModalities": ["TEXT"], "responseStreamingSupported": true,
        "customizationsSupported": [], "inferenceTypesSupported": inference,
        "modelLifecycle": {"status": "ACTIVE"}
    })
}

async fn foundation_models(State(shared): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    record(&shared, &uri, &headers, b"");
    let models = json!({"modelSummaries": [
        summary("amazon.nova-pro-v1:0", "Nova Pro", &["ON_DEMAND"]),
        summary("anthropic.claude-3-opus-20240229-v1:0", "Claude 3 Opus", &["PROVISIONED"]),
        summary("anthropic.claude-3-5-sonnet-20240620-v1:0", "Claude 3.5 Sonnet", &["ON_DEMAND", "PROVISIONED"]),
    ]});
    ([("x-amzn-requestid", REQUEST_ID), ("content-type", "application/json")], models.to_string()).into_response()
}
