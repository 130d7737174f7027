//! A local server speaking Anthropic's wire format (see `fixtures.rs`), one scenario per path
//! prefix (`{base}/{scenario}/v1/messages`, `{base}/{scenario}/v1/models`), recording what it
//! receives; and a log capture for the redaction test.

#![allow(dead_code)] // each test uses a different part

pub mod fixtures;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::net::TcpListener;

use crate::support::FAKE_KEY;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub scenario: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// The running server.
pub struct AnthropicServer {
    pub base: String,
    recorded: Log,
}

impl AnthropicServer {
    /// Start on 127.0.0.1:0.
    pub async fn start() -> Self {
        let recorded = Log::default();
        let app = Router::new()
            .route("/{scenario}/v1/messages", post(messages))
            .route("/{scenario}/v1/models", get(models))
            .with_state(recorded.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, recorded }
    }

    /// What the server received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// Deployments with one Anthropic deployment, `d`, pointed at `scenario`, with [`FAKE_KEY`].
    pub fn deployments(&self, scenario: &str) -> Deployments {
        anthropic_at(&format!("{}/{scenario}", self.base))
    }
}

/// Deployments with one Anthropic deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn anthropic_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"anthropic\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_ANTHROPIC_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_ANTHROPIC_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

/// Response headers of a scenario.
type Headers = &'static [(&'static str, &'static str)];

/// The error scenarios: name, status, `error.type`, extra headers.
pub const ERRORS: [(&str, u16, &str, Headers); 10] = [
    ("rate_limit", 429, "rate_limit_error", &[("retry-after", "12")]),
    ("overloaded", 529, "overloaded_error", &[]),
    ("overloaded_hinted", 529, "overloaded_error", &[("retry-after", "5")]),
    ("api_error", 500, "api_error", &[]),
    ("timeout", 504, "timeout_error", &[]),
    ("invalid_request", 400, "invalid_request_error", &[]),
    ("billing", 402, "billing_error", &[]),
    ("permission", 403, "permission_error", &[]),
    ("not_found", 404, "not_found_error", &[]),
    ("too_large", 413, "request_too_large", &[]),
];

async fn messages(State(log): State<Log>, Path(scenario): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    log.lock().unwrap().push(Recorded { scenario: scenario.clone(), query: None, headers, body });
    let sse = [("content-type", "text/event-stream")];
    match scenario.as_str() {
        "ok" => {
            let mut headers = fixtures::RATE_LIMIT_HEADERS.to_vec();
            headers.push(("content-type", "application/json"));
            respond(200, &headers, fixtures::MESSAGE)
        }
        "stream" => respond(200, &sse, &fixtures::stream_body()),
        "truncated_stream" => respond(200, &sse, &fixtures::truncated_stream_body()),
        "error_event" => respond(200, &sse, &fixtures::error_event_stream_body()),
        "malformed" => respond(200, &[], r#"{"id":"msg_1","type":"message","content":[{"type":"te"#),
        // A careless server echoing the whole key (Anthropic itself does not).
        "unauthorized" => {
            respond(401, &[], &fixtures::error_body("authentication_error", &format!("invalid x-api-key: {key}")))
        }
        "rate_limit_with_limits" => {
            let mut headers = fixtures::RATE_LIMIT_HEADERS.to_vec();
            headers.push(("retry-after", "12"));
            respond(
                429,
                &headers,
                &fixtures::error_body(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
            )
        }
        other => match ERRORS.iter().find(|(name, ..)| *name == other) {
            Some((_, status, kind, headers)) => {
                respond(*status, headers, &fixtures::error_body(kind, &format!("{kind} happened")))
            }
            None => respond(404, &[], &fixtures::error_body("not_found_error", "Unknown scenario")),
        },
    }
}

async fn models(
    State(log): State<Log>,
    Path(scenario): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let after_first = query.as_deref().is_some_and(|q| q.contains("after_id=claude-opus-4-1-20250805"));
    log.lock().unwrap().push(Recorded { scenario, query, headers, body: serde_json::Value::Null });
    respond(200, &[], if after_first { fixtures::MODELS_PAGE_2 } else { fixtures::MODELS_PAGE_1 })
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        builder = builder.header("content-type", "application/json");
    }
    builder = builder.header("request-id", fixtures::REQUEST_ID);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}
