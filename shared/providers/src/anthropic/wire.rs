//! Anthropic's Messages wire format: the request body built from a core request (system prompt
//! as a top-level field, a conversation that starts with `user` and alternates, the required
//! `max_tokens`), and the message and model-list shapes read back (only the fields taskexec
//! uses; serde ignores the rest).
//! Reference: <https://docs.anthropic.com/en/api/messages>, <https://docs.anthropic.com/en/api/models-list>.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::{ChatMessage, Role, Usage};

use crate::answer::{Answer, ModelInfo, ModelPage, malformed};
use crate::capability::Capabilities;
use crate::conversation::turns;

/// Body fields the adapter owns: `extra` may not set them (the parsing depends on `stream`, and
/// `system`/`messages` are built from the task's messages).
const RESERVED: [&str; 4] = ["model", "messages", "stream", "system"];
/// What joins system prompts, and consecutive messages of one role, into one.
const JOINER: &str = "\n\n";

/// The JSON body for `request`: every system message joined into `system`, the rest merged into
/// an alternating conversation, `max_tokens` defaulted from the capabilities, then `extra`
/// merged over them.
pub(crate) fn request_body(request: &ProviderRequest, caps: &Capabilities) -> Result<Value, ProviderError> {
    let max_tokens = request.max_tokens.or(caps.default_max_tokens).ok_or_else(|| {
        ProviderError::permanent("Anthropic requires `max_tokens`: set `parameters.maxTokens` on the task")
    })?;
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert(caps.max_tokens_field.into(), json!(max_tokens));
    if let Some(system) = system_prompt(&request.messages) {
        body.insert("system".into(), Value::String(system));
    }
    body.insert("messages".into(), Value::Array(conversation(&request.messages)?));
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if request.stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    for (key, value) in &request.extra {
        if RESERVED.contains(&key.as_str()) {
            return Err(ProviderError::permanent(format!("`parameters.extra` may not set `{key}`")));
        }
        body.insert(key.clone(), value.clone());
    }
    Ok(Value::Object(body))
}

/// Every system message, joined; `None` when there is none.
fn system_prompt(messages: &[ChatMessage]) -> Option<String> {
    let parts: Vec<&str> = messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
    (!parts.is_empty()).then(|| parts.join(JOINER))
}

/// The user and assistant messages as Anthropic accepts them: consecutive messages of one role
/// merged into one text (the API requires alternation), starting with `user`.
fn conversation(messages: &[ChatMessage]) -> Result<Vec<Value>, ProviderError> {
    let role = |r: Role| if r == Role::User { "user" } else { "assistant" };
    Ok(turns(messages, "Anthropic")?
        .into_iter()
        .map(|t| json!({ "role": role(t.role), "content": t.texts.join(JOINER) }))
        .collect())
}

/// A non-streamed `message` object.
#[derive(Debug, Deserialize)]
struct Message {
    id: Option<String>,
    model: Option<String>,
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

/// One content block; only `text` blocks carry answer text.
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// The `usage` object (in a message, and in the `message_start`/`message_delta` stream events,
/// where any field may be missing).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(crate) struct WireUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// `self` with every field `newer` sent replacing its own (stream counts are cumulative).
    pub(crate) fn update(&mut self, newer: Self) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }
}

impl From<WireUsage> for Usage {
    /// Anthropic counts cache reads and writes apart from `input_tokens`; their sum is the
    /// prompt, so `input_tokens` here is the whole prompt and `cached_tokens` the part read
    /// from the cache (as OpenAI reports them).
    fn from(u: WireUsage) -> Self {
        let prompt = [u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens];
        Self {
            input_tokens: prompt.into_iter().flatten().sum(),
            output_tokens: u.output_tokens.unwrap_or_default(),
            cached_tokens: u.cache_read_input_tokens,
        }
    }
}

/// Parse a whole message; anything unreadable is a transient failure (a truncated or garbled
/// 200 is worth another try).
pub(crate) fn parse_message(body: &[u8]) -> Result<Answer, ProviderError> {
    let message: Message = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let text = message.content.into_iter().filter(|b| b.kind == "text").filter_map(|b| b.text).collect();
    Ok(Answer {
        text,
        finish_reason: normalise_stop_reason(message.stop_reason.as_deref()),
        usage: message.usage.map(Usage::from).unwrap_or_default(),
        model: message.model,
        id: message.id,
    })
}

/// `GET /v1/models`: `{"data":[{"id","display_name","type","created_at"}],"has_more","first_id","last_id"}`;
/// the next page starts after `last_id` while `has_more`.
pub(crate) fn parse_models(body: &[u8]) -> Result<ModelPage, ProviderError> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Entry>,
        #[serde(default)]
        has_more: bool,
        last_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        display_name: Option<String>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let models = list.data.into_iter().map(|e| ModelInfo { id: e.id, display_name: e.display_name }).collect();
    Ok(ModelPage { models, next: list.last_id.filter(|_| list.has_more) })
}

/// One of `stop`, `length`, `content_filter`, `tool_calls` or `other`.
pub(crate) fn normalise_stop_reason(reason: Option<&str>) -> String {
    match reason {
        Some("end_turn" | "stop_sequence") => "stop",
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "other",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;
    use crate::capability::{ANTHROPIC_DEFAULT_MAX_TOKENS, capabilities};
    use crate::config::ProviderKind;
    use crate::test_support::{bare_request, message};

    fn request(messages: Vec<ChatMessage>) -> ProviderRequest {
        bare_request("claude-3-5-haiku-latest", messages)
    }

    fn body(r: &ProviderRequest) -> Result<Value, ProviderError> {
        request_body(r, &capabilities(ProviderKind::Anthropic, &r.model))
    }

    #[test]
    fn system_messages_join_into_the_system_field_and_turns_merge() {
        let r = request(vec![
            message(Role::System, "a"),
            message(Role::User, "u1"),
            message(Role::System, "b"),
            message(Role::User, "u2"),
            message(Role::Assistant, "x"),
            message(Role::Assistant, "y"),
            message(Role::User, "u3"),
        ]);
        assert_eq!(
            body(&r).unwrap(),
            json!({
                "model": "claude-3-5-haiku-latest", "max_tokens": ANTHROPIC_DEFAULT_MAX_TOKENS, "system": "a\n\nb",
                "messages": [
                    {"role": "user", "content": "u1\n\nu2"},
                    {"role": "assistant", "content": "x\n\ny"},
                    {"role": "user", "content": "u3"}
                ]
            })
        );
    }

    #[test]
    fn sampling_stop_stream_and_extra_are_mapped() {
        let mut r = request(vec![message(Role::User, "hi")]);
        (r.temperature, r.top_p, r.max_tokens, r.stream) = (Some(0.5), Some(0.9), Some(7), true);
        r.stop = vec!["END".into()];
        r.extra.insert("max_tokens".into(), json!(9));
        r.extra.insert("metadata".into(), json!({"user_id": "u"}));
        let b = body(&r).unwrap();
        assert_eq!((b["temperature"].as_f64(), b["top_p"].as_f64()), (Some(0.5), Some(0.9)));
        assert_eq!((b["stop_sequences"].clone(), b["stream"].clone()), (json!(["END"]), json!(true)));
        assert_eq!((b["max_tokens"].as_u64(), b["metadata"]["user_id"].as_str()), (Some(9), Some("u")));
        assert!(b.get("system").is_none());
    }

    #[test]
    fn an_invalid_conversation_is_permanent() {
        let starts_with_assistant =
            request(vec![message(Role::System, "s"), message(Role::Assistant, "a"), message(Role::User, "u")]);
        let e = body(&starts_with_assistant).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(e.to_string().contains("start with a user message"), "{e}");
        let only_system = request(vec![message(Role::System, "s")]);
        assert_eq!(body(&only_system).unwrap_err().class(), ErrorClass::Permanent);
    }

    #[test]
    fn extra_may_not_set_reserved_fields() {
        for key in RESERVED {
            let mut r = request(vec![message(Role::User, "u")]);
            r.extra.insert(key.into(), json!("x"));
            assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent, "{key}");
        }
    }

    #[test]
    fn stop_reasons_are_normalised() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "other"),
        ];
        for (wire, ours) in cases {
            assert_eq!(normalise_stop_reason(Some(wire)), ours);
        }
        assert_eq!(normalise_stop_reason(None), "other");
    }

    #[test]
    fn text_blocks_are_concatenated_and_cache_counts_join_the_prompt() {
        let answer = parse_message(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","stop_reason":"max_tokens",
                "content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],
                "usage":{"input_tokens":3,"output_tokens":2,"cache_creation_input_tokens":5,"cache_read_input_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!((answer.text.as_str(), answer.finish_reason.as_str()), ("Hello", "length"));
        assert_eq!(answer.usage, Usage { input_tokens: 15, output_tokens: 2, cached_tokens: Some(7) });
        assert_eq!(parse_message(br#"{"id":"x"}"#).unwrap_err().class(), ErrorClass::Transient);
    }

    #[test]
    fn the_model_list_pages_by_last_id() {
        let more = br#"{"data":[{"id":"a","display_name":"A","type":"model","created_at":"2025-02-19T00:00:00Z"}],"has_more":true,"first_id":"a","last_id":"a"}"#;
        let page = parse_models(more).unwrap();
        assert_eq!(page.models, [ModelInfo { id: "a".into(), display_name: Some("A".into()) }]);
        assert_eq!(page.next.as_deref(), Some("a"));
        let last = br#"{"data":[],"has_more":false,"first_id":null,"last_id":null}"#;
        assert_eq!(parse_models(last).unwrap().next, None);
    }
}
