//! A local server for the OpenAI-family tests (Responses API, Azure OpenAI): every request,
//! whatever its method and path, is recorded (path, query, headers, JSON body) and answered by
//! the test's route function, which picks a canned reply from the path (one scenario per path
//! prefix).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::net::TcpListener;

/// A recognisable fake key: it must never appear in any output.
pub const FAKE_KEY: &str = "sk-taskexec-FAKE-KEY-c41d7e0b93a24f65";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

impl Seen {
    /// A header's value (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }

    /// The first path segment: the scenario.
    pub fn scenario(&self) -> &str {
        self.path.trim_start_matches('/').split('/').next().unwrap_or_default()
    }
}

/// A canned reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// A JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self { status, headers: vec![("content-type", "application/json".into())], body: body.into() }
    }

    /// An SSE body.
    pub fn sse(body: impl Into<String>) -> Self {
        Self { status: 200, headers: vec![("content-type", "text/event-stream".into())], body: body.into() }
    }

    /// With one more header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Clone)]
struct Shared {
    recorded: Arc<Mutex<Vec<Seen>>>,
    route: fn(&Seen) -> Reply,
}

/// The running server.
pub struct RecordingServer {
    pub base: String,
    recorded: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingServer {
    /// Start on 127.0.0.1:0, answering with `route`.
    pub async fn start(route: fn(&Seen) -> Reply) -> Self {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared { recorded: recorded.clone(), route };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, recorded }
    }

    /// What the server received so far.
    pub fn recorded(&self) -> Vec<Seen> {
        self.recorded.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.recorded().pop().expect("the server received a request")
    }
}

/// Deployments with one deployment, `d`, from the TOML body of its table (without the header),
/// with [`FAKE_KEY`] in `FAKE_KEY_VAR` (the table should set `api_key_env = "FAKE_KEY_VAR"`).
pub fn deployments(table: &str) -> Deployments {
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&format!("[d]\n{table}")).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_KEY_VAR").then(|| FAKE_KEY.to_owned())).unwrap()
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let seen = Seen { method, path: uri.path().to_owned(), query: uri.query().map(str::to_owned), headers, body };
    let reply = (shared.route)(&seen);
    shared.recorded.lock().unwrap().push(seen);
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value);
    }
    builder.body(Body::from(reply.body)).unwrap()
}
