//! Submission: parse and validate a body of one task or an array of tasks, store them
//! idempotently, queue them, then tell the store they are sent (`TaskStore::mark_sent`). Created tasks are queued, and so are duplicates that are still
//! unfinished: a client retrying after a failed send (answered 503) re-sends their messages.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskexec_core::ports::{ControlStore, Delivery, DeliveryBuilder, SubmitOutcome, TaskStore, WorkQueue};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::Millis;
use taskexec_core::validate::{FieldError, parse_task_value};
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::state::{ApiSettings, ApiState};

/// Most tasks in one request.
pub const MAX_BATCH: usize = 500;

/// What the submission did with one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubmitKind {
    /// Stored as a new queued task.
    Created,
    /// The same id with the same content was already stored: nothing changed.
    Duplicate,
}

/// One submitted task's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmittedTask {
    /// Index in the submitted array (0 for a single task object).
    pub index: usize,
    /// Task id.
    pub id: String,
    /// Created or duplicate.
    pub outcome: SubmitKind,
    /// Its status now.
    pub status: TaskState,
    /// Its run (the default run when the task named none).
    pub run_id: String,
}

/// The answer to `POST /tasks`: one entry per submitted task, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// The outcomes.
    pub tasks: Vec<SubmittedTask>,
}

impl SubmitResponse {
    /// Whether any task was new (201) rather than all duplicates (200).
    #[must_use]
    pub fn created_any(&self) -> bool {
        self.tasks.iter().any(|t| t.outcome == SubmitKind::Created)
    }
}

/// The body of `POST /tasks`, for the OpenAPI document (parsing is by [`parse_body`]).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum SubmitBody {
    /// One task.
    One(Box<BenchmarkTask>),
    /// 1 to 500 tasks.
    Many(Vec<BenchmarkTask>),
}

/// Split a body into its task values: an object is one task, an array 1..=[`MAX_BATCH`].
pub(crate) fn parse_body(bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("", format!("malformed JSON: {e}")))?;
    match value {
        Value::Object(_) => Ok(vec![value]),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid("", "the array holds no tasks")),
        Value::Array(items) if items.len() > MAX_BATCH => {
            Err(ApiError::invalid("", format!("{} tasks in one request; the limit is {MAX_BATCH}", items.len())))
        }
        Value::Array(items) => Ok(items),
        _ => Err(ApiError::invalid("", "the body must be a task object or an array of task objects")),
    }
}

/// Validate every task (contract, known deployment, timeout inside the worker's, ids unique in
/// the request) and default their run; all problems are reported at once, with their index.
pub(crate) fn validate_batch(values: Vec<Value>, settings: &ApiSettings) -> Result<Vec<BenchmarkTask>, ApiError> {
    let mut problems = Vec::new();
    let mut tasks = Vec::with_capacity(values.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, value) in values.into_iter().enumerate() {
        // Read before parsing consumes the value, so a task's problems are all reported at once.
        let placement = check_settings(&value, settings);
        let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
        match parse_task_value(value) {
            Err(errors) => problems.extend(errors.into_iter().map(|e| Problem::at(index, e))),
            Ok(mut task) => {
                if let Some(check) = &settings.task_check {
                    problems.extend(check(&task).into_iter().map(|e| Problem::at(index, e)));
                }
                task.run_id.get_or_insert_with(|| settings.default_run_id.clone());
                tasks.push(task);
            }
        }
        problems.extend(placement.into_iter().map(|e| Problem::at(index, e)));
        if let Some(first) = id.and_then(|id| seen.insert(id, index)) {
            let message = format!("duplicate id (first at index {first})");
            problems.push(Problem::at(index, FieldError { field: "id".into(), message }));
        }
    }
    if problems.is_empty() {
        return Ok(tasks);
    }
    let message = format!("{} problem(s) in the submitted tasks; nothing was stored", problems.len());
    Err(ApiError::Invalid { message, details: problems })
}

/// The checks that depend on where the API runs: the deployment exists, the timeout fits in the
/// worker's. Read from the raw task, so they are reported along with contract problems.
fn check_settings(task: &Value, settings: &ApiSettings) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let provider = task.get("providerId").and_then(Value::as_str);
    if let Some(provider) = provider.filter(|p| !settings.deployments.contains(*p)) {
        let known = settings.deployments.iter().cloned().collect::<Vec<_>>().join(", ");
        let message = format!("unknown deployment `{provider}` (configured: {known})");
        errors.push(FieldError { field: "providerId".into(), message });
    }
    let max = settings.max_task_timeout().unwrap_or(Duration::MAX);
    let timeout = task.get("timeout").and_then(Value::as_u64);
    if let Some(timeout) = timeout.filter(|t| u128::from(*t) > max.as_millis()) {
        let message = format!(
            "{timeout} ms does not fit in the worker's timeout of {} ms minus a margin of {} ms (at most {} ms)",
            settings.worker_timeout.unwrap_or_default().as_millis(),
            settings.timeout_margin.as_millis(),
            max.as_millis()
        );
        errors.push(FieldError { field: "timeout".into(), message });
    }
    errors
}

/// Store the tasks, queue the created and the unfinished duplicates, and say what happened to
/// each. Conflicts (same id, other content) make the answer a 409 listing them; the other tasks
/// of the request are stored and queued all the same.
pub(crate) async fn submit<S, Q>(
    state: &ApiState<S, Q>,
    tasks: Vec<BenchmarkTask>,
    correlation: Option<std::sync::Arc<str>>,
) -> Result<SubmitResponse, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    let now = state.settings.clock.now();
    let mut builder = DeliveryBuilder::default();
    // The runs are already defaulted.
    let routes: Vec<Delivery> = tasks
        .iter()
        .map(|t| {
            let mut d = builder.of_task(t, t.run_id.as_deref().unwrap_or_default(), now);
            d.correlation.clone_from(&correlation);
            d
        })
        .collect();
    let records = tasks.into_iter().map(|t| TaskRecord::new(t, now)).collect();
    let outcomes = state.store.submit(records).await?;
    let (mut deliveries, mut answered, mut conflicts) = (Vec::new(), Vec::new(), Vec::new());
    for (index, (route, outcome)) in routes.iter().cloned().zip(outcomes).enumerate() {
        let (outcome, status) = match outcome {
            SubmitOutcome::Created => (SubmitKind::Created, TaskState::Queued),
            SubmitOutcome::Duplicate(state) => (SubmitKind::Duplicate, state),
            SubmitOutcome::Conflict => {
                conflicts.push(conflict(index, &route.task_id));
                continue;
            }
        };
        answered.push(SubmittedTask {
            index,
            id: route.task_id.clone(),
            outcome,
            status,
            run_id: route.run_id().to_owned(),
        });
        if !status.is_terminal() {
            deliveries.push((route, Duration::ZERO));
        }
    }
    if !deliveries.is_empty() {
        state.queue.send(deliveries).await.map_err(ApiError::Queue)?;
    }
    // Every task of the request now has its message (or needs none). If this write is lost, the
    // store's backstop (DynamoDB: the sweeper) re-sends the never-claimed ones: a duplicate.
    if let Err(error) = state.store.mark_sent(&routes).await {
        tracing::warn!(%error, tasks = routes.len(), "submission sent but not settled; the sweeper may send it again");
    }
    let mut created: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for t in answered.iter().filter(|t| t.outcome == SubmitKind::Created) {
        *created.entry(t.run_id.clone()).or_default() += 1;
    }
    for (run, submitted) in created {
        state.settings.count(run, taskexec_core::ports::RunDelta { submitted, ..Default::default() }).await;
    }
    if conflicts.is_empty() {
        return Ok(SubmitResponse { tasks: answered });
    }
    let message = format!(
        "{} task id(s) already exist with different content; the other {} task(s) were accepted",
        conflicts.len(),
        answered.len()
    );
    Err(ApiError::Conflict { message, details: conflicts })
}

fn conflict(index: usize, id: &str) -> Problem {
    let message = format!("task `{id}` already exists with different content");
    Problem::at(index, FieldError { field: "id".into(), message })
}

/// A delivery of a stored task, due now (a scheduled retry is deferred by its claim).
pub(crate) fn delivery_of(record: &TaskRecord, now: Millis) -> Delivery {
    DeliveryBuilder::default().of_task(&record.task, record.run_id(), now)
}
