//! A [`ProviderRequest`] as the parts of a Converse call: the conversation (`messages`), the
//! `system` blocks, `inferenceConfig` and `additionalModelRequestFields` (the task's `extra`).
//! Reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_RequestSyntax>.

use std::collections::BTreeMap;

use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock,
};
use aws_smithy_types::{Document, Number};
use serde_json::Value;
use taskexec_core::error::ProviderError;
use taskexec_core::provider::ProviderRequest;
use taskexec_core::task::Role;

use crate::capability::Capabilities;
use crate::conversation::turns;

/// The parts of one Converse (or ConverseStream) call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Converse {
    pub messages: Vec<Message>,
    pub system: Vec<SystemContentBlock>,
    pub inference: Option<InferenceConfiguration>,
    pub additional: Option<Document>,
}

impl Converse {
    /// The call for `request`. System messages reach here only when the model accepts a system
    /// prompt (`Deployments::dispatch` strips or rejects them otherwise).
    pub(crate) fn new(request: &ProviderRequest, caps: &Capabilities) -> Result<Self, ProviderError> {
        let system = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| SystemContentBlock::Text(m.content.clone()))
            .collect();
        Ok(Self {
            messages: conversation(request)?,
            system,
            inference: inference(request, caps)?,
            additional: (!request.extra.is_empty()).then(|| object(&request.extra)),
        })
    }
}

/// The user and assistant messages, consecutive messages of one role merged into one message
/// of several text blocks (Converse requires alternation), starting with `user`.
fn conversation(request: &ProviderRequest) -> Result<Vec<Message>, ProviderError> {
    turns(&request.messages, "Bedrock")?
        .into_iter()
        .map(|t| {
            let role = if t.role == Role::User { ConversationRole::User } else { ConversationRole::Assistant };
            let content = t.texts.into_iter().map(|text| ContentBlock::Text(text.to_owned())).collect();
            Message::builder()
                .role(role)
                .set_content(Some(content))
                .build()
                .map_err(|e| ProviderError::permanent(format!("could not build the Bedrock message: {e}")))
        })
        .collect()
}

/// `inferenceConfig`, or `None` when the task sets none of its fields.
fn inference(request: &ProviderRequest, caps: &Capabilities) -> Result<Option<InferenceConfiguration>, ProviderError> {
    let max_tokens = match request.max_tokens.or(caps.default_max_tokens) {
        Some(n) => {
            Some(i32::try_from(n).map_err(|_| ProviderError::permanent("`maxTokens` is too large for Bedrock"))?)
        }
        None => None,
    };
    // Converse takes 32-bit floats; the narrowing is the API's precision.
    #[allow(clippy::cast_possible_truncation)]
    let (temperature, top_p) = (request.temperature.map(|t| t as f32), request.top_p.map(|p| p as f32));
    let stop = (!request.stop.is_empty()).then(|| request.stop.clone());
    if max_tokens.is_none() && temperature.is_none() && top_p.is_none() && stop.is_none() {
        return Ok(None);
    }
    Ok(Some(
        InferenceConfiguration::builder()
            .set_max_tokens(max_tokens)
            .set_temperature(temperature)
            .set_top_p(top_p)
            .set_stop_sequences(stop)
            .build(),
    ))
}

/// `extra` as a Smithy document object.
fn object(fields: &BTreeMap<String, Value>) -> Document {
    Document::Object(fields.iter().map(|(k, v)| (k.clone(), document(v))).collect())
}

/// A JSON value as a Smithy document.
pub(crate) fn document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(number(n)),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(document).collect()),
        Value::Object(map) => Document::Object(map.iter().map(|(k, v)| (k.clone(), document(v))).collect()),
    }
}

fn number(n: &serde_json::Number) -> Number {
    if let Some(u) = n.as_u64() {
        Number::PosInt(u)
    } else if let Some(i) = n.as_i64() {
        Number::NegInt(i)
    } else {
        Number::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use taskexec_core::task::BenchmarkTask;

    use super::*;
    use crate::capability::capabilities;
    use crate::config::ProviderKind;

    fn request(task: Value) -> ProviderRequest {
        let task: BenchmarkTask = serde_json::from_value(task).unwrap();
        ProviderRequest::for_task(&task, "bedrock", 1)
    }

    fn converse(r: &ProviderRequest) -> Result<Converse, ProviderError> {
        Converse::new(r, &capabilities(ProviderKind::Bedrock, &r.model))
    }

    #[test]
    fn system_turns_and_parameters_map_to_their_fields() {
        let r = request(json!({"id":"t","providerId":"b","modelId":"amazon.nova-pro-v1:0","prompt":"now",
            "parameters":{"system":"be brief","maxTokens":64,"temperature":0.5,"stop":["END"],
            "messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"assistant","content":"c"}],
            "extra":{"topK":5,"nested":{"x":[true,null,-1,1.5]}}}}));
        let c = converse(&r).unwrap();
        assert_eq!(c.system, [SystemContentBlock::Text("be brief".into())]);
        let roles: Vec<_> = c.messages.iter().map(|m| (m.role.as_str().to_owned(), m.content.len())).collect();
        assert_eq!(roles, [("user".into(), 2), ("assistant".into(), 1), ("user".into(), 1)]);
        let i = c.inference.unwrap();
        assert_eq!((i.max_tokens, i.temperature, i.top_p), (Some(64), Some(0.5), None));
        assert_eq!(i.stop_sequences, Some(vec!["END".to_owned()]));
        let Some(Document::Object(extra)) = c.additional else { panic!("no extra") };
        assert_eq!(extra["topK"], Document::Number(Number::PosInt(5)));
        let Document::Object(nested) = &extra["nested"] else { panic!("not an object") };
        assert_eq!(
            nested["x"],
            Document::Array(vec![
                Document::Bool(true),
                Document::Null,
                Document::Number(Number::NegInt(-1)),
                Document::Number(Number::Float(1.5))
            ])
        );
    }

    #[test]
    fn a_bare_prompt_has_no_inference_config() {
        let c = converse(&request(json!({"id":"t","providerId":"b","modelId":"m","prompt":"p"}))).unwrap();
        assert_eq!((c.inference, c.additional, c.system.len(), c.messages.len()), (None, None, 0, 1));
    }

    #[test]
    fn a_conversation_starting_with_the_assistant_is_refused() {
        let r = request(json!({"id":"t","providerId":"b","modelId":"m","prompt":"p",
            "parameters":{"messages":[{"role":"assistant","content":"hi"}]}}));
        let e = converse(&r).unwrap_err();
        assert!(e.to_string().contains("start with a user message"), "{e}");
    }
}
