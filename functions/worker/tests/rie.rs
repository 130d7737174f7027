//! The real `taskexec-worker` binary behind the AWS Lambda Runtime Interface Emulator (the RIE
//! that ships in aws-sam-cli; `scripts/rie path` installs it), no Docker, against the local AWS
//! emulator (moto, `scripts/emulators ensure-moto`): the sample SQS events of `events/` are
//! posted to the RIE's invoke endpoint exactly as `sam local invoke -e` would, with their
//! `eventSourceARN`s pointing at fresh moto queues.
//!
//! Never skipped: if the RIE or moto cannot start, the test fails. Everything binds 127.0.0.1;
//! the RIE and the function it runs are killed when the test ends (pass or fail).
//!
//! `TASKEXEC_RIE_BOOTSTRAP=path/to/binary` runs another build (`scripts/measure-cold-start`
//! uses it to read the release build's peak RSS); the default is the binary cargo built for
//! this test.

#[path = "../../../shared/aws/tests/common/mod.rs"]
mod common;
#[path = "../../rie_harness.rs"]
mod harness;

use harness::{Deployment, Rie, event};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use taskexec_core::ports::TaskStore;
use taskexec_core::task::{BenchmarkTask, TaskRecord, TaskState};
use taskexec_core::time::{Clock, SystemClock};

/// `event` with every record's `eventSourceARN` naming the queue at `queue_url`.
fn from_queue(mut event: serde_json::Value, queue_url: &str) -> serde_json::Value {
    let name = queue_url.rsplit('/').next().expect("a queue url has a name");
    for record in event["Records"].as_array_mut().expect("an SQS event has Records") {
        record["eventSourceARN"] = format!("arn:aws:sqs:us-east-1:123456789012:{name}").into();
    }
    event
}

fn bootstrap() -> PathBuf {
    std::env::var_os("TASKEXEC_RIE_BOOTSTRAP")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskexec-worker")), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_completes_an_sqs_batch_and_dead_letters_poison_through_the_rie() {
    let deployment = Deployment::create().await;
    let (normal_url, normal_dlq) = deployment.queues[1].clone();

    // The tasks events/sqs-batch.json delivers, as the API would have stored them.
    let batch = event("sqs-batch.json");
    let store = deployment.store();
    let mut ids = Vec::new();
    for record in batch["Records"].as_array().unwrap() {
        let envelope: serde_json::Value = serde_json::from_str(record["body"].as_str().unwrap()).unwrap();
        let id = envelope["taskId"].as_str().unwrap().to_owned();
        let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
            "id": id, "providerId": envelope["providerId"], "modelId": envelope["modelId"],
            "runId": envelope["runId"], "priority": envelope["priority"], "prompt": format!("question {id}"),
        }))
        .unwrap();
        store.submit(vec![TaskRecord::new(task, SystemClock.now())]).await.expect("store the task");
        ids.push(id);
    }
    assert_eq!(ids, ["t-1", "t-2", "t-3"], "the tasks events/sqs-batch.json names");

    let bootstrap = bootstrap();
    let rie = Rie::start(&bootstrap, &deployment.env());

    let started = Instant::now();
    let response = rie.invoke(&from_queue(batch, &normal_url)).await;
    let cold = started.elapsed();
    let failures = response.get("batchItemFailures").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(failures.is_empty(), "no message fails: {response}\nRIE log:\n{}", rie.log_text());
    for id in &ids {
        let record = store.get(id).await.unwrap().unwrap_or_else(|| panic!("{id} is in the table"));
        assert_eq!(record.state, TaskState::Completed, "{id}: {record:?}\nRIE log:\n{}", rie.log_text());
        assert_eq!(record.attempt, 1, "{id}: one attempt");
        assert!(record.result.is_some(), "{id} has a result");
    }
    let after_batch = rie.function_peak_rss_kib();

    let started = Instant::now();
    let response = rie.invoke(&from_queue(event("sqs-poison.json"), &normal_url)).await;
    let warm = started.elapsed();
    let failures = response.get("batchItemFailures").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(failures.is_empty(), "poison is acknowledged, not retried: {response}\nRIE log:\n{}", rie.log_text());
    let poison_id = event("sqs-poison.json")["Records"][0]["messageId"].as_str().unwrap().to_owned();
    let bodies = deployment.drain(&normal_dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(bodies.len(), 1, "one note on the normal DLQ: {bodies:?}");
    let note: serde_json::Value = serde_json::from_str(&bodies[0]).expect("the DLQ body is JSON");
    assert_eq!(note["poison"]["messageId"], poison_id.as_str(), "{note}");
    assert_eq!(note["poison"]["body"], "this is not a task {\"taskId\":", "{note}");
    assert!(!note["poison"]["reason"].as_str().unwrap_or("").is_empty(), "{note}");
    assert!(deployment.drain(&normal_url, 1, Duration::from_secs(1)).await.is_empty(), "nothing was re-sent");

    let peak = rie.function_peak_rss_kib();
    let mib = |kib: Option<u64>| kib.map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    // Measured, not asserted (scripts/measure-cold-start reads this line).
    eprintln!(
        "rie-measure: bootstrap={} batch_invoke_ms={} poison_invoke_ms={} peak_rss_after_batch={} peak_rss={}",
        bootstrap.display(),
        cold.as_millis(),
        warm.as_millis(),
        mib(after_batch),
        mib(peak),
    );
}
