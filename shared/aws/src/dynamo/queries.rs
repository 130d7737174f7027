//! Queries without per-task indexes. A run's tasks come from its submission journal
//! ([`journal`]) and their state items; the sweeper's missing messages from the journal entries
//! still marked unsent; its stuck-run candidates from the sparse index of active runs on the run
//! counter items. `pending` and `overdue` scan the state items: no production caller of the AWS
//! shape uses them (the embedded runner's recovery runs on SQLite; operators and tests do).

use std::collections::HashSet;

use futures::future::try_join_all;
use taskexec_core::error::StoreError;
use taskexec_core::metrics::summarise;
use taskexec_core::ports::{Delivery, GroupSummary};
use taskexec_core::task::{TaskRecord, TaskState};
use taskexec_core::time::Millis;
use taskexec_lambda::sweeper::resend::{Candidate, ResendIndex, ResendRule};

use super::control::{self, CounterItem};
use super::item::{StateItem, n, s, trail_entry};
use super::journal::{self, JournalItem};
use super::keys;
use super::read;
use super::transitions::log_event;
use super::update::{Update, Updated};
use super::{DynamoStore, OverdueTask};
use crate::error::AwsError;

/// Every queued or running task's state item: a paged `Scan` of the table (strongly
/// consistent), for operators, tests and the embedded runner's recovery, never on a hot path.
pub async fn unfinished_states(store: &DynamoStore) -> Result<Vec<StateItem>, AwsError> {
    scan_states(store, true).await
}

/// The state items of the table (only the unfinished ones if asked): a paged `Scan`.
async fn scan_states(store: &DynamoStore, unfinished: bool) -> Result<Vec<StateItem>, AwsError> {
    let (mut states, mut start) = (Vec::new(), None);
    loop {
        let mut request = store
            .client
            .scan()
            .table_name(store.table())
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":state", s(keys::STATE))
            .consistent_read(true)
            .set_exclusive_start_key(start);
        request = if unfinished {
            request
                .filter_expression("#sk = :state AND (#status = :queued OR #status = :running)")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":queued", s(TaskState::Queued.as_str()))
                .expression_attribute_values(":running", s(TaskState::Running.as_str()))
        } else {
            request.filter_expression("#sk = :state")
        };
        let out = request.send().await.map_err(|e| AwsError::dynamo("Scan", e))?;
        for item in out.items.unwrap_or_default() {
            states.push(StateItem::from_item(item)?);
        }
        match out.last_evaluated_key.filter(|k| !k.is_empty()) {
            Some(key) => start = Some(key),
            None => return Ok(states),
        }
    }
}

/// Unfinished tasks with their due keys, in due order.
async fn due_order(store: &DynamoStore) -> Result<Vec<(u64, StateItem)>, AwsError> {
    let mut all: Vec<(u64, StateItem)> = unfinished_states(store)
        .await?
        .into_iter()
        .map(|st| (keys::due_key(st.ready_at(), st.task_id()), st))
        .collect();
    all.sort_by(|a, b| (a.0, a.1.task_id()).cmp(&(b.0, b.1.task_id())));
    Ok(all)
}

/// A page of unfinished tasks from due key `cursor` on (one scan of the table per page). A page
/// never ends inside a group of equal due keys (so the next page, starting at that key, repeats
/// nothing and skips nothing), unless one group alone is larger than `limit`.
pub async fn pending(store: &DynamoStore, cursor: u64, limit: usize) -> Result<(Vec<Delivery>, Option<u64>), AwsError> {
    let limit = limit.max(1);
    let mut all: Vec<(u64, StateItem)> =
        due_order(store).await?.into_iter().filter(|(due, _)| *due >= cursor).collect();
    all.truncate(limit + 1);
    if all.len() <= limit {
        return Ok((all.into_iter().map(|(_, st)| st.delivery()).collect(), None));
    }
    let next_key = all[limit].0;
    let mut end = limit;
    while end > 0 && all[end - 1].0 == next_key {
        end -= 1;
    }
    let (end, next) = if end == 0 { (limit, next_key.saturating_add(1)) } else { (end, next_key) };
    all.truncate(end);
    Ok((all.into_iter().map(|(_, st)| st.delivery()).collect(), Some(next)))
}

/// Whether a task in this state is due by its own timing: a lease that ran out, a retry whose
/// time came, or a task queued since submission (whose message may well be waiting in a backlog:
/// the sweeper's re-send rule is [`missing`], not this).
fn is_overdue(state: &StateItem, now: Millis) -> bool {
    match state.status {
        TaskState::Queued => state.next_attempt_at.is_none_or(|at| at <= now),
        TaskState::Running => state.lease_until.is_none_or(|until| until <= now),
        _ => false,
    }
}

/// Up to `limit` tasks due by their own timing at `now` ([`is_overdue`]), in due order: a scan.
pub async fn overdue(store: &DynamoStore, now: Millis, limit: usize) -> Result<Vec<OverdueTask>, AwsError> {
    Ok(due_order(store)
        .await?
        .into_iter()
        .filter(|(_, st)| is_overdue(st, now))
        .take(limit)
        .map(|(_, st)| OverdueTask { state: st.status, epoch: st.epoch, task: st.delivery() })
        .collect())
}

/// Up to `limit` tasks whose message may never have been sent: the queued tasks of journal
/// entries still marked unsent at `rule.now - rule.grace` (the sender settles its entries right
/// after its send) that were neither claimed nor re-sent since the entry's time. Reads at most `scan_limit`
/// entries. An entry with no such task left is settled here (and its run marked active, in case
/// its submission died before counting it).
pub async fn missing(
    store: &DynamoStore,
    rule: &ResendRule,
    limit: usize,
    scan_limit: usize,
) -> Result<Vec<Candidate>, AwsError> {
    let before = rule.now - Millis::try_from(rule.grace.as_millis()).unwrap_or(Millis::MAX / 4);
    let keys = journal::unsent_keys(store, before, scan_limit).await?;
    let mut found = Vec::new();
    for entry in journal::entries_at(store, keys).await? {
        if entry.unsent.is_none() {
            continue;
        }
        let ids: Vec<String> = entry.tasks.iter().map(|t| t.id.clone()).collect();
        let mut states = read::states(store, &ids, false).await?;
        let mut candidates = Vec::new();
        for task in &entry.tasks {
            let Some(state) = states.remove(&task.id).filter(|st| st.run_id == entry.run_id) else { continue };
            if not_sent_since(&state, entry.submitted_at) {
                candidates.push(candidate(&entry, task, &state));
            } else if !state.status.is_terminal() {
                states.insert(task.id.clone(), state);
            }
        }
        if candidates.is_empty() {
            if !states.is_empty() {
                control::mark_active(store, &entry.run_id, entry.submitted_at).await?;
            }
            journal::settle(store, &entry).await?;
            continue;
        }
        found.extend(candidates);
        if found.len() >= limit {
            found.truncate(limit);
            break;
        }
    }
    Ok(found)
}

/// Queued, and neither claimed (no message of it received) nor re-sent since `since` (the
/// entry's time: its submission, or its redrive).
fn not_sent_since(state: &StateItem, since: Millis) -> bool {
    let after = |kinds: &[&str]| state.events().iter().any(|e| e.at >= since && kinds.contains(&e.kind.as_str()));
    state.status == TaskState::Queued && !after(&["claimed", "reclaimed", "resent"])
}

fn candidate(entry: &JournalItem, task: &journal::JournalTask, state: &StateItem) -> Candidate {
    Candidate { task: entry.delivery(task), ..state_candidate(state) }
}

/// Record a re-send on the task: a `resent` trail entry, only if status and epoch are still the
/// ones read (1 WCU). `false`: it changed.
pub async fn mark_resent(store: &DynamoStore, task: &Candidate, at: Millis) -> Result<bool, AwsError> {
    let update = Update::new()
        .expect("status", s(task.status.as_str()))
        .expect("epoch", n(task.epoch))
        .append("trail", vec![s(trail_entry("resent", at, task.epoch))]);
    let id = &task.task.task_id;
    match update.send(store, (keys::task_pk(id), keys::STATE), false).await? {
        Updated::Applied(_) => {
            log_event(id, "resent", task.epoch, Some("the sweeper re-sent its missing message"));
            Ok(true)
        }
        Updated::ConditionFailed => Ok(false),
    }
}

impl ResendIndex for DynamoStore {
    async fn missing(&self, rule: &ResendRule, limit: usize, scan_limit: usize) -> Result<Vec<Candidate>, StoreError> {
        Ok(missing(self, rule, limit, scan_limit).await?)
    }

    async fn mark_resent(&self, task: &Candidate, at: Millis) -> Result<bool, StoreError> {
        Ok(mark_resent(self, task, at).await?)
    }

    /// The run's journal, then its unfinished tasks' states (eventually consistent: a re-send is
    /// recorded conditionally on the status and epoch read).
    async fn unfinished_of_run(&self, run_id: &str) -> Result<Vec<Candidate>, StoreError> {
        let states = journal::run_states(self, run_id, false).await?;
        Ok(states.into_iter().filter(|s| !s.status.is_terminal()).map(|s| state_candidate(&s)).collect())
    }
}

/// A task as the re-send rule sees it, from its state.
fn state_candidate(state: &StateItem) -> Candidate {
    let last_change = state.events().iter().map(|e| e.at).max().unwrap_or(state.submitted_at);
    Candidate {
        status: state.status,
        epoch: state.epoch,
        lease_until: state.lease_until,
        last_change: last_change.max(state.submitted_at),
        task: state.delivery(),
    }
}

/// Runs in the active index (one `Query` per shard, keys only).
async fn active_runs(store: &DynamoStore) -> Result<Vec<String>, AwsError> {
    let shards = (0..keys::ACTIVE_SHARDS).map(|shard| async move {
        let (mut runs, mut start) = (Vec::new(), None);
        loop {
            let out = store
                .client
                .query()
                .table_name(store.table())
                .index_name(keys::ACTIVE_INDEX)
                .key_condition_expression("#shard = :shard")
                .expression_attribute_names("#shard", keys::ACTIVE_SHARD)
                .expression_attribute_values(":shard", s(keys::active_shard_n(shard)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::dynamo("Query", e))?;
            let pks =
                out.items.unwrap_or_default().into_iter().filter_map(|item| item.get(keys::PK)?.as_s().ok().cloned());
            runs.extend(pks.filter_map(|pk| keys::run_of_pk(&pk).map(str::to_owned)));
            match out.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok::<_, AwsError>(runs),
            }
        }
    });
    let mut seen = HashSet::new();
    Ok(try_join_all(shards).await?.into_iter().flatten().filter(|run| seen.insert(run.clone())).collect())
}

/// Runs that may be stuck at `due_by`, each with the earliest submission since it became active,
/// oldest first, at most `limit`: the active runs whose counters show submissions at or before
/// `due_by` and no finish reported after it. A hint: [`run_activity`] decides from the states.
pub async fn waiting_runs(
    store: &DynamoStore,
    due_by: Millis,
    limit: usize,
) -> Result<Vec<(String, Millis)>, AwsError> {
    let mut runs = Vec::new();
    for run in active_runs(store).await? {
        let items = control::counter_items(store, &run).await?;
        let first = items.iter().filter_map(|i| i.first_submitted_at).min();
        let last_finish = items.iter().filter_map(|i| i.last_finished_at).max();
        match first {
            Some(first) if first <= due_by && last_finish.is_none_or(|at| at <= due_by) => runs.push((run, first)),
            // Active with no submission time: marked by an older writer; let the states decide.
            None => runs.push((run, due_by)),
            _ => {}
        }
    }
    runs.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    runs.truncate(limit);
    Ok(runs)
}

/// A run's progress from its journal and states (about 0.5 read unit per task, eventually
/// consistent): its unfinished tasks, the last time one of its tasks reached a final state, and
/// the earliest due time of its unfinished tasks. A run with nothing unfinished leaves the
/// active index ([`control::retire`], on the counters read before the states).
pub async fn run_activity(
    store: &DynamoStore,
    run_id: &str,
) -> Result<(u64, Option<Millis>, Option<Millis>), AwsError> {
    let counters: Vec<CounterItem> = control::counter_items(store, run_id).await?;
    let states = journal::run_states(store, run_id, false).await?;
    let unfinished: Vec<&StateItem> = states.iter().filter(|s| !s.status.is_terminal()).collect();
    let last = states.iter().filter(|s| s.status.is_terminal()).filter_map(|s| s.ended_at).max();
    let oldest_due = unfinished.iter().map(|s| s.ready_at()).min();
    if unfinished.is_empty() {
        control::retire(store, run_id, &counters).await?;
    }
    Ok((unfinished.len() as u64, last, oldest_due))
}

/// Per deployment/model figures of a run (its journal, then its states read strongly
/// consistent), or of every run (a scan of the state items).
pub async fn summary(store: &DynamoStore, run_id: Option<&str>) -> Result<Vec<GroupSummary>, AwsError> {
    let states = match run_id {
        Some(run) => journal::run_states(store, run, true).await?,
        None => all_states(store).await?,
    };
    let records: Vec<TaskRecord> = states.into_iter().map(StateItem::into_summary_record).collect();
    Ok(summarise(records.iter()))
}

async fn all_states(store: &DynamoStore) -> Result<Vec<StateItem>, AwsError> {
    scan_states(store, false).await
}

/// A run's records, whole and in submission order.
pub async fn run_tasks(store: &DynamoStore, run_id: &str) -> Result<Vec<TaskRecord>, AwsError> {
    let mut seen = HashSet::new();
    let ids: Vec<String> = journal::run_entries(store, run_id)
        .await?
        .into_iter()
        .flat_map(|e| e.tasks)
        .filter(|t| seen.insert(t.id.clone()))
        .map(|t| t.id)
        .collect();
    let mut records = read::records(store, &ids).await?;
    Ok(ids.iter().filter_map(|id| records.remove(id)).filter(|r| r.run_id() == run_id).collect())
}
