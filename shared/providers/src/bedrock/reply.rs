//! What Converse answered: the text of a whole answer, and the state of a ConverseStream fed
//! event by event (`messageStart`, `contentBlockDelta`, `messageStop`, `metadata`).
//! Reference: <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_ResponseSyntax>
//! and <https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStreamOutput.html>.

use aws_sdk_bedrockruntime::operation::converse::ConverseOutput;
use aws_sdk_bedrockruntime::types::{ContentBlock, ConverseStreamOutput, StopReason, TokenUsage};
use taskexec_core::error::ProviderError;
use taskexec_core::task::Usage;

use crate::answer::{Answer, truncated};

/// A whole answer: its text blocks joined.
pub(crate) fn whole(output: &ConverseOutput) -> Answer {
    let text = match output.output() {
        Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(message)) => message
            .content()
            .iter()
            .filter_map(|block| match block {
                ContentBlock::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect(),
        _ => String::new(),
    };
    Answer {
        text,
        finish_reason: finish_reason(output.stop_reason()),
        usage: usage(output.usage()),
        model: None,
        id: None,
    }
}

/// The normalised finish reason.
fn finish_reason(reason: &StopReason) -> String {
    match reason.as_str() {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "content_filtered" | "guardrail_intervened" => "content_filter",
        "tool_use" => "tool_calls",
        _ => "other",
    }
    .to_owned()
}

fn usage(usage: Option<&TokenUsage>) -> Usage {
    let count = |n: i32| u64::try_from(n).unwrap_or(0);
    usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: count(u.input_tokens()),
        output_tokens: count(u.output_tokens()),
        cached_tokens: u.cache_read_input_tokens().map(count),
    })
}

/// One streamed answer so far.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    text: String,
    has_content: bool,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl StreamState {
    /// Take one event.
    pub(crate) fn event(&mut self, event: &ConverseStreamOutput) {
        match event {
            ConverseStreamOutput::ContentBlockDelta(delta) => {
                if let Some(text) = delta.delta().and_then(|d| d.as_text().ok()) {
                    self.has_content |= !text.is_empty();
                    self.text.push_str(text);
                }
            }
            ConverseStreamOutput::MessageStop(stop) => self.finish_reason = Some(finish_reason(stop.stop_reason())),
            ConverseStreamOutput::Metadata(metadata) => self.usage = Some(usage(metadata.usage())),
            _ => {}
        }
    }

    /// Whether any text has arrived (the moment that defines time to first token).
    pub(crate) fn has_content(&self) -> bool {
        self.has_content
    }

    /// The answer; a stream that ended before `messageStop` was cut, which is transient.
    pub(crate) fn finish(self) -> Result<Answer, ProviderError> {
        let finish_reason =
            self.finish_reason.ok_or_else(|| truncated("the Bedrock stream ended before `messageStop`"))?;
        Ok(Answer { text: self.text, finish_reason, usage: self.usage.unwrap_or_default(), model: None, id: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_are_normalised() {
        let cases = [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("content_filtered", "content_filter"),
            ("guardrail_intervened", "content_filter"),
            ("tool_use", "tool_calls"),
            ("something_new", "other"),
        ];
        for (wire, normal) in cases {
            assert_eq!(finish_reason(&StopReason::from(wire)), normal, "{wire}");
        }
    }

    #[test]
    fn a_stream_without_message_stop_is_transient() {
        let e = StreamState::default().finish().unwrap_err();
        assert_eq!(e.class(), taskexec_core::error::ErrorClass::Transient);
    }
}
