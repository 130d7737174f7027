//! The worker's transitions: claim, lease renewal and finish. Each is one conditional
//! `UpdateItem` of the state item on `status` and `epoch` (1 WCU while the task is unfinished);
//! the legality of a change comes from [`transition`]. Every event is also a JSON log line
//! (target `taskexec::audit`, fields `taskId`, `kind`, `epoch`, `detail`).
//!
//! Pause is checked at claim against the control state this process read at most
//! `control_max_age` ago (default 1 s; [`control::for_claim`]), not in a transaction: a
//! `TransactWriteItems` with a `ConditionCheck` on the control item would bill both items twice
//! (4 WCU instead of 1 per claim) and make that one item as hot as the claim rate. The price is
//! a bounded staleness: a claim may start its attempt up to `control_max_age` after another
//! process committed a pause, exactly as if it had started before the pause.

use taskexec_core::lifecycle::{TaskEvent, transition};
use taskexec_core::ports::{ClaimOutcome, ClaimRequest, ControlState, FinishRequest, Outcome, WriteOutcome};
use taskexec_core::task::TaskState;
use taskexec_core::time::Millis;

use super::DynamoStore;
use super::item::{StateItem, n, s, trail_entry, value};
use super::keys;
use super::update::{Update, Updated};
use super::{control, read};
use crate::error::AwsError;

/// Conditional writes tried before giving up on an item that keeps changing.
pub(super) const MAX_RACES: u32 = 16;

/// Emit one audit event as a log line.
pub fn log_event(task_id: &str, kind: &str, epoch: u64, detail: Option<&str>) {
    tracing::info!(target: "taskexec::audit", taskId = task_id, kind, epoch, detail, "task event");
}

/// What a claim does with the state it read: an outcome without a write, or the event to apply.
fn plan_claim(state: &StateItem, control: &ControlState, now: Millis) -> Result<TaskEvent, ClaimOutcome> {
    let event = match state.status {
        s if s.is_terminal() => return Err(ClaimOutcome::Terminal(s)),
        TaskState::Queued => match state.next_attempt_at {
            Some(at) if at > now => return Err(ClaimOutcome::NotDue { at }),
            _ => TaskEvent::Claim,
        },
        _ => match state.lease_until {
            Some(until) if until > now => return Err(ClaimOutcome::LeaseHeld { until }),
            _ => TaskEvent::Reclaim,
        },
    };
    if control.is_paused(&state.run_id) {
        return Err(ClaimOutcome::Paused);
    }
    Ok(event)
}

/// Claim a task for one attempt.
pub async fn claim(store: &DynamoStore, req: &ClaimRequest) -> Result<ClaimOutcome, AwsError> {
    for _ in 0..MAX_RACES {
        let (task, control) = tokio::join!(read::state_and_task(store, &req.task_id), control::for_claim(store));
        let Some((state, task)) = task? else {
            return Ok(ClaimOutcome::NotFound);
        };
        let event = match plan_claim(&state, &control?, req.now) {
            Ok(event) => event,
            Err(outcome) => return Ok(outcome),
        };
        if let Updated::Applied(Some(item)) = claim_update(store, req, &state, event).await? {
            let claimed = StateItem::from_item(item)?;
            let kind = if event == TaskEvent::Claim { "claimed" } else { "reclaimed" };
            log_event(
                &req.task_id,
                kind,
                claimed.epoch,
                Some(&format!("attempt {} by {}", claimed.attempt, req.owner)),
            );
            return Ok(ClaimOutcome::Claimed(Box::new(claimed.into_record(task))));
        }
    }
    Err(AwsError::Contended { key: keys::task_pk(&req.task_id), attempts: MAX_RACES })
}

async fn claim_update(
    store: &DynamoStore,
    req: &ClaimRequest,
    state: &StateItem,
    event: TaskEvent,
) -> Result<Updated, AwsError> {
    let to = transition(state.status, event).expect("planned claims are legal");
    let epoch = state.epoch + 1;
    let kind = if event == TaskEvent::Claim { "claimed" } else { "reclaimed" };
    let update = Update::new()
        .expect("status", s(state.status.as_str()))
        .expect("epoch", n(state.epoch))
        .set("status", s(to.as_str()))
        .set("epoch", n(epoch))
        .set("attempt", n(state.attempt + 1))
        .set("leaseOwner", s(&req.owner))
        .set("leaseUntil", n(req.lease_until))
        .set_if_absent("startedAt", n(req.now))
        .remove("nextAttemptAt")
        .append("trail", vec![s(trail_entry(kind, req.now, epoch))]);
    update.send(store, (keys::task_pk(&req.task_id), keys::STATE), true).await
}

/// Extend a running attempt's lease.
pub async fn renew_lease(
    store: &DynamoStore,
    task_id: &str,
    epoch: u64,
    until: Millis,
) -> Result<WriteOutcome, AwsError> {
    let update = Update::new()
        .expect_item()
        .expect("status", s(TaskState::Running.as_str()))
        .expect("epoch", n(epoch))
        .set("leaseUntil", n(until));
    Ok(written(update.send(store, (keys::task_pk(task_id), keys::STATE), false).await?))
}

/// Record an attempt's outcome, fenced by epoch and `running`.
pub async fn finish(store: &DynamoStore, req: FinishRequest) -> Result<WriteOutcome, AwsError> {
    let mut update = Update::new()
        .expect_item()
        .expect("status", s(TaskState::Running.as_str()))
        .expect("epoch", n(req.epoch))
        .set("attempt", n(req.attempt))
        .set("throttles", n(req.throttles))
        .remove("leaseOwner")
        .remove("leaseUntil");
    if let Some(record) = &req.record {
        update = update.append("history", vec![value("attempt record", record)?]);
    }
    let (mut update, events) = apply_outcome(update, &req.outcome, req.now)?;
    if matches!(req.outcome, Outcome::Completed(_) | Outcome::Failed { .. }) {
        update = update.set_or_remove(keys::EXPIRES_AT, store.state_expiry(req.now).map(n));
    }
    let trail = events.iter().map(|(kind, _)| s(trail_entry(kind, req.now, req.epoch))).collect();
    let update = update.append("trail", trail);
    let outcome = written(update.send(store, (keys::task_pk(&req.task_id), keys::STATE), false).await?);
    if outcome == WriteOutcome::Applied {
        for (kind, detail) in &events {
            log_event(&req.task_id, kind, req.epoch, detail.as_deref());
        }
    }
    Ok(outcome)
}

/// An event to log: kind and detail.
type Event = (&'static str, Option<String>);

/// The writes and events of one outcome.
fn apply_outcome(update: Update, outcome: &Outcome, now: Millis) -> Result<(Update, Vec<Event>), AwsError> {
    let status = |state: TaskState| s(state.as_str());
    Ok(match outcome {
        Outcome::Completed(result) => {
            let update = update
                .set("status", status(TaskState::Completed))
                .set("result", value("result", result)?)
                .set("endedAt", n(now))
                .remove("error");
            (update, vec![("completed", None)])
        }
        Outcome::Retry { error, next_attempt_at } => {
            let update = update
                .set("status", status(TaskState::Queued))
                .set("error", value("error", error)?)
                .set("nextAttemptAt", n(next_attempt_at));
            (update, vec![("retryScheduled", Some(error.message.clone()))])
        }
        Outcome::Failed { error, dead_letter_reason } => {
            let update = update
                .set("status", status(TaskState::Failed))
                .set("endedAt", n(now))
                .set("error", value("error", error)?)
                .set_or_remove("deadLetterReason", dead_letter_reason.as_ref().map(s));
            let mut events = vec![("failed", Some(error.message.clone()))];
            events.extend(dead_letter_reason.as_ref().map(|reason| ("deadLettered", Some(reason.clone()))));
            (update, events)
        }
        Outcome::Released => {
            let update = update.set("status", status(TaskState::Queued)).remove("nextAttemptAt");
            (update, vec![("released", None)])
        }
    })
}

/// A fenced write's outcome.
pub(super) fn written(updated: Updated) -> WriteOutcome {
    match updated {
        Updated::Applied(_) => WriteOutcome::Applied,
        Updated::ConditionFailed => WriteOutcome::Stale,
    }
}
