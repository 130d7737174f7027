//! The key layout of the one table: partition and sort keys of every item kind, the shards of
//! the two sparse indexes, and the sortable keys (journal entries by submission time; tasks by
//! due time in `pending`'s cursor). Everything here is pure.
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | task state | `TASK#<id>` | `STATE` |
//! | task payload | `TASK#<id>` | `PAYLOAD` |
//! | control state | `CONTROL` | `CONTROL` |
//! | breaker snapshot | `BREAKER#<deployment>` | `BREAKER` |
//! | breaker outcome bucket | `BREAKER#<deployment>` | `BUCKET#<start ms, 15 digits>` |
//! | run counters | `RUN#<run>` | `COUNTERS#<n>` |
//! | submission journal entry | `JOURNAL#<n>#<run>` | `<submittedAt, 15 digits>#<hash of its request's ids>#<chunk>` |
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

/// The table's TTL attribute (seconds since the epoch): finished tasks' items, submission
/// journal entries, outcome buckets, limiter leases and poison records expire by it.
pub const EXPIRES_AT: &str = "expiresAt";
/// The sparse index of submission journal entries whose messages may not have been sent:
/// `unsent` (S) / `sk` (S, the entry's submission time first), keys only.
pub const UNSENT_INDEX: &str = "unsent";
/// Partition attribute of [`UNSENT_INDEX`]: present on a journal entry from its write until
/// its tasks' messages are known to be sent.
pub const UNSENT: &str = "unsent";
/// The sparse index of runs that may have unfinished tasks: `activeShard` (S), keys only,
/// carried by run counter items.
pub const ACTIVE_INDEX: &str = "active";
/// Partition attribute of [`ACTIVE_INDEX`].
pub const ACTIVE_SHARD: &str = "activeShard";
/// Partitions of [`ACTIVE_INDEX`] (few: one entry per counter item of an active run).
pub const ACTIVE_SHARDS: u16 = 4;

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

/// The unsent-index partition `n`.
#[must_use]
pub fn unsent_shard_n(n: u16) -> String {
    format!("UNSENT#{n}")
}

/// The unsent-index partition of a journal entry whose sort key is `sk`, one of `shards`.
#[must_use]
pub fn unsent_shard(sk: &str, shards: u16) -> String {
    unsent_shard_n((id_hash(sk) % u64::from(shards.max(1))) as u16)
}

/// The active-index partition of a run.
#[must_use]
pub fn active_shard(run_id: &str) -> String {
    format!("ACTIVE#{}", id_hash(run_id) % u64::from(ACTIVE_SHARDS))
}

/// The active-index partition `n`.
#[must_use]
pub fn active_shard_n(n: u16) -> String {
    format!("ACTIVE#{n}")
}

/// Partition key of journal shard `n` of a run: `JOURNAL#<n>#<run>` (the shard first, so no
/// run id can make it another run's key or a counter item's).
#[must_use]
pub fn journal_pk(run_id: &str, n: u16) -> String {
    format!("JOURNAL#{n}#{run_id}")
}

/// The run of a counter item's partition key (`RUN#<run>`).
#[must_use]
pub fn run_of_pk(pk: &str) -> Option<&str> {
    pk.strip_prefix("RUN#")
}

/// Sort key of a journal entry: its submission time (15 digits, so entries sort by it), a hash
/// of the task ids of its request and run (so two requests of one run in one millisecond get
/// distinct entries, and the same request written again gets the same ones), then the chunk's
/// place in the request.
#[must_use]
pub fn journal_sk(submitted_at: Millis, ids_hash: u64, chunk: usize) -> String {
    format!("{:015}#{ids_hash:016x}#{chunk:05}", submitted_at.max(0))
}

/// The largest journal sort key of an entry submitted at or before `at`.
#[must_use]
pub fn last_journal_sk(at: Millis) -> String {
    format!("{:015}#~", at.max(0))
}

/// The due key of a task (computed, not stored): when it is due (ms) in the high bits, 20 bits of
/// the id's hash below, so keys of tasks due in the same millisecond rarely tie and one `u64`
/// serves as the paging cursor of [`crate::DynamoStore`]'s `pending`. Good until the year 2527.
#[must_use]
pub fn due_key(ready_at: Millis, task_id: &str) -> u64 {
    let ms = u64::try_from(ready_at.max(0)).unwrap_or(0);
    (ms << TIE_BITS) | ((id_hash(task_id) >> 8) & ((1 << TIE_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_order_by_time() {
        let t = 1_700_000_000_000;
        assert!(due_key(t, "zzz") < due_key(t + 1, "aaa"));
        assert_eq!(due_key(t, "abc") >> TIE_BITS, t as u64);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(id_hash("t1"), id_hash("t1"));
        let shards: std::collections::BTreeSet<_> = (0..200).map(|i| unsent_shard(&format!("t{i}"), 4)).collect();
        assert_eq!(shards.len(), 4);
        assert_eq!(unsent_shard("t1", 0), "UNSENT#0");
        assert!(active_shard("r1").starts_with("ACTIVE#"));
    }

    #[test]
    fn journal_keys_sort_by_time() {
        assert!(journal_sk(5, u64::MAX, 9) < journal_sk(6, 0, 0));
        assert!(journal_sk(5, 7, 9) < journal_sk(5, 7, 10));
        assert!(journal_sk(5, u64::MAX, 99_999) <= last_journal_sk(5));
        assert!(last_journal_sk(5) < journal_sk(6, 0, 0));
        assert_ne!(journal_pk("a#1", 2), journal_pk("a", 1), "no run id makes another run's key");
        assert_eq!(run_of_pk(&run_pk("r")), Some("r"));
        assert_eq!(task_id_of(&task_pk("a#b")), Some("a#b"));
    }
}
