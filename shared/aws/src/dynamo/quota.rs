//! The fleet's provider-quota ledger on [`DynamoLimiter`] ([`taskexec_core::fleet`]: slots of
//! `L` ms, default 2 s, whose caps keep every 61 s window within a deployment's or model's
//! requests and tokens per minute, whatever the number of Lambda containers).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | one slot of a limit key's quota | `QUOTA#<key>` | `SLOT#<i>` (`i = floor(t / L)`) | `req`, `tok`, `in`, `out` (N): leased by all containers in the slot; `expiresAt` (s) |
//!
//! A lease is one `UpdateItem`: `ADD` of every counter the quota has (requests, tokens, input
//! and output tokens), conditioned on each staying within the slot's cap
//! (`attribute_not_exists(x) OR x <= :cap_minus_amount`); a give-back is the `ADD` of the
//! negative amounts, conditioned on no counter going below zero (a slot item gone by TTL is not
//! recreated negative). Items expire 5 minutes after their slot ends (the table's TTL attribute,
//! `expiresAt`): a slot is never read after it ends.
//!
//! Write cost: an `UpdateItem` of an item under 1 KB is 1 WCU, refused or not. A container
//! leases a chunk (an eighth of the slot's cap, or the call's ask if larger) when its allowance
//! is short, so a slot's item takes at most 8 chunk leases plus, per container, one exact lease
//! after a refused chunk, two refusals (then the container waits for the next slot without
//! asking), the give-back of what it has left then, and one give-back per batch: its writes are
//! bounded by the containers, never by the task rate, and no single item is hot (a new item every slot, each written a few dozen times
//! at most). Per task, with calls of a tenth of a chunk (a quota of some 80 calls a slot, i.e.
//! 2,400 calls a minute): ≈ 0.1 WCU of leases, plus one give-back per batch (0.1 WCU per task
//! for a batch of 10), plus each refusal at saturation; against 1 WCU per task (a conditional
//! `ADD` per call) and the item of a key written at the task rate. When a slot holds less than
//! 8 calls, every lease is one call's ask: 1 WCU per task, at a task rate the quota keeps low.
//! Measured on DynamoDB Local by `tests/quota.rs`.

use std::time::Duration;

use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
use taskexec_core::fleet::{Amounts, Slots};
use taskexec_core::ports::{LimitKey, StoreResult};

use super::item::{self, n};
use super::keys;
use super::limiter::{DynamoLimiter, key_string};
use crate::error::AwsError;

/// How long a slot's item is kept after the slot ends (then DynamoDB's TTL deletes it).
const KEEP: Duration = Duration::from_secs(5 * 60);

/// Partition key of a limit key's quota slots.
fn quota_pk(key: &LimitKey) -> String {
    format!("QUOTA#{}", key_string(key))
}

/// Sort key of one slot.
fn slot_sk(slot: u64) -> String {
    format!("SLOT#{slot}")
}

impl DynamoLimiter {
    fn slots(&self) -> Slots {
        Slots::new(self.settings.quota_slot.unwrap_or(taskexec_core::fleet::DEFAULT_SLOT))
    }

    /// When the item of `slot` expires (s since the epoch).
    fn slot_expiry(&self, slot: u64) -> i64 {
        (self.slots().start(slot + 1) + i64::try_from(KEEP.as_millis()).unwrap_or(0)) / 1_000
    }

    /// Lease `amounts` in `slot` if every counter stays within `caps`: one conditional
    /// `UpdateItem`. `false` when refused.
    pub(super) async fn lease_slot(
        &self,
        key: &LimitKey,
        slot: u64,
        amounts: Amounts,
        caps: Amounts,
    ) -> Result<bool, AwsError> {
        let fields: Vec<(&str, u64)> = amounts.named().collect();
        if fields.is_empty() {
            return Ok(true);
        }
        let caps: Vec<u64> = {
            let all = [("req", caps.requests), ("tok", caps.tokens), ("in", caps.input), ("out", caps.output)];
            fields.iter().map(|(name, _)| all.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)).collect()
        };
        let mut conditions = Vec::new();
        let mut update = self.slot_update(key, slot, &fields, 1);
        for ((name, amount), cap) in fields.iter().zip(caps) {
            let Some(max) = cap.checked_sub(*amount) else { return Ok(false) };
            conditions.push(format!("(attribute_not_exists(#{name}) OR #{name} <= :{name}_max)"));
            update = update.expression_attribute_values(format!(":{name}_max"), n(max));
        }
        self.settle_update(update.condition_expression(conditions.join(" AND ")).send().await)
    }

    /// Give `amounts` back to `slot` (never below zero: refused, and ignored, if a counter
    /// would be).
    pub(super) async fn give_back_slot(&self, key: &LimitKey, slot: u64, amounts: Amounts) -> Result<(), AwsError> {
        let fields: Vec<(&str, u64)> = amounts.named().collect();
        if fields.is_empty() {
            return Ok(());
        }
        let mut conditions = Vec::new();
        let mut update = self.slot_update(key, slot, &fields, -1);
        for (name, amount) in &fields {
            conditions.push(format!("#{name} >= :{name}_back"));
            update = update.expression_attribute_values(format!(":{name}_back"), n(amount));
        }
        if !self.settle_update(update.condition_expression(conditions.join(" AND ")).send().await)? {
            tracing::warn!(key = %key_string(key), slot, "quota give-back refused: the slot's item is gone");
        }
        Ok(())
    }

    /// The `UpdateItem` adding `sign × amount` to each named counter of `slot`'s item and
    /// setting its expiry.
    fn slot_update(
        &self,
        key: &LimitKey,
        slot: u64,
        fields: &[(&str, u64)],
        sign: i64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let adds: Vec<String> = fields.iter().map(|(name, _)| format!("#{name} :{name}")).collect();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::key(quota_pk(key), slot_sk(slot))))
            .update_expression(format!("SET #expires = :expires ADD {}", adds.join(", ")))
            .expression_attribute_names("#expires", keys::EXPIRES_AT)
            .expression_attribute_values(":expires", n(self.slot_expiry(slot)))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes);
        for (name, amount) in fields {
            let amount = i64::try_from(*amount).unwrap_or(i64::MAX) * sign;
            update = update
                .expression_attribute_names(format!("#{name}"), *name)
                .expression_attribute_values(format!(":{name}"), n(amount));
        }
        update
    }

    /// What every container together holds of `slot` of `key`'s quota (the slot's item; 0 where
    /// it has none).
    pub async fn quota_leased(&self, key: &LimitKey, slot: u64) -> StoreResult<Amounts> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item::key(quota_pk(key), slot_sk(slot))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("GetItem", e))?;
        let item = out.item.unwrap_or_default();
        let get = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Amounts { requests: get("req"), tokens: get("tok"), input: get("in"), output: get("out") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_slots_have_their_own_partition_per_key() {
        assert_eq!(quota_pk(&LimitKey::Deployment("a".into())), "QUOTA#D#a");
        assert_eq!(quota_pk(&LimitKey::Model("a".into(), "m".into())), "QUOTA#M#a#m");
        assert_eq!(slot_sk(850_000_000), "SLOT#850000000");
    }
}
