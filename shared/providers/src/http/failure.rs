//! Failure helpers shared by every HTTP adapter: the server's retry hint, transport failures.
//! Each adapter's `classify` decides the class from status, body and headers; these helpers
//! only read what is common.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::RateLimits;

use crate::answer::cap;

/// The longest retry hint taken from a provider: a larger one (a misbehaving server, a daily
/// quota) is cut to this, so the engine's clock arithmetic stays in range and the task's own
/// deadline and throttle budget decide when to give up.
pub(crate) const MAX_RETRY_HINT: Duration = Duration::from_secs(3600);

/// The server's retry hint: `retry-after-ms` (OpenAI, Azure), else `Retry-After` in seconds or
/// as an HTTP-date; at most [`MAX_RETRY_HINT`].
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let hint = if let Some(ms) = header("retry-after-ms").and_then(non_negative) {
        hint_secs(ms / 1000.0)
    } else {
        let value = header("retry-after")?;
        match non_negative(value) {
            Some(secs) => hint_secs(secs),
            None => httpdate::parse_http_date(value).ok().map(|at| at.duration_since(now).unwrap_or_default()),
        }
    };
    hint.map(|d| d.min(MAX_RETRY_HINT))
}

/// `secs` as a retry hint, at most [`MAX_RETRY_HINT`] (a huge value is not an error).
pub(crate) fn hint_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_HINT.as_secs_f64())))
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
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text to report for an error response: the provider's message, else the start of the
/// body, else the status's reason phrase.
pub(crate) fn describe(status: reqwest::StatusCode, message: Option<&str>, body: &[u8]) -> String {
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        return cap(message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    cap(if text.is_empty() { status.canonical_reason().unwrap_or("unexpected status") } else { text })
}

/// The `error` value of an error body (`{"error": …}`); `None` when the body is not JSON or has
/// none.
pub(crate) fn error_value(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body).ok().and_then(|mut v| v.get_mut("error").map(Value::take))
}

/// A non-empty string field of an error object.
pub(crate) fn text_field(error: &Value, name: &str) -> Option<String> {
    error.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// What to do about one failure: each adapter decides the class from what its provider sent,
/// then [`Class::error`] builds the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    RateLimited,
    Transient,
    Permanent,
}

impl Class {
    /// The class of an HTTP status whose body named nothing known: 429 is a rate limit, 408,
    /// 409 and 5xx are transient, anything else is permanent.
    pub(crate) fn of_status(status: u16) -> Self {
        match status {
            429 => Self::RateLimited,
            408 | 409 | 500..=599 => Self::Transient,
            _ => Self::Permanent,
        }
    }

    /// The error of this class (rate-limit headers are attached later by the adapter); a
    /// permanent error has no retry hint.
    pub(crate) fn error(
        self,
        status: Option<u16>,
        code: Option<String>,
        detail: String,
        retry_after: Option<Duration>,
    ) -> ProviderError {
        let limits = RateLimits::default();
        match self {
            Self::RateLimited => ProviderError::RateLimited { retry_after, status, code, detail, limits },
            Self::Transient => ProviderError::Transient { retry_after, status, code, detail, limits },
            Self::Permanent => ProviderError::Permanent { status, code, detail, limits },
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap())).collect()
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
        assert_eq!(retry_after(&headers(&[("retry-after", "1e300")]), now), Some(MAX_RETRY_HINT));
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1e16")]), now), Some(MAX_RETRY_HINT));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400 * 365));
        assert_eq!(retry_after(&headers(&[("retry-after", &far)]), now), Some(MAX_RETRY_HINT));
    }

    #[test]
    fn describe_prefers_the_message() {
        let s = reqwest::StatusCode::BAD_GATEWAY;
        assert_eq!(describe(s, Some("upstream"), b"x"), "upstream");
        assert_eq!(describe(s, None, b" <html> "), "<html>");
        assert_eq!(describe(s, Some(""), b""), "Bad Gateway");
    }
}
