//! The submission journal: one item per submission request and run (at most [`CHUNK`] tasks
//! each), listing its task ids in submission order with their route and priority, in the run's
//! sharded journal partitions (`JOURNAL#<n>#<run>` / `<submittedAt>#<hash of the request's
//! ids>#<chunk>`).
//!
//! It replaces two per-task indexes with one write per request:
//! - **run membership** (`run_tasks`, `summary(run)`, stuck-run confirmation) reads the run's
//!   journal partitions (strongly consistent: they are table items, not an index), then the
//!   states of the ids listed, dropping ids without a state or of another run and repeats;
//! - **missing messages**: an entry is written *before* its tasks' items, carrying the sparse
//!   [`keys::UNSENT`] attribute ("these tasks' messages may not have been sent"), which the
//!   sender removes once its send succeeded ([`mark_sent`], through `TaskStore::mark_sent`). An
//!   entry still unsent after the grace is the sweeper's: its queued tasks not claimed since the
//!   entry's time are re-sent, then the attribute removed. A redrive (failed → queued, then a
//!   send) writes an entry of its task the same way.
//!
//! The keys of an entry depend only on the run, the submission time and the ids listed, so
//! [`mark_sent`] finds the entries of a submission from the deliveries built for it, and a
//! submission written twice in one millisecond writes the same entry twice.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use taskexec_core::ports::{Delivery, Route};
use taskexec_core::task::{TaskPriority, TaskRecord};
use taskexec_core::time::Millis;

use super::DynamoStore;
use super::item::{Item, StateItem, key, s};
use super::keys;
use super::read;
use super::update::Update;
use crate::error::AwsError;

/// Tasks listed by one journal entry at most (about 60 bytes each: an entry stays far below
/// DynamoDB's 400 KB item limit, and a request of 10 small tasks is one write unit).
pub const CHUNK: usize = 100;

/// One task of a journal entry (short attribute names: they count toward the item's size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalTask {
    /// Task id.
    #[serde(rename = "i")]
    pub id: String,
    /// Deployment or route.
    #[serde(rename = "p")]
    pub provider_id: String,
    /// Model.
    #[serde(rename = "m")]
    pub model_id: String,
    /// Scheduling class.
    #[serde(rename = "q")]
    pub priority: TaskPriority,
    /// The task fails instead of waiting for capacity; absent when false.
    #[serde(rename = "f", default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_fast: bool,
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalItem {
    /// `JOURNAL#<n>#<run>`.
    pub pk: String,
    /// `<submittedAt>#<hash of the request's ids>#<chunk>`.
    pub sk: String,
    /// The run.
    pub run_id: String,
    /// When its tasks were submitted.
    pub submitted_at: Millis,
    /// Its tasks, in submission order.
    pub tasks: Vec<JournalTask>,
    /// Unsent-index partition, while the tasks' messages may not have been sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsent: Option<String>,
    /// TTL (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

impl JournalItem {
    /// A delivery of one of its tasks, due at its submission.
    #[must_use]
    pub fn delivery(&self, task: &JournalTask) -> Delivery {
        let route = Route {
            provider_id: task.provider_id.clone(),
            model_id: task.model_id.clone(),
            run_id: self.run_id.clone(),
        };
        let mut d = Delivery::new(task.id.clone(), std::sync::Arc::new(route), task.priority, self.submitted_at);
        d.fail_fast = task.fail_fast;
        d
    }

    fn from_item(item: Item) -> Result<Self, AwsError> {
        let what = super::item::item_key(&item);
        serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("journal entry {what}"), e))
    }
}

/// The journal entries of a submission: its tasks grouped by (run, submission time) in order of
/// first appearance, each group cut into chunks of [`CHUNK`]. Keys only depend on those, so the
/// entries built from the records and from the deliveries of one submission are the same.
fn entries(tasks: impl IntoIterator<Item = (String, Millis, JournalTask)>, journal_shards: u16) -> Vec<JournalItem> {
    let mut groups: Vec<((String, Millis), Vec<JournalTask>)> = Vec::new();
    let mut index: HashMap<(String, Millis), usize> = HashMap::new();
    for (run, at, task) in tasks {
        let i = *index.entry((run.clone(), at)).or_insert_with(|| {
            groups.push(((run, at), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(task);
    }
    let mut out = Vec::new();
    for ((run, at), tasks) in groups {
        let ids_hash = keys::id_hash(&tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join("\n"));
        for (i, chunk) in tasks.chunks(CHUNK).enumerate() {
            let shard = (keys::id_hash(&chunk[0].id) % u64::from(journal_shards.max(1))) as u16;
            out.push(JournalItem {
                pk: keys::journal_pk(&run, shard),
                sk: keys::journal_sk(at, ids_hash, i),
                run_id: run.clone(),
                submitted_at: at,
                tasks: chunk.to_vec(),
                unsent: None,
                expires_at: None,
            });
        }
    }
    out
}

fn of_records(records: &[TaskRecord]) -> impl Iterator<Item = (String, Millis, JournalTask)> + '_ {
    records.iter().map(|r| {
        let task = JournalTask {
            id: r.task.id.clone(),
            provider_id: r.task.provider_id.clone(),
            model_id: r.task.model_id.clone(),
            priority: r.task.priority,
            fail_fast: r.task.fail_fast,
        };
        (r.run_id().to_owned(), r.submitted_at, task)
    })
}

fn of_deliveries(deliveries: &[Delivery]) -> impl Iterator<Item = (String, Millis, JournalTask)> + '_ {
    deliveries.iter().map(|d| {
        let task = JournalTask {
            id: d.task_id.clone(),
            provider_id: d.provider_id().to_owned(),
            model_id: d.model_id().to_owned(),
            priority: d.priority,
            fail_fast: d.fail_fast,
        };
        (d.run_id().to_owned(), d.ready_at, task)
    })
}

/// Write the journal entries of records about to be submitted, marked unsent (one `PutItem`
/// each; the same entry written again is the same item).
pub async fn write(store: &DynamoStore, records: &[TaskRecord]) -> Result<(), AwsError> {
    write_tasks(store, of_records(records)).await
}

/// Write the journal entry of a task about to be queued again (a redrive), marked unsent until
/// its sender's `mark_sent` with the delivery due `at`.
pub async fn write_requeued(store: &DynamoStore, state: &StateItem, at: Millis) -> Result<(), AwsError> {
    let task = JournalTask {
        id: state.task_id().to_owned(),
        provider_id: state.provider_id.clone(),
        model_id: state.model_id.clone(),
        priority: state.priority,
        fail_fast: state.fail_fast,
    };
    write_tasks(store, [(state.run_id.clone(), at, task)]).await
}

async fn write_tasks(
    store: &DynamoStore,
    tasks: impl IntoIterator<Item = (String, Millis, JournalTask)>,
) -> Result<(), AwsError> {
    let puts = entries(tasks, store.config.run_shards).into_iter().map(|mut entry| async move {
        entry.unsent = Some(keys::unsent_shard(&entry.sk, store.config.unsent_shards));
        entry.expires_at = store.payload_expiry(entry.submitted_at);
        let item = serde_dynamo::to_item(&entry).map_err(|e| AwsError::mapping(format!("journal {}", entry.pk), e))?;
        let out = store
            .client
            .put_item()
            .table_name(store.table())
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("PutItem", e))?;
        store.meter.record(out.consumed_capacity());
        Ok::<_, AwsError>(())
    });
    try_join_all(puts).await?;
    Ok(())
}

/// The messages of these submitted tasks are sent (`deliveries`: all of those built for one
/// `submit` call, in order, due at their submission): their journal entries leave the unsent
/// index. An entry already settled (or never written) is left alone.
pub async fn mark_sent(store: &DynamoStore, deliveries: &[Delivery]) -> Result<(), AwsError> {
    let entries = entries(of_deliveries(deliveries), store.config.run_shards);
    try_join_all(entries.iter().map(|entry| settle(store, entry))).await?;
    Ok(())
}

/// Remove an entry's unsent mark (if the entry exists).
pub async fn settle(store: &DynamoStore, entry: &JournalItem) -> Result<(), AwsError> {
    Update::new().expect_item().remove(keys::UNSENT).send(store, (entry.pk.clone(), &entry.sk), false).await?;
    Ok(())
}

/// Every journal entry of a run, in submission order (all shards, strongly consistent).
pub async fn run_entries(store: &DynamoStore, run_id: &str) -> Result<Vec<JournalItem>, AwsError> {
    let shards = (0..store.config.run_shards).map(|n| read::partition(store, keys::journal_pk(run_id, n)));
    let mut entries: Vec<JournalItem> =
        try_join_all(shards).await?.into_iter().flatten().map(JournalItem::from_item).collect::<Result<_, _>>()?;
    entries.sort_by(|a, b| a.sk.cmp(&b.sk));
    Ok(entries)
}

/// The states of a run's tasks in submission order: each id once, and only ids whose state
/// exists and belongs to the run (an entry lists the tasks of a request before they are stored;
/// a submission that died, or a conflict with another run's task, leaves an id without one).
pub async fn run_states(store: &DynamoStore, run_id: &str, consistent: bool) -> Result<Vec<StateItem>, AwsError> {
    let entries = run_entries(store, run_id).await?;
    let mut seen = HashSet::new();
    let ids: Vec<String> =
        entries.iter().flat_map(|e| &e.tasks).filter(|t| seen.insert(t.id.as_str())).map(|t| t.id.clone()).collect();
    let mut states = read::states(store, &ids, consistent).await?;
    Ok(ids.iter().filter_map(|id| states.remove(id)).filter(|state| state.run_id == run_id).collect())
}

/// Keys of up to `limit` journal entries still marked unsent that were submitted at or before
/// `before`, oldest first per shard.
pub async fn unsent_keys(store: &DynamoStore, before: Millis, limit: usize) -> Result<Vec<Item>, AwsError> {
    let mut found = Vec::new();
    for shard in 0..store.config.unsent_shards {
        let mut start = None;
        while found.len() < limit {
            let out = store
                .client
                .query()
                .table_name(store.table())
                .index_name(keys::UNSENT_INDEX)
                .key_condition_expression("#unsent = :shard AND #sk <= :before")
                .expression_attribute_names("#unsent", keys::UNSENT)
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_values(":shard", s(keys::unsent_shard_n(shard)))
                .expression_attribute_values(":before", s(keys::last_journal_sk(before)))
                .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::dynamo("Query", e))?;
            found.extend(out.items.unwrap_or_default().into_iter().map(|item| {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                key(text(keys::PK), text(keys::SK))
            }));
            match out.last_evaluated_key {
                Some(next) => start = Some(next),
                None => break,
            }
        }
    }
    Ok(found)
}

/// The journal entries of `keys` (strongly consistent: an entry just settled is not re-sent).
pub async fn entries_at(store: &DynamoStore, keys: Vec<Item>) -> Result<Vec<JournalItem>, AwsError> {
    let items = read::batch_get(store, keys, true).await?;
    let mut entries: Vec<JournalItem> = items.into_iter().map(JournalItem::from_item).collect::<Result<_, _>>()?;
    entries.sort_by(|a, b| a.sk.cmp(&b.sk));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, run: &str, at: Millis) -> TaskRecord {
        let task = serde_json::from_value(serde_json::json!({
            "id": id, "providerId": "p", "modelId": "m", "prompt": "hi", "runId": run
        }))
        .unwrap();
        TaskRecord::new(task, at)
    }

    #[test]
    fn records_and_their_deliveries_make_the_same_entries() {
        let mut records: Vec<TaskRecord> = (0..250).map(|i| record(&format!("a{i}"), "r1", 5)).collect();
        records.push(record("b", "r2", 5));
        records.push(record("c", "r1", 6));
        let from_records = entries(of_records(&records), 4);
        let mut builder = taskexec_core::ports::DeliveryBuilder::default();
        let deliveries: Vec<Delivery> =
            records.iter().map(|r| builder.of_task(&r.task, r.run_id(), r.submitted_at)).collect();
        let from_deliveries = entries(of_deliveries(&deliveries), 4);
        assert_eq!(from_records, from_deliveries);
        let sizes: Vec<(usize, &str)> = from_records.iter().map(|e| (e.tasks.len(), e.run_id.as_str())).collect();
        assert_eq!(sizes, [(100, "r1"), (100, "r1"), (50, "r1"), (1, "r2"), (1, "r1")]);
        assert_ne!(from_records[0].sk, from_records[1].sk, "chunks of one request are distinct entries");
        assert_eq!(from_records[4].submitted_at, 6);
    }
}
