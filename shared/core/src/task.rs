//! The JSON contract: the task a user submits and the status, result and error they read back.
//!
//! Field names are the camelCase names of the TypeScript interfaces in the product story; the types
//! the story leaves undefined (`TaskParameters`, `TaskResult`, `TaskError`, …) are defined here and
//! documented in `docs/api.md`. The API, the embedded runner and other systems' SQS producers all
//! speak exactly this format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::TaskError;
use crate::time::{Millis, format_rfc3339};

/// A benchmark task: one prompt for one deployment (or route) and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BenchmarkTask {
    /// Caller-chosen id, also the idempotency key (see [`crate::validate::ID_PATTERN`]).
    pub id: String,
    /// A deployment name from the config, or a route spreading over several deployments
    /// ([`crate::routing`]).
    pub provider_id: String,
    /// The model to ask, as the provider names it.
    pub model_id: String,
    /// The user message.
    pub prompt: String,
    /// Generation parameters; all optional.
    #[serde(default)]
    pub parameters: TaskParameters,
    /// Scheduling class.
    #[serde(default)]
    pub priority: TaskPriority,
    /// Per-attempt timeout in milliseconds. `None` takes the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Optional overall deadline in milliseconds, counted from submission, bounding all attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Free-form caller data, stored and returned untouched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The run (benchmark execution) this task belongs to. `None` takes the runner's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Fail at once (`rateLimited`, or `transient` for an open breaker) instead of waiting when
    /// every deployment it may go to is out of quota or cooling down. Default: wait, without
    /// using attempts, until capacity returns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_fast: bool,
}

impl BenchmarkTask {
    /// SHA-256 of the canonical JSON of the task, the second half of the idempotency key:
    /// the same id with the same hash is a duplicate, with another hash a conflict.
    #[must_use]
    pub fn content_hash(&self) -> String {
        // serde_json maps are sorted (no `preserve_order`), and struct fields serialise in
        // declaration order, so this encoding is canonical.
        let bytes = serde_json::to_vec(self).expect("a task always serialises");
        let digest = Sha256::digest(&bytes);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The run id, or `default_run` when the task names none.
    #[must_use]
    pub fn run_or<'a>(&'a self, default_run: &'a str) -> &'a str {
        self.run_id.as_deref().unwrap_or(default_run)
    }
}

/// Generation parameters. Unknown keys are not accepted at this level: provider-specific
/// settings go into `extra`, which adapters pass through to the provider's request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskParameters {
    /// System prompt, placed where the provider expects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// An earlier conversation, placed before `prompt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature (0..=2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling (0..=1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences (at most 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Seed for providers that support deterministic sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", ...}`, passed as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    /// Ask the provider to stream the answer (measures time to first token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Provider-specific request fields, merged into the provider's request body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One message of an earlier conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// The speaker of a [`ChatMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// A system instruction.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// Scheduling class. Embedded: strict priority with aging; AWS: one queue each, weighted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskPriority {
    /// Served first.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served last, but never starved (aging).
    Low,
}

impl TaskPriority {
    /// 0 for high, 1 for normal, 2 for low.
    #[must_use]
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The JSON value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// Inverse of [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "high" => Some(Self::High),
            "normal" => Some(Self::Normal),
            "low" => Some(Self::Low),
            _ => None,
        }
    }
}

/// The five external statuses of the story. A task waiting for its next attempt is `queued`
/// with `attempt > 0` and `nextAttemptAt` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskState {
    /// Waiting for a worker (first attempt or a scheduled retry).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error (permanent, exhausted, deadline).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl TaskState {
    /// Whether no further transition except redrive (`failed → queued`) can happen.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The JSON value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Inverse of [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Token counts as the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

/// How one attempt ended, for the per-attempt history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    /// Which call this was: `attempt` after the call was counted (429s do not count).
    pub attempt: u32,
    /// The fencing epoch of the claim that made the call.
    pub epoch: u64,
    /// When the provider call started (RFC 3339).
    pub started_at: String,
    /// Time spent on the provider exchange only, in ms (monotonic clock).
    pub latency_ms: f64,
    /// Time to first token in ms, for streamed calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Time the task waited between becoming due and this claim, in ms.
    pub queue_wait_ms: u64,
    /// `ok` or the error class.
    pub outcome: String,
    /// Provider HTTP status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
    /// The deployment that served the call (a route's choice, or the task's deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The model id the call asked that deployment for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// What a completed task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskResult {
    /// The answer text.
    pub text: String,
    /// Normalised finish reason: `stop`, `length`, `content_filter`, `tool_calls` or `other`.
    pub finish_reason: String,
    /// Token usage.
    pub usage: Usage,
    /// The deployment that served the task.
    pub deployment: String,
    /// The model id the provider reports it served.
    pub model: String,
    /// The provider's request id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Latency of the successful attempt in ms (never includes earlier attempts or queue wait).
    pub latency_ms: f64,
    /// Time to first token of the successful attempt, for streamed calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Every attempt, in order, each with its own timings.
    pub attempts: Vec<AttemptRecord>,
    /// The provider's raw response body (the event text of a stream), only when the deployment
    /// sets `keep_raw = true`: for audit. Counts toward the store's item size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_response: Option<String>,
}

/// The story's `TaskStatus`: what `GET /tasks/{id}` and `taskexec status` return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// One of the five statuses.
    pub status: TaskState,
    /// 0 while queued, 0.5 while an attempt runs, 1 once terminal (see `docs/api.md`).
    pub progress: f64,
    /// When the first attempt started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the task became terminal (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Set when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
    /// Set when failed or cancelled, and while queued after a failed attempt (the last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// The run this task belongs to.
    pub run_id: String,
    /// Deployment or route asked for.
    pub provider_id: String,
    /// Model asked for.
    pub model_id: String,
    /// Scheduling class.
    pub priority: TaskPriority,
    /// Fencing token: bumped on every claim and on cancel.
    pub epoch: u64,
    /// Provider calls that used the attempt budget.
    pub attempt: u32,
    /// Calls answered with a rate-limit 429 (their own budget).
    pub throttles: u32,
    /// When the next attempt may start, for a queued retry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// When the task was accepted (RFC 3339).
    pub submitted_at: String,
    /// Why the engine dead-lettered the task, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
}

/// A lease on a running task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (runner or worker id).
    pub owner: String,
    /// Until when, in ms since the epoch.
    pub until: Millis,
}

/// Everything stored about a task: the submitted task plus its life-cycle state.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// The task as submitted (with `run_id` filled in).
    pub task: BenchmarkTask,
    /// [`BenchmarkTask::content_hash`] at submission.
    pub content_hash: String,
    /// Life-cycle status.
    pub state: TaskState,
    /// Fencing token.
    pub epoch: u64,
    /// Attempt-budget calls so far (a claim counts one; a 429 gives it back).
    pub attempt: u32,
    /// Rate-limit answers so far.
    pub throttles: u32,
    /// Earliest start of the next attempt (ms since the epoch) for a queued task.
    pub next_attempt_at: Option<Millis>,
    /// The lease, while running.
    pub lease: Option<Lease>,
    /// When accepted.
    pub submitted_at: Millis,
    /// When the first attempt started.
    pub started_at: Option<Millis>,
    /// When terminal.
    pub ended_at: Option<Millis>,
    /// Result of a completed task.
    pub result: Option<TaskResult>,
    /// The last error (final for failed tasks).
    pub error: Option<TaskError>,
    /// Why the engine dead-lettered the task.
    pub dead_letter_reason: Option<String>,
    /// Every attempt so far.
    pub history: Vec<AttemptRecord>,
}

impl TaskRecord {
    /// A freshly submitted task.
    #[must_use]
    pub fn new(task: BenchmarkTask, now: Millis) -> Self {
        let content_hash = task.content_hash();
        Self {
            task,
            content_hash,
            state: TaskState::Queued,
            epoch: 0,
            attempt: 0,
            throttles: 0,
            next_attempt_at: None,
            lease: None,
            submitted_at: now,
            started_at: None,
            ended_at: None,
            result: None,
            error: None,
            dead_letter_reason: None,
            history: Vec::new(),
        }
    }

    /// The run id (always set on stored records).
    #[must_use]
    pub fn run_id(&self) -> &str {
        self.task.run_id.as_deref().unwrap_or_default()
    }

    /// The overall deadline, in ms since the epoch.
    #[must_use]
    pub fn deadline_at(&self) -> Option<Millis> {
        self.task.deadline.map(|d| self.submitted_at.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)))
    }

    /// The story's `TaskStatus` view of this record.
    #[must_use]
    pub fn status(&self) -> TaskStatus {
        let progress = match self.state {
            TaskState::Queued => 0.0,
            TaskState::Running => 0.5,
            _ => 1.0,
        };
        TaskStatus {
            id: self.task.id.clone(),
            status: self.state,
            progress,
            start_time: self.started_at.map(format_rfc3339),
            end_time: self.ended_at.map(format_rfc3339),
            result: self.result.clone(),
            error: self.error.clone(),
            run_id: self.run_id().to_owned(),
            provider_id: self.task.provider_id.clone(),
            model_id: self.task.model_id.clone(),
            priority: self.task.priority,
            epoch: self.epoch,
            attempt: self.attempt,
            throttles: self.throttles,
            next_attempt_at: self.next_attempt_at.map(format_rfc3339),
            submitted_at: format_rfc3339(self.submitted_at),
            dead_letter_reason: self.dead_letter_reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> BenchmarkTask {
        serde_json::from_str(
            r#"{"id":"t1","providerId":"sim","modelId":"m","prompt":"hi","priority":"high","timeout":1000}"#,
        )
        .unwrap()
    }

    #[test]
    fn parses_camel_case_and_defaults() {
        let t = task();
        assert_eq!(t.priority, TaskPriority::High);
        assert_eq!(t.timeout, Some(1000));
        assert!(t.parameters.messages.is_empty());
        assert!(t.run_id.is_none());
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = serde_json::from_str::<BenchmarkTask>(
            r#"{"id":"t1","providerId":"sim","modelId":"m","prompt":"hi","promt":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("promt"), "{err}");
    }

    #[test]
    fn content_hash_is_stable_and_sensitive() {
        let a = task();
        let mut b = task();
        assert_eq!(a.content_hash(), b.content_hash());
        b.prompt.push('!');
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 64);
    }

    #[test]
    fn status_view_reports_progress_and_times() {
        let mut r = TaskRecord::new(task(), 1_700_000_000_000);
        r.task.run_id = Some("run".into());
        assert_eq!(r.status().progress, 0.0);
        r.state = TaskState::Running;
        assert_eq!(r.status().progress, 0.5);
        r.state = TaskState::Completed;
        r.ended_at = Some(1_700_000_001_000);
        let s = r.status();
        assert_eq!(s.progress, 1.0);
        assert_eq!(s.end_time.as_deref(), Some("2023-11-14T22:13:21.000Z"));
        assert_eq!(s.run_id, "run");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("submittedAt").is_some());
        assert!(json.get("nextAttemptAt").is_none());
    }

    #[test]
    fn priority_and_state_round_trip() {
        for p in [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low] {
            assert_eq!(TaskPriority::parse(p.as_str()), Some(p));
        }
        for s in [TaskState::Queued, TaskState::Running, TaskState::Completed, TaskState::Failed, TaskState::Cancelled]
        {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskPriority::parse("urgent"), None);
        assert!(TaskPriority::High.rank() < TaskPriority::Low.rank());
    }
}
