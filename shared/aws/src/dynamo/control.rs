//! Single items written only on change: the control item (pause flags, the cancel signal), one
//! breaker snapshot per deployment, and a run's sharded progress counters (`ADD`, once per
//! invocation).

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde::{Deserialize, Serialize};
use taskexec_core::breaker::BreakerSnapshot;
use taskexec_core::ports::{ControlState, LimitOverride, PauseScope};

use super::DynamoStore;
use super::item::{Item, key, n};
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

/// `ADD` the non-zero counts to one of the run's counter shards.
pub async fn add_run_counts(store: &DynamoStore, run_id: &str, counts: &RunCounts) -> Result<(), AwsError> {
    let fields: Vec<_> = counts.fields().into_iter().filter(|(_, v)| *v > 0).collect();
    if fields.is_empty() {
        return Ok(());
    }
    let shard = store.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % u64::from(store.config.counter_shards);
    let expression = fields.iter().map(|(name, _)| format!("#{name} :{name}")).collect::<Vec<_>>().join(", ");
    let mut request = store
        .client
        .update_item()
        .table_name(store.table())
        .set_key(Some(key(keys::run_pk(run_id), keys::counter_sk(shard as u16))))
        .update_expression(format!("ADD {expression}"));
    for (name, v) in fields {
        request = request
            .expression_attribute_names(format!("#{name}"), name)
            .expression_attribute_values(format!(":{name}"), n(v));
    }
    let out = request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await;
    store.meter.record(out.map_err(|e| AwsError::dynamo("UpdateItem", e))?.consumed_capacity());
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
