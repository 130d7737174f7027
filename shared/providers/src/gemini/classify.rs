//! Classification of every failed Gemini call into a [`ProviderError`], from Google's error
//! model (`{"error":{"code","message","status","details":[…]}}`, sometimes wrapped in a JSON
//! array by the streaming endpoints) — the canonical `status` string first, the HTTP status
//! only when the string is missing or unknown. A rate limit's wait comes from the
//! `google.rpc.RetryInfo` detail (`retryDelay`, a protobuf Duration such as `"34s"`), else the
//! `Retry-After` header.
//! References: <https://ai.google.dev/gemini-api/docs/troubleshooting>,
//! <https://cloud.google.com/apis/design/errors>, `google/rpc/error_details.proto` (`RetryInfo`).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;

use crate::answer::cap;
use crate::http::failure::{Class, MAX_RETRY_HINT, describe, retry_after, text_field};

/// The `@type` of the detail carrying the server's retry hint.
const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
/// Canonical codes worth retrying with backoff.
const TRANSIENT: [&str; 5] = ["UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN"];
/// Canonical codes no retry fixes (the request, key, project or region must change).
const PERMANENT: [&str; 8] = [
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "NOT_FOUND",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "ALREADY_EXISTS",
];

/// The fields of a Google error object that classification uses.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct GoogleError {
    pub message: Option<String>,
    /// The canonical code's name (`RESOURCE_EXHAUSTED`).
    pub status: Option<String>,
    /// `RetryInfo.retryDelay`, when sent and readable.
    pub retry_delay: Option<Duration>,
}

impl GoogleError {
    /// Read `{"error":{…}}` or `[{"error":{…}}]`; anything else gives no fields.
    pub(crate) fn from_body(body: &[u8]) -> Self {
        let value: Value = serde_json::from_slice(body).unwrap_or_default();
        let envelope = match &value {
            Value::Array(items) => items.first(),
            other => Some(other),
        };
        envelope.and_then(|e| e.get("error")).map(Self::from_value).unwrap_or_default()
    }

    /// Read an `error` object.
    pub(crate) fn from_value(error: &Value) -> Self {
        let retry_delay = error
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|d| d.get("@type").and_then(Value::as_str) == Some(RETRY_INFO))
            .find_map(|d| d.get("retryDelay").and_then(Value::as_str).and_then(parse_duration));
        Self { message: text_field(error, "message"), status: text_field(error, "status"), retry_delay }
    }
}

/// A protobuf `Duration` in its JSON form: seconds with up to nine fractional digits and an `s`
/// suffix (`"34s"`, `"1.5s"`, `"0.000001s"`), read exactly; other unsigned decimal numbers
/// (`"1e16s"`, more digits) through `f64`. At most [`MAX_RETRY_HINT`]: a server's absurd delay is
/// not a reason to park a task for years. Negative or malformed values give `None`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.trim().strip_suffix('s')?;
    exact_duration(number).or_else(|| float_duration(number)).map(|d| d.min(MAX_RETRY_HINT))
}

/// `digits[.digits]` with at most nine fractional digits, without rounding.
fn exact_duration(number: &str) -> Option<Duration> {
    let (secs, frac) = number.split_once('.').map_or((number, None), |(s, f)| (s, Some(f)));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || frac.is_some_and(|f| !digits(f) || f.len() > 9) {
        return None;
    }
    let nanos = match frac {
        Some(f) => format!("{f:0<9}").parse().ok()?,
        None => 0,
    };
    Some(Duration::new(secs.parse().ok()?, nanos))
}

/// An unsigned decimal number starting with a digit (`1e16`, `99999999999999999999`), beyond
/// the exact form's range: capped before the conversion, so an overflow is the cap.
fn float_duration(number: &str) -> Option<Duration> {
    let plain = number.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !number.starts_with(|c: char| c.is_ascii_digit()) || !plain {
        return None;
    }
    let secs = number.parse::<f64>().ok().filter(|s| *s >= 0.0)?;
    Duration::try_from_secs_f64(secs.min(MAX_RETRY_HINT.as_secs_f64())).ok()
}

/// Classify a non-success response.
pub(crate) fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ProviderError {
    let error = GoogleError::from_body(body);
    let detail = describe(status, error.message.as_deref(), body);
    let hint = error.retry_delay.or_else(|| retry_after(headers, now));
    build(error.status, Some(status.as_u16()), detail, hint)
}

/// The error for an `error` object sent inside a 200 stream: classified by its `status` string;
/// without one it is transient (the stream broke, the request may be fine).
pub(crate) fn classify_stream_error(error: &Value) -> ProviderError {
    let fields = GoogleError::from_value(error);
    let detail = cap(fields.message.as_deref().unwrap_or("error event in stream"));
    let http = error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok());
    match fields.status {
        Some(_) => build(fields.status, http, detail, fields.retry_delay),
        None => Class::Transient.error(http, None, detail, None),
    }
}

/// The class by canonical code, else by HTTP status.
fn build(code: Option<String>, status: Option<u16>, detail: String, hint: Option<Duration>) -> ProviderError {
    let named = code.as_deref().unwrap_or_default();
    let class = if named == "RESOURCE_EXHAUSTED" {
        Class::RateLimited
    } else if TRANSIENT.contains(&named) {
        Class::Transient
    } else if PERMANENT.contains(&named) {
        Class::Permanent
    } else {
        status.map_or(Class::Permanent, Class::of_status)
    };
    class.error(status, code, detail, hint)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn body(code: u16, status: &str, details: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"error": {"code": code, "message": "m", "status": status, "details": details}}))
            .unwrap()
    }

    fn retry_info(delay: &str) -> Value {
        json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "q"}]},
            {"@type": RETRY_INFO, "retryDelay": delay}
        ])
    }

    /// HTTP status, body, `Retry-After` header, class, retry_after, code.
    type Case<'a> = (u16, Vec<u8>, Option<&'a str>, ErrorClass, Option<Duration>, Option<&'a str>);

    #[test]
    fn status_body_and_headers_decide_class_and_wait() {
        let none = json!([]);
        let s = Duration::from_secs;
        let table: Vec<Case<'_>> = vec![
            (
                429,
                body(429, "RESOURCE_EXHAUSTED", retry_info("34s")),
                None,
                ErrorClass::RateLimited,
                Some(s(34)),
                Some("RESOURCE_EXHAUSTED"),
            ),
            (
                429,
                body(429, "RESOURCE_EXHAUSTED", retry_info("1.5s")),
                Some("9"),
                ErrorClass::RateLimited,
                Some(Duration::from_millis(1500)),
                Some("RESOURCE_EXHAUSTED"),
            ),
            (
                429,
                body(429, "RESOURCE_EXHAUSTED", none.clone()),
                Some("7"),
                ErrorClass::RateLimited,
                Some(s(7)),
                Some("RESOURCE_EXHAUSTED"),
            ),
            (
                429,
                body(429, "RESOURCE_EXHAUSTED", retry_info("soon")),
                None,
                ErrorClass::RateLimited,
                None,
                Some("RESOURCE_EXHAUSTED"),
            ),
            (429, b"Too Many Requests".to_vec(), None, ErrorClass::RateLimited, None, None),
            (
                503,
                body(503, "UNAVAILABLE", none.clone()),
                Some("3"),
                ErrorClass::Transient,
                Some(s(3)),
                Some("UNAVAILABLE"),
            ),
            (500, body(500, "INTERNAL", none.clone()), None, ErrorClass::Transient, None, Some("INTERNAL")),
            (
                504,
                body(504, "DEADLINE_EXCEEDED", none.clone()),
                None,
                ErrorClass::Transient,
                None,
                Some("DEADLINE_EXCEEDED"),
            ),
            (502, b"<html>bad gateway</html>".to_vec(), None, ErrorClass::Transient, None, None),
            (
                400,
                body(400, "INVALID_ARGUMENT", none.clone()),
                None,
                ErrorClass::Permanent,
                None,
                Some("INVALID_ARGUMENT"),
            ),
            (
                400,
                body(400, "FAILED_PRECONDITION", none.clone()),
                None,
                ErrorClass::Permanent,
                None,
                Some("FAILED_PRECONDITION"),
            ),
            (
                403,
                body(403, "PERMISSION_DENIED", none.clone()),
                None,
                ErrorClass::Permanent,
                None,
                Some("PERMISSION_DENIED"),
            ),
            (
                401,
                body(401, "UNAUTHENTICATED", none.clone()),
                None,
                ErrorClass::Permanent,
                None,
                Some("UNAUTHENTICATED"),
            ),
            (404, body(404, "NOT_FOUND", none.clone()), None, ErrorClass::Permanent, None, Some("NOT_FOUND")),
            // The canonical code wins over the HTTP status.
            (
                500,
                body(500, "INVALID_ARGUMENT", none.clone()),
                None,
                ErrorClass::Permanent,
                None,
                Some("INVALID_ARGUMENT"),
            ),
            (400, body(400, "UNAVAILABLE", none.clone()), None, ErrorClass::Transient, None, Some("UNAVAILABLE")),
            // An unknown code falls back to the HTTP status.
            (503, body(503, "SOMETHING_NEW", none.clone()), None, ErrorClass::Transient, None, Some("SOMETHING_NEW")),
            (418, b"".to_vec(), None, ErrorClass::Permanent, None, None),
        ];
        let now = SystemTime::now();
        for (status, body, header, class, wait, code) in table {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert("retry-after", HeaderValue::from_str(h).unwrap());
            }
            let e = classify_response(StatusCode::from_u16(status).unwrap(), &headers, &body, now);
            let what = format!("{status} {}", String::from_utf8_lossy(&body));
            assert_eq!((e.class(), e.retry_after(), e.status()), (class, wait, Some(status)), "{what}");
            assert_eq!(e.to_task_error().provider_code.as_deref(), code, "{what}");
        }
    }

    #[test]
    fn an_array_wrapped_error_is_read() {
        let body = br#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]"#;
        let e = classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body, SystemTime::now());
        assert_eq!(e.class(), ErrorClass::RateLimited);
        assert_eq!(e.to_task_error().message, "Resource has been exhausted (e.g. check quota).");
    }

    #[test]
    fn durations_follow_the_protobuf_json_form() {
        assert_eq!(parse_duration("34s"), Some(Duration::from_secs(34)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("58.934310785s"), Some(Duration::new(58, 934_310_785)));
        assert_eq!(parse_duration("0.000001s"), Some(Duration::from_micros(1)));
        for bad in ["", "s", "34", "-1s", ".5s", "a s", "infs", "NaNs", "+1s", "1e3e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn absurd_delays_are_capped_at_an_hour() {
        for huge in ["1e16s", "1e400s", "99999999999999999999s", "3601s", "86400.5s"] {
            assert_eq!(parse_duration(huge), Some(MAX_RETRY_HINT), "{huge}");
        }
        assert_eq!(parse_duration("1e3s"), Some(Duration::from_secs(1000)));
        assert_eq!(parse_duration("1.0000000001s").map(|d| d.as_secs()), Some(1));
        let e = classify_response(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            &body(429, "RESOURCE_EXHAUSTED", retry_info("1e16s")),
            SystemTime::now(),
        );
        assert_eq!(e.class(), ErrorClass::RateLimited);
        assert!(e.retry_after().is_some_and(|d| d <= Duration::from_secs(3600)), "{:?}", e.retry_after());
    }

    #[test]
    fn stream_errors_use_their_status() {
        let e = classify_stream_error(&json!({"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}));
        assert_eq!((e.class(), e.status()), (ErrorClass::Transient, Some(503)));
        let e = classify_stream_error(&json!({"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}));
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(classify_stream_error(&json!({"message": "?"})).class(), ErrorClass::Transient);
    }
}
