//! [`DynamoWindow`]: the breakers' outcome counters every worker shares (DESIGN.md, "Circuit
//! breaker": outcomes aggregated per invocation into time-bucketed counters).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | outcome bucket | `BREAKER#<deployment>` | `BUCKET#<bucket start, ms, 15 digits>` | `calls`, `failures` (N), `expiresAt` (s, TTL) |
//!
//! A worker adds its invocation's totals per deployment with one `UpdateItem` (`ADD`, 1 WCU),
//! and reads a deployment's window with one `Query` on the partition (the breaker snapshot item
//! shares it but sorts before the buckets). Buckets outlive the window by a few windows (TTL).

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
use taskexec_core::time::Millis;

use super::item::{Item, key, n, s};
use super::keys;
use super::meter::{ConsumedWrites, WriteMeter};
use crate::error::AwsError;

/// Sort key of the bucket starting at `start` (ms).
#[must_use]
pub fn bucket_sk(start: Millis) -> String {
    format!("BUCKET#{:015}", start.max(0))
}

/// The shared outcome window over the one table.
#[derive(Debug)]
pub struct DynamoWindow {
    client: Client,
    table: String,
    keep_ms: Millis,
    meter: WriteMeter,
}

impl DynamoWindow {
    /// Buckets in `table`, kept `keep_ms` past their start (a few breaker windows) before the
    /// table's TTL removes them.
    #[must_use]
    pub fn new(client: Client, table: impl Into<String>, keep_ms: Millis) -> Self {
        Self { client, table: table.into(), keep_ms, meter: WriteMeter::default() }
    }

    /// Write capacity consumed through this window so far.
    #[must_use]
    pub fn consumed_writes(&self) -> ConsumedWrites {
        self.meter.totals()
    }

    /// `ADD` `calls` and `failures` to `deployment`'s bucket starting at `start`.
    pub async fn add(&self, deployment: &str, start: Millis, calls: u32, failures: u32) -> Result<(), AwsError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(keys::breaker_pk(deployment), bucket_sk(start))))
            .update_expression("ADD calls :c, failures :f SET expiresAt = :exp")
            .expression_attribute_values(":c", n(calls))
            .expression_attribute_values(":f", n(failures))
            .expression_attribute_values(":exp", n((start.max(0) + self.keep_ms) / 1000))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("UpdateItem", e))?;
        self.meter.record(out.consumed_capacity());
        Ok(())
    }

    /// `deployment`'s calls and failures summed over the buckets starting at or after `since`.
    pub async fn window(&self, deployment: &str, since: Millis) -> Result<(u32, u32), AwsError> {
        let mut total = (0u32, 0u32);
        let mut start_key: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
                .expression_attribute_names("#pk", keys::PK)
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_values(":pk", s(keys::breaker_pk(deployment)))
                .expression_attribute_values(":from", s(bucket_sk(since)))
                .expression_attribute_values(":to", s(bucket_sk(Millis::MAX)))
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|e| AwsError::dynamo("Query", e))?;
            for item in out.items() {
                let count = |name: &str| {
                    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
                };
                total.0 = total.0.saturating_add(count("calls"));
                total.1 = total.1.saturating_add(count("failures"));
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start_key = Some(k),
                _ => return Ok(total),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_sort_by_time_and_after_the_snapshot() {
        assert!(bucket_sk(999) < bucket_sk(1_000));
        assert!(bucket_sk(0).as_str() > keys::BREAKER);
        assert_eq!(bucket_sk(1_700_000_000_000), "BUCKET#001700000000000");
    }
}
