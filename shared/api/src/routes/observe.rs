//! Observation routes: `GET /metrics` (ExecutionMetrics, global or `?runId=`), `GET /runs/{id}`
//! (a run's progress) and `GET /resources` (a sample of this process's resource use).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use taskexec_core::metrics::{ExecutionMetrics, ResourceUsage};
use taskexec_core::ports::{ControlStore, GroupSummary, TaskStore, WorkQueue};
use taskexec_core::validate::{ID_PATTERN, is_valid_id};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::state::ApiState;

/// The query of `GET /metrics`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MetricsQuery {
    /// Metrics of this run only (default: every run).
    #[param(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    run_id: Option<String>,
}

/// ExecutionMetrics, of every run or of one.
#[utoipa::path(
    get, path = "/metrics", tag = "observe",
    params(MetricsQuery),
    responses(
        (status = 200, description = "The metrics", body = ExecutionMetrics),
        (status = 400, description = "Invalid query, or no `runId` where a global summary would read the whole store (AWS)", body = ErrorBody),
    )
)]
pub(crate) async fn get_metrics<S, Q>(
    State(state): State<ApiState<S, Q>>,
    query: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Json<ExecutionMetrics>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    let Query(query) = query.map_err(|e| ApiError::invalid("", e.body_text()))?;
    if let Some(run) = query.run_id.as_deref().filter(|r| !is_valid_id(r)) {
        return Err(ApiError::invalid("runId", format!("`{run}` must match {ID_PATTERN}")));
    }
    let run = query.run_id.as_deref();
    if run.is_none() && !state.settings.global_metrics {
        return Err(ApiError::invalid(
            "runId",
            "required here: summarising every task would read the whole table; \
             fleet-wide figures are the CloudWatch metrics (namespace taskexec) and the dashboard",
        ));
    }
    let groups = state.store.summary(run).await?;
    Ok(Json(ExecutionMetrics::from_groups(&groups, run)))
}

/// Tasks of a run in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatusCounts {
    /// Waiting (first attempt or a scheduled retry).
    pub queued: u64,
    /// An attempt is running.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StatusCounts {
    fn of(groups: &[GroupSummary]) -> Self {
        groups.iter().fold(Self::default(), |c, g| Self {
            queued: c.queued + g.queued,
            running: c.running + g.running,
            completed: c.completed + g.completed,
            failed: c.failed + g.failed_by_class.values().sum::<u64>(),
            cancelled: c.cancelled + g.cancelled,
        })
    }

    fn total(self) -> u64 {
        self.queued + self.running + self.completed + self.failed + self.cancelled
    }

    fn terminal(self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}

/// A run's progress: counts per status, terminal / total, its metrics, whether it is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunProgress {
    /// The run.
    pub run_id: String,
    /// Tasks in the run.
    pub total_tasks: u64,
    /// Tasks per status.
    pub counts: StatusCounts,
    /// Terminal tasks / all tasks (0..=1).
    pub progress: f64,
    /// Whether the run is paused (by itself or globally).
    pub paused: bool,
    /// The run's ExecutionMetrics.
    pub metrics: ExecutionMetrics,
}

/// A run's progress (poll it for live progress).
#[utoipa::path(
    get, path = "/runs/{id}", tag = "observe",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run's progress", body = RunProgress),
        (status = 404, description = "No task belongs to this run", body = ErrorBody),
    )
)]
pub(crate) async fn get_run<S, Q>(
    State(state): State<ApiState<S, Q>>,
    Path(id): Path<String>,
) -> Result<Json<RunProgress>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    let groups = state.store.summary(Some(&id)).await?;
    let counts = StatusCounts::of(&groups);
    if counts.total() == 0 {
        return Err(ApiError::NotFound(format!("no run with id `{id}`")));
    }
    let paused = state.store.control().await?.is_paused(&id);
    Ok(Json(RunProgress {
        metrics: ExecutionMetrics::from_groups(&groups, Some(&id)),
        run_id: id,
        total_tasks: counts.total(),
        progress: counts.terminal() as f64 / counts.total() as f64,
        counts,
        paused,
    }))
}

/// A sample of this process's CPU and memory use and of the network traffic since the previous
/// sample.
#[utoipa::path(
    get, path = "/resources", tag = "observe",
    responses(
        (status = 200, description = "The sample", body = ResourceUsage),
        (status = 500, description = "The platform gave no sample", body = ErrorBody),
    )
)]
pub(crate) async fn get_resources<S, Q>(State(state): State<ApiState<S, Q>>) -> Result<Json<ResourceUsage>, ApiError>
where
    S: TaskStore + ControlStore,
    Q: WorkQueue,
{
    // A sample reads a few small files under /proc and /sys: microseconds, fine inline.
    let sample = state.settings.sampler.sample(state.settings.clock.now());
    Ok(Json(sample.map_err(ApiError::Sampling)?))
}
