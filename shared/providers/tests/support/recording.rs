//! The local server every HTTP provider's tests run against: every request, whatever its method
//! and path, is recorded (peer, path, query, headers, JSON body) and answered by the test's route
//! function, which picks a canned reply from the path (one scenario per path prefix).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::net::TcpListener;

pub use super::FAKE_KEY;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
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

    /// The last path segment (`gemini-2.5-flash:generateContent`, `models`).
    pub fn call(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

/// A canned reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Keep the body open this long after sending it (a server that ends its chunked body
    /// after the stream's end marker).
    pub linger: Option<std::time::Duration>,
}

impl Reply {
    /// A JSON body.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self { status, headers: vec![("content-type", "application/json".into())], body: body.into(), linger: None }
    }

    /// An SSE body.
    pub fn sse(body: impl Into<String>) -> Self {
        let headers = vec![("content-type", "text/event-stream".into())];
        Self { status: 200, headers, body: body.into(), linger: None }
    }

    /// With one more header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Ending the body only `linger` after the last byte of it was sent.
    pub fn lingering(mut self, linger: std::time::Duration) -> Self {
        self.linger = Some(linger);
        self
    }

    /// With more headers.
    pub fn with_all(mut self, headers: &[(&'static str, &str)]) -> Self {
        self.headers.extend(headers.iter().map(|(name, value)| (*name, (*value).to_owned())));
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
    deployments_at: Option<fn(&str) -> Deployments>,
}

impl RecordingServer {
    /// Start on 127.0.0.1:0, answering with `route`.
    pub async fn start(route: fn(&Seen) -> Reply) -> Self {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared { recorded: recorded.clone(), route };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { base, recorded, deployments_at: None }
    }

    /// Start on 127.0.0.1:0, answering with `route`; [`Self::deployments`] builds its
    /// deployments with `deployments_at`.
    pub async fn start_for(route: fn(&Seen) -> Reply, deployments_at: fn(&str) -> Deployments) -> Self {
        Self { deployments_at: Some(deployments_at), ..Self::start(route).await }
    }

    /// Deployments pointed at `scenario` (`{base}/{scenario}`), for a server started with
    /// [`Self::start_for`].
    pub fn deployments(&self, scenario: &str) -> Deployments {
        let deployments_at = self.deployments_at.expect("started with `start_for`");
        deployments_at(&format!("{}/{scenario}", self.base))
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

async fn handle(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let path = uri.path().to_owned();
    let seen = Seen { peer, method, path, query: uri.query().map(str::to_owned), headers, body };
    let reply = (shared.route)(&seen);
    shared.recorded.lock().unwrap().push(seen);
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        builder = builder.header(*name, value);
    }
    let Some(linger) = reply.linger else { return builder.body(Body::from(reply.body)).unwrap() };
    let sent = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(Bytes::from(reply.body)) });
    let end = futures::stream::once(async move {
        tokio::time::sleep(linger).await;
        Ok(Bytes::new())
    });
    builder.body(Body::from_stream(futures::StreamExt::chain(sent, end))).unwrap()
}
