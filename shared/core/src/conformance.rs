//! The behavioural suite every store adapter runs (in-memory, SQLite, DynamoDB): one suite, many
//! backends. Each case is a public `async fn` that takes a fresh store and asserts one rule of
//! the contract written on [`TaskStore`], [`ControlStore`] and [`BreakerStore`];
//! [`conformance_tests!`](crate::conformance_tests) expands to one `#[tokio::test]` per case, so
//! each case reports on its own. Stores take `now` as an argument, so no case reads a clock or
//! sleeps.
//!
//! Compiled only with the `conformance` feature, which adapter crates enable in their
//! dev-dependencies:
//!
//! ```text
//! // tests/conformance.rs of an adapter crate (needs tokio as a dev-dependency)
//! taskexec_core::conformance_tests!(|| async { MyStore::default() });
//! // a store that keeps less than everything (see `Capabilities`)
//! taskexec_core::conformance_tests!(|| async { MyStore::default() }, capabilities = MyStore);
//! ```

mod cancel;
mod claim;
mod concurrency;
mod finish;
mod queries;
mod submit;

pub use cancel::*;
pub use claim::*;
pub use concurrency::*;
pub use finish::*;
pub use queries::*;
pub use submit::*;

use std::collections::BTreeMap;

use crate::error::{ErrorClass, TaskError};
use crate::ports::{BreakerStore, ClaimOutcome, ClaimRequest, ControlStore, FinishRequest, Outcome, TaskStore};
use crate::task::{AttemptRecord, BenchmarkTask, TaskParameters, TaskPriority, TaskRecord, TaskResult, Usage};
use crate::time::Millis;

/// Every store port the suite exercises, as one bound.
///
/// ```
/// use taskexec_core::conformance::Store;
/// use taskexec_core::memory::MemoryStore;
/// fn takes_any_store(_: impl Store) {}
/// takes_any_store(MemoryStore::default());
/// ```
pub trait Store: TaskStore + ControlStore + BreakerStore {}

impl<S: TaskStore + ControlStore + BreakerStore> Store for S {}

/// What a store keeps beyond the transitions themselves, for the cases that depend on it.
///
/// ```
/// use taskexec_core::conformance::{Capabilities, Everything};
/// struct LogsNotes;
/// impl Capabilities for LogsNotes {
///     const FULL_AUDIT_TRAIL: bool = false;
/// }
/// assert!(Everything::FULL_AUDIT_TRAIL && !LogsNotes::FULL_AUDIT_TRAIL);
/// ```
pub trait Capabilities {
    /// Whether [`TaskStore::events`] returns every event, the notes written with
    /// [`TaskStore::note`] (deferrals) and event details included. A store whose write budget
    /// keeps only transition events (kind, time, epoch) and logs the rest says `false`.
    const FULL_AUDIT_TRAIL: bool;
}

/// Every capability: what the in-memory and SQLite stores keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Everything;

impl Capabilities for Everything {
    const FULL_AUDIT_TRAIL: bool = true;
}

/// What a test factory may return: a store, or a store with a guard that must outlive it (a
/// temporary directory holding a database file, a table to delete afterwards).
///
/// ```
/// use taskexec_core::conformance::Fixture;
/// use taskexec_core::memory::MemoryStore;
/// let (_store, ()) = MemoryStore::default().split();
/// let (_store, guard) = (MemoryStore::default(), "kept until the case ends").split();
/// assert_eq!(guard, "kept until the case ends");
/// ```
pub trait Fixture {
    /// The store under test.
    type Store: Store;
    /// Kept alive until the case ends.
    type Guard;
    /// The store and its guard.
    fn split(self) -> (Self::Store, Self::Guard);
}

impl<S: Store> Fixture for S {
    type Store = S;
    type Guard = ();
    fn split(self) -> (S, ()) {
        (self, ())
    }
}

impl<S: Store, G> Fixture for (S, G) {
    type Store = S;
    type Guard = G;
    fn split(self) -> (S, G) {
        self
    }
}

/// Calls `$callback! { ARGS ; case, case, … }` with every case of the suite that needs no
/// capability and no concurrency, in order: the one list of cases, used by
/// [`conformance_tests!`](crate::conformance_tests) and by runners that must run every case in one
/// process (DynamoDB Local's namespace).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($($callback:ident)::+ ! { $($args:tt)* }) => {
        $($callback)::+ ! {
            $($args)* ;
            submit_creates_queued_task,
            submit_same_content_is_duplicate_and_changes_nothing,
            submit_different_content_is_conflict,
            submit_batch_keeps_order_of_mixed_outcomes,
            claim_takes_queued_task,
            claim_unknown_task_is_not_found,
            claim_finished_task_is_terminal,
            claim_before_retry_is_due_is_not_due,
            claim_with_live_lease_is_held,
            claim_after_lease_expiry_reclaims,
            claim_keeps_first_started_at,
            claim_respects_global_pause,
            claim_respects_run_pause,
            renew_lease_is_fenced,
            finish_completed_records_result,
            finish_retry_schedules_next_attempt,
            finish_failed_records_error,
            finish_failed_with_reason_dead_letters,
            finish_released_requeues_without_outcome,
            finish_with_stale_epoch_changes_nothing,
            finish_after_cancel_is_stale,
            second_finish_is_stale,
            fenced_writes_to_unknown_task_are_stale,
            cancel_queued_task,
            cancel_running_task,
            cancel_finished_or_unknown_task,
            redrive_requeues_failed_task,
            redrive_other_states_is_stale,
            release_all_leases_requeues_running_tasks,
            pending_lists_unfinished_tasks,
            summary_counts_per_group,
            summary_without_run_covers_all_runs,
            run_tasks_in_submission_order,
            control_pause_and_resume,
            control_limits_set_replace_and_remove,
            breaker_snapshot_round_trips
        }
    };
}

/// Like [`__conformance_cases!`] for the cases that race concurrent writers against one task:
/// they need a backend whose conditional writes are atomic under concurrency (every real store;
/// not every emulator).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_concurrency_cases {
    ($($callback:ident)::+ ! { $($args:tt)* }) => {
        $($callback)::+ ! {
            $($args)* ;
            concurrent_claims_claim_once,
            concurrent_finishes_apply_once
        }
    };
}

/// Expands to one `#[tokio::test]` per conformance case, each running against a fresh store from
/// `factory`: an expression that evaluates to an async closure or fn returning a [`Fixture`]
/// (a store, or `(store, guard)`). The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) among its dev-dependencies.
///
/// ```text
/// taskexec_core::conformance_tests!(|| async { MemoryStore::default() });
/// ```
///
/// A store whose budget forbids part of the contract names a [`Capabilities`] type; the cases
/// that depend on a capability it lacks then assert the weaker rule it does keep:
///
/// ```text
/// taskexec_core::conformance_tests!(|| async { MyStore::default() }, capabilities = MyStore);
/// ```
///
/// Against an emulator whose conditional writes are not atomic under concurrency (moto), add
/// `without_concurrency`: the two concurrency cases are then not generated at all (not skipped),
/// and must run against a faithful backend instead (DynamoDB Local, for the DynamoDB store).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!($factory, capabilities = $crate::conformance::Everything);
    };
    ($factory:expr, capabilities = $caps:ty) => {
        $crate::conformance_tests!($factory, capabilities = $caps, without_concurrency);
        $crate::__conformance_concurrency_cases!($crate::conformance_tests! { @cases $factory });
    };
    ($factory:expr, capabilities = $caps:ty, without_concurrency) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn events_are_per_task_in_order() {
            let (store, _guard) = $crate::conformance::Fixture::split(($factory)().await);
            if <$caps as $crate::conformance::Capabilities>::FULL_AUDIT_TRAIL {
                $crate::conformance::events_are_per_task_in_order(store).await;
            } else {
                $crate::conformance::transition_events_are_per_task_in_order(store).await;
            }
        }
        $crate::__conformance_cases!($crate::conformance_tests! { @cases $factory });
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $crate::conformance::Fixture::split(($factory)().await);
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// The time every case starts at.
pub(crate) const T0: Millis = 1_700_000_000_000;

/// Lease length used by the cases' claims.
pub(crate) const LEASE_MS: Millis = 30_000;

/// A plain task of `run` on deployment `sim`, model `m`, submitted at [`T0`].
pub(crate) fn task(id: &str, run: &str) -> TaskRecord {
    task_for(id, run, "sim", "m", T0)
}

/// A task of `run` on `provider`/`model`, submitted at `at`.
pub(crate) fn task_for(id: &str, run: &str, provider: &str, model: &str, at: Millis) -> TaskRecord {
    let task = BenchmarkTask {
        id: id.to_owned(),
        provider_id: provider.to_owned(),
        model_id: model.to_owned(),
        prompt: format!("prompt of {id}"),
        parameters: TaskParameters::default(),
        priority: TaskPriority::Normal,
        timeout: None,
        deadline: None,
        metadata: BTreeMap::new(),
        run_id: Some(run.to_owned()),
        fail_fast: false,
    };
    TaskRecord::new(task, at)
}

/// The stored record of a task that must exist.
pub(crate) async fn get<S: Store>(store: &S, id: &str) -> TaskRecord {
    store.get(id).await.expect("get").unwrap_or_else(|| panic!("task {id} is missing"))
}

/// The kinds of a task's audit events, oldest first.
pub(crate) async fn kinds<S: Store>(store: &S, id: &str) -> Vec<String> {
    store.events(id).await.expect("events").into_iter().map(|e| e.kind).collect()
}

/// Submit records that must all be new.
pub(crate) async fn submit_new<S: Store>(store: &S, records: Vec<TaskRecord>) {
    let n = records.len();
    let out = store.submit(records).await.expect("submit");
    assert_eq!(out, vec![crate::ports::SubmitOutcome::Created; n]);
}

/// A claim by `w1` at `now` with a lease of [`LEASE_MS`].
pub(crate) fn claim_at(id: &str, now: Millis) -> ClaimRequest {
    ClaimRequest { task_id: id.to_owned(), owner: "w1".to_owned(), now, lease_until: now + LEASE_MS }
}

/// Claim a task that must be claimable, returning the record as claimed.
pub(crate) async fn claimed<S: Store>(store: &S, id: &str, now: Millis) -> TaskRecord {
    match store.claim(claim_at(id, now)).await.expect("claim") {
        ClaimOutcome::Claimed(record) => *record,
        other => panic!("claim of {id} at {now}: expected Claimed, got {other:?}"),
    }
}

/// A finish of the claimed `record`'s attempt with its own counters and one history entry.
pub(crate) fn finish_of(record: &TaskRecord, outcome: Outcome, now: Millis) -> FinishRequest {
    FinishRequest {
        task_id: record.task.id.clone(),
        epoch: record.epoch,
        outcome,
        attempt: record.attempt,
        throttles: record.throttles,
        record: Some(attempt_record(record.attempt, record.epoch)),
        now,
    }
}

/// A history entry.
pub(crate) fn attempt_record(attempt: u32, epoch: u64) -> AttemptRecord {
    AttemptRecord {
        attempt,
        epoch,
        started_at: "2023-11-14T22:13:20.000Z".to_owned(),
        latency_ms: 12.5,
        ttft_ms: None,
        queue_wait_ms: 3,
        outcome: "ok".to_owned(),
        provider_status: Some(200),
        deployment: None,
        model: None,
    }
}

/// A result with the given latency.
pub(crate) fn result(latency_ms: f64) -> TaskResult {
    TaskResult {
        text: "answer".to_owned(),
        finish_reason: "stop".to_owned(),
        usage: Usage { input_tokens: 10, output_tokens: 20, cached_tokens: None },
        deployment: "sim".to_owned(),
        model: "m".to_owned(),
        request_id: Some("req-1".to_owned()),
        latency_ms,
        ttft_ms: Some(1.5),
        attempts: vec![attempt_record(1, 1)],
        raw_response: None,
    }
}

/// A completed outcome.
pub(crate) fn completed(latency_ms: f64) -> Outcome {
    Outcome::Completed(result(latency_ms))
}

/// An error of `class`.
pub(crate) fn error(class: ErrorClass) -> TaskError {
    TaskError::new(class, format!("{} failure", class.as_str()))
}

/// A failure without dead-lettering.
pub(crate) fn failed(class: ErrorClass) -> Outcome {
    Outcome::Failed { error: error(class), dead_letter_reason: None }
}
