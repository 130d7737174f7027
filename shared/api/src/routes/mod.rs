//! The router: every route of the API over one [`ApiState`], JSON errors for unknown paths and
//! methods, a body limit, and a log line and request id per request ([`crate::request_log`]).

pub(crate) mod control;
pub(crate) mod observe;
pub(crate) mod tasks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use taskexec_core::ports::{ControlStore, TaskStore, WorkQueue};

use crate::error::ApiError;
use crate::state::ApiState;

/// Largest request body (API Gateway's payload limit).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// The API's router over `state`. Hosts add authentication: `taskexec serve` layers
/// [`crate::bearer_auth`] over it; the Lambda relies on API Gateway's IAM authorization.
pub fn router<S, Q>(state: ApiState<S, Q>) -> Router
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    Router::new()
        .route("/tasks", post(tasks::submit_tasks::<S, Q>))
        .route("/tasks/{id}", get(tasks::get_task::<S, Q>).delete(tasks::cancel_task::<S, Q>))
        .route("/tasks/{id}/redrive", post(tasks::redrive_task::<S, Q>))
        .route("/control", get(control::get_control::<S, Q>))
        .route("/control/pause", post(control::pause::<S, Q>))
        .route("/control/resume", post(control::resume::<S, Q>))
        .route(
            "/control/limits/{deployment}",
            axum::routing::put(control::set_limits::<S, Q>).delete(control::reset_limits::<S, Q>),
        )
        .route("/metrics", get(observe::get_metrics::<S, Q>))
        .route("/runs/{id}", get(observe::get_run::<S, Q>))
        .route("/resources", get(observe::get_resources::<S, Q>))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::request_log::log_requests))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
