//! The embedded runner against a provider that enforces its own quota, on tokio's paused clock
//! (ten virtual minutes run in well under a second): a provider that counts requests and tokens
//! per minute in a sliding window and answers 429 beyond it, with the rate-limit headers real
//! providers send (remaining, reset) and a `Retry-After`. With the deployment's quota configured,
//! almost no call is refused and the token budget is used; without it, many are refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use taskexec_core::engine::{Engine, EngineConfig, Ports};
use taskexec_core::error::ProviderError;
use taskexec_core::memory::{CountingSink, MemoryLimiter, MemoryQueue, MemoryStore};
use taskexec_core::ports::TaskStore;
use taskexec_core::provider::{LimitKind, Provider, ProviderRequest, ProviderResponse, RateLimit, RateLimits};
use taskexec_core::rate::Quota;
use taskexec_core::retry::RetryPolicy;
use taskexec_core::runner::{Runner, RunnerConfig};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState, Usage};
use taskexec_core::time::{Clock, Millis, TokioClock};
use tokio_util::sync::CancellationToken;

const RPM: u64 = 1_000;
const TPM: u64 = 10_000;
const MINUTE: Millis = 60_000;

/// A provider with a quota of `RPM` requests and `TPM` tokens per sliding minute. A call's
/// tokens are its prompt (4 characters a token) and an answer of 60 % of its `maxTokens`.
struct QuotaServer {
    clock: TokioClock,
    log: Mutex<VecDeque<(Millis, u64)>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    tokens: AtomicU64,
    /// Whether answers report the quota (remaining, reset), as OpenAI does; Bedrock does not.
    reports: bool,
    /// Every accepted call: when, and its tokens.
    admitted: Mutex<Vec<(Millis, u64)>>,
    /// The quota: requests and tokens per minute.
    rpm: u64,
    tpm: u64,
}

impl QuotaServer {
    fn new(clock: TokioClock) -> Self {
        Self {
            clock,
            log: Mutex::default(),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            reports: true,
            admitted: Mutex::default(),
            rpm: RPM,
            tpm: TPM,
        }
    }

    /// The most tokens accepted in any minute.
    fn busiest_minute(&self) -> u64 {
        let admitted = self.admitted.lock().unwrap();
        let in_minute = |start: Millis| admitted.iter().filter(move |(t, _)| *t >= start && *t < start + MINUTE);
        admitted.iter().map(|(start, _)| in_minute(*start).map(|(_, n)| n).sum()).max().unwrap_or(0)
    }

    fn limits(&self, requests: u64, tokens: u64, reset: Duration) -> RateLimits {
        if !self.reports {
            return RateLimits(Vec::new());
        }
        let limit = |kind, limit: u64, used: u64| RateLimit {
            kind,
            limit: Some(limit),
            remaining: Some(limit.saturating_sub(used)),
            reset: Some(reset),
        };
        RateLimits(vec![limit(LimitKind::Requests, self.rpm, requests), limit(LimitKind::Tokens, self.tpm, tokens)])
    }
}

impl Provider for QuotaServer {
    async fn call(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let prompt: usize = request.messages.iter().map(|m| m.content.chars().count()).sum();
        let input = (prompt as u64).div_ceil(4);
        let output = u64::from(request.max_tokens.unwrap_or(100)) * 6 / 10;
        let now = self.clock.now();
        let (requests, tokens, reset) = {
            let mut log = self.log.lock().unwrap();
            while log.front().is_some_and(|(at, _)| at + MINUTE <= now) {
                log.pop_front();
            }
            let used: u64 = log.iter().map(|(_, n)| n).sum();
            let reset = log.front().map_or(Duration::ZERO, |(at, _)| Duration::from_millis((at + MINUTE - now) as u64));
            if log.len() as u64 >= self.rpm || used + input + output > self.tpm {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(ProviderError::RateLimited {
                    retry_after: Some(reset.max(Duration::from_secs(1))),
                    status: Some(429),
                    code: Some("rate_limit_exceeded".into()),
                    detail: "over the tokens-per-minute quota".into(),
                    limits: self.limits(log.len() as u64, used, reset),
                });
            }
            log.push_back((now, input + output));
            self.admitted.lock().unwrap().push((now, input + output));
            (log.len() as u64, used + input + output, reset)
        };
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.tokens.fetch_add(input + output, Ordering::SeqCst);
        // The provider's latency, on tokio's paused clock (virtual time: the test does not wait).
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(ProviderResponse {
            text: "ok".into(),
            finish_reason: "stop".into(),
            usage: Usage { input_tokens: input, output_tokens: output, cached_tokens: None },
            model: request.model,
            request_id: None,
            latency: Duration::from_millis(500),
            ttft: None,
            limits: self.limits(requests, tokens, reset),
            raw: None,
        })
    }
}

struct Outcome {
    accepted: u64,
    refused: u64,
    tokens: u64,
    minutes: f64,
    completed: usize,
}

/// 400 tasks of ≈ 100 prompt tokens and `maxTokens` 200 (≈ 220 tokens each, ≈ 8.8 minutes of the
/// token quota) through a runner of 16 slots; `quota` is what the engine is told.
async fn run(quota: Option<Quota>) -> Outcome {
    let clock = TokioClock::starting_at(1_000_000);
    let server = Arc::new(QuotaServer::new(clock.clone()));
    let ports = Ports {
        store: MemoryStore::default(),
        breakers: MemoryStore::default(),
        limiter: MemoryLimiter::default(),
        metrics: Arc::new(CountingSink::default()),
        provider: server.clone(),
        clock: clock.clone(),
    };
    let mut config = EngineConfig {
        retry: RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1_000, throttle_budget: 1_000 },
        seed: Some(5),
        ..EngineConfig::default()
    };
    if let Some(quota) = quota {
        config.quotas.insert("dep".into(), quota);
    }
    let engine = Arc::new(Engine::new(ports, config));
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), clock.clone()));
    let runner_config = RunnerConfig { concurrency: 16, poll: Duration::from_millis(50), ..RunnerConfig::default() };
    let runner = Runner::new(engine, queue, runner_config);
    let prompt = "x".repeat(400);
    let records: Vec<_> = (0..400)
        .map(|i| {
            let task: BenchmarkTask = serde_json::from_str(&format!(
                r#"{{"id":"t{i}","providerId":"dep","modelId":"m","prompt":"{prompt}","runId":"run","parameters":{{"maxTokens":200}}}}"#
            ))
            .unwrap();
            TaskRecord::new(task, 1_000_000)
        })
        .collect();
    runner.engine().ports().store.submit(records).await.unwrap();
    let started = clock.now();
    runner.recover(|_| true).await.unwrap();
    runner.run(CancellationToken::new()).await.unwrap();
    let minutes = (clock.now() - started) as f64 / MINUTE as f64;
    let tasks = runner.engine().ports().store.run_tasks("run").await.unwrap();
    Outcome {
        accepted: server.accepted.load(Ordering::SeqCst),
        refused: server.refused.load(Ordering::SeqCst),
        tokens: server.tokens.load(Ordering::SeqCst),
        minutes,
        completed: tasks.iter().filter(|t| t.state == TaskState::Completed).count(),
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_quota_configured_almost_nothing_is_refused_and_the_token_budget_is_used() {
    let limited = run(Some(Quota { rpm: Some(RPM), tpm: Some(TPM), ..Quota::default() })).await;
    eprintln!(
        "quota configured: {} calls accepted, {} refused, {:.0} tokens a minute over {:.1} min",
        limited.accepted,
        limited.refused,
        limited.tokens as f64 / limited.minutes,
        limited.minutes
    );
    assert_eq!(limited.completed, 400, "every task finished");
    let calls = limited.accepted + limited.refused;
    assert!(limited.refused * 100 <= calls, "≤ 1 % of calls refused: {} of {calls}", limited.refused);
    let per_minute = limited.tokens as f64 / limited.minutes;
    assert!(per_minute >= 0.9 * TPM as f64, "{per_minute:.0} tokens a minute of {TPM} ({:.1} min)", limited.minutes);

    let unlimited = run(None).await;
    eprintln!(
        "no quota configured: {} calls accepted, {} refused, {:.0} tokens a minute over {:.1} min",
        unlimited.accepted,
        unlimited.refused,
        unlimited.tokens as f64 / unlimited.minutes,
        unlimited.minutes
    );
    let calls = unlimited.accepted + unlimited.refused;
    assert!(
        unlimited.refused * 10 >= calls,
        "without the quota many calls are refused: {} of {calls}",
        unlimited.refused
    );
}

/// `engines` engines (Lambda containers), each with its own store, queue and runner of 16
/// slots and the deployment's quota (`rpm`, `tpm`) configured, share one provider that does not
/// report its quota in headers; `ledger`: their limiters share one quota ledger (slots of 2 s).
/// Each engine runs `tasks` tasks; returns the provider and the virtual minutes.
async fn run_fleet(engines: usize, ledger: bool, (rpm, tpm): (u64, u64), tasks: usize) -> (Arc<QuotaServer>, f64) {
    let clock = TokioClock::starting_at(1_000_000);
    let server = Arc::new(QuotaServer { reports: false, rpm, tpm, ..QuotaServer::new(clock.clone()) });
    let shared = Arc::new(taskexec_core::fleet::MemoryLedger::default());
    let prompt = "x".repeat(400);
    let mut runs = Vec::new();
    for e in 0..engines {
        let limiter = if ledger {
            MemoryLimiter::with_quota_ledger(taskexec_core::fleet::DEFAULT_SLOT, shared.clone())
        } else {
            MemoryLimiter::default()
        };
        let ports = Ports {
            store: MemoryStore::default(),
            breakers: MemoryStore::default(),
            limiter,
            metrics: Arc::new(CountingSink::default()),
            provider: server.clone(),
            clock: clock.clone(),
        };
        let mut config = EngineConfig {
            retry: RetryPolicy { max_attempts: 3, base_delay_ms: 100, max_delay_ms: 1_000, throttle_budget: 1_000 },
            seed: Some(5 + e as u64),
            owner: format!("engine-{e}"),
            ..EngineConfig::default()
        };
        config.quotas.insert("dep".into(), Quota { rpm: Some(rpm), tpm: Some(tpm), ..Quota::default() });
        let engine = Arc::new(Engine::new(ports, config));
        let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), clock.clone()));
        let runner_config =
            RunnerConfig { concurrency: 16, poll: Duration::from_millis(50), ..RunnerConfig::default() };
        let runner = Runner::new(engine, queue, runner_config);
        let records: Vec<_> = (0..tasks)
            .map(|i| {
                let task: BenchmarkTask = serde_json::from_str(&format!(
                    r#"{{"id":"e{e}t{i}","providerId":"dep","modelId":"m","prompt":"{prompt}","runId":"run","parameters":{{"maxTokens":200}}}}"#
                ))
                .unwrap();
                TaskRecord::new(task, 1_000_000)
            })
            .collect();
        runner.engine().ports().store.submit(records).await.unwrap();
        runner.recover(|_| true).await.unwrap();
        runs.push(runner);
    }
    let started = clock.now();
    let all = runs.iter().map(|runner| runner.run(CancellationToken::new()));
    for result in futures::future::join_all(all).await {
        result.unwrap();
    }
    for runner in &runs {
        let tasks = runner.engine().ports().store.run_tasks("run").await.unwrap();
        assert!(tasks.iter().all(|t| t.state == TaskState::Completed), "every task finished");
    }
    (server, (clock.now() - started) as f64 / MINUTE as f64)
}

#[tokio::test(start_paused = true)]
async fn engines_sharing_a_quota_ledger_stay_within_it_and_without_it_draw_many_refusals() {
    // 100,000 tokens a minute: a 2 s slot holds 3,125, about ten calls' estimates.
    let quota = (10_000, 100_000);
    let (shared, minutes) = run_fleet(3, true, quota, 500).await;
    let (accepted, refused) = (shared.accepted.load(Ordering::SeqCst), shared.refused.load(Ordering::SeqCst));
    let busiest = shared.busiest_minute();
    eprintln!(
        "3 engines, one ledger: {accepted} calls accepted, {refused} refused over {minutes:.1} min, \
         {busiest} tokens in the busiest minute of {}",
        quota.1
    );
    assert!(refused * 100 <= accepted + refused, "≤ 1 % of calls refused: {refused} of {}", accepted + refused);
    // Calls reserve 300 tokens (100 of prompt, maxTokens 200) and use 220: the slots bound the
    // estimates, and what a call did not use serves only later calls of its engine in its slot.
    // In estimates, the busiest minute holds at least 90 % of the quota (in tokens used, 68 %;
    // the in-process windows of one engine reuse what calls did not use at any later time).
    let estimated = busiest * 300 / 220;
    assert!(estimated * 10 >= quota.1 * 9, "{estimated} tokens estimated in the busiest minute of {}", quota.1);
    assert!(estimated <= quota.1, "{estimated} tokens estimated in one minute");

    let (alone, _) = run_fleet(3, false, quota, 500).await;
    let (accepted, refused) = (alone.accepted.load(Ordering::SeqCst), alone.refused.load(Ordering::SeqCst));
    eprintln!("3 engines, each counting the quota alone: {accepted} calls accepted, {refused} refused");
    assert!(refused * 10 >= accepted + refused, "each engine alone: only {refused} of {} refused", accepted + refused);
}

#[tokio::test(start_paused = true)]
async fn a_slot_that_holds_one_calls_estimate_limits_the_ledger_to_one_call_a_slot() {
    // 10,000 tokens a minute: a 2 s slot holds 312 tokens, one estimate of 300. The fleet stays
    // within the quota with 31 calls in the busiest minute (93 % of the quota in estimates, 68 %
    // in the 220 tokens each call uses): a call's unused tokens never serve another call.
    let (server, minutes) = run_fleet(3, true, (RPM, TPM), 100).await;
    let refused = server.refused.load(Ordering::SeqCst);
    let busiest = server.busiest_minute();
    eprintln!("one estimate a slot: {busiest} tokens in the busiest minute of {TPM}, over {minutes:.1} min");
    assert_eq!(refused, 0);
    assert!((6_000..=7_000).contains(&busiest), "{busiest}");
}
