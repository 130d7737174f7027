//! Response shapes of Anthropic's Messages API, as documented in
//! <https://docs.anthropic.com/en/api/messages> (the `message` object),
//! <https://docs.anthropic.com/en/api/messages-streaming> (the named SSE events, the `error`
//! event), <https://docs.anthropic.com/en/api/errors> (`{"type":"error","error":{"type","message"},
//! "request_id"}` and the status of each type), <https://docs.anthropic.com/en/api/rate-limits>
//! (`retry-after`, `anthropic-ratelimit-*` headers) and <https://docs.anthropic.com/en/api/models-list>
//! (`{"data","has_more","first_id","last_id"}`). Ids and counts are examples; the field layout
//! is what the adapter must read.

/// A non-streamed answer: a thinking block (not text) and two text blocks.
pub const MESSAGE: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-3-5-haiku-20241022",
  "content": [
    {"type": "thinking", "thinking": "A greeting.", "signature": "EqQBCgIYAhIM"},
    {"type": "text", "text": "Hi! "},
    {"type": "text", "text": "My name is Claude."}
  ],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "service_tier": "standard"}
}"#;

/// The request-id header of every fixture response.
pub const REQUEST_ID: &str = "req_018EeWyXxfu5pfWkrYcMdjWG";

/// The events of a streamed answer, as `(event name, data)`.
pub const STREAM_EVENTS: [(&str, &str); 9] = [
    (
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-3-5-haiku-20241022","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
    ),
    ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
    ("ping", r#"{"type": "ping"}"#),
    ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#),
    ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#),
    ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
    (
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":15}}"#,
    ),
    ("message_stop", r#"{"type":"message_stop"}"#),
    // Never read: the adapter stops at `message_stop`.
    ("ping", r#"{"type": "ping"}"#),
];

fn events(events: &[(&str, &str)]) -> String {
    events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect()
}

/// The whole SSE body of [`STREAM_EVENTS`].
pub fn stream_body() -> String {
    events(&STREAM_EVENTS)
}

/// The first events only: text, but no `message_stop`.
pub fn truncated_stream_body() -> String {
    events(&STREAM_EVENTS[..5])
}

/// A stream that starts, sends text, then an `overloaded_error` event.
pub fn error_event_stream_body() -> String {
    let mut body = events(&STREAM_EVENTS[..4]);
    body.push_str(&events(&[(
        "error",
        r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
    )]));
    body
}

/// The start of a stream, for a server that then hangs.
pub fn stream_prelude() -> String {
    events(&STREAM_EVENTS[..4])
}

/// An error body.
pub fn error_body(kind: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID})
        .to_string()
}

/// `anthropic-ratelimit-*` headers: the input-token budget is nearly used up.
pub const RATE_LIMIT_HEADERS: [(&str, &str); 9] = [
    ("anthropic-ratelimit-requests-limit", "50"),
    ("anthropic-ratelimit-requests-remaining", "49"),
    ("anthropic-ratelimit-requests-reset", "2030-01-01T00:00:01Z"),
    ("anthropic-ratelimit-input-tokens-limit", "40000"),
    ("anthropic-ratelimit-input-tokens-remaining", "120"),
    ("anthropic-ratelimit-input-tokens-reset", "2030-01-01T00:00:12Z"),
    ("anthropic-ratelimit-output-tokens-limit", "8000"),
    ("anthropic-ratelimit-output-tokens-remaining", "7990"),
    ("anthropic-ratelimit-output-tokens-reset", "2030-01-01T00:00:01Z"),
];

/// The first page of the model list.
pub const MODELS_PAGE_1: &str = r#"{
  "data": [
    {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
    {"type": "model", "id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1", "created_at": "2025-08-05T00:00:00Z"}
  ],
  "has_more": true,
  "first_id": "claude-sonnet-4-5-20250929",
  "last_id": "claude-opus-4-1-20250805"
}"#;

/// The second (last) page, after `claude-opus-4-1-20250805`.
pub const MODELS_PAGE_2: &str = r#"{
  "data": [
    {"type": "model", "id": "claude-3-5-haiku-20241022", "display_name": "Claude Haiku 3.5", "created_at": "2024-10-22T00:00:00Z"}
  ],
  "has_more": false,
  "first_id": "claude-3-5-haiku-20241022",
  "last_id": "claude-3-5-haiku-20241022"
}"#;
