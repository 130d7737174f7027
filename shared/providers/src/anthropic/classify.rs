//! Classification of every failure of an Anthropic call into a [`ProviderError`], from the
//! error body's `error.type` first (`{"type":"error","error":{"type","message"},"request_id"}`)
//! and the status only when the type is unknown — never from the status alone: a 529
//! `overloaded_error` is a transient failure of the provider (it counts toward the breaker), not
//! a rate limit of the account, and a 429 whose details say the spend limit is reached is
//! permanent. The same classes apply to an `error` event inside a 200 stream.
//! Reference: <https://docs.anthropic.com/en/api/errors>, <https://docs.anthropic.com/en/api/rate-limits>.

use std::time::SystemTime;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;

use crate::answer::cap;
use crate::http::failure::{Class, describe, error_value, retry_after};
use crate::openai::classify::ErrorFields;

/// `error.details.error_code` of a 429 that no wait fixes (the monthly spend limit).
const SPEND_LIMIT_CODE: &str = "enforced_spend_limit_reached";

/// The class of an `error.type`, if it is one the API documents.
fn class_of_type(kind: &str) -> Option<Class> {
    Some(match kind {
        "rate_limit_error" => Class::RateLimited,
        "overloaded_error" | "api_error" | "timeout_error" => Class::Transient,
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large"
        | "billing_error" => Class::Permanent,
        _ => return None,
    })
}

/// Classify a non-success response.
pub(crate) fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ProviderError {
    let error = error_value(body);
    let fields = error.as_ref().map(ErrorFields::from_value).unwrap_or_default();
    let mut class = fields.kind.as_deref().and_then(class_of_type).unwrap_or(Class::of_status(status.as_u16()));
    if class == Class::RateLimited && error.as_ref().is_some_and(is_spend_limit) {
        class = Class::Permanent;
    }
    let detail = describe(status, fields.message.as_deref(), body);
    class.error(Some(status.as_u16()), fields.kind, detail, retry_after(headers, now))
}

/// The error for an `event: error` inside a 200 stream, classed as the HTTP error of its type
/// would be (an unknown type is transient: the answer was cut short).
pub(crate) fn classify_stream_error(data: &str) -> ProviderError {
    let error = serde_json::from_str::<Value>(data).ok().and_then(|v| v.get("error").cloned());
    let fields = error.as_ref().map(ErrorFields::from_value).unwrap_or_default();
    let class = fields.kind.as_deref().and_then(class_of_type).unwrap_or(Class::Transient);
    let detail = cap(fields.message.as_deref().unwrap_or("error event in stream"));
    class.error(None, fields.kind, detail, None)
}

fn is_spend_limit(error: &Value) -> bool {
    error.pointer("/details/error_code").and_then(Value::as_str) == Some(SPEND_LIMIT_CODE)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use reqwest::header::HeaderValue;
    use taskexec_core::error::ErrorClass;

    use super::*;

    fn body(kind: &str) -> String {
        format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"m"}},"request_id":"req_1"}}"#)
    }

    #[test]
    fn the_type_decides_the_class_and_the_status_only_when_unknown() {
        let now = SystemTime::now();
        let mut hinted = HeaderMap::new();
        hinted.insert("retry-after", HeaderValue::from_static("7"));
        let seven = Some(Duration::from_secs(7));
        let cases: &[(u16, &str, &HeaderMap, ErrorClass, Option<Duration>)] = &[
            (429, &body("rate_limit_error"), &hinted, ErrorClass::RateLimited, seven),
            (529, &body("overloaded_error"), &hinted, ErrorClass::Transient, seven),
            (529, &body("overloaded_error"), &HeaderMap::new(), ErrorClass::Transient, None),
            (500, &body("api_error"), &HeaderMap::new(), ErrorClass::Transient, None),
            (504, &body("timeout_error"), &HeaderMap::new(), ErrorClass::Transient, None),
            (400, &body("invalid_request_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (401, &body("authentication_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (402, &body("billing_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (403, &body("permission_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (404, &body("not_found_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (413, &body("request_too_large"), &HeaderMap::new(), ErrorClass::Permanent, None),
            // The type wins over the status.
            (500, &body("invalid_request_error"), &HeaderMap::new(), ErrorClass::Permanent, None),
            (400, &body("overloaded_error"), &HeaderMap::new(), ErrorClass::Transient, None),
            // Unknown or missing type: the status decides.
            (429, &body("new_error"), &hinted, ErrorClass::RateLimited, seven),
            (409, &body("conflict_error"), &HeaderMap::new(), ErrorClass::Transient, None),
            (502, "<html>bad gateway</html>", &HeaderMap::new(), ErrorClass::Transient, None),
            (529, "", &HeaderMap::new(), ErrorClass::Transient, None),
            (418, "{}", &HeaderMap::new(), ErrorClass::Permanent, None),
        ];
        for (status, body, headers, class, retry) in cases {
            let e = classify_response(StatusCode::from_u16(*status).unwrap(), headers, body.as_bytes(), now);
            assert_eq!((e.class(), e.retry_after(), e.status()), (*class, *retry, Some(*status)), "{status} {body}");
        }
    }

    #[test]
    fn keeps_the_type_as_code_and_the_message() {
        let e = classify_response(
            StatusCode::from_u16(529).unwrap(),
            &HeaderMap::new(),
            body("overloaded_error").as_bytes(),
            SystemTime::now(),
        );
        let t = e.to_task_error();
        assert_eq!((t.provider_code.as_deref(), t.message.as_str()), (Some("overloaded_error"), "m"));
    }

    #[test]
    fn a_spend_limit_429_is_permanent() {
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let e = classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body, SystemTime::now());
        assert_eq!((e.class(), e.status()), (ErrorClass::Permanent, Some(429)));
    }

    #[test]
    fn stream_errors_are_classed_by_type() {
        let overloaded = classify_stream_error(&body("overloaded_error"));
        assert_eq!((overloaded.class(), overloaded.status()), (ErrorClass::Transient, None));
        assert_eq!(classify_stream_error(&body("rate_limit_error")).class(), ErrorClass::RateLimited);
        assert_eq!(classify_stream_error(&body("invalid_request_error")).class(), ErrorClass::Permanent);
        assert_eq!(classify_stream_error("not json").class(), ErrorClass::Transient);
    }
}
