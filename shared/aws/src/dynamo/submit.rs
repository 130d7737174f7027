//! Idempotent submission. First the request's submission journal entries (marked unsent;
//! [`journal`]), then per record: the PAYLOAD item, on condition that there is none or it has
//! the same content hash; then the STATE item, on condition that there is none; last, per run
//! with created tasks, one `ADD submitted` to the run's counters, which also keeps the run in the
//! index of active runs (the stuck-run check's candidates). A submission that died between the two leaves a payload only, which a retry of the
//! same content completes; another content is a conflict. An existing state item makes the
//! record a duplicate (same hash) or a conflict. Records of distinct ids go concurrently; the
//! repeats of one id within a batch go in order, so each is judged against the earlier one.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::types::ReturnConsumedCapacity::Indexes;
use futures::stream::{self, StreamExt};
use taskexec_core::ports::SubmitOutcome;
use taskexec_core::task::TaskRecord;
use taskexec_core::time::Millis;

use super::DynamoStore;
use super::item::{Item, StateItem, n, payload_item, s};
use super::transitions::log_event;
use super::{control, journal, keys, read};
use crate::error::AwsError;

/// Distinct task ids submitted at once.
const CONCURRENCY: usize = 16;

/// Store records idempotently; one outcome per record, in order.
pub async fn submit(store: &DynamoStore, records: Vec<TaskRecord>) -> Result<Vec<SubmitOutcome>, AwsError> {
    let n = records.len();
    journal::write(store, &records).await?;
    let runs: Vec<(String, Millis)> = records.iter().map(|r| (r.run_id().to_owned(), r.submitted_at)).collect();
    let mut groups: Vec<Vec<(usize, TaskRecord)>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (i, record) in records.into_iter().enumerate() {
        let g = *group_of.entry(record.task.id.clone()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push((i, record));
    }
    let results: Vec<Result<Vec<(usize, SubmitOutcome)>, AwsError>> =
        stream::iter(groups).map(|group| submit_group(store, group)).buffer_unordered(CONCURRENCY).collect().await;
    let mut outcomes = vec![SubmitOutcome::Conflict; n];
    for result in results {
        for (i, outcome) in result? {
            outcomes[i] = outcome;
        }
    }
    count_created(store, &runs, &outcomes).await?;
    Ok(outcomes)
}

/// One `ADD submitted` per run that got new tasks (which also marks it active), from the
/// earliest submission time of those tasks.
async fn count_created(
    store: &DynamoStore,
    runs: &[(String, Millis)],
    outcomes: &[SubmitOutcome],
) -> Result<(), AwsError> {
    let mut created: BTreeMap<&str, (u64, Millis)> = BTreeMap::new();
    for ((run, at), outcome) in runs.iter().zip(outcomes) {
        if *outcome == SubmitOutcome::Created {
            let entry = created.entry(run.as_str()).or_insert((0, *at));
            *entry = (entry.0 + 1, entry.1.min(*at));
        }
    }
    for (run, (submitted, first)) in created {
        control::add_submitted(store, run, submitted, first).await?;
    }
    Ok(())
}

async fn submit_group(
    store: &DynamoStore,
    group: Vec<(usize, TaskRecord)>,
) -> Result<Vec<(usize, SubmitOutcome)>, AwsError> {
    let mut out = Vec::with_capacity(group.len());
    for (i, record) in group {
        out.push((i, submit_one(store, &record).await?));
    }
    Ok(out)
}

async fn submit_one(store: &DynamoStore, record: &TaskRecord) -> Result<SubmitOutcome, AwsError> {
    let mut payload = payload_item(record)?;
    if let Some(at) = store.payload_expiry(record.submitted_at) {
        payload.insert(keys::EXPIRES_AT.to_owned(), n(at));
    }
    if !put_if(store, payload, Some(&record.content_hash)).await? {
        return Ok(SubmitOutcome::Conflict);
    }
    let state = StateItem::of_record(record);
    if put_if(store, state.to_item()?, None).await? {
        log_event(&record.task.id, "submitted", record.epoch, None);
        return Ok(SubmitOutcome::Created);
    }
    let Some(existing) = read::state(store, &record.task.id).await? else {
        return Err(AwsError::Corrupt { key: keys::task_pk(&record.task.id), problem: "state vanished" });
    };
    Ok(if existing.content_hash == record.content_hash {
        SubmitOutcome::Duplicate(existing.status)
    } else {
        SubmitOutcome::Conflict
    })
}

/// Put an item if none has its key (or, with `same_hash`, if the one there has that content
/// hash). Returns whether it was written.
async fn put_if(store: &DynamoStore, item: Item, same_hash: Option<&str>) -> Result<bool, AwsError> {
    let mut request =
        store.client.put_item().table_name(store.table()).set_item(Some(item)).return_consumed_capacity(Indexes);
    request = match same_hash {
        None => request.condition_expression("attribute_not_exists(#pk)"),
        Some(hash) => request
            .condition_expression("attribute_not_exists(#pk) OR #hash = :hash")
            .expression_attribute_names("#hash", "contentHash")
            .expression_attribute_values(":hash", s(hash)),
    };
    put_conditionally(store, request.expression_attribute_names("#pk", keys::PK)).await
}

/// Send a conditional PutItem: whether it was written (a failed condition is an answer, not an
/// error), with its consumed capacity metered.
pub(super) async fn put_conditionally(store: &DynamoStore, request: PutItemFluentBuilder) -> Result<bool, AwsError> {
    match request.send().await {
        Ok(out) => {
            store.meter.record(out.consumed_capacity());
            Ok(true)
        }
        Err(e) if e.as_service_error().is_some_and(PutItemError::is_conditional_check_failed_exception) => {
            store.meter.rejected();
            Ok(false)
        }
        Err(e) => Err(AwsError::dynamo("PutItem", e)),
    }
}
