//! The OpenAI-compatible adapter: `POST {base_url}/chat/completions` over one pooled
//! `reqwest::Client` per deployment, whole or streamed, with every failure classified once here.
//!
//! Cancellation: dropping the future returned by [`Provider::call`] drops reqwest's response
//! future or body stream, which closes the connection (an HTTP/2 stream is reset). The server
//! sees the disconnect; whether it stops generating (and billing) is up to the provider — OpenAI
//! documents nothing for non-streamed requests, and in practice stops a stream once the
//! client is gone.

mod classify;
mod stream;
mod wire;

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, Response, Url};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use tokio::time::Instant;

use self::classify::{classify_response, transport_error};
use self::stream::StreamAccumulator;
use self::wire::{Answer, parse_completion, request_body};
use crate::config::{DEFAULT_CONNECT_TIMEOUT_MS, DeploymentConfig};
use crate::secret::ApiKey;

/// Header carrying the task id, so servers and logs can correlate.
pub const TASK_ID_HEADER: &str = "x-taskexec-task-id";
/// Header carrying the attempt number.
pub const ATTEMPT_HEADER: &str = "x-taskexec-attempt";
/// Largest successful body read (a bigger one is a transient failure).
const MAX_BODY_BYTES: usize = 32 << 20;
/// Largest error body read (only its message is kept).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Idle keep-alive connections kept per host: benchmarks run many calls in parallel.
const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Why an adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `base_url` missing or not a URL (the config was not validated).
    #[error("`base_url` is missing or invalid")]
    BadBaseUrl,
    /// The key holds characters an HTTP header cannot carry (the key itself is not shown).
    #[error("the API key holds characters an HTTP header cannot carry")]
    BadKey,
    /// reqwest could not build its client (TLS backend).
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// An adapter for one OpenAI-compatible deployment.
pub struct OpenAiCompatible {
    name: String,
    endpoint: Url,
    api_key: Option<ApiKey>,
    auth: Option<HeaderValue>,
    client: Client,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint.as_str())
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// The adapter for deployment `name`, configured by `config` (validated), with its key.
    pub fn new(name: &str, config: &DeploymentConfig, api_key: Option<ApiKey>) -> Result<Self, BuildError> {
        let base = config.base_url.as_deref().ok_or(BuildError::BadBaseUrl)?;
        let endpoint = Url::parse(&format!("{}/chat/completions", base.trim_end_matches('/')))
            .map_err(|_| BuildError::BadBaseUrl)?;
        let auth = api_key.as_ref().map(|k| k.bearer_header().ok_or(BuildError::BadKey)).transpose()?;
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS));
        Ok(Self { name: name.to_owned(), endpoint, api_key, auth, client: build_client(connect_timeout)? })
    }

    /// The deployment's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL called.
    #[must_use]
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    async fn run(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        tracing::debug!(deployment = %self.name, model = %request.model, task_id = %request.task_id,
            attempt = request.attempt, stream = request.stream, "provider call");
        let result = self.exchange(&request).await.map_err(|e| self.scrub(e));
        if let Err(e) = &result {
            tracing::debug!(deployment = %self.name, task_id = %request.task_id, class = e.class().as_str(),
                status = e.status(), error = %e, "provider call failed");
        }
        result
    }

    async fn exchange(&self, request: &ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let http = self.http_request(request)?;
        let started = Instant::now();
        let response = http.send().await.map_err(|e| transport_error(&e))?;
        if !response.status().is_success() {
            return Err(error_response(response).await);
        }
        let request_id = header_string(response.headers(), "x-request-id");
        let (answer, ttft) = read_answer(response, request.stream, started).await?;
        Ok(ProviderResponse {
            text: answer.text,
            finish_reason: answer.finish_reason,
            usage: answer.usage,
            model: answer.model.unwrap_or_else(|| request.model.clone()),
            request_id: request_id.or(answer.id),
            latency: started.elapsed(),
            ttft,
        })
    }

    fn http_request(&self, request: &ProviderRequest) -> Result<reqwest::RequestBuilder, ProviderError> {
        let body = request_body(request)?;
        let task_id = HeaderValue::from_str(&request.task_id)
            .map_err(|_| ProviderError::permanent("task id cannot be sent as an HTTP header"))?;
        let mut http = self
            .client
            .post(self.endpoint.clone())
            .header(TASK_ID_HEADER, task_id)
            .header(ATTEMPT_HEADER, request.attempt)
            .json(&body);
        if let Some(auth) = &self.auth {
            http = http.header(AUTHORIZATION, auth.clone());
        }
        Ok(http)
    }

    /// Remove the key from anything a server echoed back.
    fn scrub(&self, error: ProviderError) -> ProviderError {
        let Some(key) = &self.api_key else { return error };
        match error {
            ProviderError::RateLimited { retry_after, status, code, detail } => {
                ProviderError::RateLimited { retry_after, status, code, detail: key.scrub(&detail) }
            }
            ProviderError::Transient { retry_after, status, code, detail } => {
                ProviderError::Transient { retry_after, status, code, detail: key.scrub(&detail) }
            }
            ProviderError::Permanent { status, code, detail } => {
                ProviderError::Permanent { status, code, detail: key.scrub(&detail) }
            }
        }
    }
}

fn build_client(connect_timeout: Duration) -> Result<Client, BuildError> {
    Client::builder()
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(30))
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(connect_timeout)
        // A redirected POST would be replayed as a GET: treat a 3xx as a configuration error.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("taskexec/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(BuildError::Client)
}

/// Classify a non-success response from its status, headers and (capped) body.
async fn error_response(response: Response) -> ProviderError {
    let status = response.status();
    let headers = response.headers().clone();
    // An unreadable error body still leaves the status and headers to classify by.
    let body = read_body(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
    classify_response(status, &headers, &body, SystemTime::now())
}

/// Read a 200: a stream when one was asked for and the server sent one, else a whole body.
async fn read_answer(
    response: Response,
    stream: bool,
    started: Instant,
) -> Result<(Answer, Option<Duration>), ProviderError> {
    let is_sse =
        header_string(response.headers(), CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with("text/event-stream"));
    if stream && is_sse {
        return read_stream(response, started).await;
    }
    let body = read_body(response, MAX_BODY_BYTES).await?;
    Ok((parse_completion(&body)?, None))
}

async fn read_stream(response: Response, started: Instant) -> Result<(Answer, Option<Duration>), ProviderError> {
    let mut accumulator = StreamAccumulator::default();
    let mut ttft = None;
    let mut body = response.bytes_stream();
    // Stop at `[DONE]` rather than wait for the server to end the body.
    while !accumulator.is_done() {
        let Some(piece) = body.next().await else { break };
        accumulator.feed(&piece.map_err(|e| transport_error(&e))?)?;
        if ttft.is_none() && accumulator.has_content() {
            ttft = Some(started.elapsed());
        }
    }
    Ok((accumulator.finish()?, ttft))
}

async fn read_body(mut response: Response, limit: usize) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(piece) = response.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() + piece.len() > limit {
            return Err(ProviderError::transient(format!("response body larger than {limit} bytes")));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl Provider for OpenAiCompatible {
    fn call(&self, request: ProviderRequest) -> impl Future<Output = Result<ProviderResponse, ProviderError>> + Send {
        self.run(request)
    }
}
