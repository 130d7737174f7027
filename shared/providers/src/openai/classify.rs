//! Classification of every failure of an OpenAI-compatible call into a [`ProviderError`], from
//! the status, the error body (`{"error":{"message","type","param","code"}}`) and the headers —
//! never from the status alone: a 429 is a rate limit unless its code says the quota is used up,
//! which no retry fixes. One table, [`class_of_code`], reads the error `code` for HTTP errors,
//! chat-completions stream errors and Responses API failures alike.
//!
//! References: <https://platform.openai.com/docs/guides/error-codes> (HTTP error codes);
//! <https://platform.openai.com/docs/api-reference/responses/object> (`error.code` of a failed
//! response: `server_error`, `rate_limit_exceeded`, `invalid_prompt`, `vector_store_timeout`,
//! `invalid_image`, `invalid_image_format`, `invalid_base64_image`, `invalid_image_url`,
//! `image_too_large`, `image_too_small`, `image_parse_error`, `image_content_policy_violation`,
//! `invalid_image_mode`, `image_file_too_large`, `unsupported_image_media_type`,
//! `empty_image_file`, `failed_to_download_image`, `image_file_not_found`).

use std::time::SystemTime;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use taskexec_core::error::ProviderError;

use crate::answer::cap;
use crate::http::failure::{Class, describe, error_value, retry_after, text_field};

/// Codes no retry fixes: the account (quota, billing) or the request itself is the problem.
const PERMANENT_CODES: [&str; 10] = [
    "insufficient_quota",
    "billing_hard_limit_reached",
    "context_length_exceeded",
    "invalid_prompt",
    "content_filter",
    "invalid_request_error",
    "invalid_base64_image",
    "unsupported_image_media_type",
    "empty_image_file",
    "image_file_not_found",
];

/// Prefixes of the image codes that say the request's image is unusable (`invalid_image`,
/// `invalid_image_url`, `image_too_large`, `image_content_policy_violation` …).
const PERMANENT_PREFIXES: [&str; 2] = ["invalid_image", "image_"];

/// Codes worth another try: the server failed (`vector_store_timeout` is a retrieval timeout).
const TRANSIENT_CODES: [&str; 2] = ["server_error", "vector_store_timeout"];

/// The class an OpenAI error code names; `None` for a code the table does not know (unknown
/// codes, and `failed_to_download_image`, which may be a passing network failure). The table
/// for every OpenAI error, whether in an HTTP error body, a stream or a failed response.
pub(crate) fn class_of_code(code: &str) -> Option<Class> {
    if code == "rate_limit_exceeded" {
        Some(Class::RateLimited)
    } else if PERMANENT_CODES.contains(&code) || PERMANENT_PREFIXES.iter().any(|p| code.starts_with(p)) {
        Some(Class::Permanent)
    } else if TRANSIENT_CODES.contains(&code) {
        Some(Class::Transient)
    } else {
        None
    }
}

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

    /// The class the error's `code` names, else its `type`'s (`None`: neither is known).
    pub(crate) fn class(&self) -> Option<Class> {
        [&self.code, &self.kind].into_iter().flatten().find_map(|c| class_of_code(c))
    }

    /// The error, without an HTTP status: the code's class, and transient when the code names
    /// none (the stream broke or the server failed; the request may be fine).
    pub(crate) fn without_status(&self, fallback: &str) -> ProviderError {
        let detail = cap(self.message.as_deref().unwrap_or(fallback));
        self.class().unwrap_or(Class::Transient).error(None, self.provider_code(), detail, None)
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
    // A code that says no retry helps wins below 500 (a quota 429 is permanent); otherwise the
    // status decides — a 5xx means the server, whatever its body says.
    let class = match (fields.class(), status.as_u16()) {
        (Some(Class::Permanent), s) if s < 500 => Class::Permanent,
        (_, s) => Class::of_status(s),
    };
    class.error(Some(status.as_u16()), code, detail, retry_after(headers, now))
}

/// The error for an `error` object sent inside a 200 stream, classed by its code (a quota used
/// up mid-stream is permanent), transient when the code is unknown.
pub(crate) fn classify_stream_error(error: &Value) -> ProviderError {
    ErrorFields::from_value(error).without_status("error event in stream")
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
    fn one_code_table() {
        assert_eq!(class_of_code("rate_limit_exceeded"), Some(Class::RateLimited));
        for code in [
            "insufficient_quota",
            "billing_hard_limit_reached",
            "context_length_exceeded",
            "invalid_prompt",
            "content_filter",
            "invalid_request_error",
            "invalid_image",
            "invalid_image_url",
            "invalid_base64_image",
            "image_too_large",
            "image_content_policy_violation",
            "unsupported_image_media_type",
        ] {
            assert_eq!(class_of_code(code), Some(Class::Permanent), "{code}");
        }
        assert_eq!(class_of_code("server_error"), Some(Class::Transient));
        assert_eq!(class_of_code("something_new"), None);
        // A permanent code on a 400 stays permanent; a 5xx is the server's, whatever the code.
        assert_eq!(
            class_of(400, &error_body("context_length_exceeded", "invalid_request_error")),
            ErrorClass::Permanent
        );
        assert_eq!(class_of(503, &error_body("", "invalid_request_error")), ErrorClass::Transient);
    }

    #[test]
    fn stream_errors_are_classed_by_their_code() {
        let class = |error: Value| classify_stream_error(&error).class();
        let quota = serde_json::json!({"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"});
        assert_eq!(class(quota), ErrorClass::Permanent);
        assert_eq!(
            class(serde_json::json!({"message": "m", "type": "requests", "code": "rate_limit_exceeded"})),
            ErrorClass::RateLimited
        );
        assert_eq!(
            class(serde_json::json!({"message": "m", "type": "server_error", "code": null})),
            ErrorClass::Transient
        );
        assert_eq!(class(serde_json::json!({"message": "m", "code": "brand_new"})), ErrorClass::Transient);
        assert_eq!(class(serde_json::json!("text only")), ErrorClass::Transient);
    }

    #[test]
    fn string_error_bodies_are_understood() {
        let f = ErrorFields::from_body(br#"{"error":"model not loaded"}"#);
        assert_eq!(f.message.as_deref(), Some("model not loaded"));
        assert_eq!(ErrorFields::from_body(b"<html>"), ErrorFields::default());
    }
}
