//! Gemini's `generateContent` wire format: the request body built from a core request, and the
//! `GenerateContentResponse` read back (whole, or one streamed chunk at a time), plus the model
//! list. Only the fields taskexec uses are read; serde ignores the rest.
//! Reference: <https://ai.google.dev/api/generate-content>, <https://ai.google.dev/api/models>.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::{Role, Usage};

use crate::answer::{ModelInfo, ModelPage, cap, malformed};
use crate::capability::Capabilities;

/// Body fields the adapter owns: `extra` may not set them.
const RESERVED: [&str; 2] = ["contents", "systemInstruction"];
/// The object `extra` is merged into key by key rather than replacing it.
const GENERATION_CONFIG: &str = "generationConfig";

/// The JSON body for `request`: system messages become `systemInstruction`, the others
/// `contents` (assistant → `model`), sampling parameters `generationConfig`, then `extra` merged
/// at the top level (its `generationConfig` merged key by key into the mapped one, so that
/// `thinkingConfig` can be added without losing `temperature`).
pub(crate) fn request_body(request: &ProviderRequest, caps: &Capabilities) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let contents = request.messages.iter().filter(|m| m.role != Role::System).map(content).collect();
    body.insert("contents".into(), Value::Array(contents));
    let system: Vec<Value> =
        request.messages.iter().filter(|m| m.role == Role::System).map(|m| json!({ "text": m.content })).collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let config = generation_config(request, caps)?;
    if !config.is_empty() {
        body.insert(GENERATION_CONFIG.into(), Value::Object(config));
    }
    merge_extra(&mut body, request)?;
    Ok(Value::Object(body))
}

fn content(m: &taskexec_core::task::ChatMessage) -> Value {
    let role = if m.role == Role::Assistant { "model" } else { "user" };
    json!({ "role": role, "parts": [{ "text": m.content }] })
}

fn generation_config(request: &ProviderRequest, caps: &Capabilities) -> Result<Map<String, Value>, ProviderError> {
    let mut config = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            config.insert(key.into(), value);
        }
    };
    put("temperature", request.temperature.map(Value::from));
    put("topP", request.top_p.map(Value::from));
    put(caps.max_tokens_field, request.max_tokens.or(caps.default_max_tokens).map(Value::from));
    put("stopSequences", (!request.stop.is_empty()).then(|| json!(request.stop)));
    put("seed", request.seed.map(Value::from));
    if let Some(format) = &request.response_format {
        for (key, value) in response_format(format)? {
            config.insert(key.into(), value);
        }
    }
    Ok(config)
}

/// `response_format` as `generationConfig` fields: JSON mode is `responseMimeType`; a JSON
/// schema goes to `responseJsonSchema` (full JSON Schema; `responseSchema` is the older
/// OpenAPI subset, not used). Anything else is refused rather than silently ignored.
fn response_format(format: &Value) -> Result<Vec<(&'static str, Value)>, ProviderError> {
    let json_mime = ("responseMimeType", json!("application/json"));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Vec::new()),
        Some("json_object") => Ok(vec![json_mime]),
        Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
            Some(schema) => Ok(vec![json_mime, ("responseJsonSchema", schema.clone())]),
            None => Err(ProviderError::permanent("`responseFormat` of type `json_schema` needs `json_schema.schema`")),
        },
        Some(other) => Err(ProviderError::permanent(format!(
            "`responseFormat` type `{}` is not supported by Gemini (use `text`, `json_object` or `json_schema`)",
            cap(other)
        ))),
        None => {
            Err(ProviderError::permanent("`responseFormat` needs a `type` (`text`, `json_object` or `json_schema`)"))
        }
    }
}

fn merge_extra(body: &mut Map<String, Value>, request: &ProviderRequest) -> Result<(), ProviderError> {
    for (key, value) in &request.extra {
        if RESERVED.contains(&key.as_str()) {
            return Err(ProviderError::permanent(format!("`parameters.extra` may not set `{key}`")));
        }
        match (body.get_mut(key), value) {
            (Some(Value::Object(mapped)), Value::Object(extra)) if key == GENERATION_CONFIG => {
                mapped.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {
                body.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// One `GenerateContentResponse`: a whole answer, or one chunk of a stream.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    pub prompt_feedback: Option<PromptFeedback>,
    pub usage_metadata: Option<UsageMetadata>,
    pub model_version: Option<String>,
    pub response_id: Option<String>,
    /// An error object sent inside a 200 stream.
    pub error: Option<Value>,
}

/// One candidate answer (taskexec asks for one).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Candidate {
    pub content: Option<Content>,
    pub finish_reason: Option<String>,
}

/// A candidate's content.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Content {
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// One part; only text parts are read, thought summaries (`thought: true`) are skipped.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Part {
    pub text: Option<String>,
    #[serde(default)]
    pub thought: bool,
}

/// Why the prompt itself was refused.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromptFeedback {
    pub block_reason: Option<String>,
}

/// Token counts. `promptTokenCount` includes the cached part; thinking models count their
/// thoughts apart from the answer.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    /// Output tokens are the answer's plus the thoughts': both are generated and billed as
    /// output, as OpenAI's `completion_tokens` includes reasoning tokens.
    fn from(u: UsageMetadata) -> Self {
        Self {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_tokens: u.cached_content_token_count,
        }
    }
}

impl GenerateResponse {
    /// Read one response (or chunk); anything unreadable is transient.
    pub(crate) fn from_slice(body: &[u8]) -> Result<Self, ProviderError> {
        serde_json::from_slice(body).map_err(|e| malformed(&e))
    }

    /// The text of the first candidate, thoughts left out.
    pub(crate) fn text(&self) -> impl Iterator<Item = &str> {
        self.candidates
            .first()
            .and_then(|c| c.content.as_ref())
            .into_iter()
            .flat_map(|c| &c.parts)
            .filter(|p| !p.thought)
            .filter_map(|p| p.text.as_deref())
    }

    /// The first candidate's finish reason, if it has one.
    pub(crate) fn finish_reason(&self) -> Option<&str> {
        self.candidates.first().and_then(|c| c.finish_reason.as_deref()).filter(|r| !r.is_empty())
    }

    /// The error for a response whose prompt was blocked (no candidates, a `blockReason`):
    /// permanent, because the same prompt is blocked again; the code is the block reason.
    pub(crate) fn blocked(&self) -> Option<ProviderError> {
        if !self.candidates.is_empty() {
            return None;
        }
        let reason = self.prompt_feedback.as_ref()?.block_reason.as_deref()?;
        Some(ProviderError::Permanent {
            status: None,
            code: Some(reason.to_owned()),
            detail: format!("the prompt was blocked by Gemini ({})", cap(reason)),
            limits: Default::default(),
        })
    }
}

/// One of `stop`, `length`, `content_filter` or `other`
/// (<https://ai.google.dev/api/generate-content#FinishReason>).
pub(crate) fn normalise_finish_reason(reason: Option<&str>) -> String {
    match reason {
        Some("STOP") => "stop",
        Some("MAX_TOKENS") => "length",
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY") => {
            "content_filter"
        }
        _ => "other",
    }
    .to_owned()
}

/// `GET /v1beta/models`: `{"models":[{"name":"models/…","displayName","supportedGenerationMethods"}],
/// "nextPageToken"}`; only models that serve `generateContent` are listed, by their id without
/// the `models/` prefix.
pub(crate) fn parse_models(body: &[u8]) -> Result<ModelPage, ProviderError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct List {
        #[serde(default)]
        models: Vec<Entry>,
        next_page_token: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        name: String,
        display_name: Option<String>,
        #[serde(default)]
        supported_generation_methods: Vec<String>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let models = list
        .models
        .into_iter()
        .filter(|e| e.supported_generation_methods.iter().any(|m| m == "generateContent"))
        .map(|e| ModelInfo {
            id: e.name.strip_prefix("models/").unwrap_or(&e.name).to_owned(),
            display_name: e.display_name,
        })
        .collect();
    Ok(ModelPage { models, next: list.next_page_token.filter(|t| !t.is_empty()) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use taskexec_core::error::ErrorClass;

    use super::*;
    use crate::capability::capabilities;
    use crate::config::ProviderKind;
    use crate::test_support::{conversation, sampled_request};

    fn request() -> ProviderRequest {
        ProviderRequest {
            extra: BTreeMap::from([("generationConfig".into(), json!({"thinkingConfig": {"thinkingBudget": 0}}))]),
            ..sampled_request("gemini-2.5-flash", conversation())
        }
    }

    fn body(r: &ProviderRequest) -> Result<Value, ProviderError> {
        request_body(r, &capabilities(ProviderKind::Gemini, &r.model))
    }

    #[test]
    fn maps_every_field() {
        assert_eq!(
            body(&request()).unwrap(),
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"text": "hello"}]},
                    {"role": "user", "parts": [{"text": "again"}]}
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "generationConfig": {
                    "temperature": 0.5, "maxOutputTokens": 7, "stopSequences": ["\n"], "seed": 42,
                    "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 0}
                }
            })
        );
    }

    #[test]
    fn response_formats_map_or_fail_by_name() {
        let mut r = request();
        r.extra.clear();
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        r.response_format = Some(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}));
        let config = body(&r).unwrap()["generationConfig"].clone();
        assert_eq!((&config["responseMimeType"], &config["responseJsonSchema"]), (&json!("application/json"), &schema));
        r.response_format = Some(json!({"type": "text"}));
        assert!(body(&r).unwrap()["generationConfig"].get("responseMimeType").is_none());
        r.response_format = Some(json!({"type": "grammar"}));
        let e = body(&r).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert!(e.to_string().contains("`grammar`"), "{e}");
        r.response_format = Some(json!({"type": "json_schema"}));
        assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent);
    }

    #[test]
    fn extra_merges_but_may_not_set_reserved_fields() {
        let mut r = request();
        r.extra = BTreeMap::from([("safetySettings".into(), json!([])), ("generationConfig".into(), json!("x"))]);
        let b = body(&r).unwrap();
        assert_eq!((&b["safetySettings"], &b["generationConfig"]), (&json!([]), &json!("x")));
        for key in RESERVED {
            r.extra = BTreeMap::from([(key.into(), json!([]))]);
            assert_eq!(body(&r).unwrap_err().class(), ErrorClass::Permanent, "{key}");
        }
    }

    #[test]
    fn a_bare_request_has_no_generation_config() {
        let mut r = request();
        (r.temperature, r.max_tokens, r.seed, r.response_format) = (None, None, None, None);
        r.stop.clear();
        r.extra.clear();
        r.messages.retain(|m| m.role == Role::User);
        assert_eq!(
            body(&r).unwrap(),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "user", "parts": [{"text": "again"}]}]})
        );
    }

    #[test]
    fn finish_reasons_are_normalised() {
        for (wire, ours) in [
            ("STOP", "stop"),
            ("MAX_TOKENS", "length"),
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("MALFORMED_FUNCTION_CALL", "other"),
            ("LANGUAGE", "other"),
            ("FINISH_REASON_UNSPECIFIED", "other"),
        ] {
            assert_eq!(normalise_finish_reason(Some(wire)), ours, "{wire}");
        }
        assert_eq!(normalise_finish_reason(None), "other");
    }

    #[test]
    fn thoughts_are_skipped_and_counted_as_output() {
        let r = GenerateResponse::from_slice(
            br#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"4"}],"role":"model"},"finishReason":"STOP"}],
                 "usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":1,"thoughtsTokenCount":20,"cachedContentTokenCount":4}}"#,
        )
        .unwrap();
        assert_eq!(r.text().collect::<String>(), "4");
        let usage = Usage::from(r.usage_metadata.unwrap());
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.cached_tokens), (10, 21, Some(4)));
    }

    #[test]
    fn reads_the_model_list() {
        let page = parse_models(
            br#"{"models":[{"name":"models/gemini-2.5-flash","displayName":"Gemini 2.5 Flash","supportedGenerationMethods":["generateContent","countTokens"]},
                           {"name":"models/text-embedding-004","supportedGenerationMethods":["embedContent"]}],"nextPageToken":""}"#,
        )
        .unwrap();
        assert_eq!(
            page,
            ModelPage {
                models: vec![ModelInfo {
                    id: "gemini-2.5-flash".into(),
                    display_name: Some("Gemini 2.5 Flash".into())
                }],
                next: None
            }
        );
        assert_eq!(parse_models(b"{}").unwrap(), ModelPage::default());
        assert_eq!(parse_models(b"[]").unwrap_err().class(), ErrorClass::Transient);
    }
}
