//! A Server-Sent Events decoder (<https://html.spec.whatwg.org/multipage/server-sent-events.html>)
//! fed in arbitrary byte pieces: `event:` and `data:` lines gathered until a blank line, then
//! handed out as one [`SseEvent`]. Comments (`:`), `id:` and `retry:` are ignored. Every
//! provider's stream (OpenAI, Azure, Anthropic, Gemini with `alt=sse`) goes through this one
//! decoder; each adapter only interprets the events.

use taskexec_core::error::ProviderError;

/// Longest line accepted, so a server that never sends a newline cannot exhaust memory.
const MAX_LINE_BYTES: usize = 4 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SseEvent {
    /// The `event:` name, if one was sent (Anthropic and the Responses API name every event).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// The decoder's state between pieces.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    pending: Vec<u8>,
    current: Option<SseEvent>,
}

impl SseDecoder {
    /// Take the next piece of the body; returns the events it completed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ProviderError> {
        let mut buffer = std::mem::take(&mut self.pending);
        buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(len) = buffer[start..].iter().position(|b| *b == b'\n') {
            self.line(&buffer[start..start + len], &mut events)?;
            start += len + 1;
        }
        buffer.drain(..start);
        if buffer.len() > MAX_LINE_BYTES {
            return Err(ProviderError::transient("malformed stream: line too long"));
        }
        self.pending = buffer;
        Ok(events)
    }

    /// At the end of the body: an event the server did not close with a blank line is still
    /// handed out (some servers end the body right after the last `data:` line).
    pub(crate) fn finish(&mut self) -> Result<Option<SseEvent>, ProviderError> {
        let rest = std::mem::take(&mut self.pending);
        let mut events = Vec::new();
        if !rest.is_empty() {
            self.line(&rest, &mut events)?;
        }
        Ok(events.pop().or_else(|| self.current.take()))
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) -> Result<(), ProviderError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            events.extend(self.current.take());
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| ProviderError::transient("malformed stream: not UTF-8"))?;
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.get_or_insert_default().event = Some(value.to_owned()),
            "data" => {
                let current = self.current.get_or_insert_default();
                if !current.data.is_empty() {
                    current.data.push('\n');
                }
                current.data.push_str(value);
                // Many `data:` lines without a blank line must not grow one event without bound.
                if current.data.len() > MAX_LINE_BYTES {
                    return Err(ProviderError::transient("malformed stream: event too large"));
                }
            }
            _ => {} // comments (empty field), `id`, `retry`, unknown fields
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = concat!(
        ": keep-alive\n\n",
        "event: message_start\ndata: {\"a\":1}\n\n",
        "data: {\"b\":\r\ndata: 2}\r\n\r\n",
        "id: 7\nretry: 10\ndata: [DONE]\n\n",
    );

    fn decode(body: &str, piece: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut events = Vec::new();
        for part in body.as_bytes().chunks(piece) {
            events.extend(d.feed(part).unwrap());
        }
        events.extend(d.finish().unwrap());
        events
    }

    #[test]
    fn events_survive_any_split() {
        let expected = vec![
            SseEvent { event: Some("message_start".into()), data: "{\"a\":1}".into() },
            SseEvent { event: None, data: "{\"b\":\n2}".into() },
            SseEvent { event: None, data: "[DONE]".into() },
        ];
        for piece in [1, 3, 16, BODY.len()] {
            assert_eq!(decode(BODY, piece), expected, "piece {piece}");
        }
    }

    #[test]
    fn a_last_event_without_blank_line_is_kept() {
        assert_eq!(decode("data: x", 4), vec![SseEvent { event: None, data: "x".into() }]);
        assert_eq!(decode("data: x\n", 4), vec![SseEvent { event: None, data: "x".into() }]);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut d = SseDecoder::default();
        let line = format!("data: {}\n", "a".repeat(1 << 20));
        let e = (0..5).find_map(|_| d.feed(line.as_bytes()).err()).expect("refused before 5 MiB");
        assert!(e.to_string().contains("event too large"), "{e}");
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut d = SseDecoder::default();
        let e = d.feed(&vec![b'a'; MAX_LINE_BYTES + 1]).unwrap_err();
        assert!(e.to_string().contains("line too long"));
    }
}
