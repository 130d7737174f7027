//! A run against a local OpenAI-compatible server that enforces its own quota (requests and
//! tokens per sliding minute, 429 `rate_limit_exceeded` with `retry-after` and the
//! `x-ratelimit-*` headers beyond it), in real time: with the quota configured, every task
//! finishes, at most 1 % of calls are refused and the minute's token budget is used to at least
//! 90 %; the same run with no quota configured draws many refusals. Both runs go at once (the
//! pair takes a little over a minute: the quota is per minute).

mod common;

use std::time::Duration;

use common::{Scratch, mock};
use taskexec_mockserver::{Latency, MockConfig, MockQuota, Stats, TOKENS_PER_CALL};

/// The server's quota: 50 calls' worth of tokens a minute (requests are not the binding budget).
const QUOTA: MockQuota = MockQuota { rpm: 1_000, tpm: 50 * TOKENS_PER_CALL };
/// Tasks: the minute's budget and half as much again, so the run waits for a second window.
const TASKS: usize = 75;

/// Run `TASKS` tasks to the end against a fresh quota-enforcing server, the deployment's config
/// lines being `limits`; returns the exit code and what the server saw.
async fn run(limits: &str) -> (i32, String, Stats) {
    let server = mock(MockConfig {
        latency: Latency::Fixed(Duration::from_millis(50)),
        quota: Some(QUOTA),
        ..MockConfig::default()
    })
    .await;
    let s = Scratch::new();
    let config = format!(
        "[engine]\nconcurrency = 8\nseed = 1\n[retry]\nthrottle_budget = 100\n\
         [deployments.mock]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n{limits}\n",
        server.base_url()
    );
    std::fs::write(s.path("tasks.toml"), config).unwrap();
    let lines: Vec<String> = (0..TASKS)
        .map(|i| {
            format!(r#"{{"id":"t{i}","providerId":"mock","modelId":"m","prompt":"question {i}","parameters":{{"maxTokens":16}},"timeout":120000}}"#)
        })
        .collect();
    let file = s.write("tasks.jsonl", &lines.join("\n"));
    let (code, _, stderr) = s.run(&["run", file.to_str().unwrap(), "--quiet"]).await;
    (code, stderr, server.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_quota_configured_a_run_uses_it_without_429s_and_without_it_draws_many() {
    let limited = format!("rpm = {}\ntpm = {}", QUOTA.rpm, QUOTA.tpm);
    let ((code, stderr, with), (unlimited_code, unlimited_stderr, without)) = tokio::join!(run(&limited), run(""));

    assert_eq!(code, 0, "{stderr}");
    assert_eq!(with.admitted_at_ms.len(), TASKS, "every task answered once");
    let calls = with.total_calls;
    assert!(with.refused * 100 <= calls, "{} of {calls} calls refused (at most 1 %)", with.refused);
    let used = with.busiest_minute();
    assert!(used * 10 >= QUOTA.tpm * 9, "{used} of {} tokens used in the busiest minute (at least 90 %)", QUOTA.tpm);

    assert_eq!(unlimited_code, 0, "{unlimited_stderr}");
    assert_eq!(without.admitted_at_ms.len(), TASKS);
    assert!(without.refused >= 10, "without the quota configured: only {} refusals", without.refused);
    eprintln!(
        "quota configured: {} calls, {} refused, {used} of {} tokens in the busiest minute; \
         not configured: {} calls, {} refused",
        calls, with.refused, QUOTA.tpm, without.total_calls, without.refused
    );
}
