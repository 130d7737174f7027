//! Task routes: submit (`POST /tasks`), read (`GET /tasks/{id}`), cancel
//! (`DELETE /tasks/{id}`) and redrive (`POST /tasks/{id}/redrive`).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use taskexec_core::ports::{CancelOutcome, ControlStore, TaskStore, WorkQueue, WriteOutcome};
use taskexec_core::task::{TaskRecord, TaskStatus};

use crate::error::{ApiError, ErrorBody};
use crate::routes::MAX_BODY_BYTES;
use crate::state::ApiState;
use crate::submit::{self, SubmitResponse};

/// Submit one task or an array of up to 500, idempotently (the id is the key).
#[utoipa::path(
    post, path = "/tasks", tag = "tasks",
    request_body(content = crate::submit::SubmitBody, description = "A BenchmarkTask or an array of 1 to 500"),
    responses(
        (status = 201, description = "At least one task was created", body = SubmitResponse),
        (status = 200, description = "Every task was already stored with the same content", body = SubmitResponse),
        (status = 400, description = "Invalid tasks: every problem with its index and field", body = ErrorBody),
        (status = 409, description = "Ids already stored with other content (the others were accepted)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Store or queue unavailable: send the same request again", body = ErrorBody),
    )
)]
pub(crate) async fn submit_tasks<S, Q>(
    State(state): State<ApiState<S, Q>>,
    request_id: Option<axum::Extension<crate::RequestId>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    let body = body.map_err(body_error)?;
    let tasks = submit::validate_batch(submit::parse_body(&body)?, &state.settings)?;
    let correlation = request_id.map(|axum::Extension(crate::RequestId(id))| std::sync::Arc::from(id));
    let response = submit::submit(&state, tasks, correlation).await?;
    let status = if response.created_any() { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(response)))
}

/// A body that could not be read: too large, or cut off.
pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: MAX_BODY_BYTES }
    } else {
        ApiError::invalid("", "the request body could not be read")
    }
}

/// A task's status.
#[utoipa::path(
    get, path = "/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = TaskStatus),
        (status = 404, description = "No such task", body = ErrorBody),
    )
)]
pub(crate) async fn get_task<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    Ok(Json(load(&state, &id).await?.status()))
}

async fn load<S: TaskStore + ControlStore, Q>(state: &ApiState<S, Q>, id: &str) -> Result<TaskRecord, ApiError> {
    state.store.get(id).await?.ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no task with id `{id}`"))
}

/// Cancel a queued or running task (a running task's provider request is dropped).
#[utoipa::path(
    delete, path = "/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Cancelled: the task now", body = TaskStatus),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task had already finished", body = ErrorBody),
    )
)]
pub(crate) async fn cancel_task<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    match state.store.cancel(&id, state.settings.clock.now()).await? {
        CancelOutcome::Cancelled { .. } => {
            let status = load(&state, &id).await?.status();
            let delta = taskexec_core::ports::RunDelta { cancelled: 1, ..Default::default() };
            state.settings.count(status.run_id.clone(), delta).await;
            Ok(Json(status))
        }
        CancelOutcome::AlreadyTerminal(s) => Err(not_now(&id, &format!("has already finished ({})", s.as_str()))),
        CancelOutcome::NotFound => Err(not_found(&id)),
    }
}

fn not_now(id: &str, why: &str) -> ApiError {
    ApiError::Conflict { message: format!("task `{id}` {why}"), details: Vec::new() }
}

/// Give a failed task a fresh attempt budget and queue it again (`failed → queued`).
#[utoipa::path(
    post, path = "/tasks/{id}/redrive", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Queued again: the task now", body = TaskStatus),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not failed", body = ErrorBody),
        (status = 503, description = "Store or queue unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn redrive_task<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    let before = load(&state, &id).await?;
    let now = state.settings.clock.now();
    if state.store.redrive(&id, now).await? == WriteOutcome::Stale {
        return Err(not_now(&id, &format!("is {}, not failed", before.state.as_str())));
    }
    let record = load(&state, &id).await?;
    let delivery = submit::delivery_of(&record, now);
    state.queue.send(vec![(delivery.clone(), Duration::ZERO)]).await.map_err(ApiError::Queue)?;
    // As for a submission: the store's backstop forgets the re-queued task's message.
    if let Err(error) = state.store.mark_sent(std::slice::from_ref(&delivery)).await {
        tracing::warn!(task_id = %id, %error, "redrive sent but not settled; the sweeper may send it again");
    }
    Ok(Json(record.status()))
}
