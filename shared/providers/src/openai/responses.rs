//! OpenAI's Responses API: `POST {base_url}/responses`, whole or streamed as named SSE events,
//! for the models served only there (`*-pro`, `*-deep-research`, `codex-*` …) or for every
//! model of a deployment with `api = "responses"`. Errors share the chat-completions body, so
//! classification is [`classify_response`]'s; the model list is `GET {base_url}/models`.
//!
//! The body: system prompts become `instructions` (or `developer` input items for models that
//! take developer messages), the rest of the conversation `input`; `max_output_tokens`;
//! `text.format` from the task's chat-completions style `response_format`; `store: false`, since
//! a benchmark has no use for stored responses. The API has no `stop` and no `seed`:
//! [`crate::capability::for_deployment`] refuses (or drops) them up front for every call routed
//! here, and a request that still carries them fails permanently rather than silently losing
//! them.
//! References: <https://platform.openai.com/docs/api-reference/responses/create>,
//! <https://platform.openai.com/docs/api-reference/responses-streaming>.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::{Role, Usage};

use super::classify::{ErrorFields, classify_response};
use super::wire::{TokenDetails, parse_models};
use crate::answer::{Answer, ModelPage, cap, malformed, truncated};
use crate::capability::{Capabilities, SystemPlacement};
use crate::http::sse::SseEvent;
use crate::http::{AuthStyle, BuildError, StreamParser, Wire, join};

/// Body fields the adapter owns: `extra` may not set them.
const RESERVED: [&str; 4] = ["model", "input", "stream", "instructions"];

/// The Responses wire format at one base URL.
#[derive(Debug, Clone)]
pub struct OpenAiResponses {
    responses: Url,
    models: Url,
}

impl OpenAiResponses {
    /// The API rooted at `base_url` (such as `https://api.openai.com/v1`).
    pub(crate) fn new(base_url: &str) -> Result<Self, BuildError> {
        Ok(Self { responses: join(base_url, "responses")?, models: join(base_url, "models")? })
    }

    /// The URL called.
    #[cfg(test)]
    #[must_use]
    pub fn endpoint(&self) -> &Url {
        &self.responses
    }
}

impl Wire for OpenAiResponses {
    type Stream = ResponsesStream;

    fn auth(&self) -> AuthStyle {
        AuthStyle::Bearer
    }

    fn call(&self, request: &ProviderRequest, caps: &Capabilities) -> Result<(Url, Value), ProviderError> {
        Ok((self.responses.clone(), request_body(request, caps)?))
    }

    fn parse(&self, body: &[u8]) -> Result<Answer, ProviderError> {
        let response: ResponseObject = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
        response.into_answer(None)
    }

    fn stream(&self) -> ResponsesStream {
        ResponsesStream::default()
    }

    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8], now: SystemTime) -> ProviderError {
        classify_response(status, headers, body, now)
    }

    fn models_url(&self, _page: Option<&str>) -> Result<Url, ProviderError> {
        Ok(self.models.clone())
    }

    fn parse_models(&self, body: &[u8]) -> Result<ModelPage, ProviderError> {
        parse_models(body)
    }
}

/// The JSON body for `request`.
pub(crate) fn request_body(request: &ProviderRequest, caps: &Capabilities) -> Result<Value, ProviderError> {
    if !request.stop.is_empty() {
        return Err(ProviderError::permanent("the Responses API has no `stop`; remove `parameters.stop`"));
    }
    if request.seed.is_some() {
        return Err(ProviderError::permanent("the Responses API has no `seed`; remove `parameters.seed`"));
    }
    let developer = caps.system == SystemPlacement::Developer;
    let mut instructions = Vec::new();
    let mut input = Vec::new();
    for m in &request.messages {
        match m.role {
            Role::System if developer => input.push(json!({ "role": "developer", "content": m.content })),
            Role::System => instructions.push(m.content.as_str()),
            Role::User => input.push(json!({ "role": "user", "content": m.content })),
            Role::Assistant => input.push(json!({ "role": "assistant", "content": m.content })),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    if !instructions.is_empty() {
        body.insert("instructions".into(), json!(instructions.join("\n\n")));
    }
    body.insert("input".into(), Value::Array(input));
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    };
    put("max_output_tokens", request.max_tokens.or(caps.default_max_tokens).map(Value::from));
    put("temperature", request.temperature.map(Value::from));
    put("top_p", request.top_p.map(Value::from));
    put("text", request.response_format.as_ref().map(|f| json!({ "format": text_format(f) })));
    if request.stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    body.insert("store".into(), Value::Bool(false));
    for (key, value) in &request.extra {
        if RESERVED.contains(&key.as_str()) {
            return Err(ProviderError::permanent(format!("`parameters.extra` may not set `{key}`")));
        }
        body.insert(key.clone(), value.clone());
    }
    Ok(Value::Object(body))
}

/// `text.format` from a chat-completions `response_format`: a `json_schema` format's nested
/// `json_schema` object (`name`, `schema`, `strict`, `description`) is flattened beside `type`;
/// anything else (`text`, `json_object`, an already flat schema) is passed as given.
fn text_format(format: &Value) -> Value {
    let nested = format.get("json_schema").and_then(Value::as_object);
    match (format.get("type").and_then(Value::as_str), nested) {
        (Some("json_schema"), Some(schema)) => {
            let mut flat = Map::new();
            flat.insert("type".into(), json!("json_schema"));
            flat.extend(schema.iter().map(|(k, v)| (k.clone(), v.clone())));
            Value::Object(flat)
        }
        _ => format.clone(),
    }
}

/// A `response` object (the whole answer, or the `response` of a stream's last event).
#[derive(Debug, Deserialize)]
struct ResponseObject {
    id: Option<String>,
    status: Option<String>,
    model: Option<String>,
    #[serde(default)]
    output: Option<Vec<OutputItem>>,
    incomplete_details: Option<IncompleteDetails>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputItem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Option<Vec<ContentPart>>,
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IncompleteDetails {
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct WireUsage {
    input_tokens: u64,
    output_tokens: u64,
    input_tokens_details: Option<TokenDetails>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_tokens: u.input_tokens_details.and_then(|d| d.cached_tokens),
        }
    }
}

impl ResponseObject {
    /// The text of every `output_text` part of every `message` item (reasoning items are not
    /// the answer).
    fn text(&self) -> String {
        let messages = self.output.iter().flatten().filter(|item| item.kind == "message");
        let parts = messages.flat_map(|item| item.content.iter().flatten());
        parts.filter(|p| p.kind == "output_text").filter_map(|p| p.text.as_deref()).collect()
    }

    /// The answer, with `streamed` text in place of the object's when the deltas carried some.
    fn into_answer(self, streamed: Option<String>) -> Result<Answer, ProviderError> {
        let finish_reason = match self.status.as_deref() {
            Some("completed") => "stop",
            Some("incomplete") => match self.incomplete_details.as_ref().and_then(|d| d.reason.as_deref()) {
                Some("max_output_tokens") => "length",
                Some("content_filter") => "content_filter",
                _ => "other",
            },
            Some("failed") => return Err(failure(self.error.as_ref(), "the response failed")),
            Some(other) => {
                return Err(ProviderError::transient(format!("response ended with status `{}`", cap(other))));
            }
            None => return Err(ProviderError::transient("malformed response body: no status")),
        };
        let text = streamed.filter(|t| !t.is_empty()).unwrap_or_else(|| self.text());
        Ok(Answer {
            text,
            finish_reason: finish_reason.to_owned(),
            usage: self.usage.map(Usage::from).unwrap_or_default(),
            model: self.model,
            id: self.id,
        })
    }
}

/// The error for an error object (`{"code","message"}`), whether it is a failed response's
/// `error` or the payload of an `error` event: classed by its `code` with the table HTTP errors
/// use ([`ErrorFields::without_status`]): a used-up quota or a bad prompt is permanent, a rate
/// limit is one, a server error or an unknown code is transient. The `type` beside the fields
/// of an `error` event is the event's name, not an error type: only `code` counts.
fn failure(error: Option<&Value>, fallback: &str) -> ProviderError {
    let fields = error.map(ErrorFields::from_value).unwrap_or_default();
    ErrorFields { kind: None, ..fields }.without_status(fallback)
}

/// A streamed response, event by event. The text is the concatenation of
/// `response.output_text.delta` events; the stream is complete at `response.completed`,
/// `response.incomplete` or `response.failed` (there is no `[DONE]`). A stream cut before one
/// of them is a transient failure.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    text: String,
    answer: Option<Answer>,
}

impl StreamParser for ResponsesStream {
    fn event(&mut self, event: SseEvent) -> Result<(), ProviderError> {
        if self.answer.is_some() {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&event.data).map_err(|e| malformed(&e))?;
        let name = event.event.as_deref().or_else(|| data.get("type").and_then(Value::as_str)).unwrap_or_default();
        match name {
            "response.output_text.delta" => {
                if let Some(delta) = data.get("delta").and_then(Value::as_str) {
                    self.text.push_str(delta);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let response = data.get("response").cloned().unwrap_or(Value::Null);
                let response: ResponseObject = serde_json::from_value(response).map_err(|e| malformed(&e))?;
                self.answer = Some(response.into_answer(Some(std::mem::take(&mut self.text)))?);
            }
            // Some servers nest the object in `error`, OpenAI puts `code`/`message` beside `type`.
            "error" => return Err(failure(Some(data.get("error").unwrap_or(&data)), "error event in stream")),
            _ => {}
        }
        Ok(())
    }

    fn has_content(&self) -> bool {
        !self.text.is_empty() || self.answer.as_ref().is_some_and(|a| !a.text.is_empty())
    }

    fn is_done(&self) -> bool {
        self.answer.is_some()
    }

    fn finish(self) -> Result<Answer, ProviderError> {
        self.answer.ok_or_else(|| truncated("ended before response.completed"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use taskexec_core::error::ErrorClass;

    use super::*;
    use crate::capability::capabilities;
    use crate::config::ProviderKind;
    use crate::test_support::{bare_request, conversation, feed};

    fn request(model: &str) -> ProviderRequest {
        ProviderRequest {
            temperature: Some(0.5),
            max_tokens: Some(7),
            response_format: Some(json!({"type": "json_object"})),
            stream: true,
            extra: BTreeMap::from([("reasoning".into(), json!({"effort": "high"}))]),
            ..bare_request(model, conversation())
        }
    }

    fn body(r: &ProviderRequest) -> Result<Value, ProviderError> {
        request_body(r, &capabilities(ProviderKind::OpenAi, &r.model))
    }

    #[test]
    fn maps_every_field() {
        assert_eq!(
            body(&request("gpt-4o")).unwrap(),
            json!({
                "model": "gpt-4o", "instructions": "be brief",
                "input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "again"}],
                "max_output_tokens": 7, "temperature": 0.5, "text": {"format": {"type": "json_object"}},
                "stream": true, "store": false, "reasoning": {"effort": "high"}
            })
        );
    }

    #[test]
    fn developer_models_get_developer_input_items() {
        let mut r = request("o3-pro");
        r.temperature = None;
        let b = body(&r).unwrap();
        assert!(b.get("instructions").is_none());
        assert_eq!(b["input"][0], json!({"role": "developer", "content": "be brief"}));
    }

    #[test]
    fn json_schema_is_flattened() {
        let mut r = request("gpt-4o");
        r.response_format = Some(
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}}),
        );
        assert_eq!(
            body(&r).unwrap()["text"],
            json!({"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": true}})
        );
    }

    #[test]
    fn stop_seed_and_reserved_extra_are_permanent() {
        let mut r = request("gpt-4o");
        r.stop = vec!["x".into()];
        assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent);
        let mut r = request("gpt-4o");
        r.seed = Some(1);
        assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent);
        let mut r = request("gpt-4o");
        r.extra.insert("instructions".into(), json!("x"));
        assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent);
    }

    fn parse(text: &str) -> Result<Answer, ProviderError> {
        serde_json::from_str::<ResponseObject>(text).map_err(|e| malformed(&e))?.into_answer(None)
    }

    #[test]
    fn statuses_map_to_finish_reasons_or_errors() {
        let a = parse(r#"{"id":"r","status":"completed","model":"m","output":[{"type":"reasoning","summary":[]},{"type":"message","content":[{"type":"output_text","text":"a"},{"type":"refusal","refusal":"no"}]},{"type":"message","content":[{"type":"output_text","text":"b"}]}],"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":1},"output_tokens":2}}"#).unwrap();
        assert_eq!((a.text.as_str(), a.finish_reason.as_str()), ("ab", "stop"));
        assert_eq!((a.usage.input_tokens, a.usage.output_tokens, a.usage.cached_tokens), (3, 2, Some(1)));
        let reason = |r: &str| {
            parse(&format!(r#"{{"status":"incomplete","incomplete_details":{{"reason":"{r}"}},"output":[]}}"#))
                .unwrap()
                .finish_reason
        };
        assert_eq!(
            (reason("max_output_tokens").as_str(), reason("content_filter").as_str()),
            ("length", "content_filter")
        );
        let failed =
            parse(r#"{"status":"failed","error":{"code":"server_error","message":"boom"},"output":[]}"#).unwrap_err();
        assert_eq!(failed.class(), ErrorClass::Transient);
        assert_eq!(failed.to_task_error().provider_code.as_deref(), Some("server_error"));
        assert_eq!(parse(r#"{"output":[]}"#).unwrap_err().class(), ErrorClass::Transient);
    }

    #[test]
    fn failures_are_classed_by_their_code() {
        let failed = |code: &str| {
            parse(&format!(r#"{{"status":"failed","error":{{"code":"{code}","message":"m"}},"output":[]}}"#))
                .unwrap_err()
                .class()
        };
        assert_eq!(failed("rate_limit_exceeded"), ErrorClass::RateLimited);
        assert_eq!(failed("invalid_prompt"), ErrorClass::Permanent);
        assert_eq!(failed("insufficient_quota"), ErrorClass::Permanent);
        assert_eq!(failed("invalid_image_url"), ErrorClass::Permanent);
        assert_eq!(failed("image_too_large"), ErrorClass::Permanent);
        assert_eq!(failed("vector_store_timeout"), ErrorClass::Transient);
        assert_eq!(failed("something_new"), ErrorClass::Transient);
        assert_eq!(
            parse(r#"{"status":"failed","error":null,"output":[]}"#).unwrap_err().class(),
            ErrorClass::Transient
        );

        let event = |data: &str| run(data, 7).err().unwrap();
        // An `error` event: the fields sit beside `type`, which names the event.
        let e = event("event: error\ndata: {\"type\":\"error\",\"code\":\"insufficient_quota\",\"message\":\"q\"}\n\n");
        assert_eq!(
            (e.class(), e.to_task_error().provider_code.as_deref()),
            (ErrorClass::Permanent, Some("insufficient_quota"))
        );
        let e = event("event: error\ndata: {\"type\":\"error\",\"code\":null,\"message\":\"q\"}\n\n");
        assert_eq!((e.class(), e.to_task_error().provider_code), (ErrorClass::Transient, None));
        let e = event(concat!(
            "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",",
            "\"error\":{\"code\":\"rate_limit_exceeded\",\"message\":\"slow down\"},\"output\":[]}}\n\n"
        ));
        assert_eq!((e.class(), e.to_string().contains("slow down")), (ErrorClass::RateLimited, true));
    }

    fn run(body: &str, piece: usize) -> Result<ResponsesStream, ProviderError> {
        feed(body.as_bytes(), piece)
    }

    const STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"lo\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":\"completed\",\"model\":\"m\",\"output\":[],\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}}\n\n",
    );

    #[test]
    fn a_stream_accumulates_across_splits() {
        for piece in [1, 9, STREAM.len()] {
            let s = run(STREAM, piece).unwrap();
            assert!(s.is_done());
            let a = s.finish().unwrap();
            assert_eq!((a.text.as_str(), a.finish_reason.as_str(), a.usage.output_tokens), ("Hello", "stop", 2));
        }
    }

    #[test]
    fn a_cut_stream_and_error_events_are_transient() {
        let cut = &STREAM[..STREAM.find("event: response.completed").unwrap()];
        assert_eq!(run(cut, 5).unwrap().finish().unwrap_err().class(), ErrorClass::Transient);
        let e = run("event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"oops\"}\n\n", 4)
            .err()
            .unwrap();
        assert_eq!(
            (e.class(), e.to_task_error().provider_code.as_deref()),
            (ErrorClass::Transient, Some("server_error"))
        );
    }
}
