//! The one HTTP exchange every HTTP adapter shares: [`HttpAdapter`] owns the pooled client, the
//! key, timing, streaming, rate-limit headers, error bodies, raw capture and key scrubbing; a
//! [`Wire`] says only what differs between providers (URL, body, parsing, classification,
//! model list). OpenAI chat completions, the OpenAI Responses API, Azure OpenAI, Anthropic and
//! Gemini are each a `Wire`; Bedrock goes through the AWS SDK instead (`bedrock.rs`).
//!
//! Timing: `latency` runs on a monotonic clock from just before the request is sent to the end
//! of the body (or the stream's last event); `ttft` to the first event carrying text. Building
//! the body and classifying happen outside it; queue wait and engine work never enter it.
//!
//! Cancellation: dropping the future drops reqwest's response future or body stream, which
//! closes the connection (or resets the HTTP/2 stream). What each provider then does about
//! generation and billing is documented in `docs/providers.md`.

pub(crate) mod failure;
pub(crate) mod limits;
pub(crate) mod sse;

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Response, StatusCode, Url};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::{ProviderRequest, ProviderResponse};
use tokio::time::Instant;

use self::failure::transport_error;
use self::limits::rate_limits;
use self::sse::{SseDecoder, SseEvent};
use crate::answer::{Answer, ModelInfo, ModelPage};
use crate::capability::Capabilities;
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
/// Largest raw body kept for audit: the result must still fit in a store item (DynamoDB: 400 KB).
const MAX_RAW_BYTES: usize = 128 << 10;
/// How long, and how much, is read after a stream's end marker (see [`drain`]).
const DRAIN_TIME: Duration = Duration::from_millis(100);
const MAX_DRAIN_BYTES: usize = 64 << 10;
/// Most model-list pages followed (a server that always says "more" cannot loop forever).
const MAX_MODEL_PAGES: usize = 100;

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and compatible servers).
    Bearer,
    /// The key alone in the named header (`api-key`, `x-api-key`, `x-goog-api-key`).
    Header(&'static str),
}

/// What differs between HTTP providers.
pub(crate) trait Wire: Send + Sync + 'static {
    /// The state of one streamed answer.
    type Stream: StreamParser;

    /// How the key is sent.
    fn auth(&self) -> AuthStyle;

    /// Headers sent with every request besides the key (`anthropic-version`).
    fn fixed_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }

    /// The URL and JSON body of a call; `caps` are the model's capabilities on this deployment,
    /// worked out once per call by the caller.
    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError>;

    /// Read a whole (non-streamed) answer; anything unreadable is transient.
    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError>;

    /// A fresh stream state.
    fn stream(&self) -> Self::Stream;

    /// Classify a non-success response from its status, headers and (capped) body. The adapter
    /// attaches the rate-limit headers afterwards.
    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError;

    /// The provider's request id from the response headers.
    fn request_id(&self, headers: &HeaderMap) -> Option<String> {
        ["x-request-id", "request-id", "apim-request-id"].iter().find_map(|name| header_string(headers, name))
    }

    /// The URL of one page of the model list (`page` is the previous page's `next`).
    fn models_url(&self, page: Option<&str>) -> Result<Url, ProviderError>;

    /// Read one page of the model list.
    fn parse_models(&self, body: &[u8]) -> Result<ModelPage, ProviderError>;
}

/// The state of one streamed answer, fed event by event.
pub(crate) trait StreamParser: Send {
    /// Take one event; an error event in the stream is returned as its error.
    fn event(&mut self, event: SseEvent) -> Result<(), ProviderError>;
    /// Whether any text has arrived (the moment that defines time to first token).
    fn has_content(&self) -> bool;
    /// Whether the stream said it is complete (no need to wait for the body's end).
    fn is_done(&self) -> bool;
    /// The answer once the stream is complete or the body ended; a stream cut before its
    /// end is a transient failure.
    fn finish(self) -> Result<Answer, ProviderError>;
}

/// Why an adapter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `base_url` missing or not a URL (the config was not validated).
    #[error("`base_url` is missing or invalid")]
    BadBaseUrl,
    /// The key holds characters an HTTP header cannot carry (the key itself is not shown).
    #[error("the API key holds characters an HTTP header cannot carry")]
    BadKey,
    /// The kind's adapter is not compiled into this build (Bedrock without the `aws` feature).
    #[error("{0}")]
    NotInThisBuild(&'static str),
    /// reqwest could not build its client (TLS backend).
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Settings every HTTP adapter takes from its deployment's config.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    pub connect_timeout: Duration,
    pub keep_raw: bool,
}

/// One deployment served over HTTP by wire format `W`.
pub struct HttpAdapter<W> {
    name: String,
    wire: W,
    api_key: Option<ApiKey>,
    headers: HeaderMap,
    keep_raw: bool,
    client: Client,
}

impl<W> fmt::Debug for HttpAdapter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAdapter")
            .field("name", &self.name)
            .field("wire", &std::any::type_name::<W>())
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

impl<W: Wire> HttpAdapter<W> {
    /// The adapter for deployment `name`.
    pub(crate) fn new(
        name: &str,
        wire: W,
        api_key: Option<ApiKey>,
        settings: &HttpSettings,
    ) -> Result<Self, BuildError> {
        let headers = headers_for(&wire, api_key.as_ref())?;
        let client = build_client(settings.connect_timeout)?;
        Ok(Self { name: name.to_owned(), wire, api_key, headers, keep_raw: settings.keep_raw, client })
    }

    /// An adapter for another wire format of the same deployment (OpenAI's Responses API beside
    /// its chat completions), with the same key and settings and sharing this one's connection
    /// pool (`reqwest::Client` clones share it).
    pub(crate) fn sharing<V: Wire>(&self, wire: V) -> Result<HttpAdapter<V>, BuildError> {
        Ok(HttpAdapter {
            name: self.name.clone(),
            headers: headers_for(&wire, self.api_key.as_ref())?,
            wire,
            api_key: self.api_key.clone(),
            keep_raw: self.keep_raw,
            client: self.client.clone(),
        })
    }

    /// The wire format.
    #[cfg_attr(not(test), allow(dead_code, reason = "only tests inspect the wire today"))]
    pub(crate) fn wire(&self) -> &W {
        &self.wire
    }

    /// Make one call.
    pub(crate) async fn call(
        &self,
        request: ProviderRequest,
        caps: &Capabilities,
    ) -> Result<ProviderResponse, ProviderError> {
        tracing::debug!(deployment = %self.name, model = %request.model, task_id = %request.task_id,
            attempt = request.attempt, stream = request.stream, "provider call");
        let result = self.exchange(&request, caps).await.map_err(|e| self.scrub(e));
        if let Err(e) = &result {
            tracing::debug!(deployment = %self.name, task_id = %request.task_id, class = e.class().as_str(),
                status = e.status(), error = %e, "provider call failed");
        }
        result
    }

    async fn exchange(
        &self,
        request: &ProviderRequest,
        caps: &Capabilities,
    ) -> Result<ProviderResponse, ProviderError> {
        let (url, body) = self.wire.call(request, caps)?;
        let task_id = HeaderValue::from_str(&request.task_id)
            .map_err(|_| ProviderError::permanent("task id cannot be sent as an HTTP header"))?;
        let http = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(TASK_ID_HEADER, task_id)
            .header(ATTEMPT_HEADER, request.attempt)
            .json(&body);
        let started = Instant::now();
        let response = http.send().await.map_err(|e| transport_error(&e))?;
        let limits = rate_limits(response.headers(), SystemTime::now());
        if !response.status().is_success() {
            return Err(self.error_response(response).await.with_limits(limits));
        }
        let request_id = self.wire.request_id(response.headers());
        let read = self.read_answer(response, request.stream, started).await.map_err(|e| e.with_limits(limits.clone()));
        let Read { answer, latency, ttft, raw } = read?;
        Ok(ProviderResponse {
            text: answer.text,
            finish_reason: answer.finish_reason,
            usage: answer.usage,
            model: answer.model.unwrap_or_else(|| request.model.clone()),
            request_id: request_id.or(answer.id),
            latency,
            ttft,
            limits,
            // Scrubbed before it is cut, so a key across the cut cannot survive in part.
            raw: raw.map(|r| cap_raw(self.scrub_text(&r))),
        })
    }

    /// Classify a non-success response from its status, headers and (capped) body.
    async fn error_response(&self, response: Response) -> ProviderError {
        let status = response.status();
        let headers = response.headers().clone();
        // An unreadable error body still leaves the status and headers to classify by.
        let body = read_body(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
        self.wire.classify(status, &headers, &body, SystemTime::now())
    }

    /// Read a 200: a stream when one was asked for and the server sent one, else a whole body.
    /// `latency` is taken at the last byte (or the stream's end marker), before parsing.
    async fn read_answer(&self, response: Response, stream: bool, started: Instant) -> Result<Read, ProviderError> {
        let is_sse = header_string(response.headers(), CONTENT_TYPE.as_str())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if stream && is_sse {
            return self.read_stream(response, started).await;
        }
        let body = read_body(response, MAX_BODY_BYTES).await?;
        let latency = started.elapsed();
        let answer = self.wire.parse(&body)?;
        let raw = self.keep_raw.then(|| String::from_utf8_lossy(&body).into_owned());
        Ok(Read { answer, latency, ttft: None, raw })
    }

    async fn read_stream(&self, response: Response, started: Instant) -> Result<Read, ProviderError> {
        let mut decoder = SseDecoder::default();
        let mut parser = self.wire.stream();
        let mut ttft = None;
        let mut received = 0;
        let mut raw = self.keep_raw.then(Vec::new);
        let mut body = response.bytes_stream();
        // Stop at the stream's own end marker rather than wait for the server to end the body.
        while !parser.is_done() {
            let Some(piece) = body.next().await else {
                if let Some(last) = decoder.finish()? {
                    parser.event(last)?;
                }
                break;
            };
            let piece = piece.map_err(|e| transport_error(&e))?;
            received += piece.len();
            if received > MAX_BODY_BYTES {
                return Err(ProviderError::transient(format!("stream larger than {MAX_BODY_BYTES} bytes")));
            }
            if let Some(raw) = &mut raw {
                raw.extend_from_slice(&piece);
            }
            for event in decoder.feed(&piece)? {
                parser.event(event)?;
                if ttft.is_none() && parser.has_content() {
                    ttft = Some(started.elapsed());
                }
            }
        }
        let latency = started.elapsed();
        if parser.is_done() {
            drain(body).await;
        }
        let raw = raw.map(|r| String::from_utf8_lossy(&r).into_owned());
        Ok(Read { answer: parser.finish()?, latency, ttft, raw })
    }

    /// Every model the deployment serves, following the list's pages.
    pub async fn models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        let mut models = Vec::new();
        let mut page = None;
        for _ in 0..MAX_MODEL_PAGES {
            let url = self.wire.models_url(page.as_deref())?;
            let response =
                self.client.get(url).headers(self.headers.clone()).send().await.map_err(|e| transport_error(&e))?;
            if !response.status().is_success() {
                return Err(self.scrub(self.error_response(response).await));
            }
            let body = read_body(response, MAX_BODY_BYTES).await?;
            let next = self.wire.parse_models(&body)?;
            models.extend(next.models);
            match next.next {
                Some(token) if page.as_deref() != Some(token.as_str()) => page = Some(token),
                _ => return Ok(models),
            }
        }
        Ok(models)
    }

    /// Remove the key from anything a server echoed back.
    fn scrub(&self, error: ProviderError) -> ProviderError {
        match &self.api_key {
            Some(key) => error.map_detail(|d| key.scrub(d)),
            None => error,
        }
    }

    fn scrub_text(&self, text: &str) -> String {
        self.api_key.as_ref().map_or_else(|| text.to_owned(), |k| k.scrub(text))
    }
}

/// What reading a successful answer gave.
struct Read {
    answer: Answer,
    /// From just before the request was sent to the last byte or the stream's end marker.
    latency: Duration,
    ttft: Option<Duration>,
    raw: Option<String>,
}

/// Read what a server sends after a stream's end marker (usually only the end of the chunked
/// body), briefly and boundedly, so the HTTP/1.1 connection goes back to the pool instead of
/// being closed. Outside the measured latency.
async fn drain<B: AsRef<[u8]>>(mut body: impl futures::Stream<Item = reqwest::Result<B>> + Unpin) {
    let rest = async {
        let mut left = MAX_DRAIN_BYTES;
        while let Some(Ok(piece)) = body.next().await {
            left = left.saturating_sub(piece.as_ref().len());
            if left == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, rest).await;
}

/// `raw` cut to [`MAX_RAW_BYTES`] (on a character boundary), saying so at its end.
fn cap_raw(raw: String) -> String {
    if raw.len() <= MAX_RAW_BYTES {
        return raw;
    }
    let mut end = MAX_RAW_BYTES;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[taskexec: raw body truncated: {} of {} bytes kept]", &raw[..end], end, raw.len())
}

/// The key header in `wire`'s style, then the wire's fixed headers.
fn headers_for(wire: &impl Wire, api_key: Option<&ApiKey>) -> Result<HeaderMap, BuildError> {
    let mut headers = HeaderMap::new();
    if let Some(key) = api_key {
        let (name, value) = match wire.auth() {
            AuthStyle::Bearer => (AUTHORIZATION, key.header_value("Bearer ")),
            AuthStyle::Header(name) => (HeaderName::from_static(name), key.header_value("")),
        };
        headers.insert(name, value.ok_or(BuildError::BadKey)?);
    }
    headers.extend(wire.fixed_headers());
    Ok(headers)
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

/// A header's value as text, if present and readable.
pub(crate) fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// `base` joined with `path` (`base` may or may not end in `/`).
pub(crate) fn join(base: &str, path: &str) -> Result<Url, BuildError> {
    Url::parse(&format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/')))
        .map_err(|_| BuildError::BadBaseUrl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bodies_are_capped_on_a_char_boundary() {
        assert_eq!(cap_raw("short".into()), "short");
        let long = "é".repeat(MAX_RAW_BYTES);
        let capped = cap_raw(long);
        assert!(capped.len() < MAX_RAW_BYTES + 100);
        assert!(capped.ends_with(&format!("of {} bytes kept]", 2 * MAX_RAW_BYTES)), "{}", &capped[capped.len() - 80..]);
    }
}
