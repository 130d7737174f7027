//! What every adapter produces before timings are added, and the small helpers all of them
//! share: capping a provider's message, the error for a body that does not parse, model lists.

use serde::Serialize;
use taskexec_core::error::ProviderError;
use taskexec_core::task::Usage;

/// Longest `detail` kept on an error, in characters.
pub(crate) const MAX_DETAIL_CHARS: usize = 512;

/// What an answer (whole or streamed) said.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Answer {
    /// The text.
    pub text: String,
    /// Normalised: `stop`, `length`, `content_filter`, `tool_calls` or `other`.
    pub finish_reason: String,
    /// Token usage.
    pub usage: Usage,
    /// The model the provider says it served.
    pub model: Option<String>,
    /// The provider's id of the answer (used when no request-id header came).
    pub id: Option<String>,
}

/// One model a deployment serves, as its provider's model list says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// The id to put in a task's `modelId`.
    pub id: String,
    /// The provider's display name, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// One page of a model list, and the token of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ModelPage {
    pub models: Vec<ModelInfo>,
    pub next: Option<String>,
}

/// A transient error for a body that did not parse: a truncated or garbled 200 is worth another
/// try.
pub(crate) fn malformed(error: &serde_json::Error) -> ProviderError {
    ProviderError::transient(format!("malformed response body: {error}"))
}

/// A transient error for a stream that ended before its end marker; `how` says which.
pub(crate) fn truncated(how: &str) -> ProviderError {
    ProviderError::transient(format!("truncated stream: {how}"))
}

/// What a stream has said so far, for the streams that carry a finish reason, usage, model and
/// id piecemeal (OpenAI chat completions, Gemini).
#[derive(Debug, Default)]
pub(crate) struct Partial {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub model: Option<String>,
    pub id: Option<String>,
}

impl Partial {
    /// The answer, its finish reason mapped by `normalise`; a stream that ended without a
    /// finish reason was cut (`how` says where): a transient failure.
    pub(crate) fn finish(self, normalise: fn(Option<&str>) -> String, how: &str) -> Result<Answer, ProviderError> {
        let Some(reason) = self.finish_reason else { return Err(truncated(how)) };
        Ok(Answer {
            text: self.text,
            finish_reason: normalise(Some(&reason)),
            usage: self.usage.unwrap_or_default(),
            model: self.model,
            id: self.id,
        })
    }
}

/// `text` cut to [`MAX_DETAIL_CHARS`] characters.
pub(crate) fn cap(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let long = "é".repeat(2000);
        assert_eq!(cap(&long).chars().count(), MAX_DETAIL_CHARS + 1);
        assert_eq!(cap("short"), "short");
    }
}
