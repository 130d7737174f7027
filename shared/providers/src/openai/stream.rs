//! Reading a streamed completion: Server-Sent Events whose `data:` lines each hold one
//! `chat.completion.chunk`, ending with `data: [DONE]`. The text is the concatenation of
//! `choices[0].delta.content`; the usage arrives in a last chunk with no choices when the request
//! asked for `stream_options.include_usage`.
//!
//! A stream is complete when it said `[DONE]` after a `finish_reason`, or ended after a
//! `finish_reason` (some compatible servers omit `[DONE]`, and some the usage chunk too). A
//! stream cut before any `finish_reason` is a transient failure: the answer is incomplete.
//! OpenAI and Azure always send the usage chunk we ask for, between the `finish_reason` and
//! `[DONE]`: for them ([`ChatStream::strict`]) a stream that ended without `[DONE]` and without
//! usage was cut before it, and is a transient failure too rather than an answer with no usage.

use taskexec_core::error::ProviderError;

use super::classify::classify_stream_error;
use super::wire::{Chunk, normalise_finish_reason};
use crate::answer::{Answer, Partial, malformed, truncated};
use crate::http::StreamParser;
use crate::http::sse::SseEvent;

/// A streamed completion, event by event.
#[derive(Debug, Default)]
pub struct ChatStream {
    parts: Partial,
    done: bool,
    /// The server always sends the usage chunk: a stream ending without it and without `[DONE]`
    /// was cut.
    strict: bool,
}

impl StreamParser for ChatStream {
    fn event(&mut self, event: SseEvent) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if event.data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(&event.data).map_err(|e| malformed(&e))?;
        self.chunk(chunk)
    }

    fn has_content(&self) -> bool {
        !self.parts.text.is_empty()
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn finish(self) -> Result<Answer, ProviderError> {
        if self.strict && !self.done && self.parts.finish_reason.is_some() && self.parts.usage.is_none() {
            return Err(truncated("ended after the finish_reason, before the usage chunk and [DONE]"));
        }
        let how = if self.done { "[DONE] without a finish_reason" } else { "stream ended before [DONE]" };
        self.parts.finish(normalise_finish_reason, how)
    }
}

impl ChatStream {
    /// A stream from a server that always sends the usage chunk it is asked for (OpenAI, Azure
    /// OpenAI): one that ends without `[DONE]` must have carried the usage.
    pub(crate) fn strict() -> Self {
        Self { strict: true, ..Self::default() }
    }

    fn chunk(&mut self, chunk: Chunk) -> Result<(), ProviderError> {
        if let Some(error) = &chunk.error {
            return Err(classify_stream_error(error));
        }
        let parts = &mut self.parts;
        parts.id = parts.id.take().or(chunk.id);
        parts.model = parts.model.take().or(chunk.model);
        if let Some(usage) = chunk.usage {
            parts.usage = Some(usage.into());
        }
        if let Some(choice) = chunk.choices.into_iter().flatten().next() {
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                parts.text.push_str(&content);
            }
            if choice.finish_reason.is_some() {
                parts.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;
    use crate::test_support::feed;

    fn run(body: &[u8], piece: usize) -> Result<ChatStream, ProviderError> {
        feed(body, piece)
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}],\"usage\":null}\r\n\r\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn a_usage_chunk_with_null_choices_is_read() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":null,\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":null,\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3}}\n\n",
        );
        let answer = run(body.as_bytes(), 5).unwrap().finish().unwrap();
        assert_eq!((answer.finish_reason.as_str(), answer.usage.output_tokens), ("length", 3));
    }

    #[test]
    fn accumulates_across_arbitrary_splits() {
        for piece in [1, 7, 64, STREAM.len()] {
            let acc = run(STREAM.as_bytes(), piece).unwrap();
            assert!(acc.is_done());
            let answer = acc.finish().unwrap();
            assert_eq!(answer.text, "Hello");
            assert_eq!(answer.finish_reason, "stop");
            assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (5, 2));
            assert_eq!(answer.model.as_deref(), Some("m"));
        }
    }

    /// The stream up to the chunk with the `finish_reason`: no usage, no `[DONE]`.
    fn before_usage() -> &'static str {
        &STREAM[..STREAM.find("data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\"").unwrap()]
    }

    /// Feed `body` through a strict stream.
    fn strict(body: &str) -> Result<Answer, ProviderError> {
        let mut decoder = crate::http::sse::SseDecoder::default();
        let mut stream = ChatStream::strict();
        for event in decoder.feed(body.as_bytes())?.into_iter().chain(decoder.finish()?) {
            stream.event(event)?;
        }
        stream.finish()
    }

    #[test]
    fn a_strict_stream_ending_before_its_usage_is_truncated() {
        let e = strict(before_usage()).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("truncated stream"), "{e}");
        // The whole stream, or one that ends after its usage without `[DONE]`, is an answer.
        assert_eq!(strict(STREAM).unwrap().usage.output_tokens, 2);
        let no_done = STREAM.trim_end_matches("data: [DONE]\n\n");
        assert_eq!(strict(no_done).unwrap().usage.output_tokens, 2);
        // `[DONE]` says the server is finished, even without usage.
        let done_without_usage = format!("{}data: [DONE]\n\n", before_usage());
        assert_eq!(strict(&done_without_usage).unwrap().finish_reason, "stop");
    }

    #[test]
    fn a_lenient_stream_may_omit_usage_and_done() {
        let answer = run(before_usage().as_bytes(), 11).unwrap().finish().unwrap();
        assert_eq!(
            (answer.text.as_str(), answer.finish_reason.as_str(), answer.usage.output_tokens),
            ("Hello", "stop", 0)
        );
    }

    #[test]
    fn a_cut_stream_is_transient() {
        let cut = &STREAM[..STREAM.find("\"lo\"").unwrap()];
        let result = run(cut.as_bytes(), 9).and_then(ChatStream::finish);
        assert_eq!(result.unwrap_err().class(), ErrorClass::Transient);
    }

    #[test]
    fn an_error_event_is_transient_with_its_code() {
        let e = run(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n\n", 7)
            .err()
            .unwrap();
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("server_error"));
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
