//! Reading a streamed completion: Server-Sent Events whose `data:` lines each hold one
//! `chat.completion.chunk`, ending with `data: [DONE]`. The text is the concatenation of
//! `choices[0].delta.content`; the usage arrives in a last chunk with no choices when the request
//! asked for `stream_options.include_usage`.
//!
//! A stream is complete when it said `[DONE]` after a `finish_reason`, or ended after a
//! `finish_reason` (some compatible servers omit `[DONE]`). A stream cut before any
//! `finish_reason` is a transient failure: the answer is incomplete.

use taskexec_core::error::ProviderError;
use taskexec_core::task::Usage;

use super::classify::classify_stream_error;
use super::wire::{Answer, Chunk, malformed, normalise_finish_reason};

/// Longest SSE line accepted, so a server that never sends a newline cannot exhaust memory.
const MAX_LINE_BYTES: usize = 4 << 20;

/// Accumulates a stream fed in arbitrary byte pieces.
#[derive(Debug, Default)]
pub(crate) struct StreamAccumulator {
    pending: Vec<u8>,
    text: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    id: Option<String>,
    done: bool,
}

impl StreamAccumulator {
    /// Take the next piece of the body; complete lines are parsed at once.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), ProviderError> {
        let mut buffer = std::mem::take(&mut self.pending);
        buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            self.line(&buffer[start..start + len])?;
            start += len + 1;
        }
        buffer.drain(..start);
        self.pending = buffer;
        if self.pending.len() > MAX_LINE_BYTES {
            return Err(ProviderError::transient("malformed stream: line too long"));
        }
        Ok(())
    }

    /// Whether any text has arrived (the moment that defines time to first token).
    pub(crate) fn has_content(&self) -> bool {
        !self.text.is_empty()
    }

    /// Whether `[DONE]` arrived.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The answer, once the body has ended (or `[DONE]` arrived).
    pub(crate) fn finish(mut self) -> Result<Answer, ProviderError> {
        if !self.done && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.line(&rest)?;
        }
        let Some(reason) = self.finish_reason else {
            let when = if self.done { "[DONE] without a finish_reason" } else { "stream ended before [DONE]" };
            return Err(ProviderError::transient(format!("truncated stream: {when}")));
        };
        Ok(Answer {
            text: self.text,
            finish_reason: normalise_finish_reason(Some(&reason)),
            usage: self.usage.unwrap_or_default(),
            model: self.model,
            id: self.id,
        })
    }

    fn line(&mut self, line: &[u8]) -> Result<(), ProviderError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return Ok(()); // blank separators, `event:`, `id:`, `: comments`
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if self.done {
            return Ok(());
        }
        if data == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_slice(data).map_err(|e| malformed(&e))?;
        self.chunk(chunk)
    }

    fn chunk(&mut self, chunk: Chunk) -> Result<(), ProviderError> {
        if let Some(error) = &chunk.error {
            return Err(classify_stream_error(error));
        }
        self.id = self.id.take().or(chunk.id);
        self.model = self.model.take().or(chunk.model);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        if let Some(choice) = chunk.choices.into_iter().flatten().next() {
            if let Some(content) = choice.delta.and_then(|d| d.content) {
                self.text.push_str(&content);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;

    use super::*;

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
        let mut acc = StreamAccumulator::default();
        acc.feed(b"data: {\"choices\":[{\"delta\":null,\"finish_reason\":\"length\"}]}\n").unwrap();
        acc.feed(b"data: {\"choices\":null,\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3}}\n").unwrap();
        let answer = acc.finish().unwrap();
        assert_eq!((answer.finish_reason.as_str(), answer.usage.output_tokens), ("length", 3));
    }

    #[test]
    fn accumulates_across_arbitrary_splits() {
        for piece in [1, 7, 64, STREAM.len()] {
            let mut acc = StreamAccumulator::default();
            for part in STREAM.as_bytes().chunks(piece) {
                acc.feed(part).unwrap();
            }
            assert!(acc.is_done());
            let answer = acc.finish().unwrap();
            assert_eq!(answer.text, "Hello");
            assert_eq!(answer.finish_reason, "stop");
            assert_eq!((answer.usage.input_tokens, answer.usage.output_tokens), (5, 2));
            assert_eq!(answer.model.as_deref(), Some("m"));
        }
    }

    #[test]
    fn a_cut_stream_is_transient() {
        let cut = &STREAM[..STREAM.find("\"lo\"").unwrap()];
        let mut acc = StreamAccumulator::default();
        let fed = acc.feed(cut.as_bytes());
        let result = fed.and_then(|()| acc.finish());
        assert_eq!(result.unwrap_err().class(), ErrorClass::Transient);
    }

    #[test]
    fn an_error_event_is_transient_with_its_code() {
        let mut acc = StreamAccumulator::default();
        let e = acc
            .feed(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":null}}\n")
            .unwrap_err();
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("server_error"));
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
