//! A deployment's quota shared by several workers of the AWS shape through the emulator
//! (LocalStack's DynamoDB and SQS, started by `common`): three backends, each with its own
//! engine, `DynamoLimiter` (holder = its owner id) and event-source poller, on one table and one
//! set of queues, run tasks against one local OpenAI-compatible server that enforces its own
//! quota (429 `rate_limit_exceeded` beyond it, with `retry-after`). With the fleet's quota
//! ledger (the default), every task finishes, at most 1 % of calls are refused and the busiest
//! minute uses at least 90 % of the token quota, never more than all of it; the same three
//! workers each counting the quota alone (`quota_slot: None`, the behaviour before the ledger)
//! draw many refusals. Both variants run at once, in real time (a minute and a half: the quota
//! is per minute).
//!
//! The server does not report its quota in `x-ratelimit-*` headers (as Bedrock, which reports
//! none). Where a provider does, each worker's windows follow the remaining count its answers
//! report, and a refusal holds the worker until the reset: against this server with headers,
//! the three workers alone drew only 2 to 4 refusals in 80 calls (one per worker at the
//! minute's edge), the ledger none.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use taskexec_aws::{AwsBackend, BackendSettings, DynamoConfig, LimiterSettings};
use taskexec_core::memory::CountingSink;
use taskexec_core::ports::{DeliveryBuilder, TaskStore, WorkQueue};
use taskexec_core::task::{BenchmarkTask, TaskRecord};
use taskexec_core::time::{Clock, SystemClock};
use taskexec_lambda::poller::{PollerSettings, PollerStats};
use taskexec_lambda::worker::WorkerSettings;
use taskexec_mockserver::{Latency, MockConfig, MockQuota, MockServer, Stats, TOKENS_PER_CALL};
use taskexec_providers::Deployments;
use taskexec_providers::settings::RunConfig;
use tokio_util::sync::CancellationToken;

/// The server's quota: 64 calls' worth of tokens a minute, so that each 2 s slot of the ledger
/// holds exactly two calls (1,024 tokens over 32 slots); requests do not bind.
const QUOTA: MockQuota = MockQuota { rpm: 1_000, tpm: 64 * TOKENS_PER_CALL };
/// Tasks: a little more than a minute's budget, so the busiest minute is a saturated one.
const TASKS: usize = 80;
/// Workers (Lambda containers) sharing the quota.
const WORKERS: usize = 3;
/// How long an answer takes.
const LATENCY: Duration = Duration::from_millis(200);

/// 48 characters (12 estimated tokens) and `maxTokens` 4: each task reserves the 16 tokens
/// the server reports using, so the test measures the ledger, not the estimate.
fn task(run: &str, i: usize) -> TaskRecord {
    let prompt = format!("{:<48}", format!("question {i}"));
    let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
        "id": format!("{run}-{i}"), "providerId": "mock", "modelId": "m", "prompt": prompt, "runId": run,
        "parameters": {"maxTokens": 4}, "timeout": 120_000
    }))
    .unwrap();
    TaskRecord::new(task, SystemClock.now())
}

/// `WORKERS` backends on one fresh table and topology, their deployment `mock` at `server`
/// with the quota configured; `shared`: whether the quota goes through the fleet's ledger.
async fn workers(server: &MockServer, shared: bool) -> Vec<AwsBackend<Arc<CountingSink>>> {
    let (dynamo, sqs) = (common::dynamo_client(), common::sqs_client());
    let table = common::unique_name("quota");
    taskexec_aws::create_table(&dynamo, &table).await.unwrap();
    let topology = common::fresh_topology(&sqs).await;
    let config = RunConfig::parse(&format!(
        "[engine]\nseed = 1\nlease_ms = 30000\n[retry]\nthrottle_budget = 100\n\
         [deployments.mock]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\nrpm = {}\ntpm = {}\n",
        server.base_url(),
        QUOTA.rpm,
        QUOTA.tpm
    ))
    .unwrap();
    let limiter =
        LimiterSettings { quota_slot: shared.then_some(Duration::from_secs(2)), ..LimiterSettings::default() };
    (0..WORKERS)
        .map(|i| {
            let settings = BackendSettings {
                table: DynamoConfig::new(table.clone()).with_unsent_shards(4),
                topology: topology.clone(),
                engine: config.engine_config(format!("worker-{i}")),
                worker: WorkerSettings::default(),
                limiter: limiter.clone(),
            };
            let deployments = Deployments::from_config(&config.deployments, |_| None).unwrap();
            AwsBackend::new(&dynamo, &sqs, settings, deployments, Arc::new(CountingSink::default()))
        })
        .collect()
}

/// What a variant's run showed.
struct Run {
    stats: Stats,
    finished: u64,
    seconds: f64,
    /// Write units and refused writes of the limiters (the quota ledger: no concurrency limit
    /// is configured).
    writes: (f64, u64),
}

/// Submit `TASKS` tasks, run them on `WORKERS` workers until every one is finished (or four
/// minutes pass), and say what the server saw.
async fn run(shared: bool) -> Run {
    let server = MockServer::start(
        MockConfig {
            latency: Latency::Fixed(LATENCY),
            quota: Some(QUOTA),
            quota_headers: false,
            ..MockConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    let backends = workers(&server, shared).await;
    let run = common::unique_name(if shared { "shared" } else { "alone" });
    let records: Vec<TaskRecord> = (0..TASKS).map(|i| task(&run, i)).collect();
    let mut builder = DeliveryBuilder::default();
    let deliveries: Vec<_> = records.iter().map(|r| builder.of_task(&r.task, &run, r.submitted_at)).collect();
    let store = backends[0].store.clone();
    store.submit(records).await.unwrap();
    backends[0].queue.send(deliveries.iter().map(|d| (d.clone(), Duration::ZERO)).collect()).await.unwrap();
    store.mark_sent(&deliveries).await.unwrap();

    let started = Instant::now();
    let stop = CancellationToken::new();
    let settings = PollerSettings::default();
    let pollers: Vec<_> =
        backends.iter().map(|b| b.poll(settings.clone(), Arc::new(PollerStats::default()), stop.clone())).collect();
    let mut finished = 0;
    while started.elapsed() < Duration::from_secs(240) {
        let groups = store.summary(Some(&run)).await.unwrap();
        finished = groups.iter().map(|g| g.completed + g.failed_by_class.values().sum::<u64>()).sum();
        if finished == TASKS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for poller in pollers {
        poller.await.unwrap();
    }
    let writes = backends.iter().fold((0.0, 0), |(units, refused), b| {
        let w = b.worker.executor().ports().limiter.consumed_writes();
        (units + w.table, refused + w.rejected)
    });
    Run { stats: server.stats(), finished, seconds, writes }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_a_quota_through_the_ledger_and_draw_many_429s_without_it() {
    let (shared, alone) = tokio::join!(run(true), run(false));

    let calls = shared.stats.total_calls;
    let used = shared.stats.busiest_minute();
    let (units, refused) = shared.writes;
    eprintln!(
        "ledger: {} tasks finished in {:.0} s, {calls} calls, {} refused, {used} of {} tokens in the busiest minute, \
         ledger writes {units} WCU ({:.2} per task) and {refused} refused; without: {} tasks in {:.0} s, {} calls, \
         {} refused",
        shared.finished,
        shared.seconds,
        shared.stats.refused,
        QUOTA.tpm,
        units / TASKS as f64,
        alone.finished,
        alone.seconds,
        alone.stats.total_calls,
        alone.stats.refused
    );
    assert_eq!(shared.finished, TASKS as u64, "every task finished");
    assert_eq!(shared.stats.admitted_at_ms.len(), TASKS, "every task answered once");
    assert!(shared.stats.refused * 100 <= calls, "{} of {calls} calls refused (at most 1 %)", shared.stats.refused);
    assert!(used <= QUOTA.tpm, "{used} tokens in one minute, over the quota of {}", QUOTA.tpm);
    assert!(used * 10 >= QUOTA.tpm * 9, "{used} of {} tokens used in the busiest minute (at least 90 %)", QUOTA.tpm);

    assert_eq!(alone.finished, TASKS as u64, "every task finished without the ledger too");
    assert!(alone.stats.refused >= 10, "each worker counting the quota alone: only {} refusals", alone.stats.refused);
}

/// The ledger's conditional writes on the emulator's DynamoDB: leases racing from four
/// containers never put more than a slot's cap in it, a give-back returns what it names, and a
/// give-back to a slot without an item (gone by TTL) is refused instead of creating a negative
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_leases_stay_within_a_slots_cap_and_give_backs_return_them() {
    use taskexec_aws::DynamoLimiter;
    use taskexec_core::fleet::Amounts;
    use taskexec_core::ports::{LimitKey, LimiterStore};

    let client = common::dynamo_client();
    let table = common::unique_name("ledger");
    taskexec_aws::create_table(&client, &table).await.unwrap();
    let ledgers: Vec<_> = (0..4)
        .map(|i| {
            Arc::new(DynamoLimiter::new(client.clone(), table.clone(), format!("c{i}"), LimiterSettings::default()))
        })
        .collect();
    let key = LimitKey::Deployment("mock".into());
    let caps = Amounts { requests: 5, tokens: 500, input: u64::MAX, output: u64::MAX };
    let chunk = Amounts { requests: 1, tokens: 100, ..Amounts::default() };
    let mut racers = Vec::new();
    for ledger in &ledgers {
        for _ in 0..4 {
            let (ledger, key) = (ledger.clone(), key.clone());
            racers.push(tokio::spawn(async move { ledger.lease_quota(&key, 7, chunk, caps).await.unwrap() }));
        }
    }
    let mut granted = 0;
    for racer in racers {
        granted += u64::from(racer.await.unwrap());
    }
    let leased = ledgers[0].quota_leased(&key, 7).await.unwrap();
    assert_eq!(granted, 5, "16 racing leases of a fifth of the cap: {granted} granted");
    assert_eq!(leased, Amounts { requests: 5, tokens: 500, ..Amounts::default() });
    // Another slot is another item.
    assert!(ledgers[1].lease_quota(&key, 8, chunk, caps).await.unwrap());
    ledgers[2].give_back_quota(&key, 7, Amounts { requests: 1, tokens: 60, ..Amounts::default() }).await.unwrap();
    assert_eq!(ledgers[3].quota_leased(&key, 7).await.unwrap().tokens, 440);
    let fits = Amounts { requests: 1, tokens: 60, ..Amounts::default() };
    assert!(ledgers[3].lease_quota(&key, 7, fits, caps).await.unwrap(), "what was given back can be leased");
    assert!(!ledgers[3].lease_quota(&key, 7, fits, caps).await.unwrap(), "the cap holds");
    ledgers[0].give_back_quota(&key, 99, chunk).await.unwrap();
    assert_eq!(ledgers[0].quota_leased(&key, 99).await.unwrap(), Amounts::default(), "no negative count");
    let writes = ledgers.iter().map(|l| l.consumed_writes()).fold((0.0, 0), |(u, r), w| (u + w.table, r + w.rejected));
    eprintln!("ledger writes: {} WCU written, {} refused", writes.0, writes.1);
}
