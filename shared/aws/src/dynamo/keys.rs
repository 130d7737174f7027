//! The key layout of the one table: partition and sort keys of every item kind, the shard of a
//! task in the two indexes, and the sortable keys those indexes order by. Everything here is pure.
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | task state | `TASK#<id>` | `STATE` |
//! | task payload | `TASK#<id>` | `PAYLOAD` |
//! | control state | `CONTROL` | `CONTROL` |
//! | breaker snapshot | `BREAKER#<deployment>` | `BREAKER` |
//! | breaker outcome bucket | `BREAKER#<deployment>` | `BUCKET#<start ms, 15 digits>` |
//! | run counters | `RUN#<run>` | `COUNTERS#<n>` |
//! | limiter counter | `LIMIT#<key>` | `LIMIT` |
//! | limiter lease of a holder | `LIMIT#<key>` | `HOLDER#<holder>` |

use taskexec_core::time::Millis;

/// Partition key attribute.
pub const PK: &str = "pk";
/// Sort key attribute.
pub const SK: &str = "sk";
/// Sort key of a task's state item.
pub const STATE: &str = "STATE";
/// Sort key of a task's payload item.
pub const PAYLOAD: &str = "PAYLOAD";
/// Key (both halves) of the control item.
pub const CONTROL: &str = "CONTROL";
/// Sort key of a breaker item.
pub const BREAKER: &str = "BREAKER";

/// The sparse index of unfinished tasks: `openShard` (S) / `dueKey` (N).
pub const OPEN_INDEX: &str = "open";
/// The table's TTL attribute (seconds since the epoch): finished tasks' items, outcome buckets,
/// limiter leases and poison records expire by it.
pub const EXPIRES_AT: &str = "expiresAt";
/// Partition attribute of [`OPEN_INDEX`]; present only while a task is queued or running.
pub const OPEN_SHARD: &str = "openShard";
/// Sort attribute of [`OPEN_INDEX`]: see [`due_key`].
pub const DUE_KEY: &str = "dueKey";
/// The index of every task of a run: `runShard` (S) / `runSeq` (S), keys only.
pub const RUN_INDEX: &str = "run";
/// Partition attribute of [`RUN_INDEX`].
pub const RUN_SHARD: &str = "runShard";
/// Sort attribute of [`RUN_INDEX`]: see [`run_seq`].
pub const RUN_SEQ: &str = "runSeq";

/// Bits of a [`due_key`] that hold the tie-breaking hash of the task id.
const TIE_BITS: u32 = 20;

/// Partition key of a task's items.
#[must_use]
pub fn task_pk(task_id: &str) -> String {
    format!("TASK#{task_id}")
}

/// The task id of a `TASK#<id>` partition key.
#[must_use]
pub fn task_id_of(pk: &str) -> Option<&str> {
    pk.strip_prefix("TASK#")
}

/// Partition key of a deployment's breaker item.
#[must_use]
pub fn breaker_pk(deployment: &str) -> String {
    format!("BREAKER#{deployment}")
}

/// Partition key of a run's counter items.
#[must_use]
pub fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

/// Sort key of counter shard `n` of a run.
#[must_use]
pub fn counter_sk(n: u16) -> String {
    format!("COUNTERS#{n}")
}

/// FNV-1a, 64 bits: a stable hash of a task id (the shards must not move between releases,
/// so `std`'s randomly seeded hasher will not do).
#[must_use]
pub fn id_hash(task_id: &str) -> u64 {
    task_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The open-index partition of a task, one of `shards`.
#[must_use]
pub fn open_shard(task_id: &str, shards: u16) -> String {
    format!("OPEN#{}", id_hash(task_id) % u64::from(shards.max(1)))
}

/// The open-index partition `n`.
#[must_use]
pub fn open_shard_n(n: u16) -> String {
    format!("OPEN#{n}")
}

/// The run-index partition of a task of `run_id`, one of `shards`.
#[must_use]
pub fn run_shard(run_id: &str, task_id: &str, shards: u16) -> String {
    run_shard_n(run_id, ((id_hash(task_id) >> 32) % u64::from(shards.max(1))) as u16)
}

/// The run-index partition `n` of `run_id`.
#[must_use]
pub fn run_shard_n(run_id: &str, n: u16) -> String {
    format!("{run_id}#{n}")
}

/// Sort key of a task in the run index: submission time, then a per-process sequence, so a
/// run's tasks list in submission order (ties across processes in one millisecond are
/// arbitrary).
#[must_use]
pub fn run_seq(submitted_at: Millis, seq: u64) -> String {
    format!("{:015}#{seq:016}", submitted_at.max(0))
}

/// Sort key of a task in the open index: when it is due (ms) in the high bits, 20 bits of the
/// id's hash below, so keys of tasks due in the same millisecond rarely tie and one `u64`
/// serves as the paging cursor of [`crate::DynamoStore`]'s `pending`. Good until the year 2527.
#[must_use]
pub fn due_key(ready_at: Millis, task_id: &str) -> u64 {
    let ms = u64::try_from(ready_at.max(0)).unwrap_or(0);
    (ms << TIE_BITS) | ((id_hash(task_id) >> 8) & ((1 << TIE_BITS) - 1))
}

/// The due time of a [`due_key`].
#[must_use]
pub fn ready_at_of(due_key: u64) -> Millis {
    Millis::try_from(due_key >> TIE_BITS).unwrap_or(Millis::MAX)
}

/// The largest [`due_key`] of any task due at or before `now`.
#[must_use]
pub fn last_due_key(now: Millis) -> u64 {
    let ms = u64::try_from(now.max(0)).unwrap_or(0);
    (ms << TIE_BITS) | ((1 << TIE_BITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_order_by_time_and_round_trip() {
        let t = 1_700_000_000_000;
        assert!(due_key(t, "zzz") < due_key(t + 1, "aaa"));
        assert_eq!(ready_at_of(due_key(t, "abc")), t);
        assert!(due_key(t, "abc") <= last_due_key(t));
        assert!(last_due_key(t) < due_key(t + 1, "abc"));
        assert_eq!(ready_at_of(due_key(17_000_000_000_000, "x")), 17_000_000_000_000);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(id_hash("t1"), id_hash("t1"));
        assert_eq!(open_shard("t1", 8), open_shard("t1", 8));
        let shards: std::collections::BTreeSet<_> = (0..200).map(|i| open_shard(&format!("t{i}"), 4)).collect();
        assert_eq!(shards.len(), 4);
        assert!(run_shard("r1", "t1", 4).starts_with("r1#"));
        assert_eq!(open_shard("t1", 0), "OPEN#0");
    }

    #[test]
    fn run_seq_sorts_by_time_then_sequence() {
        assert!(run_seq(5, 9) < run_seq(5, 10));
        assert!(run_seq(5, 99) < run_seq(6, 0));
        assert_eq!(task_id_of(&task_pk("a#b")), Some("a#b"));
    }
}
