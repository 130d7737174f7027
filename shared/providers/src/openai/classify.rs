//! Classification of every failure of an OpenAI-compatible call into a [`ProviderError`], from
//! the status, the error body (`{"error":{"message","type","param","code"}}`) and the headers —
//! never from the status alone: a 429 is a rate limit unless its code says the quota is used up,
//! which no retry fixes.

use std::time::SystemTime;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;

use crate::answer::cap;
use crate::http::failure::{Class, describe, error_value, retry_after, text_field};

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
        error_value(body).map(|e| Self::from_value(&e)).unwrap_or_default()
    }

    /// Read an `error` value.
    pub(crate) fn from_value(error: &Value) -> Self {
        if let Some(text) = error.as_str() {
            return Self { message: Some(text.to_owned()), ..Self::default() };
        }
        // Azure sends some codes as numbers.
        let field = |name: &str| {
            text_field(error, name).or_else(|| error.get(name).and_then(Value::as_number).map(ToString::to_string))
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
    let detail = describe(status, fields.message.as_deref(), body);
    let class = match status.as_u16() {
        429 if fields.is_quota() => Class::Permanent,
        other => Class::of_status(other),
    };
    class.error(Some(status.as_u16()), code, detail, retry_after(headers, now))
}

/// A transient error for an `error` object sent inside a 200 stream.
pub(crate) fn classify_stream_error(error: &Value) -> ProviderError {
    let fields = ErrorFields::from_value(error);
    let detail = fields.message.clone().unwrap_or_else(|| "error event in stream".into());
    Class::Transient.error(None, fields.provider_code(), cap(&detail), None)
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;

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
    fn long_messages_are_capped() {
        let long = "é".repeat(2000);
        let e = classify_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), long.as_bytes(), SystemTime::now());
        assert!(e.to_string().len() < 4 * crate::answer::MAX_DETAIL_CHARS);
    }

    #[test]
    fn azure_429_with_a_string_code_is_a_rate_limit_preferring_retry_after_ms() {
        // Azure OpenAI's 429 body and headers (learn.microsoft.com/azure/ai-foundry/openai/quotas-limits).
        let body = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}"#;
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "6".parse().unwrap());
        headers.insert("retry-after-ms", "5800".parse().unwrap());
        let e = classify_response(StatusCode::TOO_MANY_REQUESTS, &headers, body, SystemTime::now());
        assert_eq!(e.class(), ErrorClass::RateLimited);
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_millis(5800)));
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("429"));
        let numeric = br#"{"error":{"code":429,"message":"m"}}"#;
        let e = classify_response(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), numeric, SystemTime::now());
        assert_eq!((e.class(), e.to_task_error().provider_code.as_deref()), (ErrorClass::RateLimited, Some("429")));
    }

    #[test]
    fn string_error_bodies_are_understood() {
        let f = ErrorFields::from_body(br#"{"error":"model not loaded"}"#);
        assert_eq!(f.message.as_deref(), Some("model not loaded"));
        assert_eq!(ErrorFields::from_body(b"<html>"), ErrorFields::default());
    }
}
