//! The writes of the task store, each a function over the writer's connection, run inside the
//! writer's batch transaction. Every state change reads the task's state and epoch, asks the
//! pure [`transition`] whether the change is legal, and writes with
//! `WHERE id = ? AND state = ? AND epoch = ?`, so the check and the write are one atomic step.

use rusqlite::{Connection, OptionalExtension, params};
use taskexec_core::error::{ErrorClass, TaskError};
use taskexec_core::lifecycle::{TaskEvent, transition};
use taskexec_core::ports::{
    AuditEvent, CancelOutcome, ClaimOutcome, ClaimRequest, FinishRequest, Outcome, StoreResult, SubmitOutcome,
    WriteOutcome,
};
use taskexec_core::task::{TaskRecord, TaskState};
use taskexec_core::time::Millis;

use crate::error::sql;
use crate::row::{parse_state, query_record, record_columns, to_json};

/// Store new tasks; existing ids are duplicates (same hash) or conflicts.
pub(crate) fn submit(conn: &Connection, records: &[TaskRecord]) -> StoreResult<Vec<SubmitOutcome>> {
    records.iter().map(|record| submit_one(conn, record)).collect()
}

fn submit_one(conn: &Connection, r: &TaskRecord) -> StoreResult<SubmitOutcome> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO tasks (id, run_id, provider_id, model_id, priority, state, epoch, attempt, throttles, \
             next_attempt_at, lease_owner, lease_until, submitted_at, started_at, ended_at, content_hash, \
             error_class, latency_ms, dead_letter_reason, task_json, result_json, error_json, history_json, \
             fail_fast) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
             ?21, ?22, ?23, ?24) ON CONFLICT (id) DO NOTHING",
        )
        .map_err(sql)?;
    let inserted = insert
        .execute(params![
            r.task.id,
            r.run_id(),
            r.task.provider_id,
            r.task.model_id,
            r.task.priority.as_str(),
            r.state.as_str(),
            r.epoch,
            r.attempt,
            r.throttles,
            r.next_attempt_at,
            r.lease.as_ref().map(|l| &l.owner),
            r.lease.as_ref().map(|l| l.until),
            r.submitted_at,
            r.started_at,
            r.ended_at,
            r.content_hash,
            r.error.as_ref().map(|e| e.class.as_str()),
            r.result.as_ref().map(|res| res.latency_ms),
            r.dead_letter_reason,
            to_json(&r.task)?,
            r.result.as_ref().map(to_json).transpose()?,
            r.error.as_ref().map(to_json).transpose()?,
            to_json(&r.history)?,
            r.task.fail_fast,
        ])
        .map_err(sql)?;
    if inserted == 1 {
        append(conn, &r.task.id, r.submitted_at, "submitted", r.epoch, None)?;
        return Ok(SubmitOutcome::Created);
    }
    let mut existing = conn.prepare_cached("SELECT content_hash, state FROM tasks WHERE id = ?1").map_err(sql)?;
    let (hash, state): (String, String) =
        existing.query_row([&r.task.id], |row| Ok((row.get(0)?, row.get(1)?))).map_err(sql)?;
    if hash == r.content_hash {
        Ok(SubmitOutcome::Duplicate(parse_state(&r.task.id, &state)?))
    } else {
        Ok(SubmitOutcome::Conflict)
    }
}

/// The columns a claim decides on.
struct ClaimView {
    state: TaskState,
    epoch: u64,
    next_attempt_at: Option<Millis>,
    lease_until: Option<Millis>,
    paused: bool,
}

fn claim_view(conn: &Connection, task_id: &str) -> StoreResult<Option<ClaimView>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT t.state, t.epoch, t.next_attempt_at, t.lease_until, \
             (SELECT paused FROM control WHERE id = 0) OR EXISTS (SELECT 1 FROM paused_runs p WHERE p.run_id = t.run_id) \
             FROM tasks t WHERE t.id = ?1",
        )
        .map_err(sql)?;
    let row = stmt
        .query_row([task_id], |row| Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))
        .optional()
        .map_err(sql)?;
    let Some((state, epoch, next_attempt_at, lease_until, paused)) = row else { return Ok(None) };
    Ok(Some(ClaimView { state: parse_state(task_id, &state)?, epoch, next_attempt_at, lease_until, paused }))
}

/// Which claim event applies, or why none does. Checked in the order of the in-memory store:
/// terminal, then not due / lease held, then paused.
fn claim_event(view: &ClaimView, now: Millis) -> Result<TaskEvent, ClaimOutcome> {
    let event = match view.state {
        s if s.is_terminal() => return Err(ClaimOutcome::Terminal(s)),
        TaskState::Queued => match view.next_attempt_at {
            Some(at) if at > now => return Err(ClaimOutcome::NotDue { at }),
            _ => TaskEvent::Claim,
        },
        _ => match view.lease_until {
            Some(until) if until > now => return Err(ClaimOutcome::LeaseHeld { until }),
            _ => TaskEvent::Reclaim,
        },
    };
    if view.paused { Err(ClaimOutcome::Paused) } else { Ok(event) }
}

/// Take a task for one attempt: epoch and attempt + 1, lease set, first start kept.
pub(crate) fn claim(conn: &Connection, req: &ClaimRequest) -> StoreResult<ClaimOutcome> {
    let Some(view) = claim_view(conn, &req.task_id)? else { return Ok(ClaimOutcome::NotFound) };
    let event = match claim_event(&view, req.now) {
        Ok(event) => event,
        Err(outcome) => return Ok(outcome),
    };
    let to = transition(view.state, event)?;
    let mut update = conn
        .prepare_cached(concat!(
            "UPDATE tasks SET state = ?1, epoch = epoch + 1, attempt = attempt + 1, lease_owner = ?2, \
             lease_until = ?3, started_at = COALESCE(started_at, ?4), next_attempt_at = NULL \
             WHERE id = ?5 AND state = ?6 AND epoch = ?7 RETURNING ",
            record_columns!()
        ))
        .map_err(sql)?;
    let params =
        params![to.as_str(), req.owner, req.lease_until, req.now, req.task_id, view.state.as_str(), view.epoch];
    let record = query_record(&mut update, params)?.expect("the row was read in this transaction");
    let kind = if event == TaskEvent::Claim { "claimed" } else { "reclaimed" };
    append(conn, &req.task_id, req.now, kind, record.epoch, Some(&format!("attempt {}", record.attempt)))?;
    Ok(ClaimOutcome::Claimed(Box::new(record)))
}

/// Extend a running attempt's lease.
pub(crate) fn renew_lease(conn: &Connection, task_id: &str, epoch: u64, until: Millis) -> StoreResult<WriteOutcome> {
    let mut stmt = conn
        .prepare_cached("UPDATE tasks SET lease_until = ?1 WHERE id = ?2 AND state = ?3 AND epoch = ?4")
        .map_err(sql)?;
    let changed = stmt.execute(params![until, task_id, TaskState::Running.as_str(), epoch]).map_err(sql)?;
    Ok(written(changed))
}

/// Record an attempt's outcome if the task still runs under the request's epoch.
pub(crate) fn finish(conn: &Connection, req: &FinishRequest) -> StoreResult<WriteOutcome> {
    let changed = match &req.outcome {
        Outcome::Completed(result) => {
            let fields = params![Some(req.now), to_json(result)?, result.latency_ms];
            finish_update(conn, req, TaskEvent::Complete, FINISH_COMPLETED, fields)?
        }
        Outcome::Retry { error, next_attempt_at } => {
            let fields = params![next_attempt_at, to_json(error)?, error.class.as_str()];
            finish_update(conn, req, TaskEvent::Retry, FINISH_RETRY, fields)?
        }
        Outcome::Failed { error, dead_letter_reason } => {
            let fields = params![req.now, to_json(error)?, error.class.as_str(), dead_letter_reason];
            finish_update(conn, req, TaskEvent::Fail, FINISH_FAILED, fields)?
        }
        Outcome::Released => finish_update(conn, req, TaskEvent::Release, FINISH_RELEASED, params![])?,
    };
    if changed == 0 {
        return Ok(WriteOutcome::Stale);
    }
    for (kind, detail) in finish_events(&req.outcome) {
        append(conn, &req.task_id, req.now, kind, req.epoch, detail)?;
    }
    Ok(WriteOutcome::Applied)
}

/// The part every finish writes: `?1` state, `?2` attempt, `?3` throttles, `?4` history entry,
/// `?5` id, `?6` epoch; the outcome's own fields follow from `?7`.
macro_rules! finish_sql {
    ($fields:literal) => {
        concat!(
            "UPDATE tasks SET state = ?1, attempt = ?2, throttles = ?3, lease_owner = NULL, lease_until = NULL, \
             history_json = CASE WHEN ?4 IS NULL THEN history_json ELSE json_insert(history_json, '$[#]', json(?4)) END, ",
            $fields,
            " WHERE id = ?5 AND state = 'running' AND epoch = ?6"
        )
    };
}

const FINISH_COMPLETED: &str = finish_sql!(
    "next_attempt_at = NULL, ended_at = ?7, result_json = ?8, latency_ms = ?9, error_json = NULL, error_class = NULL"
);
const FINISH_RETRY: &str = finish_sql!("next_attempt_at = ?7, error_json = ?8, error_class = ?9");
const FINISH_FAILED: &str = finish_sql!("ended_at = ?7, error_json = ?8, error_class = ?9, dead_letter_reason = ?10");
const FINISH_RELEASED: &str = finish_sql!("next_attempt_at = NULL");

fn finish_update(
    conn: &Connection,
    req: &FinishRequest,
    event: TaskEvent,
    statement: &'static str,
    fields: &[&dyn rusqlite::ToSql],
) -> StoreResult<usize> {
    let to = transition(TaskState::Running, event)?;
    let entry = req.record.as_ref().map(to_json).transpose()?;
    let common = params![to.as_str(), req.attempt, req.throttles, entry, req.task_id, req.epoch];
    let all: Vec<&dyn rusqlite::ToSql> = common.iter().chain(fields).copied().collect();
    conn.prepare_cached(statement).map_err(sql)?.execute(all.as_slice()).map_err(sql)
}

/// The audit events of an applied finish.
fn finish_events(outcome: &Outcome) -> Vec<(&'static str, Option<&str>)> {
    match outcome {
        Outcome::Completed(_) => vec![("completed", None)],
        Outcome::Retry { error, .. } => vec![("retryScheduled", Some(error.message.as_str()))],
        Outcome::Failed { error, dead_letter_reason: None } => vec![("failed", Some(error.message.as_str()))],
        Outcome::Failed { error, dead_letter_reason: Some(reason) } => {
            vec![("failed", Some(error.message.as_str())), ("deadLettered", Some(reason.as_str()))]
        }
        Outcome::Released => vec![("released", None)],
    }
}

/// A task's state and epoch, if it exists.
fn state_of(conn: &Connection, task_id: &str) -> StoreResult<Option<(TaskState, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT state, epoch FROM tasks WHERE id = ?1").map_err(sql)?;
    let row = stmt.query_row([task_id], |r| Ok((r.get::<_, String>(0)?, r.get(1)?))).optional().map_err(sql)?;
    row.map(|(state, epoch)| Ok((parse_state(task_id, &state)?, epoch))).transpose()
}

/// Cancel a queued or running task: epoch + 1, class `cancelled`, ended; bumps `cancel_seq`.
pub(crate) fn cancel(conn: &Connection, task_id: &str, now: Millis) -> StoreResult<CancelOutcome> {
    let Some((was, epoch)) = state_of(conn, task_id)? else { return Ok(CancelOutcome::NotFound) };
    let Ok(to) = transition(was, TaskEvent::Cancel) else { return Ok(CancelOutcome::AlreadyTerminal(was)) };
    let error = to_json(&TaskError::new(ErrorClass::Cancelled, "cancelled by user"))?;
    let mut stmt = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?1, epoch = epoch + 1, lease_owner = NULL, lease_until = NULL, ended_at = ?2, \
             error_json = ?3, error_class = ?4 WHERE id = ?5 AND state = ?6 AND epoch = ?7",
        )
        .map_err(sql)?;
    let class = ErrorClass::Cancelled.as_str();
    stmt.execute(params![to.as_str(), now, error, class, task_id, was.as_str(), epoch]).map_err(sql)?;
    append(conn, task_id, now, "cancelled", epoch + 1, None)?;
    conn.prepare_cached("UPDATE control SET cancel_seq = cancel_seq + 1 WHERE id = 0")
        .and_then(|mut s| s.execute([]))
        .map_err(sql)?;
    Ok(CancelOutcome::Cancelled { was })
}

/// `failed → queued` with a fresh budget.
pub(crate) fn redrive(conn: &Connection, task_id: &str, now: Millis) -> StoreResult<WriteOutcome> {
    let Some((from, epoch)) = state_of(conn, task_id)? else { return Ok(WriteOutcome::Stale) };
    let Ok(to) = transition(from, TaskEvent::Redrive) else { return Ok(WriteOutcome::Stale) };
    let mut stmt = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?1, epoch = epoch + 1, attempt = 0, throttles = 0, next_attempt_at = NULL, \
             ended_at = NULL, dead_letter_reason = NULL WHERE id = ?2 AND state = ?3 AND epoch = ?4",
        )
        .map_err(sql)?;
    let changed = stmt.execute(params![to.as_str(), task_id, from.as_str(), epoch]).map_err(sql)?;
    if changed == 1 {
        append(conn, task_id, now, "redriven", epoch + 1, None)?;
    }
    Ok(written(changed))
}

/// `running → queued` for every running task, counters untouched.
pub(crate) fn release_all_leases(conn: &Connection, now: Millis) -> StoreResult<u64> {
    let to = transition(TaskState::Running, TaskEvent::Release)?;
    // `state IN (...)` lets SQLite use the partial index of unfinished tasks.
    conn.prepare_cached(
        "INSERT INTO events (task_id, at, kind, epoch, detail) \
         SELECT id, ?1, 'released', epoch, 'lease of a stopped runner taken back' FROM tasks \
         WHERE state IN ('queued', 'running') AND state = 'running' ORDER BY seq",
    )
    .and_then(|mut s| s.execute([now]))
    .map_err(sql)?;
    let released = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?1, lease_owner = NULL, lease_until = NULL \
             WHERE state IN ('queued', 'running') AND state = 'running'",
        )
        .and_then(|mut s| s.execute([to.as_str()]))
        .map_err(sql)?;
    Ok(released as u64)
}

/// Append an event that changes no state.
pub(crate) fn note(conn: &Connection, event: &AuditEvent) -> StoreResult<()> {
    append(conn, &event.task_id, event.at, &event.kind, event.epoch, event.detail.as_deref())
}

fn append(
    conn: &Connection,
    task_id: &str,
    at: Millis,
    kind: &str,
    epoch: u64,
    detail: Option<&str>,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO events (task_id, at, kind, epoch, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(sql)?;
    stmt.execute(params![task_id, at, kind, epoch, detail]).map(drop).map_err(sql)
}

fn written(changed: usize) -> WriteOutcome {
    if changed == 1 { WriteOutcome::Applied } else { WriteOutcome::Stale }
}
