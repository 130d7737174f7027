//! OpenAI's chat-completions wire format: the request body built from a core request, and the
//! response and stream-chunk shapes read back (only the fields taskexec uses; serde ignores the
//! rest, so additions on the server side do not break parsing).
//! Reference: <https://platform.openai.com/docs/api-reference/chat>.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::{Role, Usage};

use crate::answer::{Answer, ModelInfo, ModelPage, malformed};
use crate::capability::{Capabilities, SystemPlacement};

/// Body fields the adapter owns: `extra` may not set them (the parsing depends on `stream`).
const RESERVED: [&str; 3] = ["model", "messages", "stream"];

/// The JSON body for `request`: standard fields mapped by the model's capabilities (the system
/// prompt's role, the name of the token bound), then `extra` merged over them.
pub(crate) fn request_body(request: &ProviderRequest, caps: &Capabilities) -> Result<Value, ProviderError> {
    let system_role = if caps.system == SystemPlacement::Developer { "developer" } else { "system" };
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(request.messages.iter().map(|m| message(m, system_role)).collect()));
    insert_some(&mut body, "temperature", request.temperature.map(Value::from));
    insert_some(&mut body, "top_p", request.top_p.map(Value::from));
    insert_some(&mut body, caps.max_tokens_field, request.max_tokens.map(Value::from));
    insert_some(&mut body, "seed", request.seed.map(Value::from));
    insert_some(&mut body, "response_format", request.response_format.clone());
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if request.stream {
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    for (key, value) in &request.extra {
        if RESERVED.contains(&key.as_str()) {
            return Err(ProviderError::permanent(format!("`parameters.extra` may not set `{key}`")));
        }
        body.insert(key.clone(), value.clone());
    }
    Ok(Value::Object(body))
}

fn insert_some(body: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        body.insert(key.into(), value);
    }
}

fn message(m: &taskexec_core::task::ChatMessage, system_role: &str) -> Value {
    let role = match m.role {
        Role::System => system_role,
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    json!({ "role": role, "content": m.content })
}

/// A non-streamed `chat.completion` object.
#[derive(Debug, Deserialize)]
pub(crate) struct Completion {
    id: Option<String>,
    model: Option<String>,
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: ChoiceMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

/// The `usage` object.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<TokenDetails>,
}

/// The details of a prompt's token count (chat completions and the Responses API).
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct TokenDetails {
    pub cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
        }
    }
}

/// One `chat.completion.chunk` of a stream (or an `error` object sent mid-stream).
#[derive(Debug, Deserialize)]
pub(crate) struct Chunk {
    pub id: Option<String>,
    pub model: Option<String>,
    /// `null` or absent in the usage-only chunk of some compatible servers (vLLM).
    #[serde(default)]
    pub choices: Option<Vec<ChunkChoice>>,
    pub usage: Option<WireUsage>,
    pub error: Option<Value>,
}

/// A choice of a chunk.
#[derive(Debug, Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub delta: Option<Delta>,
    pub finish_reason: Option<String>,
}

/// The new part of the answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Delta {
    pub content: Option<String>,
}

/// Parse a whole completion; anything unreadable is a transient failure (a truncated or garbled
/// 200 is worth another try).
pub(crate) fn parse_completion(body: &[u8]) -> Result<Answer, ProviderError> {
    let completion: Completion = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(ProviderError::transient("malformed response body: no choices"));
    };
    Ok(Answer {
        text: choice.message.content.unwrap_or_default(),
        finish_reason: normalise_finish_reason(choice.finish_reason.as_deref()),
        usage: completion.usage.map(Usage::from).unwrap_or_default(),
        model: completion.model,
        id: completion.id,
    })
}

/// `GET /models`: `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`.
pub(crate) fn parse_models(body: &[u8]) -> Result<ModelPage, ProviderError> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        id: String,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let models = list.data.into_iter().map(|e| ModelInfo { id: e.id, display_name: None }).collect();
    Ok(ModelPage { models, next: None })
}

/// One of `stop`, `length`, `content_filter`, `tool_calls` or `other`.
pub(crate) fn normalise_finish_reason(reason: Option<&str>) -> String {
    match reason {
        Some(r @ ("stop" | "length" | "content_filter" | "tool_calls")) => r,
        Some("function_call") => "tool_calls",
        _ => "other",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::capability::capabilities;
    use crate::config::ProviderKind;
    use crate::test_support::{message, sampled_request};

    fn request() -> ProviderRequest {
        ProviderRequest {
            stream: true,
            extra: BTreeMap::from([("max_completion_tokens".into(), json!(9))]),
            ..sampled_request("gpt-4o-mini", vec![message(Role::System, "be brief"), message(Role::User, "hi")])
        }
    }

    #[test]
    fn maps_every_field() {
        let body = request_body(&request(), &capabilities(ProviderKind::OpenAiCompatible, "gpt-4o-mini")).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "temperature": 0.5, "max_tokens": 7, "stop": ["\n"], "seed": 42,
                "response_format": {"type": "json_object"},
                "stream": true, "stream_options": {"include_usage": true},
                "max_completion_tokens": 9
            })
        );
    }

    #[test]
    fn extra_may_not_set_reserved_fields() {
        let mut r = request();
        r.extra.insert("stream".into(), json!(false));
        let caps = capabilities(ProviderKind::OpenAiCompatible, "m");
        assert_eq!(request_body(&r, &caps).unwrap_err().class(), taskexec_core::error::ErrorClass::Permanent);
    }

    #[test]
    fn reasoning_models_get_developer_messages_and_max_completion_tokens() {
        let mut r = request();
        r.model = "o3-mini".into();
        let body = request_body(&r, &capabilities(ProviderKind::OpenAi, "o3-mini")).unwrap();
        assert_eq!(body["messages"][0]["role"], "developer");
        assert_eq!(body["max_completion_tokens"], 9); // `extra` still wins
        assert!(body.get("max_tokens").is_none());
        r.extra.clear();
        let body = request_body(&r, &capabilities(ProviderKind::OpenAi, "gpt-4.1")).unwrap();
        assert_eq!(
            (body["messages"][0]["role"].as_str(), body["max_completion_tokens"].as_u64()),
            (Some("system"), Some(7))
        );
    }

    #[test]
    fn finish_reasons_are_normalised() {
        assert_eq!(normalise_finish_reason(Some("length")), "length");
        assert_eq!(normalise_finish_reason(Some("function_call")), "tool_calls");
        assert_eq!(normalise_finish_reason(Some("eos")), "other");
        assert_eq!(normalise_finish_reason(None), "other");
    }

    #[test]
    fn reads_the_model_list() {
        let page = parse_models(
            br#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1,"owned_by":"system"}]}"#,
        )
        .unwrap();
        assert_eq!(page.models, [ModelInfo { id: "gpt-4o".into(), display_name: None }]);
        assert_eq!(parse_models(b"[]").unwrap_err().class(), taskexec_core::error::ErrorClass::Transient);
    }

    #[test]
    fn empty_choices_are_transient() {
        let e = parse_completion(br#"{"id":"x","choices":[]}"#).unwrap_err();
        assert_eq!(e.class(), taskexec_core::error::ErrorClass::Transient);
    }
}
