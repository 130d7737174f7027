//! Cross-crate tests of the serverless shape live in `tests/`. This library holds what several
//! of them use to measure what the AWS shape costs: SDK interceptors that count every AWS request
//! by operation ([`Calls`]) and add up the capacity DynamoDB reports for each ([`Capacity`]).
//! Both attach to a client's config (`config().to_builder().interceptor(..)`), so they see the
//! calls of every component built on that client, with no change to the code measured.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// set on the request whatever the code asked) and adds up what successful responses report:
/// a request refused by its condition is not in the sum (the SDK's error carries no capacity).
/// Emulators differ: DynamoDB Local reports capacity, moto does not.
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

/// Adds the capacity an output of one of the listed operations reports (one `ConsumedCapacity`
/// or one per table: `consumed_capacity()` gives an `Option` or a slice; both iterate).
macro_rules! add_capacity {
    ($units:expr, $output:expr; read: $($r:ident :: $rt:ident),*; write: $($w:ident :: $wt:ident),* $(,)?) => {
        $(
            if let Some(o) = $output.downcast_ref::<op::$r::$rt>() {
                o.consumed_capacity().into_iter().for_each(|c| $units.add(c, false));
            }
        )*
        $(
            if let Some(o) = $output.downcast_ref::<op::$w::$wt>() {
                o.consumed_capacity().into_iter().for_each(|c| $units.add(c, true));
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
        add_capacity!(units, output;
            read: get_item::GetItemOutput, batch_get_item::BatchGetItemOutput, query::QueryOutput,
                scan::ScanOutput, transact_get_items::TransactGetItemsOutput;
            write: put_item::PutItemOutput, update_item::UpdateItemOutput, delete_item::DeleteItemOutput,
                batch_write_item::BatchWriteItemOutput, transact_write_items::TransactWriteItemsOutput,
        );
        Ok(())
    }
}

/// Wait until `done` holds, checking it every 50 ms, for at most `limit`; panics naming `what`
/// (and the last check's detail) when it never does. The one way these tests wait for the
/// emulator-backed flow to reach a state: they poll what they can observe, never sleep a fixed time.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let detail = match done().await {
            Ok(()) => return,
            Err(detail) => detail,
        };
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}: {detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
