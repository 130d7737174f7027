//! Validation: the limits that are part of the contract, and parsing of one task from JSON with
//! an error per problem naming the field. Used by `taskexec run` (per line of a task file), by
//! the API and by the SQS worker alike.

use serde_json::Value;

use crate::task::BenchmarkTask;

/// Task ids, run ids: 1–128 characters from `A-Z a-z 0-9 . _ : -`, starting alphanumeric.
pub const ID_PATTERN: &str = "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}";
/// Largest prompt plus system prompt plus earlier messages, in bytes.
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;
/// Largest `metadata` as JSON, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest `parameters.extra` as JSON, in bytes.
pub const MAX_EXTRA_BYTES: usize = 16 * 1024;
/// Attempt timeout range, ms (up to 15 minutes, the longest a Lambda invocation lives).
pub const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 1..=900_000;
/// Longest overall deadline, ms (7 days).
pub const MAX_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most earlier messages.
pub const MAX_MESSAGES: usize = 1000;
/// Most stop sequences.
pub const MAX_STOP: usize = 4;

const REQUIRED: [&str; 4] = ["id", "providerId", "modelId", "prompt"];

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path (`priority`, `parameters.temperature`); empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field `{}`: {}", self.field, self.message)
        }
    }
}

/// Whether `id` matches [`ID_PATTERN`].
#[must_use]
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// Parse one task from JSON text, reporting every problem found.
pub fn parse_task(text: &str) -> Result<BenchmarkTask, Vec<FieldError>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| vec![FieldError::new("", format!("malformed JSON: {e}"))])?;
    parse_task_value(value)
}

/// Parse one task from a JSON value, reporting every problem found.
pub fn parse_task_value(value: Value) -> Result<BenchmarkTask, Vec<FieldError>> {
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new("", "a task must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = REQUIRED
        .iter()
        .filter(|f| object.get(**f).is_none_or(Value::is_null))
        .map(|f| FieldError::new(*f, "is required"))
        .collect();
    let task = match serde_path_to_error::deserialize::<_, BenchmarkTask>(value) {
        Ok(task) => task,
        Err(e) => {
            let field = e.path().to_string();
            let message = e.inner().to_string();
            // The missing-field error repeats what the required check already said.
            if !message.starts_with("missing field") {
                errors.push(FieldError::new(if field == "." { String::new() } else { field }, message));
            }
            return Err(errors);
        }
    };
    errors.extend(validate(&task));
    if errors.is_empty() { Ok(task) } else { Err(errors) }
}

/// Check a parsed task against the contract's limits.
#[must_use]
pub fn validate(task: &BenchmarkTask) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut check = |ok: bool, field: &str, message: String| {
        if !ok {
            errors.push(FieldError::new(field, message));
        }
    };
    check(is_valid_id(&task.id), "id", format!("must match {ID_PATTERN}"));
    check(!task.provider_id.trim().is_empty(), "providerId", "must not be empty".into());
    check(!task.model_id.trim().is_empty(), "modelId", "must not be empty".into());
    check(!task.prompt.is_empty(), "prompt", "must not be empty".into());
    if let Some(run) = &task.run_id {
        check(is_valid_id(run), "runId", format!("must match {ID_PATTERN}"));
    }
    let p = &task.parameters;
    let text_bytes = task.prompt.len()
        + p.system.as_ref().map_or(0, String::len)
        + p.messages.iter().map(|m| m.content.len()).sum::<usize>();
    check(
        text_bytes <= MAX_PROMPT_BYTES,
        "prompt",
        format!("prompt, system prompt and messages are {text_bytes} bytes; the limit is {MAX_PROMPT_BYTES}"),
    );
    if let Some(t) = task.timeout {
        check(TIMEOUT_RANGE_MS.contains(&t), "timeout", format!("{t} ms is outside 1..=900000 ms"));
    }
    if let Some(d) = task.deadline {
        check((1..=MAX_DEADLINE_MS).contains(&d), "deadline", format!("{d} ms is outside 1..={MAX_DEADLINE_MS} ms"));
    }
    let metadata = json_len(&task.metadata);
    check(
        metadata <= MAX_METADATA_BYTES,
        "metadata",
        format!("{metadata} bytes as JSON; the limit is {MAX_METADATA_BYTES}"),
    );
    let extra = json_len(&p.extra);
    check(
        extra <= MAX_EXTRA_BYTES,
        "parameters.extra",
        format!("{extra} bytes as JSON; the limit is {MAX_EXTRA_BYTES}"),
    );
    check(p.messages.len() <= MAX_MESSAGES, "parameters.messages", format!("at most {MAX_MESSAGES} messages"));
    check(p.stop.len() <= MAX_STOP, "parameters.stop", format!("at most {MAX_STOP} stop sequences"));
    if let Some(t) = p.temperature {
        check((0.0..=2.0).contains(&t), "parameters.temperature", format!("{t} is outside 0..=2"));
    }
    if let Some(t) = p.top_p {
        check((0.0..=1.0).contains(&t), "parameters.topP", format!("{t} is outside 0..=1"));
    }
    if let Some(n) = p.max_tokens {
        check(n >= 1, "parameters.maxTokens", "must be at least 1".into());
    }
    errors
}

fn json_len<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<String> {
        parse_task(text).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn accepts_a_minimal_task() {
        let t = parse_task(r#"{"id":"a-1","providerId":"sim","modelId":"m","prompt":"hi"}"#).unwrap();
        assert_eq!(t.id, "a-1");
    }

    #[test]
    fn names_each_problem_field() {
        assert_eq!(fields("{not json"), [""]);
        assert_eq!(fields("[1]"), [""]);
        assert_eq!(fields(r#"{"id":"a","providerId":"p"}"#), ["modelId", "prompt"]);
        assert_eq!(
            fields(r#"{"id":"a","providerId":"p","modelId":"m","prompt":"x","priority":"urgent"}"#),
            ["priority"]
        );
        assert_eq!(fields(r#"{"id":"a","providerId":"p","modelId":"m","prompt":"x","timeout":-5}"#), ["timeout"]);
        assert_eq!(
            fields(r#"{"id":"a","providerId":"p","modelId":"m","prompt":"x","parameters":{"temperature":"hot"}}"#),
            ["parameters.temperature"]
        );
        assert_eq!(
            fields(r#"{"id":"bad id","providerId":"p","modelId":"m","prompt":"","timeout":0,"parameters":{"topP":3}}"#),
            ["id", "prompt", "timeout", "parameters.topP"]
        );
    }

    #[test]
    fn enforces_size_limits() {
        let big = "x".repeat(MAX_PROMPT_BYTES + 1);
        let text = format!(r#"{{"id":"a","providerId":"p","modelId":"m","prompt":"{big}"}}"#);
        let errors = parse_task(&text).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().starts_with("field `prompt`: prompt, system prompt and messages are 1048577 bytes")
        );
        let meta = "y".repeat(MAX_METADATA_BYTES);
        let text = format!(r#"{{"id":"a","providerId":"p","modelId":"m","prompt":"p","metadata":{{"k":"{meta}"}}}}"#);
        assert_eq!(fields(&text), ["metadata"]);
    }

    #[test]
    fn id_format() {
        assert!(is_valid_id("run-1.a_b:c"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("-a"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(is_valid_id(&"a".repeat(128)));
    }
}
