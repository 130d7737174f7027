//! The real `taskexec-dlq` binary behind the AWS Lambda Runtime Interface Emulator (the RIE that
//! ships in aws-sam-cli; `scripts/rie path` installs it), no Docker, against the local AWS
//! emulator (moto, `scripts/emulators ensure-moto`): `events/dlq-batch.json` is posted to the
//! RIE's invoke endpoint exactly as `sam local invoke -e` would, with its `eventSourceARN`s
//! pointing at a fresh moto dead-letter queue, and the effects are read back from DynamoDB and
//! SQS: the crash-looped task re-queued while it has attempts left and failed with its
//! `deadLetterReason` once it has none, the engine's dead-lettered task analysed, the poison
//! message recorded.
//!
//! Never skipped: if the RIE or moto cannot start, the test fails. Everything binds 127.0.0.1;
//! the RIE and the function it runs are killed when the test ends (pass or fail). The harness
//! is `functions/rie_harness.rs`, shared with the other functions' RIE tests.

#[path = "../../../shared/aws/tests/common/mod.rs"]
mod common;
#[path = "../../rie_harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use harness::{Deployment, Rie, event, from_queue};
use taskexec_core::error::{ErrorClass, TaskError};
use taskexec_core::ports::{ClaimOutcome, ClaimRequest, FinishRequest, Outcome, TaskStore};
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::{Clock, SystemClock};

fn bootstrap() -> PathBuf {
    std::env::var_os("TASKEXEC_RIE_BOOTSTRAP")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskexec-dlq")), PathBuf::from)
}

/// The task a record of the fixture names, as the API would have stored it.
fn task_of(envelope: &serde_json::Value) -> BenchmarkTask {
    serde_json::from_value(serde_json::json!({
        "id": envelope["taskId"], "providerId": envelope["providerId"], "modelId": envelope["modelId"],
        "runId": envelope["runId"], "priority": envelope["priority"], "prompt": "question",
    }))
    .unwrap()
}

/// Claim `id` with a lease that has already run out (a worker that crashed), `times` times:
/// each claim counts an attempt.
async fn crash(store: &impl TaskStore, id: &str, times: u32) {
    for _ in 0..times {
        let now = SystemClock.now();
        let request = ClaimRequest { task_id: id.into(), owner: "crashed".into(), now, lease_until: now - 1 };
        let outcome = store.claim(request).await.unwrap();
        assert!(matches!(outcome, ClaimOutcome::Claimed(_)), "{id}: {outcome:?}");
    }
}

fn no_failures(response: &serde_json::Value, rie: &Rie) {
    let failures = response.get("batchItemFailures").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(failures.is_empty(), "every message is handled: {response}\nRIE log:\n{}", rie.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_binary_requeues_finalises_analyses_and_records_poison_through_the_rie() {
    let deployment = Deployment::create().await;
    let (normal_url, normal_dlq) = deployment.queues[1].clone();
    let store = deployment.store();
    let batch = event("dlq-batch.json");
    let records = batch["Records"].as_array().unwrap().clone();
    let envelope =
        |i: usize| -> serde_json::Value { serde_json::from_str(records[i]["body"].as_str().unwrap()).unwrap() };
    let (crashed, exhausted) = (envelope(0), envelope(1));
    assert_eq!((crashed["taskId"].as_str(), exhausted["taskId"].as_str()), (Some("t-crash"), Some("t-exhausted")));
    let poison_id = records[2]["messageId"].as_str().unwrap().to_owned();
    let now = SystemClock.now();
    store
        .submit(vec![TaskRecord::new(task_of(&crashed), now), TaskRecord::new(task_of(&exhausted), now)])
        .await
        .unwrap();
    // t-crash: one attempt crashed its worker; it still has attempts left (the default budget is 3).
    crash(&store, "t-crash", 1).await;
    // t-exhausted: the engine gave up on it and dead-lettered it, recording why.
    let claimed = match store
        .claim(ClaimRequest { task_id: "t-exhausted".into(), owner: "worker".into(), now, lease_until: now + 60_000 })
        .await
        .unwrap()
    {
        ClaimOutcome::Claimed(record) => record,
        other => panic!("{other:?}"),
    };
    let reason = "attempts exhausted: 3 of 3 (server_error)";
    let failed = Outcome::Failed {
        error: TaskError::new(ErrorClass::Transient, "503 from the provider"),
        dead_letter_reason: Some(reason.into()),
    };
    let finish = FinishRequest {
        task_id: "t-exhausted".into(),
        epoch: claimed.epoch,
        outcome: failed,
        attempt: claimed.attempt,
        throttles: 0,
        record: None,
        now,
    };
    store.finish(finish).await.unwrap();

    let rie = Rie::start(&bootstrap(), &deployment.env());
    let event = from_queue(batch, &normal_dlq);
    no_failures(&rie.invoke(&event).await, &rie);

    // Attempts left: re-queued on its main queue, left queued/running as it was.
    let bodies = deployment.drain(&normal_url, 1, Duration::from_secs(10)).await;
    assert_eq!(bodies.len(), 1, "one message re-queued: {bodies:?}\nRIE log:\n{}", rie.log_text());
    let requeued: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(requeued["taskId"], "t-crash");
    let record = store.get("t-crash").await.unwrap().unwrap();
    assert!(!record.state.is_terminal() && record.dead_letter_reason.is_none(), "{record:?}");
    // The engine's dead letter: analysed (one JSON line), not changed.
    let exhausted = store.get("t-exhausted").await.unwrap().unwrap();
    assert_eq!((exhausted.state, exhausted.dead_letter_reason.as_deref()), (TaskState::Failed, Some(reason)));
    let log = rie.log_text();
    assert!(log.contains("deadLetterAnalysis") && log.contains("t-exhausted"), "the analysis is logged:\n{log}");
    // Poison: recorded under its message id.
    let item = deployment
        .dynamo
        .get_item()
        .table_name(&deployment.table)
        .key("pk", AttributeValue::S(format!("POISON#{poison_id}")))
        .key("sk", AttributeValue::S("POISON".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_else(|| panic!("no poison note for {poison_id}\nRIE log:\n{log}"));
    assert_eq!(item["body"].as_s().unwrap(), records[2]["body"].as_str().unwrap());

    // The same message again once t-crash has used its whole budget crashing: failed, with why.
    crash(&store, "t-crash", 2).await;
    no_failures(&rie.invoke(&event).await, &rie);
    let record = store.get("t-crash").await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Failed, "{record:?}\nRIE log:\n{}", rie.log_text());
    let why = record.dead_letter_reason.unwrap_or_default();
    assert!(why.starts_with("attempts exhausted: 3 of 3"), "{why}");
    assert!(deployment.drain(&normal_url, 1, Duration::from_secs(1)).await.is_empty(), "not re-queued this time");
}
