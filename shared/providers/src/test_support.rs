//! Helpers for the adapters' unit tests: a request with nothing set but its model and messages,
//! and a stream parser fed a body in arbitrary pieces.

use std::collections::BTreeMap;

use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::{ChatMessage, Role};

use crate::http::StreamParser;
use crate::http::sse::SseDecoder;

/// One message.
pub(crate) fn message(role: Role, content: &str) -> ChatMessage {
    ChatMessage { role, content: content.into() }
}

/// A request for `model` with `messages`, deployment `d`, task `t`, attempt 1 and no parameter
/// set (tests set theirs with `..bare_request(model, messages)`).
pub(crate) fn bare_request(model: &str, messages: Vec<ChatMessage>) -> ProviderRequest {
    ProviderRequest {
        deployment: "d".into(),
        model: model.into(),
        messages,
        temperature: None,
        top_p: None,
        max_tokens: None,
        stop: Vec::new(),
        seed: None,
        response_format: None,
        stream: false,
        extra: BTreeMap::new(),
        task_id: "t".into(),
        attempt: 1,
    }
}

/// A request for `model` with `messages` and the sampling parameters most adapters map:
/// temperature 0.5, at most 7 tokens, stop at a newline, seed 42, a JSON-object response.
pub(crate) fn sampled_request(model: &str, messages: Vec<ChatMessage>) -> ProviderRequest {
    ProviderRequest {
        temperature: Some(0.5),
        max_tokens: Some(7),
        stop: vec!["\n".into()],
        seed: Some(42),
        response_format: Some(serde_json::json!({"type": "json_object"})),
        ..bare_request(model, messages)
    }
}

/// A system prompt and three alternating turns: "be brief", then user "hi", assistant "hello",
/// user "again".
pub(crate) fn conversation() -> Vec<ChatMessage> {
    vec![
        message(Role::System, "be brief"),
        message(Role::User, "hi"),
        message(Role::Assistant, "hello"),
        message(Role::User, "again"),
    ]
}

/// Feed `body` in pieces of `piece` bytes through the SSE decoder into a fresh stream parser.
pub(crate) fn feed<S: StreamParser + Default>(body: &[u8], piece: usize) -> Result<S, ProviderError> {
    let mut decoder = SseDecoder::default();
    let mut stream = S::default();
    for part in body.chunks(piece) {
        for event in decoder.feed(part)? {
            stream.event(event)?;
        }
    }
    if let Some(last) = decoder.finish()? {
        stream.event(last)?;
    }
    Ok(stream)
}
