//! Response shapes of OpenAI's chat-completions API, as documented in
//! <https://platform.openai.com/docs/api-reference/chat> (the `chat.completion` object, the
//! `chat.completion.chunk` object with `stream_options: {"include_usage": true}`) and its error
//! object `{"error": {"message", "type", "param", "code"}}`
//! (<https://platform.openai.com/docs/guides/error-codes>). Ids, fingerprints and timestamps are
//! examples; the field layout is what the adapter must read.

/// A non-streamed answer.
pub const COMPLETION: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4o-mini-2024-07-18",
  "choices": [
    {
      "index": 0,
      "message": {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": null, "annotations": []},
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_06737a9306"
}"#;

/// The chunks of a streamed answer with a usage chunk, each sent as one `data:` event.
pub const STREAM_CHUNKS: [&str; 6] = [
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":" there"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
];

/// An SSE body of one `data:` event per chunk, then `data: [DONE]` when `done`.
pub fn sse_data(chunks: &[&str], done: bool) -> String {
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

/// The whole SSE body of [`STREAM_CHUNKS`], ending with `data: [DONE]`.
pub fn stream_body() -> String {
    sse_data(&STREAM_CHUNKS, true)
}

/// The first chunks only: no `finish_reason`, no `[DONE]`.
pub fn truncated_stream_body() -> String {
    sse_data(&STREAM_CHUNKS[..2], false)
}

/// An error body.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}}).to_string()
}

/// 429 for a request rate.
pub fn rate_limit_body() -> String {
    error_body(
        "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "requests",
        None,
        Some("rate_limit_exceeded"),
    )
}

/// 429 for an exhausted quota: no retry helps.
pub fn quota_body() -> String {
    error_body(
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        None,
        Some("insufficient_quota"),
    )
}

/// 400 for a prompt too long for the model.
pub fn context_length_body() -> String {
    error_body(
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 130532 tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        Some("messages"),
        Some("context_length_exceeded"),
    )
}

/// 500.
pub fn server_error_body() -> String {
    error_body("The server had an error while processing your request. Sorry about that!", "server_error", None, None)
}

/// 503.
pub fn overloaded_body() -> String {
    error_body("The engine is currently overloaded, please try again later.", "server_error", None, None)
}
