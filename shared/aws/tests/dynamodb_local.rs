//! The store conformance suite against DynamoDB Local, the most faithful emulator of DynamoDB's
//! conditional writes, `list_append`, sparse indexes and consistent reads.
//!
//! DynamoDB Local listens on every interface and has no flag against it, so it never runs in
//! this process's network: the one test here re-runs itself through
//! `scripts/emulators with-dynamodb-local`, inside a private network namespace whose only
//! interface is loopback, where DynamoDB Local runs beside it. Inside, it finds the endpoint in
//! `TASKEXEC_TEST_DDB_LOCAL_ENDPOINT` and runs every case, each on a fresh table. If the
//! namespace or DynamoDB Local cannot be had (`unshare` needs root), the test fails.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::workload::{T0, answer, attempt, claim, noise, task, text};
use taskexec_aws::{ConsumedWrites, DynamoLimiter, LimiterSettings};
use taskexec_core::ports::{FinishRequest, LimitKey, LimiterStore, Outcome, TaskStore};

const ENDPOINT_VAR: &str = "TASKEXEC_TEST_DDB_LOCAL_ENDPOINT";

macro_rules! run_cases {
    ($endpoint:expr; $($case:ident),* $(,)?) => {{
        let mut ran = 0;
        $(
            eprintln!("dynamodb-local: {}", stringify!($case));
            let store = common::fresh_store_on(common::dynamo_client_at($endpoint)).await;
            // Boxed: 38 cases inlined into one future overflow the test thread's stack.
            Box::pin(taskexec_core::conformance::$case(store)).await;
            ran += 1;
        )*
        ran
    }};
}

async fn all_cases(endpoint: &str) -> usize {
    // Every case of the suite (the one list, in taskexec-core), plus the audit-trail case this
    // store's budget allows (it keeps transition events, not deferral notes).
    let ran = taskexec_core::__conformance_cases!(run_cases! { endpoint });
    let raced = taskexec_core::__conformance_concurrency_cases!(run_cases! { endpoint });
    ran + raced + run_cases!(endpoint; transition_events_are_per_task_in_order)
}

/// The writes of 10 successful tasks submitted in one request, step by step as DynamoDB Local
/// bills them: the request (journal entry, payloads, states, the run counters' ADD), its settle
/// after the send (`mark_sent`), the claims and the finishes; then a second request of the same
/// run, whose counter ADDs leave the index of active runs alone once the run's counter items
/// are marked (`SET activeShard` to the value it has writes no index entry).
async fn successful_task_writes(endpoint: &str, prompt: String) -> Vec<(&'static str, ConsumedWrites)> {
    use taskexec_core::ports::DeliveryBuilder;
    let store = common::fresh_store_on(common::dynamo_client_at(endpoint)).await;
    let mut steps = Vec::new();
    let mut before = store.consumed_writes();
    let mut step = |name, now: ConsumedWrites| {
        let delta = ConsumedWrites {
            table: now.table - before.table,
            indexes: now.indexes - before.indexes,
            rejected: now.rejected - before.rejected,
        };
        steps.push((name, delta));
        before = now;
    };
    let run = "7c1e4b2a-9d3f-4a8e-b6c5-1f2e3d4c5b6a";
    let ids: Vec<String> = (0..10).map(|i| format!("3f2a9c4e-8b1d-4e6f-9a7c-2d5e8f1b3c{i:02}")).collect();
    let records: Vec<_> = ids.iter().map(|id| task(id, run, prompt.clone())).collect();
    let mut builder = DeliveryBuilder::default();
    let deliveries: Vec<_> = records.iter().map(|r| builder.of_task(&r.task, r.run_id(), r.submitted_at)).collect();
    store.submit(records).await.unwrap();
    step("submit 10", store.consumed_writes());
    store.mark_sent(&deliveries).await.unwrap();
    step("settle 10", store.consumed_writes());
    let mut running = Vec::new();
    for id in &ids {
        running.push(claim(&store, id, T0 + 40, 300_000).await);
    }
    step("claim 10", store.consumed_writes());
    for (id, running) in ids.iter().zip(running) {
        let finish = FinishRequest {
            task_id: id.clone(),
            epoch: running.epoch,
            outcome: Outcome::Completed(answer(&running)),
            attempt: 1,
            throttles: 0,
            record: Some(attempt(&running)),
            now: T0 + 900,
        };
        store.finish(finish).await.unwrap();
    }
    step("finish 10", store.consumed_writes());
    // The counter ADD of a request goes to one of the run's 4 counter items, each of which joins
    // the active index at its first ADD: after these 8 requests every one has.
    for i in 0..8 {
        store.submit(vec![task(&format!("more-{i}"), run, "hi".into())]).await.unwrap();
    }
    step("submit 8 more", store.consumed_writes());
    for i in 0..4 {
        store.submit(vec![task(&format!("again-{i}"), run, "hi".into())]).await.unwrap();
    }
    step("submit 4 more", store.consumed_writes());
    steps
}

/// Limiters of several "containers" racing for one key (DynamoDB Local's transactions are
/// atomic, unlike moto's): together they never hold more than the limit, and after every release
/// the counter is back to zero.
async fn racing_limiters_stay_under_the_limit(endpoint: &str) {
    let client = common::dynamo_client_at(endpoint);
    let table = common::unique_name("limits");
    taskexec_aws::create_table(&client, &table).await.unwrap();
    let key = LimitKey::Deployment("sim".into());
    let settings =
        LimiterSettings { chunk: 2, lease: std::time::Duration::from_secs(600), ..LimiterSettings::default() };
    let limiters: Vec<_> = (0..4)
        .map(|i| Arc::new(DynamoLimiter::new(client.clone(), table.clone(), format!("c{i}"), settings.clone())))
        .collect();
    let mut racers = Vec::new();
    for limiter in &limiters {
        for _ in 0..4 {
            let (limiter, key) = (limiter.clone(), key.clone());
            racers.push(tokio::spawn(async move { limiter.try_acquire(&key, 5).await.unwrap() }));
        }
    }
    let mut granted = 0;
    for racer in racers {
        granted += u32::from(racer.await.unwrap());
    }
    let total = limiters[0].leased_total(&key).await.unwrap();
    println!("DynamoDB Local, 16 racing acquires under a limit of 5: {granted} granted, {total} leased");
    assert!((1..=5).contains(&granted), "{granted} permits granted under a limit of 5");
    assert!(total <= 5 && total >= i64::from(granted), "counter {total}, granted {granted}");
    for limiter in &limiters {
        for _ in 0..limiter.in_use(&key).await.unwrap() {
            limiter.release(&key).await.unwrap();
        }
    }
    assert_eq!(limiters[0].leased_total(&key).await.unwrap(), 0);
}

/// Write units the limiter costs per task as Lambda uses it: one container, chunk 8, six
/// invocations each running a batch of 10 tasks and ending idle (everything given back).
async fn limiter_writes_per_task(endpoint: &str) -> ConsumedWrites {
    let client = common::dynamo_client_at(endpoint);
    let table = common::unique_name("limits");
    taskexec_aws::create_table(&client, &table).await.unwrap();
    let key = LimitKey::Deployment("sim".into());
    let limiter = DynamoLimiter::new(client, table, "c0", LimiterSettings::default());
    for _ in 0..6 {
        for _ in 0..10 {
            assert!(limiter.try_acquire(&key, 100).await.unwrap());
        }
        for _ in 0..10 {
            limiter.release(&key).await.unwrap();
        }
        assert_eq!(limiter.leased_total(&key).await.unwrap(), 0);
    }
    limiter.consumed_writes()
}

/// Inside the namespace: the suite, then the write budget as DynamoDB Local bills it.
async fn inside(endpoint: &str) {
    racing_limiters_stay_under_the_limit(endpoint).await;
    let w = limiter_writes_per_task(endpoint).await;
    // 3 transactions of 2 small items per batch (2 leases, 1 give-back). DynamoDB Local reports
    // 1 WCU per transactional item write; DynamoDB bills 2, so 1.2 WCU per task there.
    println!("DynamoDB Local, limiter, chunk 8, 6 batches of 10 tasks: {w:?}, {} WCU per task", w.table / 60.0);
    assert_eq!(w.rejected, 0);
    assert!(w.table <= 6.0 * 3.0 * 2.0, "{w:?}");
    assert_eq!(all_cases(endpoint).await, 39);
    for (name, prompt, budget) in [("English-like", text(1024, 1), 5.0), ("random-letter", noise(1024), 6.0)] {
        let steps = successful_task_writes(endpoint, prompt).await;
        let (ten, more) = steps.split_at(4);
        let table: f64 = ten.iter().map(|(_, w)| w.table).sum::<f64>() / 10.0;
        let indexes: f64 = ten.iter().map(|(_, w)| w.indexes).sum::<f64>() / 10.0;
        println!(
            "DynamoDB Local, 1 KB {name} prompt and answer, a request of 10: {steps:?} → per task table {table} WCU, \
             indexes {indexes} WCU"
        );
        // Per task: payload, state, claim 1 each, the completion with a 1 KB answer 2 (the
        // table's 5, or 6 for an incompressible prompt); per request: journal put 1 + unsent
        // insert 1, counters' ADD 1 + active insert 1 (a counter item's first ADD only), settle
        // 1 + unsent delete 1. The small tasks of the goal are measured by tests/cost.rs.
        assert!(table <= budget + 0.3, "{steps:?}");
        assert!(indexes <= 0.3, "{steps:?}");
        assert!(more[0].1.indexes <= 8.0 + 3.0, "{more:?}");
        assert_eq!(more[1].1.indexes, 4.0, "only the unsent inserts: the active run costs no index write");
        assert!(steps.iter().all(|(_, w)| w.rejected == 0));
    }
}

#[test]
fn conformance_on_dynamodb_local() {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        // The suite's cases are large futures in a debug build; a test thread's 2 MB stack is
        // not always enough for them, so they run on a thread with room.
        let suite = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_stack_size(16 << 20)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(Box::pin(inside(&endpoint)));
            })
            .expect("a thread for the suite");
        if let Err(panic) = suite.join() {
            std::panic::resume_unwind(panic);
        }
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let me = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("bash")
        .arg(root.join("scripts/emulators"))
        .args(["with-dynamodb-local", "--"])
        .arg(me)
        .args(["conformance_on_dynamodb_local", "--exact", "--nocapture"])
        .status()
        .expect("cannot run scripts/emulators (bash missing?)");
    assert!(status.success(), "the conformance suite on DynamoDB Local failed (output above)");
}
