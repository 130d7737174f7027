//! Reads of task items: one task's state, its whole record (state and payload in one `Query` of
//! its partition), and many tasks at once through `BatchGetItem` (100 keys a call, unprocessed
//! keys retried).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::KeysAndAttributes;
use taskexec_core::task::{BenchmarkTask, TaskRecord};

use super::DynamoStore;
use super::item::{Item, StateItem, key, s, task_of_payload};
use super::keys;
use crate::error::AwsError;

/// `BatchGetItem` takes at most this many keys.
const BATCH_GET_MAX: usize = 100;

/// Every item of partition `pk`, read strongly consistent (all pages).
pub async fn partition(store: &DynamoStore, pk: String) -> Result<Vec<Item>, AwsError> {
    let (mut items, mut start) = (Vec::new(), None);
    loop {
        let out = store
            .client
            .query()
            .table_name(store.table())
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_values(":pk", s(pk.clone()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("Query", e))?;
        items.extend(out.items.unwrap_or_default());
        start = out.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// A task's state item, read strongly consistent.
pub async fn state(store: &DynamoStore, task_id: &str) -> Result<Option<StateItem>, AwsError> {
    let out = store
        .client
        .get_item()
        .table_name(store.table())
        .set_key(Some(key(keys::task_pk(task_id), keys::STATE)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("GetItem", e))?;
    out.item.map(StateItem::from_item).transpose()
}

/// A task's state and submitted task, read strongly consistent in one request.
pub async fn state_and_task(
    store: &DynamoStore,
    task_id: &str,
) -> Result<Option<(StateItem, BenchmarkTask)>, AwsError> {
    let items = partition(store, keys::task_pk(task_id)).await?;
    let (mut state, mut payload) = (None, None);
    for item in items {
        match item.get(keys::SK).and_then(|v| v.as_s().ok()).map(String::as_str) {
            Some(keys::STATE) => state = Some(StateItem::from_item(item)?),
            Some(keys::PAYLOAD) => payload = Some(task_of_payload(&item)?),
            _ => {}
        }
    }
    match (state, payload) {
        (Some(state), Some(task)) => Ok(Some((state, task))),
        (None, _) => Ok(None),
        (Some(_), None) => Err(AwsError::Corrupt { key: keys::task_pk(task_id), problem: "state without payload" }),
    }
}

/// A task's whole record.
pub async fn record(store: &DynamoStore, task_id: &str) -> Result<Option<TaskRecord>, AwsError> {
    Ok(state_and_task(store, task_id).await?.map(|(state, task)| state.into_record(task)))
}

/// Items by key, in no particular order (missing ones are absent).
pub async fn batch_get(store: &DynamoStore, keys: Vec<Item>, consistent: bool) -> Result<Vec<Item>, AwsError> {
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH_GET_MAX) {
        let mut pending = Some(chunk.to_vec());
        let mut round = 0;
        while let Some(keys) = pending.take().filter(|k| !k.is_empty()) {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build()
                .map_err(|e| AwsError::build("BatchGetItem", e))?;
            let out = store
                .client
                .batch_get_item()
                .request_items(store.table(), request)
                .send()
                .await
                .map_err(|e| AwsError::dynamo("BatchGetItem", e))?;
            found.extend(out.responses.and_then(|mut r| r.remove(store.table())).unwrap_or_default());
            pending = out.unprocessed_keys.and_then(|mut u| u.remove(store.table())).map(|k| k.keys);
            round += 1;
            back_off(round, pending.is_some()).await;
        }
    }
    Ok(found)
}

/// Unprocessed keys mean the table is throttling: wait a little longer each round.
async fn back_off(round: u32, again: bool) {
    if again {
        tokio::time::sleep(Duration::from_millis(25 << round.min(6))).await;
    }
}

/// State items of many tasks, keyed by task id.
pub async fn states(
    store: &DynamoStore,
    task_ids: &[String],
    consistent: bool,
) -> Result<HashMap<String, StateItem>, AwsError> {
    let keys = task_ids.iter().map(|id| key(keys::task_pk(id), keys::STATE)).collect();
    let items = batch_get(store, keys, consistent).await?;
    items.into_iter().map(|item| StateItem::from_item(item).map(|state| (state.task_id().to_owned(), state))).collect()
}

/// Whole records of many tasks, keyed by task id (tasks without both items are absent).
pub async fn records(store: &DynamoStore, task_ids: &[String]) -> Result<HashMap<String, TaskRecord>, AwsError> {
    let keys = task_ids
        .iter()
        .flat_map(|id| [key(keys::task_pk(id), keys::STATE), key(keys::task_pk(id), keys::PAYLOAD)])
        .collect();
    let (mut states, mut tasks) = (HashMap::new(), HashMap::new());
    for item in batch_get(store, keys, true).await? {
        if item.get(keys::SK).and_then(|v| v.as_s().ok()).is_some_and(|sk| sk == keys::PAYLOAD) {
            let task = task_of_payload(&item)?;
            tasks.insert(task.id.clone(), task);
        } else {
            let state = StateItem::from_item(item)?;
            states.insert(state.task_id().to_owned(), state);
        }
    }
    Ok(states
        .into_iter()
        .filter_map(|(id, state)| tasks.remove(&id).map(|task| (id, state.into_record(task))))
        .collect())
}
