//! Transitions made from outside an attempt: cancel and redrive (a user), and the release of
//! every lease (a runner taking the store over). Each reads the state strongly consistent,
//! asks [`transition`] whether the change is legal, and writes conditionally on the status and
//! epoch it read; a lost race reads again.

use taskexec_core::error::{ErrorClass, TaskError};
use taskexec_core::lifecycle::{TaskEvent, transition};
use taskexec_core::ports::{CancelOutcome, WriteOutcome};
use taskexec_core::task::TaskState;
use taskexec_core::time::Millis;

use super::DynamoStore;
use super::item::{StateItem, n, s, trail_entry, value};
use super::keys;
use super::transitions::{MAX_RACES, log_event};
use super::update::{Update, Updated};
use super::{control, journal, queries, read};
use crate::error::AwsError;

/// An update fenced on the status and epoch that were read.
fn fenced(state: &StateItem) -> Update {
    Update::new().expect("status", s(state.status.as_str())).expect("epoch", n(state.epoch))
}

async fn send(store: &DynamoStore, task_id: &str, update: Update) -> Result<Updated, AwsError> {
    update.send(store, (keys::task_pk(task_id), keys::STATE), false).await
}

/// Cancel a queued or running task. The control item's `cancelSeq` is bumped before the task
/// is written, so a crash in between costs a spurious re-check, never a missed cancel.
pub async fn cancel(store: &DynamoStore, task_id: &str, now: Millis) -> Result<CancelOutcome, AwsError> {
    let mut signalled = false;
    for _ in 0..MAX_RACES {
        let Some(state) = read::state(store, task_id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let Ok(to) = transition(state.status, TaskEvent::Cancel) else {
            return Ok(CancelOutcome::AlreadyTerminal(state.status));
        };
        if !signalled {
            control::bump_cancel_seq(store).await?;
            signalled = true;
        }
        let epoch = state.epoch + 1;
        let update = fenced(&state)
            .set("status", s(to.as_str()))
            .set("epoch", n(epoch))
            .set("endedAt", n(now))
            .set_or_remove(keys::EXPIRES_AT, store.state_expiry(now).map(n))
            .set("error", value("error", &TaskError::new(ErrorClass::Cancelled, "cancelled by user"))?)
            .remove("leaseOwner")
            .remove("leaseUntil")
            .append("trail", vec![s(trail_entry("cancelled", now, epoch))]);
        if let Updated::Applied(_) = send(store, task_id, update).await? {
            log_event(task_id, "cancelled", epoch, Some(&format!("was {}", state.status.as_str())));
            return Ok(CancelOutcome::Cancelled { was: state.status });
        }
    }
    Err(AwsError::Contended { key: keys::task_pk(task_id), attempts: MAX_RACES })
}

/// Give a failed task a fresh attempt budget. A journal entry of the task, marked unsent, is
/// written first (the caller sends its message, then `mark_sent` settles the entry).
pub async fn redrive(store: &DynamoStore, task_id: &str, now: Millis) -> Result<WriteOutcome, AwsError> {
    let Some(state) = read::state(store, task_id).await? else {
        return Ok(WriteOutcome::Stale);
    };
    let Ok(to) = transition(state.status, TaskEvent::Redrive) else {
        return Ok(WriteOutcome::Stale);
    };
    // Before the task is queued again: if its sender's send is lost, the sweeper re-sends it.
    journal::write_requeued(store, &state, now).await?;
    let epoch = state.epoch + 1;
    let update = fenced(&state)
        .set("status", s(to.as_str()))
        .set("epoch", n(epoch))
        .set("attempt", n(0))
        .set("throttles", n(0))
        .remove("nextAttemptAt")
        .remove("endedAt")
        .remove(keys::EXPIRES_AT)
        .remove("deadLetterReason")
        .append("trail", vec![s(trail_entry("redriven", now, epoch))]);
    let outcome = super::transitions::written(send(store, task_id, update).await?);
    if outcome == WriteOutcome::Applied {
        log_event(task_id, "redriven", epoch, None);
    }
    Ok(outcome)
}

/// Release every lease: running tasks (found by a scan of the state items: only the embedded
/// runner calls this, never the AWS shape) go back to queued.
pub async fn release_all_leases(store: &DynamoStore, now: Millis) -> Result<u64, AwsError> {
    let states = queries::unfinished_states(store).await?;
    let mut released = 0;
    for state in states.iter().filter(|s| s.status == TaskState::Running) {
        let update = fenced(state)
            .set("status", s(TaskState::Queued.as_str()))
            .remove("leaseOwner")
            .remove("leaseUntil")
            .append("trail", vec![s(trail_entry("released", now, state.epoch))]);
        if let Updated::Applied(_) = send(store, state.task_id(), update).await? {
            log_event(state.task_id(), "released", state.epoch, Some("lease of a stopped runner taken back"));
            released += 1;
        }
    }
    Ok(released)
}
