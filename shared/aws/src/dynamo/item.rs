//! The item mapping, written once: a task's small STATE item (through `serde_dynamo`), its
//! PAYLOAD item (the submitted task as JSON, deflated when that saves space), the compact
//! transition trail kept on the state, and the assembly of a [`TaskRecord`] from the two items.

use std::collections::HashMap;
use std::io::{Read, Write};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use taskexec_core::error::TaskError;
use taskexec_core::ports::{AuditEvent, Delivery, Route};
use taskexec_core::task::{AttemptRecord, BenchmarkTask, Lease, TaskPriority, TaskRecord, TaskResult, TaskState};
use taskexec_core::time::Millis;

use super::keys;
use crate::error::AwsError;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Task JSON longer than this is stored deflated when that makes it smaller.
const COMPRESS_ABOVE: usize = 256;

/// A task's STATE item: everything but the submitted payload. Kept well under 1 KB while the
/// task is unfinished, so claims and transitions cost 1 WCU; the result joins it with the
/// completion, after which it is never written again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateItem {
    /// `TASK#<id>`.
    pub pk: String,
    /// `STATE`.
    pub sk: String,
    /// Life-cycle status.
    pub status: TaskState,
    /// Fencing token.
    pub epoch: u64,
    /// Attempt-budget calls so far.
    pub attempt: u32,
    /// Rate-limit answers so far.
    pub throttles: u32,
    /// Lease holder while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// Lease end while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<Millis>,
    /// A queued retry's earliest start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// Accepted at.
    pub submitted_at: Millis,
    /// First attempt's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    /// Terminal at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// The last error (class, message, provider status and code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Why the engine dead-lettered the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
    /// Content hash of the payload (idempotency).
    pub content_hash: String,
    /// Run.
    pub run_id: String,
    /// Deployment or route.
    pub provider_id: String,
    /// Model.
    pub model_id: String,
    /// Scheduling class.
    pub priority: TaskPriority,
    /// The task fails instead of waiting for capacity; absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_fast: bool,
    /// The result, written with the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// Every attempt so far.
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    /// Transition events, `kind@at#epoch` each (see [`trail_entry`]).
    #[serde(default)]
    pub trail: Vec<String>,
}

impl StateItem {
    /// The state item of a record being submitted.
    #[must_use]
    pub fn of_record(r: &TaskRecord) -> Self {
        let id = &r.task.id;
        Self {
            pk: keys::task_pk(id),
            sk: keys::STATE.to_owned(),
            status: r.state,
            epoch: r.epoch,
            attempt: r.attempt,
            throttles: r.throttles,
            lease_owner: r.lease.as_ref().map(|l| l.owner.clone()),
            lease_until: r.lease.as_ref().map(|l| l.until),
            next_attempt_at: r.next_attempt_at,
            submitted_at: r.submitted_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            error: r.error.clone(),
            dead_letter_reason: r.dead_letter_reason.clone(),
            content_hash: r.content_hash.clone(),
            run_id: r.run_id().to_owned(),
            provider_id: r.task.provider_id.clone(),
            model_id: r.task.model_id.clone(),
            priority: r.task.priority,
            fail_fast: r.task.fail_fast,
            result: r.result.clone(),
            history: r.history.clone(),
            trail: vec![trail_entry("submitted", r.submitted_at, r.epoch)],
        }
    }

    /// When the task is due: its retry time, else its submission (`pending`'s `ready_at`).
    #[must_use]
    pub fn ready_at(&self) -> Millis {
        self.next_attempt_at.unwrap_or(self.submitted_at)
    }

    /// A first delivery of the task, due at [`Self::ready_at`] (route and priority from the state).
    #[must_use]
    pub fn delivery(&self) -> Delivery {
        let route = Route {
            provider_id: self.provider_id.clone(),
            model_id: self.model_id.clone(),
            run_id: self.run_id.clone(),
        };
        let mut d = Delivery::new(self.task_id(), std::sync::Arc::new(route), self.priority, self.ready_at());
        d.fail_fast = self.fail_fast;
        d
    }

    /// The task id.
    #[must_use]
    pub fn task_id(&self) -> &str {
        keys::task_id_of(&self.pk).unwrap_or(&self.pk)
    }

    /// Read from an item.
    pub fn from_item(item: Item) -> Result<Self, AwsError> {
        let what = item_key(&item);
        serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("state item {what}"), e))
    }

    /// Write as an item.
    pub fn to_item(&self) -> Result<Item, AwsError> {
        serde_dynamo::to_item(self).map_err(|e| AwsError::mapping(format!("state item {}", self.pk), e))
    }

    /// The lease, while running.
    #[must_use]
    pub fn lease(&self) -> Option<Lease> {
        match (&self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease { owner: owner.clone(), until }),
            _ => None,
        }
    }

    /// The whole record, with the submitted task from the payload.
    #[must_use]
    pub fn into_record(self, task: BenchmarkTask) -> TaskRecord {
        TaskRecord {
            content_hash: self.content_hash.clone(),
            state: self.status,
            epoch: self.epoch,
            attempt: self.attempt,
            throttles: self.throttles,
            next_attempt_at: self.next_attempt_at,
            lease: self.lease(),
            submitted_at: self.submitted_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            result: self.result,
            error: self.error,
            dead_letter_reason: self.dead_letter_reason,
            history: self.history,
            task,
        }
    }

    /// A record for summaries: the state with a task that names only its route (no payload read).
    #[must_use]
    pub fn into_summary_record(self) -> TaskRecord {
        let task = BenchmarkTask {
            id: self.task_id().to_owned(),
            provider_id: self.provider_id.clone(),
            model_id: self.model_id.clone(),
            prompt: String::new(),
            parameters: Default::default(),
            priority: self.priority,
            timeout: None,
            deadline: None,
            metadata: Default::default(),
            run_id: Some(self.run_id.clone()),
            fail_fast: self.fail_fast,
        };
        self.into_record(task)
    }

    /// The audit events recoverable from the trail, oldest first.
    #[must_use]
    pub fn events(&self) -> Vec<AuditEvent> {
        let id = self.task_id();
        self.trail.iter().filter_map(|entry| parse_trail_entry(id, entry)).collect()
    }
}

/// One trail entry: `kind@at#epoch`.
#[must_use]
pub fn trail_entry(kind: &str, at: Millis, epoch: u64) -> String {
    format!("{kind}@{at}#{epoch}")
}

fn parse_trail_entry(task_id: &str, entry: &str) -> Option<AuditEvent> {
    let (kind, rest) = entry.rsplit_once('@')?;
    let (at, epoch) = rest.split_once('#')?;
    Some(AuditEvent {
        task_id: task_id.to_owned(),
        at: at.parse().ok()?,
        kind: kind.to_owned(),
        epoch: epoch.parse().ok()?,
        detail: None,
    })
}

/// The PAYLOAD item of a task: keys, content hash and the task JSON (`task`, a string) or its
/// deflated bytes (`taskZ`, binary), whichever is smaller.
pub fn payload_item(r: &TaskRecord) -> Result<Item, AwsError> {
    let json = serde_json::to_vec(&r.task).map_err(|e| AwsError::mapping(format!("task {}", r.task.id), e))?;
    let body = match deflate(&json) {
        Some(z) if json.len() > COMPRESS_ABOVE && z.len() < json.len() => ("taskZ", AttributeValue::B(Blob::new(z))),
        _ => ("task", AttributeValue::S(String::from_utf8(json).expect("serde_json writes UTF-8"))),
    };
    Ok(HashMap::from([
        (keys::PK.to_owned(), AttributeValue::S(keys::task_pk(&r.task.id))),
        (keys::SK.to_owned(), AttributeValue::S(keys::PAYLOAD.to_owned())),
        ("contentHash".to_owned(), AttributeValue::S(r.content_hash.clone())),
        (body.0.to_owned(), body.1),
    ]))
}

/// The submitted task of a PAYLOAD item.
pub fn task_of_payload(item: &Item) -> Result<BenchmarkTask, AwsError> {
    let what = || format!("payload {}", item_key(item));
    let json = match (item.get("task"), item.get("taskZ")) {
        (Some(AttributeValue::S(s)), _) => s.as_bytes().to_vec(),
        (_, Some(AttributeValue::B(b))) => inflate(b.as_ref()).map_err(|e| AwsError::mapping(what(), e))?,
        _ => return Err(AwsError::Corrupt { key: what(), problem: "neither task nor taskZ" }),
    };
    serde_json::from_slice(&json).map_err(|e| AwsError::mapping(what(), e))
}

fn deflate(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).ok()?;
    z.finish().ok()
}

fn inflate(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// `pk/sk` of an item, for messages.
#[must_use]
pub fn item_key(item: &Item) -> String {
    let part = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).map_or("?", String::as_str).to_owned();
    format!("{}/{}", part(keys::PK), part(keys::SK))
}

/// A string attribute.
#[must_use]
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
#[must_use]
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Any serialisable value as an attribute.
pub fn value<T: Serialize>(what: &str, v: &T) -> Result<AttributeValue, AwsError> {
    serde_dynamo::to_attribute_value(v).map_err(|e| AwsError::mapping(what.to_owned(), e))
}

/// The key of an item.
#[must_use]
pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(keys::PK.to_owned(), s(pk)), (keys::SK.to_owned(), s(sk))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prompt: &str) -> TaskRecord {
        let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
            "id": "t1", "providerId": "p", "modelId": "m", "prompt": prompt, "runId": "r1"
        }))
        .unwrap();
        TaskRecord::new(task, 1_000)
    }

    #[test]
    fn state_round_trips_through_an_item() {
        let r = record("hi");
        let state = StateItem::of_record(&r);
        let back = StateItem::from_item(state.to_item().unwrap()).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.clone().into_record(r.task.clone()), r);
        assert_eq!(back.events()[0].kind, "submitted");
    }

    #[test]
    fn payload_is_deflated_only_when_that_helps() {
        let short = payload_item(&record("hi")).unwrap();
        assert!(short.contains_key("task"));
        let long_record = record(&"the quick brown fox jumps over the lazy dog. ".repeat(30));
        let long = payload_item(&long_record).unwrap();
        assert!(long.contains_key("taskZ"));
        assert_eq!(task_of_payload(&long).unwrap(), long_record.task);
        assert_eq!(task_of_payload(&short).unwrap().prompt, "hi");
    }

    #[test]
    fn trail_entries_parse_back() {
        let e = parse_trail_entry("t", &trail_entry("retryScheduled", 42, 3)).unwrap();
        assert_eq!((e.kind.as_str(), e.at, e.epoch), ("retryScheduled", 42, 3));
        assert!(parse_trail_entry("t", "garbage").is_none());
    }
}
