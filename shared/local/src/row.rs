//! The mapping between a `tasks` row and a [`TaskRecord`]: plain columns for the state the
//! store decides on, JSON text for the task, result, error and attempt history.

use rusqlite::Row;
use serde::Serialize;
use serde::de::DeserializeOwned;
use taskexec_core::ports::StoreResult;
use taskexec_core::task::{Lease, TaskRecord, TaskState};

use crate::error::{SqliteStoreError, sql};

/// The columns [`record_from_row`] reads, in its order; a macro so it can be `concat!`ed into
/// statements that stay `&'static str` for the statement cache.
macro_rules! record_columns {
    () => {
        "id, task_json, content_hash, state, epoch, attempt, throttles, next_attempt_at, lease_owner, \
         lease_until, submitted_at, started_at, ended_at, result_json, error_json, dead_letter_reason, history_json"
    };
}
pub(crate) use record_columns;

/// A row as stored, before its JSON is decoded.
pub(crate) struct RawRecord {
    id: String,
    task_json: String,
    content_hash: String,
    state: String,
    epoch: u64,
    attempt: u32,
    throttles: u32,
    next_attempt_at: Option<i64>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    submitted_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    result_json: Option<String>,
    error_json: Option<String>,
    dead_letter_reason: Option<String>,
    history_json: String,
}

/// Read the [`record_columns!`] of a row.
pub(crate) fn raw_record(row: &Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: row.get(0)?,
        task_json: row.get(1)?,
        content_hash: row.get(2)?,
        state: row.get(3)?,
        epoch: row.get(4)?,
        attempt: row.get(5)?,
        throttles: row.get(6)?,
        next_attempt_at: row.get(7)?,
        lease_owner: row.get(8)?,
        lease_until: row.get(9)?,
        submitted_at: row.get(10)?,
        started_at: row.get(11)?,
        ended_at: row.get(12)?,
        result_json: row.get(13)?,
        error_json: row.get(14)?,
        dead_letter_reason: row.get(15)?,
        history_json: row.get(16)?,
    })
}

impl RawRecord {
    /// Decode the JSON columns.
    pub(crate) fn into_record(self) -> StoreResult<TaskRecord> {
        let id = self.id.as_str();
        let lease = match (self.lease_owner, self.lease_until) {
            (Some(owner), Some(until)) => Some(Lease { owner, until }),
            _ => None,
        };
        Ok(TaskRecord {
            task: from_json(id, "task_json", &self.task_json)?,
            state: parse_state(id, &self.state)?,
            content_hash: self.content_hash,
            epoch: self.epoch,
            attempt: self.attempt,
            throttles: self.throttles,
            next_attempt_at: self.next_attempt_at,
            lease,
            submitted_at: self.submitted_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            result: self.result_json.as_deref().map(|j| from_json(id, "result_json", j)).transpose()?,
            error: self.error_json.as_deref().map(|j| from_json(id, "error_json", j)).transpose()?,
            dead_letter_reason: self.dead_letter_reason,
            history: from_json(id, "history_json", &self.history_json)?,
        })
    }
}

/// Read one full record from a statement that selects [`record_columns!`].
pub(crate) fn query_record(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> StoreResult<Option<TaskRecord>> {
    let raw = {
        let mut rows = stmt.query(params).map_err(sql)?;
        match rows.next().map_err(sql)? {
            Some(row) => raw_record(row).map_err(sql)?,
            None => return Ok(None),
        }
    };
    raw.into_record().map(Some)
}

/// Every record a statement selecting [`record_columns!`] returns, in its order.
pub(crate) fn query_records(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<TaskRecord>> {
    let raws = stmt.query_map(params, raw_record).map_err(sql)?.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)?;
    raws.into_iter().map(RawRecord::into_record).collect()
}

/// A task state column.
pub(crate) fn parse_state(task_id: &str, value: &str) -> StoreResult<TaskState> {
    TaskState::parse(value).ok_or_else(|| {
        SqliteStoreError::BadValue { task_id: task_id.to_owned(), column: "state", value: value.to_owned() }.into()
    })
}

fn from_json<T: DeserializeOwned>(task_id: &str, column: &'static str, json: &str) -> StoreResult<T> {
    serde_json::from_str(json)
        .map_err(|source| SqliteStoreError::BadJson { task_id: task_id.to_owned(), column, source }.into())
}

/// Encode a value for a JSON column (domain types always encode).
pub(crate) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(taskexec_core::error::StoreError::backend)
}
