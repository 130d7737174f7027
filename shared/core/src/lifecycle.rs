//! The task life cycle: one pure function that says which transitions are legal. Every store
//! enforces the same rule with a conditional write (status and epoch), so a stale worker can
//! never overwrite `cancelled` or a newer attempt's outcome.

use serde::Serialize;

use crate::task::TaskState;

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskEvent {
    /// A worker takes a queued task (bumps `epoch`).
    Claim,
    /// A worker takes over a running task whose lease expired or whose owner died (bumps `epoch`).
    Reclaim,
    /// A running attempt gives the task back without an outcome (shutdown, lost lease).
    Release,
    /// The attempt produced a result.
    Complete,
    /// The attempt failed and another will follow (`nextAttemptAt` set).
    Retry,
    /// The attempt failed for good: permanent error, budget exhausted, deadline.
    Fail,
    /// A queued task's overall deadline passed before it could run.
    Expire,
    /// A user cancelled the task (bumps `epoch`).
    Cancel,
    /// A user asked a failed task to run again, with a fresh attempt budget.
    Redrive,
}

/// A transition that the life cycle forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event:?} from {from:?}")]
pub struct InvalidTransition {
    /// The state the task was in.
    pub from: TaskState,
    /// What was attempted.
    pub event: TaskEvent,
}

/// The state after `event`, or why it is not allowed.
///
/// ```
/// use taskexec_core::lifecycle::{transition, TaskEvent};
/// use taskexec_core::task::TaskState;
/// assert_eq!(transition(TaskState::Queued, TaskEvent::Claim), Ok(TaskState::Running));
/// assert!(transition(TaskState::Completed, TaskEvent::Claim).is_err());
/// ```
pub fn transition(from: TaskState, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
    use TaskEvent as E;
    use TaskState as S;
    let to = match (from, event) {
        (S::Queued, E::Claim) | (S::Running, E::Reclaim) => S::Running,
        (S::Running, E::Release | E::Retry) | (S::Failed, E::Redrive) => S::Queued,
        (S::Running, E::Complete) => S::Completed,
        (S::Running, E::Fail) | (S::Queued, E::Expire) => S::Failed,
        (S::Queued | S::Running, E::Cancel) => S::Cancelled,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

/// Whether `event` bumps the fencing epoch.
#[must_use]
pub fn bumps_epoch(event: TaskEvent) -> bool {
    matches!(event, TaskEvent::Claim | TaskEvent::Reclaim | TaskEvent::Cancel | TaskEvent::Redrive)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [TaskState; 5] =
        [TaskState::Queued, TaskState::Running, TaskState::Completed, TaskState::Failed, TaskState::Cancelled];
    const EVENTS: [TaskEvent; 9] = [
        TaskEvent::Claim,
        TaskEvent::Reclaim,
        TaskEvent::Release,
        TaskEvent::Complete,
        TaskEvent::Retry,
        TaskEvent::Fail,
        TaskEvent::Expire,
        TaskEvent::Cancel,
        TaskEvent::Redrive,
    ];

    /// The whole table: every (state, event) pair not listed here must be rejected.
    const LEGAL: [(TaskState, TaskEvent, TaskState); 10] = [
        (TaskState::Queued, TaskEvent::Claim, TaskState::Running),
        (TaskState::Running, TaskEvent::Reclaim, TaskState::Running),
        (TaskState::Running, TaskEvent::Release, TaskState::Queued),
        (TaskState::Running, TaskEvent::Complete, TaskState::Completed),
        (TaskState::Running, TaskEvent::Retry, TaskState::Queued),
        (TaskState::Running, TaskEvent::Fail, TaskState::Failed),
        (TaskState::Queued, TaskEvent::Expire, TaskState::Failed),
        (TaskState::Queued, TaskEvent::Cancel, TaskState::Cancelled),
        (TaskState::Running, TaskEvent::Cancel, TaskState::Cancelled),
        (TaskState::Failed, TaskEvent::Redrive, TaskState::Queued),
    ];

    #[test]
    fn every_pair_is_legal_exactly_when_listed() {
        let mut rejected = 0;
        for from in STATES {
            for event in EVENTS {
                let expected = LEGAL.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                match (transition(from, event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from:?} {event:?}"),
                    (Err(e), None) => {
                        assert_eq!(e, InvalidTransition { from, event });
                        rejected += 1;
                    }
                    (got, want) => panic!("{from:?} {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(rejected, STATES.len() * EVENTS.len() - LEGAL.len());
    }

    #[test]
    fn terminal_states_only_leave_by_redrive() {
        for from in STATES.into_iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                if let Ok(to) = transition(from, event) {
                    assert_eq!((from, event, to), (TaskState::Failed, TaskEvent::Redrive, TaskState::Queued));
                }
            }
        }
    }

    #[test]
    fn epoch_bumps_on_claims_cancel_and_redrive_only() {
        let bumping: Vec<_> = EVENTS.into_iter().filter(|e| bumps_epoch(*e)).collect();
        assert_eq!(bumping, [TaskEvent::Claim, TaskEvent::Reclaim, TaskEvent::Cancel, TaskEvent::Redrive]);
        assert!(
            InvalidTransition { from: TaskState::Completed, event: TaskEvent::Claim }.to_string().contains("Claim")
        );
    }
}
