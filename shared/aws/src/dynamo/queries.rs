//! Queries over the two indexes: pending and overdue tasks from the sparse open index (one
//! query per shard, merged by due key), and a run's tasks from the run index (merged by
//! submission order), whose summaries come from the tasks' state items read strongly consistent.
//! Also the sweeper's side of its re-send rule: the tasks whose message is missing, the record of
//! a re-send ([`ResendIndex`] for the store) and the queues' depths ([`QueueDepths`] for
//! [`SqsQueue`]).

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::try_join_all;
use serde::Deserialize;
use taskexec_core::error::StoreError;
use taskexec_core::metrics::summarise;
use taskexec_core::ports::{Delivery, GroupSummary, Route};
use taskexec_core::task::{TaskPriority, TaskRecord, TaskState};
use taskexec_core::time::Millis;
use taskexec_lambda::sweeper::resend::{Candidate, ResendIndex, ResendRule};

use super::item::{Item, StateItem, n, s, trail_entry};
use super::keys;
use super::read;
use super::transitions::log_event;
use super::update::{Update, Updated};
use super::{DynamoStore, OverdueTask};
use crate::error::AwsError;

/// An entry of the open index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenEntry {
    #[serde(rename = "pk", deserialize_with = "task_id_from_pk")]
    pub task_id: String,
    pub due_key: u64,
    pub run_id: String,
    pub provider_id: String,
    pub model_id: String,
    pub priority: TaskPriority,
}

fn task_id_from_pk<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let pk = String::deserialize(d)?;
    keys::task_id_of(&pk).map(str::to_owned).ok_or_else(|| serde::de::Error::custom(format!("not a task key: {pk}")))
}

impl OpenEntry {
    fn pending(self) -> Delivery {
        let route = Route { provider_id: self.provider_id, model_id: self.model_id, run_id: self.run_id };
        Delivery::new(self.task_id, Arc::new(route), self.priority, keys::ready_at_of(self.due_key))
    }
}

/// One page of an open-index shard between two due keys.
async fn open_page(
    store: &DynamoStore,
    shard: u16,
    (from, to): (u64, u64),
    limit: i32,
    start: Option<Item>,
) -> Result<(Vec<OpenEntry>, Option<Item>), AwsError> {
    let out = store
        .client
        .query()
        .table_name(store.table())
        .index_name(keys::OPEN_INDEX)
        .key_condition_expression("#shard = :shard AND #due BETWEEN :from AND :to")
        .expression_attribute_names("#shard", keys::OPEN_SHARD)
        .expression_attribute_names("#due", keys::DUE_KEY)
        .expression_attribute_values(":shard", s(keys::open_shard_n(shard)))
        .expression_attribute_values(":from", n(from))
        .expression_attribute_values(":to", n(to))
        .limit(limit)
        .set_exclusive_start_key(start)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("Query", e))?;
    let entries = out.items.unwrap_or_default().into_iter().map(open_entry).collect::<Result<_, _>>()?;
    Ok((entries, out.last_evaluated_key))
}

fn open_entry(item: Item) -> Result<OpenEntry, AwsError> {
    let what = super::item::item_key(&item);
    serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("open index entry {what}"), e))
}

/// Up to `want` entries of one shard from `from` to `to`, in due order.
async fn shard_entries(
    store: &DynamoStore,
    shard: u16,
    range: (u64, u64),
    want: usize,
) -> Result<Vec<OpenEntry>, AwsError> {
    let (mut entries, mut start) = (Vec::new(), None);
    loop {
        let limit = i32::try_from(want - entries.len()).unwrap_or(i32::MAX);
        let (page, next) = open_page(store, shard, range, limit, start).await?;
        entries.extend(page);
        match next {
            Some(key) if entries.len() < want => start = Some(key),
            _ => return Ok(entries),
        }
    }
}

/// Every open-index entry between two due keys (all shards), in due order.
pub async fn open_entries(store: &DynamoStore, from: u64, to: u64) -> Result<Vec<OpenEntry>, AwsError> {
    merged(store, (from, to), usize::MAX).await
}

async fn merged(store: &DynamoStore, range: (u64, u64), want: usize) -> Result<Vec<OpenEntry>, AwsError> {
    let shards = (0..store.config.open_shards).map(|shard| shard_entries(store, shard, range, want));
    let mut all: Vec<OpenEntry> = try_join_all(shards).await?.into_iter().flatten().collect();
    all.sort_by(|a, b| (a.due_key, &a.task_id).cmp(&(b.due_key, &b.task_id)));
    Ok(all)
}

/// A page of unfinished tasks from due key `cursor` on. A page never ends inside a group of
/// equal due keys (so the next page, starting at that key, repeats nothing and skips nothing),
/// unless one group alone is larger than `limit`.
pub async fn pending(store: &DynamoStore, cursor: u64, limit: usize) -> Result<(Vec<Delivery>, Option<u64>), AwsError> {
    let limit = limit.max(1);
    let mut all = merged(store, (cursor, u64::MAX), limit + 1).await?;
    if all.len() <= limit {
        return Ok((all.into_iter().map(OpenEntry::pending).collect(), None));
    }
    let next_key = all[limit].due_key;
    let mut end = limit;
    while end > 0 && all[end - 1].due_key == next_key {
        end -= 1;
    }
    let (end, next) = if end == 0 { (limit, next_key.saturating_add(1)) } else { (end, next_key) };
    all.truncate(end);
    Ok((all.into_iter().map(OpenEntry::pending).collect(), Some(next)))
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

/// Up to `limit` tasks due by their own timing at `now` ([`is_overdue`]).
pub async fn overdue(store: &DynamoStore, now: Millis, limit: usize) -> Result<Vec<OverdueTask>, AwsError> {
    let pick = |entry: OpenEntry, state: StateItem| {
        is_overdue(&state, now).then(|| OverdueTask { state: state.status, epoch: state.epoch, task: entry.pending() })
    };
    sweep_open(store, now, (limit, usize::MAX), |_| true, pick).await
}

/// Up to `limit` unfinished tasks whose message `rule` finds missing (see
/// `taskexec_lambda::sweeper::resend`), reading at most `scan_limit` index entries: only the
/// entries up to [`ResendRule::scan_to`], and the states of those whose priority and due time
/// leave them possibly missing.
pub async fn missing(
    store: &DynamoStore,
    rule: &ResendRule,
    limit: usize,
    scan_limit: usize,
) -> Result<Vec<Candidate>, AwsError> {
    let keep = |entry: &OpenEntry| rule.may_be_missing(entry.priority, keys::ready_at_of(entry.due_key));
    let pick = |entry: OpenEntry, state: StateItem| {
        let candidate = candidate(entry, &state);
        rule.is_missing(&candidate).then_some(candidate)
    };
    sweep_open(store, rule.scan_to(), (limit, scan_limit), keep, pick).await
}

fn candidate(entry: OpenEntry, state: &StateItem) -> Candidate {
    let last_change = state.events().iter().map(|e| e.at).max().unwrap_or(state.submitted_at);
    Candidate {
        status: state.status,
        epoch: state.epoch,
        lease_until: state.lease_until,
        last_change: last_change.max(state.submitted_at),
        task: entry.pending(),
    }
}

/// Record a re-send on the task: a `resent` trail entry, only if status and epoch are still the
/// ones read (1 WCU; the trail is not projected, so no index write). `false`: it changed.
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

/// Open-index entries per page while sweeping.
const SWEEP_PAGE: i32 = 500;

/// Up to `limit` picks among the open-index entries due by `to`, shard after shard (starting at a
/// rotating shard), reading at most `scan_limit` entries: the states of the entries `keep` keeps
/// are read (eventually consistent: whoever acts re-checks with a conditional write), and
/// `pick` decides.
async fn sweep_open<T, K, P>(
    store: &DynamoStore,
    to: Millis,
    (limit, scan_limit): (usize, usize),
    keep: K,
    pick: P,
) -> Result<Vec<T>, AwsError>
where
    K: Fn(&OpenEntry) -> bool + Send + Sync,
    P: Fn(OpenEntry, StateItem) -> Option<T> + Send + Sync,
    T: Send,
{
    let shards = store.config.open_shards;
    let first = store.sweep_start.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut found, mut scanned) = (Vec::new(), 0_usize);
    for k in 0..shards {
        let shard = ((first + u64::from(k)) % u64::from(shards)) as u16;
        let mut start = None;
        while scanned < scan_limit {
            let page_size = i32::try_from(scan_limit - scanned).unwrap_or(i32::MAX).min(SWEEP_PAGE);
            let (page, next) = open_page(store, shard, (0, keys::last_due_key(to)), page_size, start).await?;
            scanned += page.len();
            let page: Vec<OpenEntry> = page.into_iter().filter(|e| keep(e)).collect();
            let ids: Vec<String> = page.iter().map(|e| e.task_id.clone()).collect();
            let mut states = if ids.is_empty() { HashMap::new() } else { read::states(store, &ids, false).await? };
            for entry in page {
                let Some(state) = states.remove(&entry.task_id) else { continue };
                found.extend(pick(entry, state));
                if found.len() >= limit {
                    return Ok(found);
                }
            }
            match next {
                Some(key) => start = Some(key),
                None => break,
            }
        }
    }
    Ok(found)
}

impl ResendIndex for DynamoStore {
    async fn missing(&self, rule: &ResendRule, limit: usize, scan_limit: usize) -> Result<Vec<Candidate>, StoreError> {
        Ok(missing(self, rule, limit, scan_limit).await?)
    }

    async fn mark_resent(&self, task: &Candidate, at: Millis) -> Result<bool, StoreError> {
        Ok(mark_resent(self, task, at).await?)
    }
}

/// Open-index entries read per shard at most when looking for waiting runs (about 150 bytes
/// each: a full page costs about 20 read units).
const WAITING_PER_SHARD: usize = 1_000;

/// Runs with an unfinished task due at or before `due_by`, oldest first, at most `limit`: the
/// open index below `due_by`, at most [`WAITING_PER_SHARD`] entries per shard (so a huge old
/// backlog of one run can hide another run's old tasks for a sweep).
pub async fn waiting_runs(
    store: &DynamoStore,
    due_by: Millis,
    limit: usize,
) -> Result<Vec<(String, Millis)>, AwsError> {
    let entries = merged(store, (0, keys::last_due_key(due_by)), WAITING_PER_SHARD).await?;
    let mut runs: Vec<(String, Millis)> = Vec::new();
    for entry in entries {
        if runs.len() >= limit {
            break;
        }
        if !runs.iter().any(|(run, _)| *run == entry.run_id) {
            runs.push((entry.run_id, keys::ready_at_of(entry.due_key)));
        }
    }
    Ok(runs)
}

/// A run's unfinished tasks and the last time one of them reached a final state: the run index,
/// then every task's state item (eventually consistent, about 0.5 read unit per task).
pub async fn run_activity(store: &DynamoStore, run_id: &str) -> Result<(u64, Option<Millis>), AwsError> {
    let ids = run_task_ids(store, run_id).await?;
    let states = read::states(store, &ids, false).await?;
    let unfinished = states.values().filter(|s| !s.status.is_terminal()).count() as u64;
    let last = states.values().filter(|s| s.status.is_terminal()).filter_map(|s| s.ended_at).max();
    Ok((unfinished, last))
}

/// Task ids of a run in submission order (all run shards merged).
async fn run_task_ids(store: &DynamoStore, run_id: &str) -> Result<Vec<String>, AwsError> {
    let shards = (0..store.config.run_shards).map(|shard| run_shard_keys(store, keys::run_shard_n(run_id, shard)));
    let mut all: Vec<(String, String)> = try_join_all(shards).await?.into_iter().flatten().collect();
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// (`runSeq`, task id) of every task in one run shard.
async fn run_shard_keys(store: &DynamoStore, shard: String) -> Result<Vec<(String, String)>, AwsError> {
    let (mut keys_found, mut start) = (Vec::new(), None);
    loop {
        let out = store
            .client
            .query()
            .table_name(store.table())
            .index_name(keys::RUN_INDEX)
            .key_condition_expression("#shard = :shard")
            .expression_attribute_names("#shard", keys::RUN_SHARD)
            .expression_attribute_values(":shard", s(&shard))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("Query", e))?;
        keys_found.extend(out.items.unwrap_or_default().iter().filter_map(run_entry));
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(keys_found),
        }
    }
}

fn run_entry(item: &Item) -> Option<(String, String)> {
    let text = |k: &str| item.get(k).and_then(|v: &AttributeValue| v.as_s().ok());
    Some((text(keys::RUN_SEQ)?.clone(), keys::task_id_of(text(keys::PK)?)?.to_owned()))
}

/// Per deployment/model figures of a run, or of every run (a scan of the state items).
pub async fn summary(store: &DynamoStore, run_id: Option<&str>) -> Result<Vec<GroupSummary>, AwsError> {
    let states = match run_id {
        Some(run) => {
            let ids = run_task_ids(store, run).await?;
            read::states(store, &ids, true).await?.into_values().collect()
        }
        None => all_states(store).await?,
    };
    let records: Vec<TaskRecord> = states.into_iter().map(StateItem::into_summary_record).collect();
    Ok(summarise(records.iter()))
}

async fn all_states(store: &DynamoStore) -> Result<Vec<StateItem>, AwsError> {
    let (mut states, mut start) = (Vec::new(), None);
    loop {
        let out = store
            .client
            .scan()
            .table_name(store.table())
            .filter_expression("#sk = :state")
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":state", s(keys::STATE))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("Scan", e))?;
        for item in out.items.unwrap_or_default() {
            states.push(StateItem::from_item(item)?);
        }
        match out.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(states),
        }
    }
}

/// A run's records, whole and in submission order.
pub async fn run_tasks(store: &DynamoStore, run_id: &str) -> Result<Vec<TaskRecord>, AwsError> {
    let ids = run_task_ids(store, run_id).await?;
    let mut records = read::records(store, &ids).await?;
    Ok(ids.iter().filter_map(|id| records.remove(id)).collect())
}
