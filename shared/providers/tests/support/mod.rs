//! The OpenAI wire format served by the shared recording server (see `recording.rs` and
//! `fixtures.rs`), one scenario per path prefix (`{base}/{scenario}/chat/completions`); raw-socket
//! servers for failures an HTTP framework will not produce (resets, cut bodies, hangs); and the
//! assertions every provider's tests share (cancellation closes the connection, the key never
//! appears).

#![allow(dead_code)] // each test binary uses a different part

pub mod fixtures;
pub mod logs;
pub mod recording;

use std::collections::BTreeMap;
use std::time::Duration;

use recording::{RecordingServer, Reply, Seen};
use taskexec_core::error::{ErrorClass, ProviderError};
use taskexec_core::provider::{Provider, ProviderRequest};
use taskexec_core::task::BenchmarkTask;
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A recognisable fake key: it must never appear in any output.
pub const FAKE_KEY: &str = "sk-taskexec-FAKE-KEY-7f3a9c2e51d04b88";

/// A recording server speaking OpenAI's chat completions; `deployments(scenario)` points at
/// one scenario.
pub async fn openai_server() -> RecordingServer {
    RecordingServer::start_for(openai_route, deployments_at).await
}

/// Deployments with one OpenAI-compatible deployment, `d`, at `base_url`, with [`FAKE_KEY`].
pub fn deployments_at(base_url: &str) -> Deployments {
    let text = format!(
        "[d]\nkind = \"openai-compatible\"\nbase_url = \"{base_url}\"\napi_key_env = \"FAKE_OPENAI_KEY\"\nconnect_timeout_ms = 2000"
    );
    let configs: BTreeMap<String, DeploymentConfig> = toml::from_str(&text).unwrap();
    Deployments::from_config(&configs, |var| (var == "FAKE_OPENAI_KEY").then(|| FAKE_KEY.to_owned())).unwrap()
}

fn openai_route(seen: &Seen) -> Reply {
    match seen.scenario() {
        "ok" => Reply::json(200, fixtures::COMPLETION).with("x-request-id", "req_8f2c"),
        "stream" => Reply::sse(fixtures::stream_body()),
        "stream_lingering" => Reply::sse(fixtures::stream_body()).lingering(std::time::Duration::from_millis(50)),
        "truncated_stream" => Reply::sse(fixtures::truncated_stream_body()),
        "malformed" => Reply::json(200, r#"{"id":"chatcmpl-1","choices":[{"index":0,"#),
        "rate_limit_s" => Reply::json(429, fixtures::rate_limit_body()).with_all(&[
            ("retry-after", "2"),
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1.5s"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "199450"),
            ("x-ratelimit-reset-tokens", "165ms"),
        ]),
        "rate_limit_ms" => {
            Reply::json(429, fixtures::rate_limit_body()).with("retry-after-ms", "1500").with("retry-after", "2")
        }
        "quota" => Reply::json(429, fixtures::quota_body()),
        "context" => Reply::json(400, fixtures::context_length_body()),
        // A careless server echoing the whole key (OpenAI itself masks it).
        "unauthorized" => Reply::json(
            401,
            fixtures::error_body(
                &format!("Incorrect API key provided: {}.", seen.header("authorization").trim_start_matches("Bearer ")),
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        ),
        "server_error" => Reply::json(500, fixtures::server_error_body()),
        "unavailable" => Reply::json(503, fixtures::overloaded_body()).with("retry-after", "3"),
        _ => Reply::json(404, fixtures::error_body("Unknown scenario", "invalid_request_error", None, None)),
    }
}

/// The request for a task given in its JSON form, on deployment `d`.
pub fn task_request(task: serde_json::Value, attempt: u32) -> ProviderRequest {
    let task: BenchmarkTask = serde_json::from_value(task).unwrap();
    ProviderRequest::for_task(&task, "d", attempt)
}

/// Start a call through `deployments_at(&server.base)`, let it run ~100 ms after the server has
/// it, drop it, and check that the server sees the connection close long before its 60 s answer.
pub async fn assert_drop_closes_connection(
    mut server: HangServer,
    deployments_at: impl FnOnce(&str) -> Deployments,
    request: ProviderRequest,
) {
    let deployments = deployments_at(&server.base);
    // Boxed, so that `drop` really drops the future (a `tokio::pin!`ned one lives to scope end).
    let mut call = Box::pin(deployments.call(request));
    tokio::select! {
        result = &mut call => panic!("the hanging server answered: {result:?}"),
        _ = server.entered.recv() => {}
    }
    let still_running = tokio::time::timeout(Duration::from_millis(100), &mut call).await;
    assert!(still_running.is_err(), "the call must still be waiting");
    drop(call);
    tokio::time::timeout(Duration::from_secs(5), server.closed.recv())
        .await
        .expect("the server should see the connection close long before its 60 s answer");
}

/// `e` is transient and says `text`.
pub fn assert_transient(e: &ProviderError, text: &str) {
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains(text), "{e}");
}

/// A base URL where nothing listens (a port bound, then released).
pub fn refused_base() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Neither [`FAKE_KEY`] nor a recognisable part of it appears in any of `texts`.
pub fn assert_no_key(texts: &[String]) {
    for text in texts {
        assert!(!text.contains(FAKE_KEY), "key leaked in: {text}");
        assert!(!text.contains("FAKE-KEY"), "part of the key leaked in: {text}");
    }
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
        RawFault::ResetMidStream => stream_prelude(&first_openai_event()),
    };
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.flush().await;
    let _ = socket.set_zero_linger(); // close with RST, as a crashed peer or middlebox would
    drop(socket);
}

/// The first text chunk of the OpenAI stream fixture, as one SSE event.
fn first_openai_event() -> String {
    format!("data: {}\n\n", fixtures::STREAM_CHUNKS[1])
}

/// Raw HTTP: a chunked SSE response head and `events` as its first chunk.
pub fn stream_prelude(events: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{events}\r\n",
        events.len()
    )
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
        Self::start_with(stream_prelude(&first_openai_event())).await
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
