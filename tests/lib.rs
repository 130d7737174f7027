//! Cross-crate tests of the serverless shape live in `tests/`. This library holds what several
//! of them use to measure what the AWS shape costs: SDK interceptors that count every AWS request
//! by operation ([`Calls`]) and add up the capacity DynamoDB reports for each ([`Capacity`]).
//! Both attach to a client's config (`config().to_builder().interceptor(..)`), so they see the
//! calls of every component built on that client, with no change to the code measured.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextMut,
    BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation as op;
use aws_sdk_dynamodb::types::{ConsumedCapacity, ReturnConsumedCapacity};

/// Requests sent, by `Service.Operation` (`DynamoDB.GetItem`, `SQS.ReceiveMessage`), read from the
/// JSON protocol's `X-Amz-Target` header: counted per request sent, SDK retries included, as AWS
/// bills them.
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<Mutex<BTreeMap<String, u64>>>);

impl Calls {
    /// The counts so far.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("poisoned").clone()
    }

    /// Requests made since `before` to `service` (`"DynamoDB"`, `"SQS"`): their total and the
    /// count of each operation.
    #[must_use]
    pub fn since(&self, before: &BTreeMap<String, u64>, service: &str) -> (u64, Vec<(String, u64)>) {
        let made: Vec<(String, u64)> = self
            .snapshot()
            .into_iter()
            .map(|(op, n)| {
                let earlier = before.get(&op).copied().unwrap_or(0);
                (op, n - earlier)
            })
            .filter(|(op, n)| *n > 0 && op.split('.').next() == Some(service))
            .collect();
        (made.iter().map(|(_, n)| n).sum(), made)
    }
}

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "Calls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or("unknown");
        let op = match target.split_once('.') {
            Some((service, op)) if service.starts_with("DynamoDB") => format!("DynamoDB.{op}"),
            Some((service, op)) if service.starts_with("AmazonSQS") => format!("SQS.{op}"),
            _ => target.to_owned(),
        };
        *self.0.lock().expect("poisoned").entry(op).or_default() += 1;
        Ok(())
    }
}

/// Capacity units DynamoDB reported, split into reads and writes, each into the table's and the
/// indexes'.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Units {
    /// Read units of the table.
    pub read_table: f64,
    /// Read units of indexes (queries of a GSI).
    pub read_indexes: f64,
    /// Write units of the table.
    pub write_table: f64,
    /// Write units of indexes (GSI entries written or deleted).
    pub write_indexes: f64,
}

impl Units {
    /// All read units.
    #[must_use]
    pub fn reads(&self) -> f64 {
        self.read_table + self.read_indexes
    }

    /// All write units.
    #[must_use]
    pub fn writes(&self) -> f64 {
        self.write_table + self.write_indexes
    }

    fn add(&mut self, consumed: &ConsumedCapacity, write: bool) {
        let indexes: f64 = consumed
            .global_secondary_indexes
            .iter()
            .flatten()
            .chain(consumed.local_secondary_indexes.iter().flatten())
            .filter_map(|(_, c)| c.capacity_units)
            .sum();
        let total = consumed.capacity_units.unwrap_or(0.0);
        let table = consumed.table.as_ref().and_then(|c| c.capacity_units).unwrap_or(total - indexes);
        if write {
            self.write_table += table;
            self.write_indexes += indexes;
        } else {
            self.read_table += table;
            self.read_indexes += indexes;
        }
    }
}

/// Asks DynamoDB for the consumed capacity of every request (`ReturnConsumedCapacity=INDEXES`,
/// set on the request whatever the code asked) and adds up what it reports. A request refused by
/// its condition reports nothing (DynamoDB returns no capacity with the error), so conditional
/// failures are not in the sum. Emulators differ: DynamoDB Local reports capacity, moto does not.
#[derive(Debug, Clone, Default)]
pub struct Capacity(Arc<Mutex<Units>>);

impl Capacity {
    /// The units so far.
    #[must_use]
    pub fn units(&self) -> Units {
        *self.0.lock().expect("poisoned")
    }
}

/// Sets `return_consumed_capacity` on an input of one of the listed operations.
macro_rules! ask_capacity {
    ($input:expr; $($module:ident :: $ty:ident),* $(,)?) => {
        $(
            if let Some(input) = $input.downcast_mut::<op::$module::$ty>() {
                input.return_consumed_capacity = Some(ReturnConsumedCapacity::Indexes);
            }
        )*
    };
}

impl Intercept for Capacity {
    fn name(&self) -> &'static str {
        "Capacity"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input_mut();
        ask_capacity!(input;
            get_item::GetItemInput, batch_get_item::BatchGetItemInput, query::QueryInput, scan::ScanInput,
            put_item::PutItemInput, update_item::UpdateItemInput, delete_item::DeleteItemInput,
            batch_write_item::BatchWriteItemInput, transact_write_items::TransactWriteItemsInput,
            transact_get_items::TransactGetItemsInput,
        );
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(output) = context.output_or_error() else { return Ok(()) };
        let mut units = self.0.lock().expect("poisoned");
        let mut add = |consumed: Option<&ConsumedCapacity>, write: bool| {
            if let Some(consumed) = consumed {
                units.add(consumed, write);
            }
        };
        if let Some(o) = output.downcast_ref::<op::get_item::GetItemOutput>() {
            add(o.consumed_capacity(), false);
        } else if let Some(o) = output.downcast_ref::<op::batch_get_item::BatchGetItemOutput>() {
            o.consumed_capacity().iter().for_each(|c| add(Some(c), false));
        } else if let Some(o) = output.downcast_ref::<op::query::QueryOutput>() {
            add(o.consumed_capacity(), false);
        } else if let Some(o) = output.downcast_ref::<op::scan::ScanOutput>() {
            add(o.consumed_capacity(), false);
        } else if let Some(o) = output.downcast_ref::<op::transact_get_items::TransactGetItemsOutput>() {
            o.consumed_capacity().iter().for_each(|c| add(Some(c), false));
        } else if let Some(o) = output.downcast_ref::<op::put_item::PutItemOutput>() {
            add(o.consumed_capacity(), true);
        } else if let Some(o) = output.downcast_ref::<op::update_item::UpdateItemOutput>() {
            add(o.consumed_capacity(), true);
        } else if let Some(o) = output.downcast_ref::<op::delete_item::DeleteItemOutput>() {
            add(o.consumed_capacity(), true);
        } else if let Some(o) = output.downcast_ref::<op::batch_write_item::BatchWriteItemOutput>() {
            o.consumed_capacity().iter().for_each(|c| add(Some(c), true));
        } else if let Some(o) = output.downcast_ref::<op::transact_write_items::TransactWriteItemsOutput>() {
            o.consumed_capacity().iter().for_each(|c| add(Some(c), true));
        }
        Ok(())
    }
}
