//! A chat-completions server with known stage delays, for checking that the client measures
//! `latency` and `ttft` faithfully.
//!
//! [`TimedServer`] answers `POST /v1/chat/completions` in OpenAI's format. A non-streamed call
//! waits `head`, then sends head and body together. A streamed call (`"stream": true`) sends
//! its head and the role chunk after `head`, the first content chunk after `first_token` more,
//! and the last chunk (finish reason, usage, `data: [DONE]`) after `rest` more. With
//! [`TimedConfig::spread`] each stage is lengthened by an amount hashed from the task id, so a
//! benchmark covers many values. The server records, per task id, what it really did, measured
//! from the handler's entry with [`Instant`]: when the head, the first content chunk and the
//! last byte were handed to hyper. Nagle is off on both sides, so handing over is sending.
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/chat/create> and
//! <https://platform.openai.com/docs/api-reference/chat-streaming/streaming>.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::BenchmarkTask;
use taskexec_providers::Deployments;
use taskexec_providers::config::DeploymentConfig;

use crate::fnv1a;

/// The name of the deployment [`TimedServer::deployments`] configures.
pub const DEPLOYMENT: &str = "timed";

/// The delays of the three stages of an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delays {
    /// Before the response head.
    pub head: Duration,
    /// From the head to the first content chunk (streams only).
    pub first_token: Duration,
    /// From the first content chunk to the last chunk (streams only).
    pub rest: Duration,
}

/// Server settings: the base delays, and an optional per-task spread added to each.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimedConfig {
    /// Base delays of every answer.
    pub delays: Delays,
    /// When set, each stage of task `t` is lengthened by a hash of (`t`, stage) in `[0, spread]`.
    pub spread: Option<Duration>,
}

impl TimedConfig {
    /// The delays the server uses for `task_id`.
    #[must_use]
    pub fn delays_for(&self, task_id: &str) -> Delays {
        let extra = |stage: &str| {
            self.spread.map_or(Duration::ZERO, |spread| {
                let micros = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX);
                Duration::from_micros(fnv1a(&format!("{task_id}/{stage}")) % micros.saturating_add(1))
            })
        };
        let base = self.delays;
        Delays {
            head: base.head + extra("head"),
            first_token: base.first_token + extra("first_token"),
            rest: base.rest + extra("rest"),
        }
    }
}

/// What the server did for one call, measured from the handler's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTiming {
    /// The delays it was asked to apply.
    pub delays: Delays,
    /// Until the response head was handed to hyper.
    pub head: Duration,
    /// Until the first content chunk was handed to hyper (streams only).
    pub first_token: Option<Duration>,
    /// Until the last byte was handed to hyper (`data: [DONE]`, or the whole body).
    pub last_byte: Duration,
}

struct Shared {
    config: TimedConfig,
    timings: Mutex<HashMap<String, ServerTiming>>,
}

impl Shared {
    fn record(&self, task_id: String, timing: ServerTiming) {
        self.timings.lock().expect("poisoned").insert(task_id, timing);
    }
}

/// A running timed server.
pub struct TimedServer {
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TimedServer {
    /// Bind `127.0.0.1:0` and serve in the background of the current runtime.
    pub async fn start(config: TimedConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        // Without this a small last chunk may wait for the client's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let shared = Arc::new(Shared { config, timings: Mutex::default() });
        let app = Router::new().route("/v1/chat/completions", post(complete)).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The OpenAI-style base URL (`http://127.0.0.1:PORT/v1`).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The delays the server uses for `task_id`.
    #[must_use]
    pub fn delays_for(&self, task_id: &str) -> Delays {
        self.shared.config.delays_for(task_id)
    }

    /// A deployment `timed` of kind `openai-compatible` pointing at this server (no key), so
    /// calls go through the real HTTP adapter.
    pub fn deployments(&self) -> anyhow::Result<Deployments> {
        let text = format!("[{DEPLOYMENT}]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n", self.base_url());
        let config: BTreeMap<String, DeploymentConfig> = toml::from_str(&text)?;
        Ok(Deployments::from_config(&config, |_| None)?)
    }

    /// The request of task `task_id` to deployment `timed`, streamed or not.
    pub fn request(task_id: &str, stream: bool) -> anyhow::Result<ProviderRequest> {
        let task: BenchmarkTask = serde_json::from_value(json!({
            "id": task_id, "providerId": DEPLOYMENT, "modelId": "mock-timed", "prompt": "Say hello",
            "parameters": {"stream": stream}
        }))?;
        Ok(ProviderRequest::for_task(&task, DEPLOYMENT, 1))
    }

    /// What the server did for the last call of `task_id`. It is recorded before the last byte
    /// is handed over, so it is there once the client has its answer.
    #[must_use]
    pub fn timing(&self, task_id: &str) -> Option<ServerTiming> {
        self.shared.timings.lock().expect("poisoned").get(task_id).copied()
    }
}

async fn complete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let arrived = Instant::now();
    let task_id = headers.get("x-taskexec-task-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let delays = shared.config.delays_for(&task_id);
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let model = request.get("model").and_then(Value::as_str).unwrap_or("mock").to_owned();
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    tokio::time::sleep(delays.head).await;
    let id = format!("chatcmpl-{task_id}");
    if !stream {
        let answer = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        })
        .to_string();
        let head = arrived.elapsed();
        shared.record(task_id, ServerTiming { delays, head, first_token: None, last_byte: head });
        return (StatusCode::OK, [("content-type", "application/json")], answer).into_response();
    }
    let chunks = Chunks { shared, task_id, delays, arrived, head: arrived.elapsed(), first_token: None, id, model };
    let body = futures::stream::unfold((chunks, 0u8), |(mut chunks, step)| async move {
        let piece = chunks.step(step).await?;
        Some((Ok::<_, Infallible>(piece), (chunks, step + 1)))
    });
    (StatusCode::OK, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], Body::from_stream(body))
        .into_response()
}

/// The state of one streamed answer.
struct Chunks {
    shared: Arc<Shared>,
    task_id: String,
    delays: Delays,
    arrived: Instant,
    head: Duration,
    first_token: Option<Duration>,
    id: String,
    model: String,
}

impl Chunks {
    /// Piece `step` of the stream, after its delay; `None` once all is sent.
    async fn step(&mut self, step: u8) -> Option<Bytes> {
        let piece = match step {
            0 => self.chunk(&json!({"role": "assistant", "content": ""}), None, None),
            1 => {
                tokio::time::sleep(self.delays.first_token).await;
                self.first_token = Some(self.arrived.elapsed());
                self.chunk(&json!({"content": "Hello"}), None, None)
            }
            2 => {
                tokio::time::sleep(self.delays.rest / 2).await;
                self.chunk(&json!({"content": " world"}), None, None)
            }
            3 => {
                tokio::time::sleep(self.delays.rest - self.delays.rest / 2).await;
                let usage = json!({"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14});
                let mut last = self.chunk(&json!({}), Some("stop"), None);
                last.push_str(&self.chunk(&json!({}), None, Some(usage)));
                last.push_str("data: [DONE]\n\n");
                let timing = ServerTiming {
                    delays: self.delays,
                    head: self.head,
                    first_token: self.first_token,
                    last_byte: self.arrived.elapsed(),
                };
                self.shared.record(self.task_id.clone(), timing);
                last
            }
            _ => return None,
        };
        Some(Bytes::from(piece))
    }

    /// One `chat.completion.chunk` event; the usage chunk has no choices.
    fn chunk(&self, delta: &Value, finish_reason: Option<&str>, usage: Option<Value>) -> String {
        let choices = if usage.is_some() {
            json!([])
        } else {
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}])
        };
        let chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": self.model,
            "choices": choices, "usage": usage
        });
        format!("data: {chunk}\n\n")
    }
}
