//! Reading a streamed answer (`streamGenerateContent?alt=sse`): every `data:` event holds one
//! `GenerateContentResponse` chunk; the text is the concatenation of the first candidate's
//! non-thought parts, the usage is the last chunk's (each carries the running totals).
//!
//! The stream has no end marker: the body simply ends. It is complete when a chunk carried a
//! `finishReason`; a body that ends before one is a cut stream, a transient failure. A prompt
//! blocked in the first chunk (`promptFeedback.blockReason`, no candidates) is permanent.

use taskexec_core::error::ProviderError;

use super::classify::classify_stream_error;
use super::wire::{GenerateResponse, normalise_finish_reason};
use crate::answer::{Answer, Partial};
use crate::http::StreamParser;
use crate::http::sse::SseEvent;

/// A streamed answer, chunk by chunk.
#[derive(Debug, Default)]
pub struct GeminiStream {
    parts: Partial,
}

impl StreamParser for GeminiStream {
    fn event(&mut self, event: SseEvent) -> Result<(), ProviderError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        self.chunk(GenerateResponse::from_slice(event.data.as_bytes())?)
    }

    fn has_content(&self) -> bool {
        !self.parts.text.is_empty()
    }

    /// Never: the usage may come in a chunk after the finish reason, so the body is read to
    /// its end.
    fn is_done(&self) -> bool {
        false
    }

    fn finish(self) -> Result<Answer, ProviderError> {
        self.parts.finish(normalise_finish_reason, "ended before a finishReason")
    }
}

impl GeminiStream {
    /// Take one chunk (also used to fold the JSON array a non-SSE stream answers with).
    pub(crate) fn chunk(&mut self, chunk: GenerateResponse) -> Result<(), ProviderError> {
        if let Some(error) = &chunk.error {
            return Err(classify_stream_error(error));
        }
        if let Some(blocked) = chunk.blocked() {
            return Err(blocked);
        }
        let parts = &mut self.parts;
        parts.text.extend(chunk.text());
        if let Some(reason) = chunk.finish_reason() {
            parts.finish_reason = Some(reason.to_owned());
        }
        if let Some(usage) = chunk.usage_metadata {
            parts.usage = Some(usage.into());
        }
        parts.id = parts.id.take().or(chunk.response_id);
        parts.model = parts.model.take().or(chunk.model_version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;
    use crate::test_support::feed;

    fn run(body: &[u8], piece: usize) -> Result<GeminiStream, ProviderError> {
        feed(body, piece)
    }

    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"thinking\",\"thought\":true}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 8},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"}}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo\"}],\"role\": \"model\"},\"finishReason\": \"MAX_TOKENS\"}],\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"role\": \"model\"},\"finishReason\": \"MAX_TOKENS\"}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 2,\"thoughtsTokenCount\": 5,\"totalTokenCount\": 15}}\r\n\r\n",
    );

    #[test]
    fn accumulates_across_arbitrary_splits() {
        for piece in [1, 7, 64, STREAM.len()] {
            let answer = run(STREAM.as_bytes(), piece).unwrap().finish().unwrap();
            assert_eq!(answer.text, "Hello");
            assert_eq!(answer.finish_reason, "length");
            assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (8, 7));
            assert_eq!((answer.model.as_deref(), answer.id.as_deref()), (Some("gemini-2.5-flash"), Some("r1")));
        }
    }

    #[test]
    fn a_cut_stream_is_transient() {
        let cut: String = STREAM.split_inclusive("\r\n\r\n").take(2).collect();
        let e = run(cut.as_bytes(), 9).and_then(GeminiStream::finish).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("truncated stream"), "{e}");
    }

    #[test]
    fn a_blocked_prompt_and_an_error_chunk_stop_the_stream() {
        let blocked = b"data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"},\"usageMetadata\": {\"promptTokenCount\": 3}}\n\n";
        let e = run(blocked, 5).unwrap_err();
        assert_eq!(
            (e.class(), e.to_task_error().provider_code.as_deref()),
            (ErrorClass::Permanent, Some("PROHIBITED_CONTENT"))
        );
        let error = b"data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\n\n";
        assert_eq!(run(error, 5).unwrap_err().class(), ErrorClass::Transient);
    }
}
