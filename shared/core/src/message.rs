//! Queue messages: what a work-queue message body holds. Two forms are accepted:
//! - an **envelope** `{"taskId","providerId","modelId","runId","priority","readyAt","deferrals"}`:
//!   the body of a [`Delivery`] ([`Delivery::to_body`]), sent by the API, the sweeper and the
//!   worker for a task already stored;
//! - a **raw task**: a `BenchmarkTask` JSON as another system's SQS producer sends it (see
//!   `docs/api.md`); without an `id`, one is derived from the content hash, so a re-sent message
//!   is the same task.
//!
//! Anything else is poison: it cannot be decoded, and the worker sends it to the DLQ as a
//! [`PoisonNote`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ports::{Delivery, Route};
use crate::task::{BenchmarkTask, TaskPriority};
use crate::time::Millis;
use crate::validate::{FieldError, parse_task_value};

/// The queue message attribute carrying a delivery's correlation id
/// ([`Delivery::correlation`]): the id of the HTTP request that submitted the task.
pub const CORRELATION_ATTRIBUTE: &str = "correlationId";

/// The wire form of a [`Delivery`]: what an SQS message body holds. Unknown fields are
/// ignored, so a worker of an older build reads the envelopes of a newer one during a
/// rolling deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    /// The task.
    pub task_id: String,
    /// Deployment or route.
    pub provider_id: String,
    /// Model.
    pub model_id: String,
    /// Run.
    pub run_id: String,
    /// Scheduling class (also decides the queue).
    pub priority: TaskPriority,
    /// When the task became due (ms since the epoch).
    #[serde(default)]
    pub ready_at: Millis,
    /// Deferrals of earlier copies of this message (see [`Delivery::deferrals`]); absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
    /// The task fails instead of waiting for capacity; absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_fast: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Envelope {
    fn of(d: &Delivery) -> Self {
        Self {
            task_id: d.task_id.clone(),
            provider_id: d.provider_id().to_owned(),
            model_id: d.model_id().to_owned(),
            run_id: d.run_id().to_owned(),
            priority: d.priority,
            ready_at: d.ready_at,
            deferrals: d.deferrals,
            fail_fast: d.fail_fast,
        }
    }

    fn into_delivery(self) -> Delivery {
        let route = Route { provider_id: self.provider_id, model_id: self.model_id, run_id: self.run_id };
        let mut d = Delivery::new(self.task_id, Arc::new(route), self.priority, self.ready_at);
        d.deferrals = self.deferrals;
        d.fail_fast = self.fail_fast;
        d
    }
}

impl Delivery {
    /// The message body of this delivery (its envelope).
    #[must_use]
    pub fn to_body(&self) -> String {
        serde_json::to_string(&Envelope::of(self)).expect("an envelope always serialises")
    }
}

/// What goes to a dead-letter queue for a message that could not be decoded: the original
/// message id (no task id can be read), why, and the body as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoisonNote {
    /// The poison message's id.
    pub message_id: String,
    /// Why it could not be decoded.
    pub reason: String,
    /// Its body.
    pub body: String,
}

impl PoisonNote {
    /// The DLQ message body: `{"poison": {...}}`.
    #[must_use]
    pub fn to_body(&self) -> String {
        serde_json::json!({ "poison": self }).to_string()
    }

    /// Read a DLQ body written by [`Self::to_body`].
    #[must_use]
    pub fn from_body(body: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(body).ok()?;
        serde_json::from_value(value.get("poison")?.clone()).ok()
    }
}

/// A decoded message body.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueMessage {
    /// A stored task's delivery (not yet received: no receipt, receive count 0).
    Task(Delivery),
    /// A task sent by another system (its id filled in from the content hash if it had none).
    RawTask(Box<BenchmarkTask>),
}

/// Why a body is poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// Looked like an envelope but is not a valid one.
    #[error("invalid envelope: {0}")]
    BadEnvelope(String),
    /// Looked like a task but is not a valid one.
    #[error("invalid task: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    BadTask(Vec<FieldError>),
}

/// Decode a message body.
pub fn decode(body: &str) -> Result<QueueMessage, DecodeError> {
    let value: Value = serde_json::from_str(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(mut object) = value else { return Err(DecodeError::NotJson("not an object".into())) };
    if object.contains_key("taskId") {
        return serde_json::from_value::<Envelope>(Value::Object(object))
            .map(|e| QueueMessage::Task(e.into_delivery()))
            .map_err(|e| DecodeError::BadEnvelope(e.to_string()));
    }
    if object.get("id").is_none_or(Value::is_null) {
        // serde_json maps are sorted, so this hash is the same for the same content.
        let canonical = serde_json::to_vec(&object).expect("a map serialises");
        let digest = Sha256::digest(&canonical);
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        object.insert("id".into(), Value::String(format!("h-{hex}")));
    }
    parse_task_value(Value::Object(object)).map(|t| QueueMessage::RawTask(Box::new(t))).map_err(DecodeError::BadTask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_through_deliveries() {
        let body = r#"{"taskId":"t-1","providerId":"sim","modelId":"m","runId":"demo","priority":"high","readyAt":5}"#;
        let QueueMessage::Task(d) = decode(body).unwrap() else { panic!("envelope expected") };
        assert_eq!((d.task_id.as_str(), d.provider_id(), d.run_id(), d.ready_at), ("t-1", "sim", "demo", 5));
        assert_eq!(d.to_body(), body, "no deferrals: the field is left out");
        let mut deferred = d.fresh_copy();
        deferred.deferrals = 4;
        deferred.fail_fast = true;
        assert!(deferred.to_body().contains(r#""failFast":true"#));
        assert_eq!(decode(&deferred.to_body()).unwrap(), QueueMessage::Task(deferred));
    }

    #[test]
    fn envelopes_of_a_newer_build_are_read() {
        let body = r#"{"taskId":"t","providerId":"sim","modelId":"m","runId":"r","priority":"low","laterField":1}"#;
        let QueueMessage::Task(d) = decode(body).unwrap() else { panic!("envelope expected") };
        assert_eq!(d.task_id, "t");
    }

    #[test]
    fn poison_notes_round_trip() {
        let note = PoisonNote { message_id: "m-1".into(), reason: "not JSON".into(), body: "{{{".into() };
        assert_eq!(PoisonNote::from_body(&note.to_body()), Some(note));
        assert_eq!(PoisonNote::from_body(r#"{"taskId":"t"}"#), None);
    }

    #[test]
    fn raw_tasks_without_an_id_get_a_stable_one() {
        let body = r#"{"providerId":"sim","modelId":"m","prompt":"hello","priority":"low"}"#;
        let QueueMessage::RawTask(a) = decode(body).unwrap() else { panic!("task expected") };
        let reordered = r#"{"prompt":"hello","modelId":"m","priority":"low","providerId":"sim"}"#;
        let QueueMessage::RawTask(b) = decode(reordered).unwrap() else { panic!("task expected") };
        assert!(a.id.starts_with("h-") && a.id.len() == 34, "{}", a.id);
        assert_eq!(a.id, b.id, "same content, same id");
        let with_id = r#"{"id":"mine","providerId":"sim","modelId":"m","prompt":"hello"}"#;
        let QueueMessage::RawTask(c) = decode(with_id).unwrap() else { panic!("task expected") };
        assert_eq!(c.id, "mine");
    }

    #[test]
    fn poison_is_explained() {
        assert!(matches!(decode("{{{"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(r#"{"taskId":"t","priority":"urgent"}"#), Err(DecodeError::BadEnvelope(_))));
        let Err(DecodeError::BadTask(errors)) = decode(r#"{"providerId":"sim"}"#) else { panic!("bad task expected") };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["modelId", "prompt"]);
    }
}
