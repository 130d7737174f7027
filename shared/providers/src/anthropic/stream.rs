//! Reading a streamed message: Server-Sent Events, each named by its `event:` line and carrying
//! a JSON object with the same `type`: `message_start` (id, model, input usage),
//! `content_block_start`/`content_block_delta`/`content_block_stop` (the text arrives as
//! `text_delta`s), `message_delta` (stop reason, output usage), `message_stop`, `ping`, and
//! `error` (classed as the HTTP error of its type would be). Unknown event types are ignored, as
//! the API's versioning policy asks.
//!
//! A stream is complete at `message_stop`; one that ends before it is a transient failure: the
//! answer is incomplete.
//! Reference: <https://docs.anthropic.com/en/api/messages-streaming>.

use serde::Deserialize;
use taskexec_core::error::ProviderError;

use super::classify::classify_stream_error;
use super::wire::{WireUsage, normalise_stop_reason};
use crate::answer::{Answer, malformed, truncated};
use crate::http::StreamParser;
use crate::http::sse::SseEvent;

/// A streamed message, event by event.
#[derive(Debug, Default)]
pub struct MessageStream {
    text: String,
    stop_reason: Option<String>,
    usage: WireUsage,
    model: Option<String>,
    id: Option<String>,
    done: bool,
}

/// The fields of every event type taskexec reads.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    message: Option<StartMessage>,
    delta: Option<Delta>,
    usage: Option<WireUsage>,
}

/// The message shell of `message_start`.
#[derive(Debug, Deserialize)]
struct StartMessage {
    id: Option<String>,
    model: Option<String>,
    usage: Option<WireUsage>,
}

/// A `content_block_delta`'s or a `message_delta`'s `delta`.
#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}

impl StreamParser for MessageStream {
    fn event(&mut self, event: SseEvent) -> Result<(), ProviderError> {
        if self.done {
            return Ok(());
        }
        if event.event.as_deref() == Some("error") {
            return Err(classify_stream_error(&event.data));
        }
        let parsed: Event = serde_json::from_str(&event.data).map_err(|e| malformed(&e))?;
        match parsed.kind.as_str() {
            "error" => return Err(classify_stream_error(&event.data)),
            "message_start" => self.start(parsed.message),
            "content_block_delta" => self.text_delta(parsed.delta),
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(reason);
                }
                if let Some(usage) = parsed.usage {
                    self.usage.update(usage);
                }
            }
            "message_stop" => self.done = true,
            _ => {} // ping, content_block_start/stop, and types added later
        }
        Ok(())
    }

    fn has_content(&self) -> bool {
        !self.text.is_empty()
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn finish(self) -> Result<Answer, ProviderError> {
        if !self.done {
            return Err(truncated("ended before message_stop"));
        }
        Ok(Answer {
            text: self.text,
            finish_reason: normalise_stop_reason(self.stop_reason.as_deref()),
            usage: self.usage.into(),
            model: self.model,
            id: self.id,
        })
    }
}

impl MessageStream {
    fn start(&mut self, message: Option<StartMessage>) {
        let Some(message) = message else { return };
        self.id = message.id;
        self.model = message.model;
        if let Some(usage) = message.usage {
            self.usage.update(usage);
        }
    }

    fn text_delta(&mut self, delta: Option<Delta>) {
        if let Some(Delta { kind, text: Some(text), .. }) = delta
            && kind.as_deref() == Some("text_delta")
        {
            self.text.push_str(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use taskexec_core::error::ErrorClass;
    use taskexec_core::task::Usage;

    use super::*;
    use crate::test_support::feed;

    fn run(body: &[u8], piece: usize) -> Result<MessageStream, ProviderError> {
        feed(body, piece)
    }

    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1,\"cache_read_input_tokens\":4}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\r\n\r\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn accumulates_across_arbitrary_splits() {
        for piece in [1, 7, 64, STREAM.len()] {
            let stream = run(STREAM.as_bytes(), piece).unwrap();
            assert!(stream.is_done());
            let answer = stream.finish().unwrap();
            assert_eq!((answer.text.as_str(), answer.finish_reason.as_str()), ("Hello", "stop"));
            assert_eq!(answer.usage, Usage { input_tokens: 29, output_tokens: 15, cached_tokens: Some(4) });
            assert_eq!((answer.model.as_deref(), answer.id.as_deref()), (Some("claude-x"), Some("msg_1")));
        }
    }

    #[test]
    fn a_stream_cut_before_message_stop_is_transient() {
        let cut = &STREAM[..STREAM.find("event: message_stop").unwrap()];
        let e = run(cut.as_bytes(), 9).and_then(MessageStream::finish).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("truncated stream"), "{e}");
    }

    #[test]
    fn an_error_event_is_classed_by_its_type() {
        let body = concat!(
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let e = run(body.as_bytes(), 5).err().unwrap();
        assert_eq!(e.class(), ErrorClass::Transient);
        assert_eq!(e.to_task_error().provider_code.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn unknown_events_are_ignored_and_garbage_is_transient() {
        let mut stream = MessageStream::default();
        stream.event(SseEvent { event: Some("new_thing".into()), data: r#"{"type":"new_thing"}"#.into() }).unwrap();
        let e = stream.event(SseEvent { event: None, data: "{".into() }).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
