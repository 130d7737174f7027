//! The real `taskexec-sweeper` binary behind the AWS Lambda Runtime Interface Emulator (the RIE
//! that ships in aws-sam-cli; `scripts/rie path` installs it), no Docker, against the local AWS
//! emulator (moto, `scripts/emulators ensure-moto`): `events/schedule.json` (the EventBridge
//! schedule event) is posted to the RIE's invoke endpoint exactly as `sam local invoke -e`
//! would. The sweeper re-sends a task whose message is missing, once, and answers with its
//! summary; with event source mappings that do not exist, rebalancing fails and the invocation
//! returns an error naming it, the other parts still run and the `StuckRuns` line is printed.
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

use harness::{Deployment, Rie, event};
use taskexec_core::ports::TaskStore;
use taskexec_core::task::{BenchmarkTask, TaskRecord};
use taskexec_core::time::{Clock, SystemClock};

fn bootstrap() -> PathBuf {
    std::env::var_os("TASKEXEC_RIE_BOOTSTRAP")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskexec-sweeper")), PathBuf::from)
}

/// A task stored ten minutes ago whose send was lost: no message exists for it.
async fn lost_task(deployment: &Deployment, id: &str) {
    let task: BenchmarkTask = serde_json::from_value(serde_json::json!({
        "id": id, "providerId": "sim", "modelId": "sim-small", "prompt": "q", "priority": "high", "runId": "lost",
    }))
    .unwrap();
    deployment.store().submit(vec![TaskRecord::new(task, SystemClock.now() - 10 * 60_000)]).await.unwrap();
}

fn stuck_runs_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("\"CloudWatchMetrics\"") && l.contains("StuckRuns")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_binary_resends_a_missing_message_once_through_the_rie() {
    let deployment = Deployment::create().await;
    lost_task(&deployment, "lost-1").await;
    let rie = Rie::start(&bootstrap(), &deployment.env());
    let schedule = event("schedule.json");

    let summary = rie.invoke(&schedule).await;
    let text = summary.as_str().unwrap_or_else(|| panic!("a summary string: {summary}\n{}", rie.log_text()));
    assert!(text.contains("re-sent 1 task(s) whose message was missing, 0 failed"), "{text}");
    assert!(text.contains("no rebalancing") && text.contains("limiter permit(s) reclaimed"), "{text}");
    let high = deployment.queues[0].0.clone();
    let bodies = deployment.drain(&high, 1, Duration::from_secs(10)).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("\"lost-1\""), "{bodies:?}");

    // Its message is in flight now (received above): the next sweeps leave it alone.
    for _ in 0..2 {
        let summary = rie.invoke(&schedule).await;
        assert!(summary.as_str().unwrap_or("").contains("re-sent 0 task(s)"), "{summary}");
    }
    assert_eq!(stuck_runs_lines(&rie.log_text()), 3, "one StuckRuns line per sweep:\n{}", rie.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_binary_returns_an_error_naming_the_part_that_failed() {
    let deployment = Deployment::create().await;
    lost_task(&deployment, "lost-2").await;
    let mut env = deployment.env();
    env.push(("TASKEXEC_EVENT_SOURCE_MAPPINGS".into(), "no-such-mapping-1,no-such-mapping-2,no-such-mapping-3".into()));
    let rie = Rie::start(&bootstrap(), &env);

    let answer = rie.invoke(&event("schedule.json")).await;
    let message = answer["errorMessage"].as_str().unwrap_or_else(|| panic!("an error: {answer}\n{}", rie.log_text()));
    // Two parts need the mappings: rebalancing, and keeping them enabled while not paused.
    assert!(message.starts_with("2 sweeper part(s) failed: rebalance: cannot read event source mappings"), "{message}");
    assert!(message.contains("mapping switch: "), "{message}");
    // The other parts ran: the lost task was re-sent, the StuckRuns line printed.
    assert!(message.contains("re-sent 1 task(s) whose message was missing"), "{message}");
    assert_eq!(deployment.drain(&deployment.queues[0].0, 1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(stuck_runs_lines(&rie.log_text()), 1, "{}", rie.log_text());
}
