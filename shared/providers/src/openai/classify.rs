//! Classification of every failure of an OpenAI-compatible call into a [`ProviderError`], from
//! the status, the error body (`{"error":{"message","type","param","code"}}`) and the headers —
//! never from the status alone: a 429 is a rate limit unless its code says the quota is used up,
//! which no retry fixes.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;

/// Longest `detail` kept on an error, in characters.
pub(crate) const MAX_DETAIL_CHARS: usize = 512;

/// Codes that make a 429 permanent: the account, not the rate, is the problem.
const QUOTA_CODES: [&str; 2] = ["insufficient_quota", "billing_hard_limit_reached"];

/// The fields of an error object, whichever of them the server sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ErrorFields {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
}

impl ErrorFields {
    /// Read `{"error": {...}}`, or `{"error": "text"}` as some compatible servers send.
    pub(crate) fn from_body(body: &[u8]) -> Self {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").map(Self::from_value))
            .unwrap_or_default()
    }

    /// Read an `error` value.
    pub(crate) fn from_value(error: &Value) -> Self {
        if let Some(text) = error.as_str() {
            return Self { message: Some(text.to_owned()), ..Self::default() };
        }
        let field = |name: &str| match error.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Self { message: field("message"), kind: field("type"), code: field("code") }
    }

    /// The provider code: `code`, else `type`.
    pub(crate) fn provider_code(&self) -> Option<String> {
        self.code.clone().or_else(|| self.kind.clone())
    }

    fn is_quota(&self) -> bool {
        [&self.code, &self.kind].into_iter().flatten().any(|c| QUOTA_CODES.contains(&c.as_str()))
    }
}

/// Classify a non-success response.
pub(crate) fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ProviderError {
    let fields = ErrorFields::from_body(body);
    let code = fields.provider_code();
    let detail = cap(&describe(status, &fields, body));
    let status_code = Some(status.as_u16());
    match status.as_u16() {
        429 if fields.is_quota() => ProviderError::Permanent { status: status_code, code, detail },
        429 => ProviderError::RateLimited { retry_after: retry_after(headers, now), status: status_code, code, detail },
        408 | 409 | 500..=599 => {
            ProviderError::Transient { retry_after: retry_after(headers, now), status: status_code, code, detail }
        }
        _ => ProviderError::Permanent { status: status_code, code, detail },
    }
}

/// The error's message, else the start of the body, else the status's reason phrase.
fn describe(status: StatusCode, fields: &ErrorFields, body: &[u8]) -> String {
    if let Some(message) = &fields.message {
        return message.clone();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { status.canonical_reason().unwrap_or("unexpected status").to_owned() } else { text.to_owned() }
}

/// A transient error for an `error` object sent inside a 200 stream.
pub(crate) fn classify_stream_error(error: &Value) -> ProviderError {
    let fields = ErrorFields::from_value(error);
    let detail = fields.message.clone().unwrap_or_else(|| "error event in stream".into());
    ProviderError::Transient { retry_after: None, status: None, code: fields.provider_code(), detail: cap(&detail) }
}

/// The server's retry hint: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP-date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(non_negative) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = header("retry-after")?;
    match non_negative(value) {
        Some(secs) => Duration::try_from_secs_f64(secs).ok(),
        None => httpdate::parse_http_date(value).ok().map(|at| at.duration_since(now).unwrap_or_default()),
    }
}

fn non_negative(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// A transport failure (connect, reset, body read): transient, except a request reqwest could
/// not even build.
pub(crate) fn transport_error(error: &reqwest::Error) -> ProviderError {
    let what = if error.is_connect() {
        "connect failed"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_body() || error.is_decode() {
        "reading the response body failed"
    } else {
        "request failed"
    };
    let detail = cap(&format!("{what}: {}", error_chain(error)));
    if error.is_builder() { ProviderError::permanent(detail) } else { ProviderError::transient(detail) }
}

/// `error: source: source…` — `ProviderError` has no source field, so the chain is kept as text.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` cut to [`MAX_DETAIL_CHARS`] characters.
pub(crate) fn cap(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (*k, HeaderValue::from_str(v).unwrap()))
            .map(|(k, v)| (k.parse().unwrap(), v))
            .collect()
    }

    fn error_body(code: &str, kind: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"error": {"message": "m", "type": kind, "param": null, "code": code}}))
            .unwrap()
    }

    fn class_of(status: u16, body: &[u8]) -> ErrorClass {
        classify_response(StatusCode::from_u16(status).unwrap(), &HeaderMap::new(), body, SystemTime::now()).class()
    }

    #[test]
    fn status_and_body_decide_the_class() {
        let rate = error_body("rate_limit_exceeded", "requests");
        assert_eq!(class_of(429, &rate), ErrorClass::RateLimited);
        assert_eq!(class_of(429, &error_body("insufficient_quota", "insufficient_quota")), ErrorClass::Permanent);
        assert_eq!(class_of(429, b""), ErrorClass::RateLimited);
        for s in [408, 409, 500, 502, 503, 504, 529] {
            assert_eq!(class_of(s, b"oops"), ErrorClass::Transient, "{s}");
        }
        for s in [400, 401, 403, 404, 422, 418, 302] {
            assert_eq!(class_of(s, b"{}"), ErrorClass::Permanent, "{s}");
        }
    }

    #[test]
    fn keeps_code_and_message() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = classify_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body, SystemTime::now());
        let t = e.to_task_error();
        assert_eq!(t.provider_code.as_deref(), Some("context_length_exceeded"));
        assert_eq!(t.provider_status, Some(400));
        assert!(t.message.contains("maximum context length"));
        let no_code =
            classify_response(StatusCode::UNAUTHORIZED, &HeaderMap::new(), &error_body("", "auth"), SystemTime::now());
        assert_eq!(no_code.to_task_error().provider_code.as_deref(), Some("auth"));
    }

    #[test]
    fn retry_after_reads_all_three_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1500")]), now), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&headers(&[("retry-after", "2")]), now), Some(Duration::from_secs(2)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &date)]), now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &past)]), now), Some(Duration::ZERO));
        let both = headers(&[("retry-after-ms", "250"), ("retry-after", "9")]);
        assert_eq!(retry_after(&both, now), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "1e300")]), now), None);
    }

    #[test]
    fn long_messages_are_capped() {
        let long = "é".repeat(2000);
        let capped = cap(&long);
        assert_eq!(capped.chars().count(), MAX_DETAIL_CHARS + 1);
        let e = classify_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), long.as_bytes(), SystemTime::now());
        assert!(e.to_string().len() < 2 * MAX_DETAIL_CHARS + 40);
    }

    #[test]
    fn string_error_bodies_are_understood() {
        let f = ErrorFields::from_body(br#"{"error":"model not loaded"}"#);
        assert_eq!(f.message.as_deref(), Some("model not loaded"));
        assert_eq!(ErrorFields::from_body(b"<html>"), ErrorFields::default());
    }
}
