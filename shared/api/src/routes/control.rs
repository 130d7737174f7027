//! Control routes: the story's `pauseExecution` / `resumeExecution` (`POST /control/pause`,
//! `POST /control/resume`, globally or for one run), the control state (`GET /control`), and the
//! limits set at run time (`PUT` / `DELETE /control/limits/{deployment}`), which every engine
//! reading the control state applies without a redeploy.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use taskexec_core::ports::{ControlState, ControlStore, LimitOverride, PauseScope, TaskStore, WorkQueue};
use taskexec_core::validate::{ID_PATTERN, is_valid_id};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::tasks::body_error;
use crate::state::ApiState;

/// The optional body of pause and resume: a run, or nothing (no body, `null` or `{}`) for
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlRequest {
    /// Pause or resume this run only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    pub run_id: Option<String>,
}

impl ControlRequest {
    /// Only the documented shapes: no body, `null` or `{}` (everything), `{"runId": "<id>"}`
    /// (one run). Anything else names what is wrong: serde alone would also take an array
    /// (`["r1"]`) and a `null` run id, the latter meaning "everything" to a client that merely
    /// lost its run id.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| ApiError::invalid("", format!("malformed JSON: {e}")))?;
        let fields = match value {
            serde_json::Value::Null => return Ok(Self::default()),
            serde_json::Value::Object(fields) => fields,
            _ => {
                return Err(ApiError::invalid(
                    "",
                    "the body must be empty, null, or an object: {} for everything, {\"runId\": \"…\"} for one run",
                ));
            }
        };
        if let Some(unknown) = fields.keys().find(|k| *k != "runId") {
            return Err(ApiError::invalid(unknown, "unknown field; the only field is `runId`"));
        }
        match fields.get("runId") {
            None => Ok(Self::default()),
            Some(serde_json::Value::String(run)) if is_valid_id(run) => Ok(Self { run_id: Some(run.clone()) }),
            Some(serde_json::Value::String(_)) => Err(ApiError::invalid("runId", format!("must match {ID_PATTERN}"))),
            Some(_) => Err(ApiError::invalid(
                "runId",
                format!("must be a string matching {ID_PATTERN}; leave it out to act on everything"),
            )),
        }
    }

    fn scope(self) -> PauseScope {
        self.run_id.map_or(PauseScope::Global, PauseScope::Run)
    }
}

/// Pause execution: no new attempt starts; attempts in flight finish.
#[utoipa::path(
    post, path = "/control/pause", tag = "control",
    request_body(content = Option<ControlRequest>, description = "Optional: `{\"runId\": …}` pauses one run"),
    responses(
        (status = 200, description = "The control state now", body = ControlState),
        (status = 400, description = "Invalid body", body = ErrorBody),
    )
)]
pub(crate) async fn pause<S, Q>(
    State(state): State<ApiState<S, Q>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    set_paused(&state, body, true).await
}

/// Resume execution, globally or for one run.
#[utoipa::path(
    post, path = "/control/resume", tag = "control",
    request_body(content = Option<ControlRequest>, description = "Optional: `{\"runId\": …}` resumes one run"),
    responses(
        (status = 200, description = "The control state now", body = ControlState),
        (status = 400, description = "Invalid body", body = ErrorBody),
    )
)]
pub(crate) async fn resume<S, Q>(
    State(state): State<ApiState<S, Q>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    set_paused(&state, body, false).await
}

async fn set_paused<S, Q>(
    state: &ApiState<S, Q>,
    body: Result<Bytes, BytesRejection>,
    paused: bool,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
{
    let request = ControlRequest::parse(&body.map_err(body_error)?)?;
    let scope = request.scope();
    let global = scope == PauseScope::Global;
    state.store.set_paused(scope, paused).await?;
    if global
        && let Some(hook) = &state.settings.pause_hook
        && let Err(error) = hook(paused).await
    {
        tracing::warn!(%error, paused, "the host's pause action failed; the pause holds at every claim");
    }
    Ok(Json(state.store.control().await?))
}

/// The control state: global pause, paused runs.
#[utoipa::path(
    get, path = "/control", tag = "control",
    responses((status = 200, description = "The control state", body = ControlState))
)]
pub(crate) async fn get_control<S, Q>(State(state): State<ApiState<S, Q>>) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    Ok(Json(state.store.control().await?))
}

/// Set a deployment's limits at run time, replacing any set before: each field given replaces the
/// configured value, each field left out keeps it. Every engine applies it at its next control
/// check (embedded: within a second; AWS: a worker's next invocation). Audited as a log line
/// (`taskexec::audit`, kind `limitsSet`).
#[utoipa::path(
    put, path = "/control/limits/{deployment}", tag = "control",
    params(("deployment" = String, Path, description = "A configured deployment")),
    request_body(content = LimitOverride, description = "The limits: any of concurrency, rpm, tpm, inputTpm, outputTpm, rpd (each at least 1)"),
    responses(
        (status = 200, description = "The control state now", body = ControlState),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 404, description = "Unknown deployment", body = ErrorBody),
    )
)]
pub(crate) async fn set_limits<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(deployment): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    known_deployment(&state, &deployment)?;
    let body = body.map_err(body_error)?;
    let limits: LimitOverride = serde_json::from_slice(&body).map_err(|e| ApiError::invalid("", e.to_string()))?;
    if let Some(problem) = limits.problem() {
        return Err(ApiError::invalid("", problem));
    }
    change_limits(&state, &deployment, Some(limits)).await
}

/// Remove a deployment's run-time limits: back to the configured ones.
#[utoipa::path(
    delete, path = "/control/limits/{deployment}", tag = "control",
    params(("deployment" = String, Path, description = "A configured deployment")),
    responses(
        (status = 200, description = "The control state now", body = ControlState),
        (status = 404, description = "Unknown deployment", body = ErrorBody),
    )
)]
pub(crate) async fn reset_limits<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(deployment): Path<String>,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    known_deployment(&state, &deployment)?;
    change_limits(&state, &deployment, None).await
}

fn known_deployment<S, Q>(state: &ApiState<S, Q>, deployment: &str) -> Result<(), ApiError> {
    if state.settings.deployments.contains(deployment) {
        return Ok(());
    }
    let known = state.settings.deployments.iter().cloned().collect::<Vec<_>>().join(", ");
    Err(ApiError::NotFound(format!("unknown deployment `{deployment}` (configured: {known})")))
}

async fn change_limits<S, Q>(
    state: &ApiState<S, Q>,
    deployment: &str,
    limits: Option<LimitOverride>,
) -> Result<Json<ControlState>, ApiError>
where
    S: TaskStore + ControlStore,
{
    let before = state.store.control().await?.limits.get(deployment).copied().unwrap_or_default();
    state.store.set_limits(deployment, limits).await?;
    let now = limits.unwrap_or_default();
    tracing::info!(target: "taskexec::audit", kind = "limitsSet", deployment, limits = %now, previous = %before,
        "run-time limits set");
    Ok(Json(state.store.control().await?))
}
