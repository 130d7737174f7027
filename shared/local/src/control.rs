//! Control state (pause flags, the cancel sequence) and breaker snapshots: small tables read and
//! written by the runner and, directly, by `taskexec pause|resume|cancel` in other processes.

use rusqlite::{Connection, OptionalExtension, params};
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::ports::{ControlState, LimitOverride, PauseScope, StoreResult};

use crate::error::sql;
use crate::row::to_json;

/// Pause or resume, globally or for one run.
pub(crate) fn set_paused(conn: &Connection, scope: &PauseScope, paused: bool) -> StoreResult<()> {
    let done = match (scope, paused) {
        (PauseScope::Global, _) => {
            conn.prepare_cached("UPDATE control SET paused = ?1 WHERE id = 0").and_then(|mut s| s.execute([paused]))
        }
        (PauseScope::Run(run), true) => conn
            .prepare_cached("INSERT OR IGNORE INTO paused_runs (run_id) VALUES (?1)")
            .and_then(|mut s| s.execute([run])),
        (PauseScope::Run(run), false) => {
            conn.prepare_cached("DELETE FROM paused_runs WHERE run_id = ?1").and_then(|mut s| s.execute([run]))
        }
    };
    done.map(drop).map_err(sql)
}

/// Pause flags and the cancel sequence.
pub(crate) fn control(conn: &Connection) -> StoreResult<ControlState> {
    let (paused, cancel_seq) = conn
        .prepare_cached("SELECT paused, cancel_seq FROM control WHERE id = 0")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(sql)?;
    let mut runs = conn.prepare_cached("SELECT run_id FROM paused_runs ORDER BY run_id").map_err(sql)?;
    let paused_runs = runs.query_map([], |r| r.get(0)).and_then(Iterator::collect).map_err(sql)?;
    let mut overrides =
        conn.prepare_cached("SELECT deployment, limits_json FROM limit_overrides ORDER BY deployment").map_err(sql)?;
    let rows: Vec<(String, String)> =
        overrides.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(Iterator::collect).map_err(sql)?;
    let mut limits = std::collections::BTreeMap::new();
    for (deployment, json) in rows {
        let parsed = serde_json::from_str(&json).map_err(taskexec_core::error::StoreError::backend)?;
        limits.insert(deployment, parsed);
    }
    Ok(ControlState { paused, paused_runs, cancel_seq, limits })
}

/// Set or remove a deployment's run-time limits.
pub(crate) fn set_limits(conn: &Connection, deployment: &str, limits: Option<&LimitOverride>) -> StoreResult<()> {
    let done = match limits.filter(|l| !l.is_empty()) {
        Some(limits) => {
            let json = to_json(limits)?;
            conn.prepare_cached("INSERT OR REPLACE INTO limit_overrides (deployment, limits_json) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![deployment, json]))
        }
        None => conn
            .prepare_cached("DELETE FROM limit_overrides WHERE deployment = ?1")
            .and_then(|mut s| s.execute([deployment])),
    };
    done.map(drop).map_err(sql)
}

/// Store a deployment's breaker snapshot, replacing the previous one.
pub(crate) fn save_breaker(conn: &Connection, deployment: &str, snapshot: &BreakerSnapshot) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO breakers (deployment, snapshot_json) VALUES (?1, ?2) \
             ON CONFLICT (deployment) DO UPDATE SET snapshot_json = excluded.snapshot_json",
        )
        .map_err(sql)?;
    stmt.execute(params![deployment, to_json(snapshot)?]).map(drop).map_err(sql)
}

/// A deployment's breaker snapshot.
pub(crate) fn load_breaker(conn: &Connection, deployment: &str) -> StoreResult<Option<BreakerSnapshot>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT snapshot_json FROM breakers WHERE deployment = ?1")
        .and_then(|mut s| s.query_row([deployment], |r| r.get(0)).optional())
        .map_err(sql)?;
    json.map(|j| serde_json::from_str(&j).map_err(taskexec_core::error::StoreError::backend)).transpose()
}
