//! A local OpenAI-compatible chat-completions server for taskexec's tests and benchmarks.
//!
//! It answers `POST /v1/chat/completions` with the real response shape, after a latency that is a
//! pure function of the task id (sent by taskexec in `x-taskexec-task-id`) so that a benchmark
//! can compute the zero-overhead makespan of the same latencies. It can record how often each
//! task was called, hang for chosen tasks (and record when the client closed the connection),
//! enforce a requests/tokens-per-minute quota as OpenAI does (429 `rate_limit_exceeded` with
//! `retry-after` and the `x-ratelimit-*` headers beyond it, the same headers on every answer),
//! and reports all of it on `GET /_stats`. It binds 127.0.0.1 only.

pub mod timed;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};
use serde::Serialize;

/// How long an answer takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Answer at once.
    Zero,
    /// Always this long.
    Fixed(Duration),
    /// Lognormal with this median and 99th percentile (ms), drawn per task id.
    LogNormal {
        /// Median, ms.
        median_ms: f64,
        /// 99th percentile, ms.
        p99_ms: f64,
    },
}

impl Latency {
    /// Parse `zero`, `fixed:MS` or `lognormal:MEDIAN_MS:P99_MS`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        Ok(match parts.as_slice() {
            ["zero"] => Self::Zero,
            ["fixed", ms] => Self::Fixed(Duration::from_millis(ms.parse()?)),
            ["lognormal", median, p99] => Self::LogNormal { median_ms: median.parse()?, p99_ms: p99.parse()? },
            _ => anyhow::bail!("latency must be zero, fixed:MS or lognormal:MEDIAN_MS:P99_MS, not `{text}`"),
        })
    }

    /// The latency of `task_id` under `seed`: the same inputs always give the same value.
    #[must_use]
    pub fn for_task(&self, task_id: &str, seed: u64) -> Duration {
        match *self {
            Self::Zero => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::LogNormal { median_ms, p99_ms } => {
                // z(0.99) = 2.3263: p99 = median · e^(2.3263 σ).
                let sigma = ((p99_ms / median_ms).ln() / 2.326_347_874).max(0.0);
                let dist = LogNormal::new(median_ms.ln(), sigma).expect("finite parameters");
                let mut rng = StdRng::seed_from_u64(fnv1a(task_id) ^ seed);
                Duration::from_secs_f64(dist.sample(&mut rng) / 1000.0)
            }
        }
    }
}

/// FNV-1a: a stable hash (std's hasher may change between releases).
#[must_use]
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Answer latency.
    pub latency: Latency,
    /// Seed of the latency draw.
    pub seed: u64,
    /// Record calls per task id (off for the throughput benchmark).
    pub record: bool,
    /// Tasks whose calls hang (until the client goes away, or an hour).
    pub hang: HashSet<String>,
    /// A quota enforced over a sliding minute, as OpenAI counts it.
    pub quota: Option<MockQuota>,
    /// Whether answers report the quota in `x-ratelimit-*` headers (OpenAI does; Bedrock
    /// reports nothing): `false` sends only a refusal's `retry-after`.
    pub quota_headers: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self { latency: Latency::Zero, seed: 1, record: true, hang: HashSet::new(), quota: None, quota_headers: true }
    }
}

/// Requests and tokens per minute. Every answer uses [`TOKENS_PER_CALL`] tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockQuota {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens per minute.
    pub tpm: u64,
}

/// Tokens an answer reports using (12 prompt + 4 completion).
pub const TOKENS_PER_CALL: u64 = 16;

const MINUTE: Duration = Duration::from_secs(60);

/// What the server saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Calls over all tasks.
    pub total_calls: u64,
    /// Calls per task id.
    pub calls: HashMap<String, u64>,
    /// Hanging calls whose client closed the connection, with how long after the call began (ms).
    pub closed: Vec<(String, u64)>,
    /// Answering calls in progress now (hanging ones left out).
    pub in_flight: u64,
    /// The most answering calls in progress at once since the start or the last
    /// [`MockServer::restart_max_in_flight`].
    pub max_in_flight: u64,
    /// Calls refused with a 429 by the quota.
    pub refused: u64,
    /// When each call the quota admitted was answered, in ms since the server started.
    pub admitted_at_ms: Vec<u64>,
}

impl Stats {
    /// The most tokens the quota admitted in any 60 s window (each call costs
    /// [`TOKENS_PER_CALL`]).
    #[must_use]
    pub fn busiest_minute(&self) -> u64 {
        let at = &self.admitted_at_ms;
        let most = at.iter().map(|start| at.iter().filter(|t| **t >= *start && **t < start + 60_000).count()).max();
        most.unwrap_or(0) as u64 * TOKENS_PER_CALL
    }
}

struct Shared {
    config: MockConfig,
    stats: Mutex<Stats>,
    started: Instant,
    /// When the calls of the last minute were admitted.
    window: Mutex<VecDeque<Instant>>,
}

/// The quota's verdict on a call: admitted (with the headers to send) or refused.
enum Admission {
    Admitted(Vec<(&'static str, String)>),
    Refused(Response),
}

impl Shared {
    fn admit(&self) -> Admission {
        let Some(quota) = self.config.quota else { return Admission::Admitted(Vec::new()) };
        let now = Instant::now();
        let mut window = self.window.lock().expect("poisoned");
        while window.front().is_some_and(|at| now.duration_since(*at) >= MINUTE) {
            window.pop_front();
        }
        let used = window.len() as u64;
        let reset = window.front().map_or(Duration::ZERO, |at| MINUTE.saturating_sub(now.duration_since(*at)));
        let fits = used < quota.rpm && (used + 1) * TOKENS_PER_CALL <= quota.tpm;
        if fits {
            window.push_back(now);
        }
        let used = window.len() as u64;
        let headers = if !self.config.quota_headers {
            Vec::new()
        } else {
            vec![
                ("x-ratelimit-limit-requests", quota.rpm.to_string()),
                ("x-ratelimit-remaining-requests", quota.rpm.saturating_sub(used).to_string()),
                ("x-ratelimit-reset-requests", format!("{}ms", reset.as_millis())),
                ("x-ratelimit-limit-tokens", quota.tpm.to_string()),
                ("x-ratelimit-remaining-tokens", quota.tpm.saturating_sub(used * TOKENS_PER_CALL).to_string()),
                ("x-ratelimit-reset-tokens", format!("{}ms", reset.as_millis())),
            ]
        };
        drop(window);
        let mut stats = self.stats.lock().expect("poisoned");
        if fits {
            let at = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            stats.admitted_at_ms.push(at);
            return Admission::Admitted(headers);
        }
        stats.refused += 1;
        let body = serde_json::json!({"error": {
            "message": format!("Rate limit reached: limit {} requests and {} tokens per minute", quota.rpm, quota.tpm),
            "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
        let mut response =
            (StatusCode::TOO_MANY_REQUESTS, [("content-type", "application/json")], body.to_string()).into_response();
        let retry_after = reset.as_secs() + 1;
        for (name, value) in headers.into_iter().chain([("retry-after", retry_after.to_string())]) {
            response.headers_mut().insert(name, value.parse().expect("a header value"));
        }
        Admission::Refused(response)
    }
}

/// A running server.
pub struct MockServer {
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockServer {
    /// Bind `127.0.0.1:port` (0 for any) and serve in the background of the current runtime.
    pub async fn start(config: MockConfig, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared =
            Arc::new(Shared { config, stats: Mutex::default(), started: Instant::now(), window: Mutex::default() });
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/chat/completions", post(complete))
            .route("/v1/models", get(models))
            .route("/models", get(models))
            .route("/_stats", get(stats))
            .with_state(shared.clone());
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

    /// A copy of the statistics.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().expect("poisoned").clone()
    }

    /// Start counting `max_in_flight` again from the calls in progress now.
    pub fn restart_max_in_flight(&self) {
        let mut stats = self.shared.stats.lock().expect("poisoned");
        stats.max_in_flight = stats.in_flight;
    }
}

/// The models the mock says it serves (it answers any model id).
pub const MODELS: [&str; 2] = ["mock-small", "mock-large"];

/// `GET /v1/models` in OpenAI's list shape.
async fn models() -> Response {
    let data: Vec<_> = MODELS
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "taskexec-mock"}))
        .collect();
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        serde_json::json!({"object": "list", "data": data}).to_string(),
    )
        .into_response()
}

/// Counts an answering call in progress while it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let mut stats = shared.stats.lock().expect("poisoned");
        stats.in_flight += 1;
        stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.lock().expect("poisoned").in_flight -= 1;
    }
}

/// Records a hanging call's end; if it is dropped before the hang ended, the client closed it.
struct HangGuard {
    shared: Arc<Shared>,
    task_id: String,
    began: Instant,
    finished: bool,
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        if !self.finished {
            let after = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.shared.stats.lock().expect("poisoned").closed.push((self.task_id.clone(), after));
        }
    }
}

async fn complete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    let task_id = headers.get("x-taskexec-task-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if shared.config.record {
        let mut stats = shared.stats.lock().expect("poisoned");
        stats.total_calls += 1;
        *stats.calls.entry(task_id.clone()).or_default() += 1;
    }
    if shared.config.hang.contains(&task_id) {
        return hang(shared.clone(), task_id);
    }
    let quota_headers = match shared.admit() {
        Admission::Admitted(headers) => headers,
        Admission::Refused(response) => return response,
    };
    let _in_flight = shared.config.record.then(|| InFlight::enter(&shared));
    let latency = shared.config.latency.for_task(&task_id, shared.config.seed);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let model = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "mock".into());
    let answer = serde_json::json!({
        "id": format!("chatcmpl-{task_id}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer to {task_id}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    });
    let mut response =
        (StatusCode::OK, [("content-type", "application/json"), ("x-request-id", "req-mock")], answer.to_string())
            .into_response();
    for (name, value) in quota_headers {
        response.headers_mut().insert(name, value.parse().expect("a header value"));
    }
    response
}

/// A hanging answer: headers at once, then a space every 100 ms for an hour (valid JSON
/// whitespace). hyper only notices a closed connection when it writes, so the trickle is what
/// lets the server see — and record — the moment the client went away.
fn hang(shared: Arc<Shared>, task_id: String) -> Response {
    let guard = HangGuard { shared, task_id, began: Instant::now(), finished: false };
    let ticks = futures::stream::unfold((guard, 0u32), |(mut guard, n): (HangGuard, u32)| async move {
        if n >= 36_000 {
            guard.finished = true;
            drop(guard);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(b" ")), (guard, n + 1)))
    });
    (StatusCode::OK, [("content-type", "application/json")], axum::body::Body::from_stream(ticks)).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats.lock().expect("poisoned").clone()).into_response()
}

/// The zero-overhead makespan: `slots` workers take tasks in order, each as soon as one is free,
/// and each task takes exactly its latency.
#[must_use]
pub fn makespan(latencies: impl IntoIterator<Item = Duration>, slots: usize) -> Duration {
    let mut free_at = std::collections::BinaryHeap::new();
    for _ in 0..slots.max(1) {
        free_at.push(std::cmp::Reverse(Duration::ZERO));
    }
    let mut end = Duration::ZERO;
    for latency in latencies {
        let std::cmp::Reverse(start) = free_at.pop().expect("slots > 0");
        let done = start + latency;
        end = end.max(done);
        free_at.push(std::cmp::Reverse(done));
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lognormal_latency_is_deterministic_and_fits_median_and_p99() {
        let l = Latency::parse("lognormal:200:1500").unwrap();
        assert_eq!(l.for_task("t1", 7), l.for_task("t1", 7));
        let mut v: Vec<f64> = (0..20_000).map(|i| l.for_task(&format!("t{i}"), 7).as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let p99 = v[v.len() * 99 / 100];
        assert!((180.0..220.0).contains(&median), "median {median}");
        assert!((1300.0..1700.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn makespan_of_slots_taking_tasks_in_order() {
        let ms = Duration::from_millis;
        assert_eq!(makespan([ms(10), ms(10), ms(10)], 1), ms(30));
        assert_eq!(makespan([ms(30), ms(10), ms(10), ms(10)], 2), ms(30));
        assert_eq!(makespan([ms(10), ms(30), ms(10), ms(10)], 2), ms(30));
        assert_eq!(makespan([], 4), Duration::ZERO);
    }

    #[test]
    fn parses_latency_specs() {
        assert_eq!(Latency::parse("zero").unwrap(), Latency::Zero);
        assert_eq!(Latency::parse("fixed:5").unwrap(), Latency::Fixed(Duration::from_millis(5)));
        assert!(Latency::parse("gaussian:1").is_err());
    }
}
