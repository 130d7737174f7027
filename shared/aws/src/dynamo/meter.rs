//! The write meter: every write asks DynamoDB for its consumed capacity (`INDEXES`) and adds it
//! up, table and index writes apart, so benchmarks and tests read what a workload really cost
//! (DynamoDB Local reports it; moto does not, and then the meter stays at zero). A conditional
//! write that fails its condition is billed too, but DynamoDB reports no capacity with the
//! error: the meter counts those in `rejected` instead.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::types::ConsumedCapacity;

/// Write capacity consumed through one store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConsumedWrites {
    /// Write units billed on the table.
    pub table: f64,
    /// Write units billed on the global secondary indexes.
    pub indexes: f64,
    /// Conditional writes rejected (each billed at least 1 WCU, not reported by DynamoDB).
    pub rejected: u64,
}

/// Thousandths of a unit, so the sums stay exact in atomics.
#[derive(Debug, Default)]
pub struct WriteMeter {
    table: AtomicU64,
    indexes: AtomicU64,
    rejected: AtomicU64,
}

fn milli(units: f64) -> u64 {
    (units * 1000.0).round() as u64
}

impl WriteMeter {
    /// Add what a successful write reported.
    pub fn record(&self, consumed: Option<&ConsumedCapacity>) {
        let Some(c) = consumed else { return };
        let table = c.table().and_then(|t| t.capacity_units()).or(c.capacity_units()).unwrap_or(0.0);
        let indexes: f64 =
            c.global_secondary_indexes().into_iter().flatten().filter_map(|(_, i)| i.capacity_units()).sum();
        self.table.fetch_add(milli(table), Ordering::Relaxed);
        self.indexes.fetch_add(milli(indexes), Ordering::Relaxed);
    }

    /// Count a write rejected by its condition.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn totals(&self) -> ConsumedWrites {
        let units = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1000.0;
        ConsumedWrites {
            table: units(&self.table),
            indexes: units(&self.indexes),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}
