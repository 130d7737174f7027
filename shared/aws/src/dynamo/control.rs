//! Single items written only on change: the control item (pause flags, the cancel signal), one
//! breaker snapshot per deployment, and a run's sharded progress counters (`ADD`, once per
//! invocation). The counter items also carry the run's place in the sparse index of active runs
//! ([`keys::ACTIVE_INDEX`]): set by the `ADD submitted` of a submission (no index write while it
//! stays set), removed by the sweeper once every task of the run is finished ([`retire`]), and
//! the hints the stuck-run check selects candidates by (`firstSubmittedAt`, `lastFinishedAt`).

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde::{Deserialize, Serialize};
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::ports::{ControlState, LimitOverride, PauseScope};
use taskexec_core::time::Millis;

use super::DynamoStore;
use super::item::{Item, key, n, s};
use super::keys;
use crate::error::AwsError;

/// A run's progress counters (cumulative, summed over shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RunCounts {
    /// Tasks accepted.
    pub submitted: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// When the latest counted finish was reported (a hint for the stuck-run check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_finished_at: Option<Millis>,
}

impl RunCounts {
    fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("submitted", self.submitted),
            ("completed", self.completed),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
        ]
    }

    fn add(&mut self, other: &RunCounts) {
        self.submitted += other.submitted;
        self.completed += other.completed;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.last_finished_at = self.last_finished_at.max(other.last_finished_at);
    }
}

fn control_key() -> Item {
    key(keys::CONTROL, keys::CONTROL)
}

/// The control state, read strongly consistent.
pub async fn read(store: &DynamoStore) -> Result<ControlState, AwsError> {
    let out = store
        .client
        .get_item()
        .table_name(store.table())
        .set_key(Some(control_key()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("GetItem", e))?;
    out.item.map_or_else(|| Ok(ControlState::default()), |item| control_of(&item))
}

/// The control state a claim checks: the one this process read less than
/// [`DynamoConfig::control_max_age`](super::DynamoConfig::control_max_age) ago, else a fresh
/// strongly consistent read (which is then kept). Claims never read the control item at their
/// own rate: each process reads it at most once per interval, whatever its claim rate.
pub async fn for_claim(store: &DynamoStore) -> Result<ControlState, AwsError> {
    if let Some(state) = kept(store) {
        return Ok(state);
    }
    // One read at a time per process: the deliveries of a batch that all find the kept state too
    // old wait for one read instead of each making its own.
    let _reading = store.control_read.lock().await;
    if let Some(state) = kept(store) {
        return Ok(state);
    }
    let read_at = std::time::Instant::now();
    let state = read(store).await?;
    *store.control_cache.lock().expect("control cache poisoned") = Some((read_at, state.clone()));
    Ok(state)
}

/// The kept control state, if it is younger than `control_max_age`.
fn kept(store: &DynamoStore) -> Option<ControlState> {
    let cache = store.control_cache.lock().expect("control cache poisoned");
    cache.as_ref().filter(|(at, _)| at.elapsed() < store.config.control_max_age).map(|(_, state)| state.clone())
}

/// Forget the kept control state (this process changed it).
fn forget(store: &DynamoStore) {
    *store.control_cache.lock().expect("control cache poisoned") = None;
}

/// Prefix of the control item's attributes holding a deployment's run-time limits (JSON).
const LIMITS_PREFIX: &str = "limits#";

fn control_of(item: &Item) -> Result<ControlState, AwsError> {
    let mut limits = std::collections::BTreeMap::new();
    for (name, value) in item {
        let Some(deployment) = name.strip_prefix(LIMITS_PREFIX) else { continue };
        let json = value.as_s().map_err(|_| AwsError::Corrupt { key: name.clone(), problem: "limits not a string" })?;
        let parsed: LimitOverride =
            serde_json::from_str(json).map_err(|e| AwsError::mapping(format!("control item, {name}"), e))?;
        limits.insert(deployment.to_owned(), parsed);
    }
    Ok(ControlState {
        paused: item.get("paused").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
        paused_runs: item.get("pausedRuns").and_then(|v| v.as_ss().ok()).into_iter().flatten().cloned().collect(),
        cancel_seq: item.get("cancelSeq").and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0),
        limits,
    })
}

/// Set or remove a deployment's run-time limits: one attribute of the control item (1 WCU).
pub async fn set_limits(store: &DynamoStore, deployment: &str, limits: Option<&LimitOverride>) -> Result<(), AwsError> {
    forget(store);
    let request = store
        .client
        .update_item()
        .table_name(store.table())
        .set_key(Some(control_key()))
        .expression_attribute_names("#limits", format!("{LIMITS_PREFIX}{deployment}"));
    let request = match limits.filter(|l| !l.is_empty()) {
        Some(limits) => {
            let json = serde_json::to_string(limits).map_err(|e| AwsError::mapping("run-time limits", e))?;
            request
                .update_expression("SET #limits = :limits")
                .expression_attribute_values(":limits", AttributeValue::S(json))
        }
        None => request.update_expression("REMOVE #limits"),
    };
    let out = request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await;
    forget(store);
    store.meter.record(out.map_err(|e| AwsError::dynamo("UpdateItem", e))?.consumed_capacity());
    Ok(())
}

/// Pause or resume; no write when nothing would change.
pub async fn set_paused(store: &DynamoStore, scope: PauseScope, paused: bool) -> Result<(), AwsError> {
    // This process's claims see the change at once (even when another process made it first).
    forget(store);
    let current = read(store).await?;
    let request = store.client.update_item().table_name(store.table()).set_key(Some(control_key()));
    let request = match scope {
        PauseScope::Global if current.paused == paused => return Ok(()),
        PauseScope::Global => {
            request.update_expression("SET paused = :p").expression_attribute_values(":p", AttributeValue::Bool(paused))
        }
        PauseScope::Run(run) if current.paused_runs.contains(&run) == paused => return Ok(()),
        PauseScope::Run(run) => request
            .update_expression(if paused { "ADD pausedRuns :run" } else { "DELETE pausedRuns :run" })
            .expression_attribute_values(":run", AttributeValue::Ss(vec![run])),
    };
    let out = request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await;
    // Again: a claim may have kept the old state while the write was on its way.
    forget(store);
    store.meter.record(out.map_err(|e| AwsError::dynamo("UpdateItem", e))?.consumed_capacity());
    Ok(())
}

/// Bump the cancel signal.
pub async fn bump_cancel_seq(store: &DynamoStore) -> Result<(), AwsError> {
    let out = store
        .client
        .update_item()
        .table_name(store.table())
        .set_key(Some(control_key()))
        .update_expression("ADD cancelSeq :one")
        .expression_attribute_values(":one", n(1))
        .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("UpdateItem", e))?;
    store.meter.record(out.consumed_capacity());
    Ok(())
}

/// A deployment's breaker snapshot.
pub async fn load_breaker(store: &DynamoStore, deployment: &str) -> Result<Option<BreakerSnapshot>, AwsError> {
    let out = store
        .client
        .get_item()
        .table_name(store.table())
        .set_key(Some(key(keys::breaker_pk(deployment), keys::BREAKER)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("GetItem", e))?;
    out.item
        .map(|item| serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("breaker {deployment}"), e)))
        .transpose()
}

/// Replace a deployment's breaker snapshot.
pub async fn save_breaker(store: &DynamoStore, deployment: &str, snapshot: &BreakerSnapshot) -> Result<(), AwsError> {
    let mut item: Item =
        serde_dynamo::to_item(snapshot).map_err(|e| AwsError::mapping(format!("breaker {deployment}"), e))?;
    item.extend(key(keys::breaker_pk(deployment), keys::BREAKER));
    let request = store.client.put_item().table_name(store.table()).set_item(Some(item));
    let out = request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await;
    store.meter.record(out.map_err(|e| AwsError::dynamo("PutItem", e))?.consumed_capacity());
    Ok(())
}

/// Replace a deployment's breaker snapshot by `next` only if the stored one is still `expected`
/// (same state, `changedAt` and `opens`); `false` when it changed in between (or is gone).
pub async fn replace_breaker_if(
    store: &DynamoStore,
    deployment: &str,
    expected: &BreakerSnapshot,
    next: &BreakerSnapshot,
) -> Result<bool, AwsError> {
    let what = || format!("breaker {deployment}");
    let mut item: Item = serde_dynamo::to_item(next).map_err(|e| AwsError::mapping(what(), e))?;
    item.extend(key(keys::breaker_pk(deployment), keys::BREAKER));
    let state = serde_dynamo::to_attribute_value(expected.state).map_err(|e| AwsError::mapping(what(), e))?;
    let request = store
        .client
        .put_item()
        .table_name(store.table())
        .set_item(Some(item))
        .condition_expression("#state = :state AND #changed = :changed AND #opens = :opens")
        .expression_attribute_names("#state", "state")
        .expression_attribute_names("#changed", "changedAt")
        .expression_attribute_names("#opens", "opens")
        .expression_attribute_values(":state", state)
        .expression_attribute_values(":changed", n(expected.changed_at))
        .expression_attribute_values(":opens", n(expected.opens))
        .return_consumed_capacity(ReturnConsumedCapacity::Indexes);
    super::submit::put_conditionally(store, request).await
}

/// `ADD` the non-zero counts to one of the run's counter shards (and `SET lastFinishedAt` when
/// given). A non-zero `submitted` also marks the run active (see [`add_submitted`]).
pub async fn add_run_counts(store: &DynamoStore, run_id: &str, counts: &RunCounts) -> Result<(), AwsError> {
    let fields: Vec<_> = counts.fields().into_iter().filter(|(_, v)| *v > 0).collect();
    if fields.is_empty() && counts.last_finished_at.is_none() {
        return Ok(());
    }
    let mut sets = Vec::new();
    let mut values = Vec::new();
    if let Some(at) = counts.last_finished_at {
        sets.push("#lastFinishedAt = :lastFinishedAt".to_owned());
        values.push(("lastFinishedAt", n(at)));
    }
    if counts.submitted > 0 {
        sets.push(format!("#{0} = :{0}", keys::ACTIVE_SHARD));
        values.push((keys::ACTIVE_SHARD, s(keys::active_shard(run_id))));
    }
    counter_update(store, run_id, &fields, (sets, values)).await
}

/// `ADD submitted` to one of the run's counter shards, in the same write marking the run active
/// (`activeShard`; an index write only when it was not set) and keeping the earliest submission
/// time seen since it became active (`firstSubmittedAt`).
pub async fn add_submitted(store: &DynamoStore, run_id: &str, submitted: u64, first: Millis) -> Result<(), AwsError> {
    let sets = vec![
        format!("#{0} = :{0}", keys::ACTIVE_SHARD),
        "#firstSubmittedAt = if_not_exists(#firstSubmittedAt, :firstSubmittedAt)".to_owned(),
    ];
    let values = vec![(keys::ACTIVE_SHARD, s(keys::active_shard(run_id))), ("firstSubmittedAt", n(first))];
    counter_update(store, run_id, &[("submitted", submitted)], (sets, values)).await
}

/// Mark a run active without counting (the sweeper, for tasks whose submission died before its
/// `ADD submitted`).
pub async fn mark_active(store: &DynamoStore, run_id: &str, first: Millis) -> Result<(), AwsError> {
    add_submitted(store, run_id, 0, first).await
}

/// One `UpdateItem` of a counter shard: `ADD` the fields, `SET` the expressions.
async fn counter_update(
    store: &DynamoStore,
    run_id: &str,
    fields: &[(&'static str, u64)],
    (sets, values): (Vec<String>, Vec<(&'static str, AttributeValue)>),
) -> Result<(), AwsError> {
    let shard = store.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % u64::from(store.config.counter_shards);
    let adds = fields.iter().map(|(name, _)| format!("#{name} :{name}")).collect::<Vec<_>>().join(", ");
    let mut expression = String::new();
    if !adds.is_empty() {
        expression = format!("ADD {adds}");
    }
    if !sets.is_empty() {
        expression = format!("{expression} SET {}", sets.join(", ")).trim().to_owned();
    }
    let mut request = store
        .client
        .update_item()
        .table_name(store.table())
        .set_key(Some(key(keys::run_pk(run_id), keys::counter_sk(shard as u16))))
        .update_expression(expression);
    for (name, v) in fields {
        request = request
            .expression_attribute_names(format!("#{name}"), *name)
            .expression_attribute_values(format!(":{name}"), n(v));
    }
    for (name, v) in values {
        request = request
            .expression_attribute_names(format!("#{name}"), name)
            .expression_attribute_values(format!(":{name}"), v);
    }
    let out = request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await;
    store.meter.record(out.map_err(|e| AwsError::dynamo("UpdateItem", e))?.consumed_capacity());
    Ok(())
}

/// A run's counter item as the stuck-run check reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CounterItem {
    /// `COUNTERS#<n>`.
    pub sk: String,
    /// Tasks counted as submitted on this shard (the retirement's condition).
    pub submitted: Option<u64>,
    /// Set while the run is in the active index.
    pub active_shard: Option<String>,
    /// Earliest submission since the run became active.
    pub first_submitted_at: Option<Millis>,
    /// Latest finish reported.
    pub last_finished_at: Option<Millis>,
}

/// A run's counter items (strongly consistent).
pub async fn counter_items(store: &DynamoStore, run_id: &str) -> Result<Vec<CounterItem>, AwsError> {
    let items = super::read::partition(store, keys::run_pk(run_id)).await?;
    items
        .into_iter()
        .map(|item| {
            serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("counters of run {run_id}"), e))
        })
        .collect()
}

/// Take a run whose tasks are all finished out of the active index: on each counter item read,
/// only if its `submitted` is still the one read (a submission counted meanwhile keeps the run
/// active; one counted later marks it again).
pub async fn retire(store: &DynamoStore, run_id: &str, read: &[CounterItem]) -> Result<(), AwsError> {
    for item in read.iter().filter(|i| i.active_shard.is_some()) {
        let update = super::update::Update::new().expect_item().remove(keys::ACTIVE_SHARD).remove("firstSubmittedAt");
        let update = match item.submitted {
            Some(seen) => update.expect("submitted", n(seen)),
            None => update.expect_absent("submitted"),
        };
        update.send(store, (keys::run_pk(run_id), &item.sk), false).await?;
    }
    Ok(())
}

/// A run's counters, summed over its shards.
pub async fn run_counts(store: &DynamoStore, run_id: &str) -> Result<RunCounts, AwsError> {
    let items = super::read::partition(store, keys::run_pk(run_id)).await?;
    let mut total = RunCounts::default();
    for item in items {
        let shard: RunCounts =
            serde_dynamo::from_item(item).map_err(|e| AwsError::mapping(format!("counters of run {run_id}"), e))?;
        total.add(&shard);
    }
    Ok(total)
}
