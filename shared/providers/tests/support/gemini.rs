//! A local server speaking the Gemini API's wire format (see `gemini_fixtures.rs`), one scenario
//! per path prefix (`{base}/{scenario}/v1beta/models/{model}:{method}`), recording what it
//! receives; the model list is served at `{base}/{scenario}/v1beta/models`.

#![allow(dead_code)]

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

use crate::fixtures;
use crate::support::FAKE_KEY;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub scenario: String,
    /// The last path segment (`gemini-2.5-flash:generateContent`), or `models` for the list.
    pub call: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// The running server.
pub struct GeminiServer {
    pub base: String,
    recorded: Log,
}

impl GeminiServer {
    /// Start on 127.0.0.1:0.
    pub async fn start() -> Self {
        let recorded: Log = Arc::default();
        let app = Router::new()
            .route("/{scenario}/v1beta/models/{call}", post(generate))
            .route("/{scenario}/v1beta/models", get(list))
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

    /// Deployments with one Gemini deployment, `d`, pointed at `scenario`, with [`FAKE_KEY`].
    pub fn deployments(&self, scenario: &str) -> Deployments {
        deployments_at(&format!("{}/{scenario}", self.base))
    }
}

/// Deployments with one Gemini deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn deployments_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"gemini\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_GEMINI_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_GEMINI_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

async fn generate(
    State(log): State<Log>,
    Path((scenario, call)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    log.lock().unwrap().push(Recorded { scenario: scenario.clone(), call, query, headers, body });
    let sse = [("content-type", "text/event-stream")];
    match scenario.as_str() {
        "ok" => respond(200, &[], fixtures::COMPLETION),
        "stream" => respond(200, &sse, &fixtures::stream_body()),
        "truncated_stream" => respond(200, &sse, &fixtures::truncated_stream_body()),
        "malformed" => respond(200, &[], r#"{"candidates": [{"content": {"parts": [{"text": "Hel"#),
        "blocked" => respond(200, &[], fixtures::PROMPT_BLOCKED),
        "rate_limit" => respond(429, &[], &fixtures::rate_limit_body()),
        "rate_limit_array" => respond(429, &[("retry-after", "5")], &fixtures::rate_limit_array_body()),
        "invalid_argument" => respond(400, &[], &fixtures::invalid_argument_body()),
        "failed_precondition" => respond(400, &[], &fixtures::failed_precondition_body()),
        "permission_denied" => respond(403, &[], &fixtures::permission_denied_body()),
        "unauthenticated" => respond(401, &[], &fixtures::unauthenticated_body(&key)),
        "internal" => respond(500, &[], &fixtures::internal_body()),
        "unavailable" => respond(503, &[("retry-after", "3")], &fixtures::unavailable_body()),
        "deadline" => respond(504, &[], &fixtures::deadline_body()),
        _ => respond(404, &[], &fixtures::not_found_body()),
    }
}

async fn list(
    State(log): State<Log>,
    Path(scenario): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let record =
        Recorded { scenario, call: "models".into(), query: query.clone(), headers, body: serde_json::Value::Null };
    log.lock().unwrap().push(record);
    let token = query.as_deref().unwrap_or_default().split('&').find_map(|p| p.strip_prefix("pageToken="));
    match token {
        None => respond(200, &[], fixtures::MODELS_PAGE_1),
        Some(t) if t.replace("%3D", "=") == fixtures::PAGE_2_TOKEN => respond(200, &[], fixtures::MODELS_PAGE_2),
        Some(_) => respond(400, &[], &fixtures::invalid_argument_body()),
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        builder = builder.header("content-type", "application/json; charset=UTF-8");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}
