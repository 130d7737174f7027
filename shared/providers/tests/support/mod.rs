//! A local server speaking OpenAI's wire format (see `fixtures.rs`), one scenario per path
//! prefix (`{base}/{scenario}/chat/completions`), recording what it receives; and raw-socket
//! servers for failures an HTTP framework will not produce (resets, cut bodies).

#![allow(dead_code)] // each test binary uses a different part

pub mod fixtures;
pub mod logs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A recognisable fake key: it must never appear in any output.
pub const FAKE_KEY: &str = "sk-taskexec-FAKE-KEY-7f3a9c2e51d04b88";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub scenario: String,
    pub peer: SocketAddr,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

#[derive(Clone)]
struct Shared {
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

/// The running server.
pub struct WireServer {
    pub base: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

impl WireServer {
    /// Start on 127.0.0.1:0.
    pub async fn start() -> Self {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared { recorded: recorded.clone() };
        let app = Router::new().route("/{scenario}/chat/completions", post(handle)).with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Self { base, recorded }
    }

    /// What the server received so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// Deployments with one deployment, `d`, pointed at `scenario`, with [`FAKE_KEY`].
    pub fn deployments(&self, scenario: &str) -> Deployments {
        deployments_at(&format!("{}/{scenario}", self.base))
    }
}

/// Deployments with one OpenAI-compatible deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn deployments_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"openai-compatible\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_OPENAI_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_OPENAI_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

async fn handle(
    State(shared): State<Shared>,
    Path(scenario): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let record = Recorded { scenario: scenario.clone(), peer, headers, body };
    shared.recorded.lock().unwrap().push(record);
    match scenario.as_str() {
        "ok" => {
            respond(200, &[("content-type", "application/json"), ("x-request-id", "req_8f2c")], fixtures::COMPLETION)
        }
        "stream" => respond(200, &[("content-type", "text/event-stream")], &fixtures::stream_body()),
        "truncated_stream" => {
            respond(200, &[("content-type", "text/event-stream")], &fixtures::truncated_stream_body())
        }
        "malformed" => {
            respond(200, &[("content-type", "application/json")], r#"{"id":"chatcmpl-1","choices":[{"index":0,"#)
        }
        "rate_limit_s" => respond(
            429,
            &[
                ("retry-after", "2"),
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1.5s"),
                ("x-ratelimit-limit-tokens", "200000"),
                ("x-ratelimit-remaining-tokens", "199450"),
                ("x-ratelimit-reset-tokens", "165ms"),
            ],
            &fixtures::rate_limit_body(),
        ),
        "rate_limit_ms" => {
            respond(429, &[("retry-after-ms", "1500"), ("retry-after", "2")], &fixtures::rate_limit_body())
        }
        "quota" => respond(429, &[], &fixtures::quota_body()),
        "context" => respond(400, &[], &fixtures::context_length_body()),
        // A careless server echoing the whole key (OpenAI itself masks it).
        "unauthorized" => respond(
            401,
            &[],
            &fixtures::error_body(
                &format!("Incorrect API key provided: {}.", auth.trim_start_matches("Bearer ")),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        ),
        "server_error" => respond(500, &[], &fixtures::server_error_body()),
        "unavailable" => respond(503, &[("retry-after", "3")], &fixtures::overloaded_body()),
        _ => respond(404, &[], &fixtures::error_body("Unknown scenario", "invalid_request_error", None, None)),
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    let mut builder = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

/// How a raw server misbehaves after reading the request head.
#[derive(Debug, Clone, Copy)]
pub enum RawFault {
    /// Close without answering.
    CloseBeforeResponse,
    /// Send a head promising 1000 bytes, a few of them, then reset the connection.
    ResetMidBody,
    /// Send a chunked SSE head and one event, then reset the connection.
    ResetMidStream,
}

/// A raw TCP server that misbehaves on every connection; returns its base URL.
pub async fn raw_server(fault: RawFault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(misbehave(socket, fault));
        }
    });
    base
}

async fn misbehave(mut socket: tokio::net::TcpStream, fault: RawFault) {
    read_request_head(&mut socket).await;
    let reply = match fault {
        RawFault::CloseBeforeResponse => String::new(),
        RawFault::ResetMidBody => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"chatcmpl-1\","
                .into()
        }
        RawFault::ResetMidStream => {
            let event = format!("data: {}\n\n", fixtures::STREAM_CHUNKS[1]);
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            )
        }
    };
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.flush().await;
    let _ = socket.set_zero_linger(); // close with RST, as a crashed peer or middlebox would
    drop(socket);
}

async fn read_request_head(socket: &mut tokio::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A server that reads a request and never answers (for 60 s). It reports when a request has
/// arrived, and when the client closed the connection (a read returning 0, or an error) —
/// hyper's HTTP/1 server does not notice a disconnect while a handler runs, so a raw socket
/// is the reliable observer.
pub struct HangServer {
    pub base: String,
    pub entered: mpsc::UnboundedReceiver<()>,
    pub closed: mpsc::UnboundedReceiver<()>,
}

impl HangServer {
    /// Start on 127.0.0.1:0; sends nothing back.
    pub async fn start() -> Self {
        Self::start_with(String::new()).await
    }

    /// Start on 127.0.0.1:0; sends a stream's head and its first event, then nothing more.
    pub async fn start_streaming() -> Self {
        let event = format!("data: {}\n\n", fixtures::STREAM_CHUNKS[1]);
        let prelude = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        );
        Self::start_with(prelude).await
    }

    /// Start on 127.0.0.1:0; sends `prelude` (raw HTTP: a head and the start of a body), then
    /// nothing more.
    pub async fn start_with(prelude: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (entered_tx, closed_tx) = (entered_tx.clone(), closed_tx.clone());
                let prelude = prelude.clone();
                tokio::spawn(async move {
                    read_request_head(&mut socket).await;
                    let _ = socket.write_all(prelude.as_bytes()).await;
                    let _ = entered_tx.send(());
                    let mut buf = [0u8; 1024];
                    let wait_for_close = async {
                        // The body may follow the head; anything but end-of-stream is ignored.
                        while let Ok(n) = socket.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    };
                    if tokio::time::timeout(Duration::from_secs(60), wait_for_close).await.is_ok() {
                        let _ = closed_tx.send(());
                    }
                });
            }
        });
        Self { base, entered, closed }
    }
}
