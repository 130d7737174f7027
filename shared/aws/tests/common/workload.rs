//! A realistic task for budget measurements: a 1 KB prompt and a 1 KB answer, English-like or
//! incompressible, and the claim and result of its one attempt.

use taskexec_aws::DynamoStore;
use taskexec_core::ports::{ClaimOutcome, ClaimRequest, TaskStore};
use taskexec_core::task::{AttemptRecord, BenchmarkTask, TaskRecord, TaskResult, Usage};

/// When the tasks are submitted.
pub const T0: i64 = 1_700_000_000_000;

/// `bytes` of English-like text: words drawn by a fixed pseudo-random sequence.
pub fn text(bytes: usize, seed: u64) -> String {
    const WORDS: [&str; 24] = [
        "the",
        "model",
        "answer",
        "question",
        "benchmark",
        "reasoning",
        "step",
        "result",
        "compute",
        "value",
        "explain",
        "why",
        "number",
        "list",
        "table",
        "summary",
        "first",
        "second",
        "because",
        "therefore",
        "and",
        "of",
        "with",
        "data",
    ];
    let (mut out, mut x) = (String::new(), seed);
    while out.len() < bytes {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        out.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
        out.push(' ');
    }
    out.truncate(bytes);
    out
}

/// `bytes` of random letters and digits (deflate gains little on it).
pub fn noise(bytes: usize) -> String {
    let mut x = 7_u64;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(x % 62) as usize])
        })
        .collect()
}

pub fn task(id: &str, run: &str, prompt: String) -> TaskRecord {
    let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
        "id": id, "providerId": "openai-east", "modelId": "gpt-4o-mini", "prompt": prompt, "runId": run,
        "parameters": {"temperature": 0.2, "maxTokens": 512}
    }))
    .unwrap();
    TaskRecord::new(task, T0)
}

pub async fn claim(store: &DynamoStore, id: &str, now: i64, lease: i64) -> TaskRecord {
    let request = ClaimRequest { task_id: id.into(), owner: "worker-1".into(), now, lease_until: now + lease };
    match store.claim(request).await.unwrap() {
        ClaimOutcome::Claimed(record) => *record,
        other => panic!("claim of {id}: {other:?}"),
    }
}

pub fn attempt(record: &TaskRecord) -> AttemptRecord {
    AttemptRecord {
        attempt: record.attempt,
        epoch: record.epoch,
        started_at: "2023-11-14T22:13:20.000Z".into(),
        latency_ms: 812.4,
        ttft_ms: Some(210.7),
        queue_wait_ms: 35,
        outcome: "ok".into(),
        provider_status: Some(200),
        deployment: None,
        model: None,
    }
}

/// The result of a successful attempt with a 1 KB answer.
pub fn answer(running: &TaskRecord) -> TaskResult {
    TaskResult {
        text: text(1024, 99),
        finish_reason: "stop".into(),
        usage: Usage { input_tokens: 230, output_tokens: 241, cached_tokens: None },
        deployment: "openai-east".into(),
        model: "gpt-4o-mini-2024-07-18".into(),
        request_id: Some("req_8f2e4c1a9b7d3e5f6a0b2c4d".into()),
        latency_ms: 812.4,
        ttft_ms: Some(210.7),
        attempts: vec![attempt(running)],
        raw_response: None,
    }
}
