//! The real `taskexec-api` binary behind the AWS Lambda Runtime Interface Emulator (the RIE that
//! ships in aws-sam-cli; `scripts/rie path` installs it), no Docker, against the local AWS
//! emulator (moto, `scripts/emulators ensure-moto`): the API Gateway (HTTP API, payload v2)
//! events of `events/` are posted to the RIE's invoke endpoint exactly as `sam local invoke -e`
//! would, and the effects are read back from DynamoDB and SQS.
//!
//! Never skipped: if the RIE or moto cannot start, the test fails. Everything binds 127.0.0.1;
//! the RIE and the function it runs are killed when the test ends (pass or fail).
//!
//! `TASKEXEC_RIE_BOOTSTRAP=path/to/binary` runs another build; the default is the binary cargo
//! built for this test. The harness (RIE, fresh deployment) is the one of
//! `functions/worker/tests/rie.rs`; keep the two in step.

#[path = "../../../shared/aws/tests/common/mod.rs"]
mod common;
#[path = "../../rie_harness.rs"]
mod harness;

use harness::{Deployment, Rie, event};
use std::path::PathBuf;
use std::time::Duration;
use taskexec_core::ports::TaskStore;
use taskexec_core::task::{TaskPriority, TaskState};

fn bootstrap() -> PathBuf {
    std::env::var_os("TASKEXEC_RIE_BOOTSTRAP")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskexec-api")), PathBuf::from)
}

/// An API Gateway v2 proxy response: its status and its body (JSON).
fn http_response(response: &serde_json::Value) -> (u64, serde_json::Value) {
    let status = response["statusCode"].as_u64().unwrap_or_else(|| panic!("no statusCode: {response}"));
    let body = response["body"].as_str().unwrap_or_else(|| panic!("no body: {response}"));
    assert_ne!(response["isBase64Encoded"], true, "a JSON body is not base64-encoded: {response}");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {response}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_binary_creates_and_reads_a_task_through_the_rie() {
    let deployment = Deployment::create().await;
    let bootstrap = bootstrap();
    let rie = Rie::start(&bootstrap, &deployment.env());

    // POST /tasks: 201, the record in DynamoDB, the envelope on its priority's queue.
    let post = event("api-post-task.json");
    let task: serde_json::Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    let response = rie.invoke(&post).await;
    let (status, body) = http_response(&response);
    assert_eq!(status, 201, "task creation: {body}\nRIE log:\n{}", rie.log_text());

    let record = deployment.store().get(&id).await.unwrap().unwrap_or_else(|| panic!("{id} is in the table"));
    assert_eq!(record.state, TaskState::Queued, "{record:?}");
    assert_eq!(record.task.prompt, task["prompt"].as_str().unwrap());
    assert_eq!(record.task.priority, TaskPriority::High, "as the fixture asks");
    let (high_url, _) = &deployment.queues[0];
    let bodies = deployment.drain(high_url, 1, Duration::from_secs(10)).await;
    assert_eq!(bodies.len(), 1, "one message on the high queue: {bodies:?}");
    let envelope: serde_json::Value = serde_json::from_str(&bodies[0]).expect("the message is JSON");
    assert_eq!(envelope["taskId"], id.as_str(), "{envelope}");
    assert_eq!(envelope["priority"], "high", "{envelope}");
    for (normal_or_low, _) in &deployment.queues[1..] {
        assert!(deployment.drain(normal_or_low, 1, Duration::from_secs(1)).await.is_empty(), "only the high queue");
    }

    // GET /tasks/{id} (the fixture's path parameters pointed at the task just created).
    let mut get = event("api-get-task.json");
    let path = format!("/tasks/{id}");
    get["rawPath"] = path.clone().into();
    get["requestContext"]["http"]["path"] = path.into();
    get["pathParameters"]["id"] = id.clone().into();
    let response = rie.invoke(&get).await;
    let (status, body) = http_response(&response);
    assert_eq!(status, 200, "task read: {body}\nRIE log:\n{}", rie.log_text());
    assert_eq!(body["id"], id.as_str(), "{body}");
    assert_eq!(body["status"], "queued", "{body}");

    let peak = rie.function_peak_rss_kib();
    eprintln!(
        "rie-measure: bootstrap={} peak_rss={}",
        bootstrap.display(),
        peak.map_or_else(|| "unknown".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
}
