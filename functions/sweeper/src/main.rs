//! The sweeper function (scheduled): re-sends the unfinished tasks whose message is missing,
//! rebalances the queues' `MaximumConcurrency` from their backlogs, writes breakers whose
//! cool-down passed as half-open and alerts on stuck runs (`taskexec_lambda::sweeper`), and
//! returns the concurrency permits of limiter leases whose holder died
//! (`DynamoLimiter::reclaim_expired`, for every limit key of the run config), and keeps the
//! worker's event source mappings disabled exactly while execution is paused globally (the api
//! switches them at once on pause and resume; this catches a failed switch or a deploy that
//! re-enabled them, within a sweep). Every part runs;
//! when any failed, the invocation returns an error naming each (so the `Errors` alarm sees it).
//! Wiring only.
//!
//! Environment: the functions' common variables (`FunctionEnv`), plus the sweeper's own
//! (`SweeperEnv`): `TASKEXEC_EVENT_SOURCE_MAPPINGS` (high,normal,low mapping UUIDs; unset: no
//! rebalancing), `TASKEXEC_STUCK_RUN_MINUTES` (default 15) and `TASKEXEC_RESEND_GRACE_SECONDS`
//! (default 120).

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use taskexec_aws::{DynamoConfig, DynamoLimiter, DynamoStore, EmfSink, EventSourceMappings, LimiterSettings, SqsQueue};
use taskexec_core::ports::{ControlState, ControlStore};
use taskexec_core::time::{Clock, SystemClock};
use taskexec_lambda::env::FunctionEnv;
use taskexec_lambda::sweeper::env::SweeperEnv;
use taskexec_lambda::sweeper::{ResendSettings, SweepPart, SweepSummary, SweeperPorts, SweeperSettings, reclaim_keys};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON log lines, and X-Ray subsegments of AWS calls when tracing is active.
    taskexec_aws::xray::init_tracing();
    let env = FunctionEnv::from_env()?;
    let sweeper_env = SweeperEnv::from_env()?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&aws);
    let store = DynamoStore::new(dynamo.clone(), DynamoConfig::new(env.table.clone()));
    // The sweeper never acquires: its holder id only names it.
    let limiter = DynamoLimiter::new(dynamo, env.table.clone(), "sweeper", LimiterSettings::default());
    let limits = env.config.limits();
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), env.topology.clone());
    let mappings = sweeper_env.mappings.map(|uuids| EventSourceMappings::new(aws_sdk_lambda::Client::new(&aws), uuids));
    let metrics = EmfSink::stdout();
    let settings = SweeperSettings {
        resend: ResendSettings { grace: sweeper_env.resend_grace, ..ResendSettings::default() },
        stuck_after: sweeper_env.stuck_after,
        deployments: env.config.deployments.keys().cloned().collect(),
        ..SweeperSettings::default()
    };
    let ports = SweeperPorts {
        index: &store,
        queue: &queue,
        breakers: &store,
        weights: mappings.as_ref().map(|m| (&queue, m)),
        runs: &store,
        metrics: &metrics,
    };
    let (ports, settings, limiter, limits, store, mappings) = (&ports, &settings, &limiter, &limits, &store, &mappings);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<EventBridgeEvent>| async move {
        let mut summary = ports.run(&SystemClock, settings).await;
        // Concurrency limits set at run time have leases too.
        let control = store.control().await.unwrap_or_else(|error| {
            tracing::warn!(%error, "control state not read: reclaiming the configured limits' leases only");
            ControlState::default()
        });
        let limit_keys = reclaim_keys(limits, &control);
        let reclaimed = match limiter.reclaim_expired(&limit_keys, SystemClock.now()).await {
            Ok(n) => format!("{n} expired limiter permit(s) reclaimed"),
            Err(error) => {
                summary.fail(SweepPart::LimiterReclaim, error);
                "limiter reclaim failed".to_owned()
            }
        };
        let switched = match &mappings {
            Some(mappings) => follow_pause(store, mappings, &mut summary).await,
            None => "no mappings to switch".to_owned(),
        };
        let summary = summary.into_result()?;
        Ok::<String, Error>(format!("{summary}; {reclaimed}; {switched}"))
    }))
    .await
}

/// Disable the mappings while paused globally, enable them otherwise; says what it did (a
/// failure is recorded on the summary).
async fn follow_pause(store: &DynamoStore, mappings: &EventSourceMappings, summary: &mut SweepSummary) -> String {
    let paused = match store.control().await {
        Ok(control) => control.paused,
        Err(error) => {
            summary.fail(SweepPart::MappingSwitch, error);
            return "mapping switch failed (control unreadable)".to_owned();
        }
    };
    match mappings.set_enabled(!paused).await {
        Ok(changed) => format!("mappings {}, {changed} switched", if paused { "disabled (paused)" } else { "enabled" }),
        Err(error) => {
            summary.fail(SweepPart::MappingSwitch, error);
            "mapping switch failed".to_owned()
        }
    }
}
