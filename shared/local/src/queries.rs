//! The reads of the task store, each a function over a connection: records, the audit trail,
//! pending work and run summaries.

use std::collections::BTreeMap;

use rusqlite::Connection;
use taskexec_core::ports::{AuditEvent, Delivery, DeliveryBuilder, GroupSummary, Route, StoreResult};
use taskexec_core::task::{TaskPriority, TaskRecord, TaskState};

use crate::error::{SqliteStoreError, sql};
use crate::row::{parse_state, query_record, query_records, record_columns};

/// One task.
pub(crate) fn get(conn: &Connection, task_id: &str) -> StoreResult<Option<TaskRecord>> {
    let mut stmt =
        conn.prepare_cached(concat!("SELECT ", record_columns!(), " FROM tasks WHERE id = ?1")).map_err(sql)?;
    query_record(&mut stmt, [task_id])
}

/// A run's records in submission order.
pub(crate) fn run_tasks(conn: &Connection, run_id: &str) -> StoreResult<Vec<TaskRecord>> {
    let mut stmt = conn
        .prepare_cached(concat!("SELECT ", record_columns!(), " FROM tasks WHERE run_id = ?1 ORDER BY seq"))
        .map_err(sql)?;
    query_records(&mut stmt, [run_id])
}

/// A task's events, oldest first.
pub(crate) fn events(conn: &Connection, task_id: &str) -> StoreResult<Vec<AuditEvent>> {
    let mut stmt = conn
        .prepare_cached("SELECT task_id, at, kind, epoch, detail FROM events WHERE task_id = ?1 ORDER BY seq")
        .map_err(sql)?;
    let rows = stmt.query_map([task_id], |r| {
        Ok(AuditEvent { task_id: r.get(0)?, at: r.get(1)?, kind: r.get(2)?, epoch: r.get(3)?, detail: r.get(4)? })
    });
    rows.and_then(Iterator::collect).map_err(sql)
}

/// Queued and running tasks in submission order, as first deliveries.
pub(crate) fn pending(conn: &Connection, cursor: u64, limit: usize) -> StoreResult<(Vec<Delivery>, Option<u64>)> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, priority, run_id, provider_id, model_id, COALESCE(next_attempt_at, submitted_at), seq, \
             fail_fast \
             FROM tasks WHERE seq > ?1 AND state IN ('queued', 'running') ORDER BY seq LIMIT ?2",
        )
        .map_err(sql)?;
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(rusqlite::params![cursor, limit]).map_err(sql)?;
    let mut page = Vec::new();
    let mut builder = DeliveryBuilder::default();
    let mut last = cursor;
    while let Some(r) = rows.next().map_err(sql)? {
        let task_id: String = r.get(0).map_err(sql)?;
        let priority: String = r.get(1).map_err(sql)?;
        let route = Route {
            run_id: r.get(2).map_err(sql)?,
            provider_id: r.get(3).map_err(sql)?,
            model_id: r.get(4).map_err(sql)?,
        };
        let ready_at = r.get(5).map_err(sql)?;
        let Some(priority) = TaskPriority::parse(&priority) else {
            return Err(SqliteStoreError::BadValue { task_id, column: "priority", value: priority }.into());
        };
        last = r.get(6).map_err(sql)?;
        let mut d = builder.build(task_id, route, priority, ready_at);
        d.fail_fast = r.get(7).map_err(sql)?;
        page.push(d);
    }
    let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == limit;
    Ok((page, full.then(|| u64::try_from(last).unwrap_or(0))))
}

/// Per deployment/model figures, computed in SQL from the state columns (through the run index
/// when a run is given). The definitions are
/// those of `taskexec_core::metrics::summarise` (which works on whole records); the conformance
/// suite keeps the two equal.
pub(crate) fn summary(conn: &Connection, run_id: Option<&str>) -> StoreResult<Vec<GroupSummary>> {
    let mut groups = BTreeMap::new();
    add_counts(conn, run_id, &mut groups)?;
    add_latencies(conn, run_id, &mut groups)?;
    Ok(groups.into_values().collect())
}

type Groups = BTreeMap<(String, String), GroupSummary>;

fn group(groups: &mut Groups, provider_id: String, model_id: String) -> &mut GroupSummary {
    groups.entry((provider_id.clone(), model_id.clone())).or_insert_with(|| GroupSummary {
        provider_id,
        model_id,
        ..GroupSummary::default()
    })
}

/// Counts per (group, state, error class), folded into the groups.
fn add_counts(conn: &Connection, run_id: Option<&str>, groups: &mut Groups) -> StoreResult<()> {
    macro_rules! counts {
        ($filter:literal) => {
            concat!(
                "SELECT provider_id, model_id, state, COALESCE(error_class, 'unknown'), count(*), \
                 count(dead_letter_reason), sum(max(attempt, 1) - 1), sum(throttles), min(started_at), \
                 max(ended_at) FROM tasks ",
                $filter,
                " GROUP BY 1, 2, 3, 4"
            )
        };
    }
    let statement = if run_id.is_some() { counts!("WHERE run_id = ?1") } else { counts!("WHERE ?1 IS NULL") };
    let mut stmt = conn.prepare_cached(statement).map_err(sql)?;
    let mut rows = stmt.query([run_id]).map_err(sql)?;
    while let Some(r) = rows.next().map_err(sql)? {
        let g = group(groups, r.get(0).map_err(sql)?, r.get(1).map_err(sql)?);
        let state: String = r.get(2).map_err(sql)?;
        let count: u64 = r.get(4).map_err(sql)?;
        match parse_state("(summary)", &state)? {
            TaskState::Queued => g.queued += count,
            TaskState::Running => g.running += count,
            TaskState::Completed => g.completed += count,
            TaskState::Cancelled => g.cancelled += count,
            TaskState::Failed => *g.failed_by_class.entry(r.get(3).map_err(sql)?).or_default() += count,
        }
        g.dead_lettered += r.get::<_, u64>(5).map_err(sql)?;
        g.retries += r.get::<_, u64>(6).map_err(sql)?;
        g.throttles += r.get::<_, u64>(7).map_err(sql)?;
        let (start, end): (Option<i64>, Option<i64>) = (r.get(8).map_err(sql)?, r.get(9).map_err(sql)?);
        g.first_start = match (g.first_start, start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        g.last_end = g.last_end.max(end);
    }
    Ok(())
}

/// Latency of every completed task, in submission order.
fn add_latencies(conn: &Connection, run_id: Option<&str>, groups: &mut Groups) -> StoreResult<()> {
    let statement = if run_id.is_some() {
        "SELECT provider_id, model_id, latency_ms FROM tasks WHERE run_id = ?1 AND latency_ms IS NOT NULL ORDER BY seq"
    } else {
        "SELECT provider_id, model_id, latency_ms FROM tasks WHERE ?1 IS NULL AND latency_ms IS NOT NULL ORDER BY seq"
    };
    let mut stmt = conn.prepare_cached(statement).map_err(sql)?;
    let mut rows = stmt.query([run_id]).map_err(sql)?;
    while let Some(r) = rows.next().map_err(sql)? {
        let g = group(groups, r.get(0).map_err(sql)?, r.get(1).map_err(sql)?);
        g.latencies_ms.push(r.get(2).map_err(sql)?);
    }
    Ok(())
}
