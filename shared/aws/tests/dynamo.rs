//! [`DynamoStore`] beyond the shared suite, on the local AWS emulator: the write budget of a
//! successful task measured on the items really written, the submission journal and its unsent
//! mark, `overdue`, run counters, and a submission that died between its two puts.

mod common;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use common::workload::{T0, answer, attempt, claim, noise, task, text};
use taskexec_aws::{DynamoStore, RunCounts, item_size, write_units};
use taskexec_core::error::{ErrorClass, TaskError};
use taskexec_core::ports::{FinishRequest, Outcome, SubmitOutcome, TaskStore};

use taskexec_core::task::TaskState;

type Item = HashMap<String, AttributeValue>;

async fn raw(store: &DynamoStore, id: &str, sk: &str) -> Item {
    let key = HashMap::from([
        ("pk".to_owned(), AttributeValue::S(format!("TASK#{id}"))),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ]);
    let out = store.client().get_item().table_name(&store.config().table).set_key(Some(key)).send().await.unwrap();
    out.item.unwrap_or_default()
}

/// Table and index write units of one successful task, measured on the items written.
async fn write_budget(prompt: String) -> (usize, usize, Vec<(&'static str, usize)>) {
    let store = common::fresh_store().await;
    let id = "3f2a9c4e-8b1d-4e6f-9a7c-2d5e8f1b3c6a";
    store.submit(vec![task(id, "7c1e4b2a-9d3f-4a8e-b6c5-1f2e3d4c5b6a", prompt)]).await.unwrap();
    let (payload, submitted) = (raw(&store, id, "PAYLOAD").await, raw(&store, id, "STATE").await);
    let running = claim(&store, id, T0 + 40, 300_000).await;
    let claimed = raw(&store, id, "STATE").await;
    let result = answer(&running);
    let finish = FinishRequest {
        task_id: id.into(),
        epoch: running.epoch,
        outcome: Outcome::Completed(result),
        attempt: 1,
        throttles: 0,
        record: Some(attempt(&running)),
        now: T0 + 900,
    };
    store.finish(finish).await.unwrap();
    let completed = raw(&store, id, "STATE").await;
    let size = |item: &Item| item_size(item);
    let steps = vec![
        ("submit: payload put", write_units(size(&payload))),
        ("submit: state put", write_units(size(&submitted))),
        ("claim: state update", write_units(size(&submitted).max(size(&claimed)))),
        ("finish: state update with result", write_units(size(&claimed).max(size(&completed)))),
    ];
    let table: usize = steps.iter().map(|(_, w)| w).sum();
    for item in [&payload, &submitted, &claimed, &completed] {
        assert!(!item.contains_key("unsent") && !item.contains_key("activeShard"), "no task item is indexed");
    }
    println!(
        "sizes: payload {} B, state {} B submitted, {} B claimed, {} B completed",
        size(&payload),
        size(&submitted),
        size(&claimed),
        size(&completed)
    );
    (table, 0, steps)
}

#[tokio::test]
async fn a_successful_task_costs_at_most_five_table_write_units() {
    let (table, indexes, steps) = write_budget(text(1024, 1)).await;
    println!("1 KB English-like prompt and answer: {steps:?} → table {table} WCU + index {indexes} WCU");
    assert!(table <= 5, "{steps:?}");
    assert_eq!(indexes, 0, "no per-task index: the journal is per request");

    let (table, indexes, steps) = write_budget(noise(1024)).await;
    println!("1 KB random-letter prompt: {steps:?} → table {table} WCU + index {indexes} WCU");
    assert!(table <= 6, "{steps:?}");
}

#[tokio::test]
async fn overdue_finds_expired_leases_and_due_retries_only() {
    let store = common::fresh_store().await;
    let ids = ["live", "expired", "retry-due", "retry-later", "fresh", "done"];
    store.submit(ids.iter().map(|id| task(id, "r1", format!("prompt {id}"))).collect()).await.unwrap();
    claim(&store, "live", T0 + 10, 10_000).await;
    claim(&store, "expired", T0 + 10, 100).await;
    for (id, next) in [("retry-due", T0 + 500), ("retry-later", T0 + 50_000)] {
        let running = claim(&store, id, T0 + 10, 100).await;
        let outcome = Outcome::Retry { error: TaskError::new(ErrorClass::Transient, "503"), next_attempt_at: next };
        let request = FinishRequest {
            task_id: id.into(),
            epoch: 1,
            outcome,
            attempt: 1,
            throttles: 0,
            record: Some(attempt(&running)),
            now: T0 + 20,
        };
        store.finish(request).await.unwrap();
    }
    let done = claim(&store, "done", T0 + 10, 100).await;
    let request = FinishRequest {
        task_id: "done".into(),
        epoch: done.epoch,
        outcome: Outcome::Released,
        attempt: 0,
        throttles: 0,
        record: None,
        now: T0 + 20,
    };
    store.finish(request).await.unwrap();
    store.cancel("done", T0 + 30).await.unwrap();

    let mut overdue: Vec<_> =
        store.overdue(T0 + 1_000, 100).await.unwrap().into_iter().map(|o| (o.task.task_id, o.state)).collect();
    overdue.sort_by(|a, b| a.0.cmp(&b.0));

    let expected = [("expired", TaskState::Running), ("fresh", TaskState::Queued), ("retry-due", TaskState::Queued)];
    assert_eq!(overdue, expected.map(|(id, state)| (id.to_owned(), state)));
    assert_eq!(store.overdue(T0 + 1_000, 2).await.unwrap().len(), 2, "limit");
    let (pending, _) = store.pending(0, 100).await.unwrap();
    assert_eq!(pending.len(), 5, "the cancelled task is not pending");
}

/// The journal entries of the table, by `pk/sk`.
async fn journal(store: &DynamoStore) -> Vec<Item> {
    let out = store
        .client()
        .scan()
        .table_name(&store.config().table)
        .filter_expression("begins_with(pk, :j)")
        .expression_attribute_values(":j", AttributeValue::S("JOURNAL#".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items.unwrap_or_default()
}

/// A request of ten tasks (UUID ids) is one journal entry of one write unit, marked unsent until
/// `mark_sent` is given the request's deliveries; a request of 250 is three entries.
#[tokio::test]
async fn a_request_is_journaled_in_one_write_and_settled_by_mark_sent() {
    use taskexec_core::ports::DeliveryBuilder;
    let store = common::fresh_store().await;
    let ids: Vec<String> = (0..10).map(|i| format!("3f2a9c4e-8b1d-4e6f-9a7c-2d5e8f1b3c{i:02}")).collect();
    let records: Vec<_> = ids.iter().map(|id| task(id, "7c1e4b2a-9d3f-4a8e-b6c5-1f2e3d4c5b6a", text(100, 1))).collect();
    let mut builder = DeliveryBuilder::default();
    let deliveries: Vec<_> = records.iter().map(|r| builder.of_task(&r.task, r.run_id(), r.submitted_at)).collect();
    store.submit(records).await.unwrap();
    let entries = journal(&store).await;
    assert_eq!(entries.len(), 1);
    println!("journal entry of 10 tasks: {} B", item_size(&entries[0]));
    assert_eq!(write_units(item_size(&entries[0])), 1);
    assert!(entries[0].contains_key("unsent"));
    store.mark_sent(&deliveries).await.unwrap();
    assert!(!journal(&store).await[0].contains_key("unsent"), "settled");

    let many: Vec<_> = (0..250).map(|i| task(&format!("m-{i}"), "run-many", format!("p{i}"))).collect();
    store.submit(many).await.unwrap();
    let runs = store.run_tasks("run-many").await.unwrap();
    assert_eq!(runs.len(), 250);
    assert!(runs.iter().enumerate().all(|(i, r)| r.task.id == format!("m-{i}")), "submission order");
    assert_eq!(journal(&store).await.len(), 4);
}

#[tokio::test]
async fn run_counters_add_up_over_shards() {
    let store = common::fresh_store().await;
    for _ in 0..5 {
        store.add_run_counts("r1", &RunCounts { submitted: 2, completed: 1, ..RunCounts::default() }).await.unwrap();
    }
    store.add_run_counts("r2", &RunCounts { failed: 1, ..RunCounts::default() }).await.unwrap();
    store.add_run_counts("r1", &RunCounts::default()).await.unwrap();

    assert_eq!(
        store.run_counts("r1").await.unwrap(),
        RunCounts { submitted: 10, completed: 5, ..RunCounts::default() }
    );
    assert_eq!(store.run_counts("r2").await.unwrap().failed, 1);
    assert_eq!(store.run_counts("nope").await.unwrap(), RunCounts::default());
}

#[tokio::test]
async fn a_submission_that_died_after_its_payload_is_completed_by_a_retry() {
    let store = common::fresh_store().await;
    store.submit(vec![task("t1", "r1", "hello".into())]).await.unwrap();
    let key = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("TASK#t1".into())),
        ("sk".to_owned(), AttributeValue::S("STATE".into())),
    ]);
    store.client().delete_item().table_name(&store.config().table).set_key(Some(key)).send().await.unwrap();
    assert_eq!(store.get("t1").await.unwrap(), None, "a payload alone is not a task");

    let mut other = task("t1", "r1", "another prompt".into());
    other.submitted_at = T0 + 1;
    assert_eq!(store.submit(vec![other]).await.unwrap(), [SubmitOutcome::Conflict]);
    assert_eq!(store.submit(vec![task("t1", "r1", "hello".into())]).await.unwrap(), [SubmitOutcome::Created]);
    assert_eq!(store.get("t1").await.unwrap().unwrap().task.prompt, "hello");
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// Finished tasks expire (DynamoDB TTL on `expiresAt`, seconds): the state item 30 days after
/// the end by default, the payload (written once) 14 + 30 days after submission; unfinished and
/// redriven tasks never carry one on their state.
#[tokio::test]
async fn finished_tasks_expire_after_the_retention_and_unfinished_ones_never() {
    const DAY_S: i64 = 24 * 3600;
    let store = common::fresh_store().await;
    let id = "ttl-1";
    store.submit(vec![task(id, "run-ttl", text(200, 1))]).await.unwrap();
    assert_eq!(number(&raw(&store, id, "PAYLOAD").await, "expiresAt"), Some(T0 / 1000 + 44 * DAY_S));
    assert_eq!(number(&raw(&store, id, "STATE").await, "expiresAt"), None, "queued: kept");
    let running = claim(&store, id, T0 + 40, 300_000).await;
    let error = TaskError::new(ErrorClass::Permanent, "bad request");
    let failed = FinishRequest {
        task_id: id.into(),
        epoch: running.epoch,
        outcome: Outcome::Failed { error, dead_letter_reason: None },
        attempt: 1,
        throttles: 0,
        record: None,
        now: T0 + 1_000,
    };
    store.finish(failed).await.unwrap();
    assert_eq!(number(&raw(&store, id, "STATE").await, "expiresAt"), Some((T0 + 1_000) / 1000 + 30 * DAY_S));
    store.redrive(id, T0 + 2_000).await.unwrap();
    assert_eq!(number(&raw(&store, id, "STATE").await, "expiresAt"), None, "redriven: unfinished again, kept");
    store.cancel(id, T0 + 3_000).await.unwrap();
    assert_eq!(number(&raw(&store, id, "STATE").await, "expiresAt"), Some((T0 + 3_000) / 1000 + 30 * DAY_S));

    let forever = common::fresh_store_with(|c| c.with_task_retention(None)).await;
    forever.submit(vec![task("ttl-2", "run-ttl", text(200, 2))]).await.unwrap();
    forever.cancel("ttl-2", T0 + 3_000).await.unwrap();
    assert_eq!(number(&raw(&forever, "ttl-2", "PAYLOAD").await, "expiresAt"), None);
    assert_eq!(number(&raw(&forever, "ttl-2", "STATE").await, "expiresAt"), None);
}

/// Claims check a control state at most `control_max_age` old: read once per interval per
/// process, not once per claim. A pause committed by this process is seen at once; one committed
/// by another process within the interval is not (the documented staleness bound), and with a
/// zero interval every claim reads it.
#[tokio::test]
async fn claims_check_the_control_state_at_most_max_age_old() {
    use taskexec_core::ports::{ClaimOutcome, ClaimRequest, ControlStore, PauseScope};
    let hour = std::time::Duration::from_secs(3600);
    let cached = common::fresh_store_with(|c| c.with_control_max_age(hour)).await;
    let table = cached.config().table.clone();
    let other =
        DynamoStore::new(cached.client().clone(), taskexec_aws::DynamoConfig::new(&table).with_unsent_shards(4));
    let fresh = DynamoStore::new(
        cached.client().clone(),
        taskexec_aws::DynamoConfig::new(&table).with_unsent_shards(4).with_control_max_age(std::time::Duration::ZERO),
    );
    let ids = ["c-1", "c-2", "c-3", "c-4"];
    cached.submit(ids.iter().map(|id| task(id, "run-c", text(100, 3))).collect()).await.unwrap();
    let request =
        |id: &str| ClaimRequest { task_id: id.into(), owner: "w".into(), now: T0 + 10, lease_until: T0 + 60_000 };
    assert!(matches!(cached.claim(request("c-1")).await.unwrap(), ClaimOutcome::Claimed(_)), "reads: not paused");
    other.set_paused(PauseScope::Global, true).await.unwrap();
    assert!(
        matches!(cached.claim(request("c-2")).await.unwrap(), ClaimOutcome::Claimed(_)),
        "another process's pause is not seen within the interval"
    );
    assert_eq!(fresh.claim(request("c-3")).await.unwrap(), ClaimOutcome::Paused, "a zero interval reads every claim");
    cached.set_paused(PauseScope::Global, true).await.unwrap();
    assert_eq!(cached.claim(request("c-4")).await.unwrap(), ClaimOutcome::Paused, "its own pause is seen at once");
}
