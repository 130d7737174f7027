//! Response shapes of the Gemini API, as documented in
//! <https://ai.google.dev/api/generate-content> (`GenerateContentResponse`: `candidates`,
//! `promptFeedback`, `usageMetadata`, `modelVersion`, `responseId`),
//! <https://ai.google.dev/gemini-api/docs/text-generation> (streaming with
//! `streamGenerateContent?alt=sse`: one `data:` event per chunk, no end marker),
//! <https://ai.google.dev/api/models> (`models.list`: `models`, `nextPageToken`) and
//! <https://ai.google.dev/gemini-api/docs/troubleshooting> with Google's error model
//! (<https://cloud.google.com/apis/design/errors>: `{"error":{"code","message","status","details"}}`,
//! `google.rpc.RetryInfo.retryDelay` as a protobuf Duration). Ids and counts are examples; the
//! field layout is what the adapter must read.

#![allow(dead_code)]

/// A non-streamed answer from a thinking model (thought tokens counted apart).
pub const COMPLETION: &str = r#"{
  "candidates": [
    {
      "content": {"parts": [{"text": "Hello! How can I help you today?"}], "role": "model"},
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 12,
    "candidatesTokenCount": 9,
    "totalTokenCount": 45,
    "cachedContentTokenCount": 4,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    "thoughtsTokenCount": 24
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "mL0hacqVHaGhz7IPr-K_oAQ"
}"#;

/// The chunks of a streamed answer, each sent as one `data:` event; usage arrives with the
/// last one.
pub const STREAM_CHUNKS: [&str; 3] = [
    r#"{"candidates": [{"content": {"parts": [{"text": "Hello"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 12,"totalTokenCount": 12,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 12}]},"modelVersion": "gemini-2.5-flash","responseId": "nL0hacWzFp2Oz7IP3ZmT0Qg"}"#,
    r#"{"candidates": [{"content": {"parts": [{"text": " there"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 12,"totalTokenCount": 12},"modelVersion": "gemini-2.5-flash","responseId": "nL0hacWzFp2Oz7IP3ZmT0Qg"}"#,
    r#"{"candidates": [{"content": {"parts": [{"text": "!"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 12,"candidatesTokenCount": 3,"totalTokenCount": 30,"thoughtsTokenCount": 15},"modelVersion": "gemini-2.5-flash","responseId": "nL0hacWzFp2Oz7IP3ZmT0Qg"}"#,
];

/// The whole SSE body of [`STREAM_CHUNKS`] (`\r\n` line ends, as the API sends them).
pub fn stream_body() -> String {
    STREAM_CHUNKS.iter().map(|c| format!("data: {c}\r\n\r\n")).collect()
}

/// The first chunks only: the body ends before any `finishReason`.
pub fn truncated_stream_body() -> String {
    STREAM_CHUNKS[..2].iter().map(|c| format!("data: {c}\r\n\r\n")).collect()
}

/// A 200 whose prompt was blocked: no candidates, a `blockReason`.
pub const PROMPT_BLOCKED: &str = r#"{
  "promptFeedback": {
    "blockReason": "PROHIBITED_CONTENT"
  },
  "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
  "modelVersion": "gemini-2.5-flash",
  "responseId": "pL0hacqVHaGhz7IPr-K_oAQ"
}"#;

/// A Google error body.
pub fn error_body(code: u16, status: &str, message: &str, details: serde_json::Value) -> String {
    serde_json::json!({"error": {"code": code, "message": message, "status": status, "details": details}}).to_string()
}

/// 429 with the quota that was hit and the server's wait.
pub fn rate_limit_body() -> String {
    error_body(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        serde_json::json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                    "quotaValue": "10"
                }]
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"}
        ]),
    )
}

/// 429 without `RetryInfo`, wrapped in a JSON array as the streaming endpoints send it.
pub fn rate_limit_array_body() -> String {
    format!(
        "[{}]",
        error_body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", serde_json::json!([]))
    )
}

/// 400 for a bad request (an unknown field).
pub fn invalid_argument_body() -> String {
    error_body(
        400,
        "INVALID_ARGUMENT",
        "Invalid JSON payload received. Unknown name \"foo\": Cannot find field.",
        serde_json::json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"description": "Invalid JSON payload received. Unknown name \"foo\": Cannot find field."}]
        }]),
    )
}

/// 400 for a region without the free tier.
pub fn failed_precondition_body() -> String {
    error_body(400, "FAILED_PRECONDITION", "User location is not supported for the API use.", serde_json::json!([]))
}

/// 403.
pub fn permission_denied_body() -> String {
    error_body(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        serde_json::json!([]),
    )
}

/// 401, echoing `key` as a careless server might (Google itself does not).
pub fn unauthenticated_body(key: &str) -> String {
    error_body(
        401,
        "UNAUTHENTICATED",
        &format!(
            "Request had invalid authentication credentials ({key}). Expected OAuth 2 access token, login cookie or other valid authentication credential."
        ),
        serde_json::json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED"}]),
    )
}

/// 404 for an unknown model.
pub fn not_found_body() -> String {
    error_body(
        404,
        "NOT_FOUND",
        "models/gemini-9-flash is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.",
        serde_json::json!([]),
    )
}

/// 500.
pub fn internal_body() -> String {
    error_body(
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        serde_json::json!([]),
    )
}

/// 503.
pub fn unavailable_body() -> String {
    error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", serde_json::json!([]))
}

/// 504.
pub fn deadline_body() -> String {
    error_body(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.", serde_json::json!([]))
}

/// The first page of the model list (an embedding model, which is not listed, among them).
pub const MODELS_PAGE_1: &str = r#"{
  "models": [
    {"name": "models/gemini-2.5-flash", "version": "001", "displayName": "Gemini 2.5 Flash", "inputTokenLimit": 1048576, "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]},
    {"name": "models/gemini-embedding-001", "version": "001", "displayName": "Gemini Embedding 001", "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens"]}
  ],
  "nextPageToken": "Chltb2RlbHMvZ2VtaW5pLWVtYmVkZGluZy0wMDE="
}"#;

/// The last page.
pub const MODELS_PAGE_2: &str = r#"{
  "models": [
    {"name": "models/gemini-2.5-pro", "version": "2.5", "displayName": "Gemini 2.5 Pro", "supportedGenerationMethods": ["generateContent", "countTokens"]}
  ]
}"#;

/// The page token of [`MODELS_PAGE_1`].
pub const PAGE_2_TOKEN: &str = "Chltb2RlbHMvZ2VtaW5pLWVtYmVkZGluZy0wMDE=";
