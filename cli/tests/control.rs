//! Steering a run from another process: cancel a task whose provider hangs (its connection is
//! closed long before the hang would end), and pause / resume (no attempt starts while paused).

mod common;

use std::time::{Duration, Instant};

use common::{Scratch, mock, wait_for};
use taskexec_core::ports::TaskStore;
use taskexec_core::task::TaskState;
use taskexec_local::SqliteStore;
use taskexec_mockserver::{Latency, MockConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_hanging_task_from_another_process_closes_its_connection() {
    let server = mock(MockConfig { hang: ["t0".to_owned()].into(), ..MockConfig::default() }).await;
    let s = Scratch::new();
    s.config(&server.base_url(), "");
    let file = s.tasks(5);
    let mut run = s.cmd(&["run", file.to_str().unwrap(), "--quiet"]).spawn().unwrap();
    wait_for("the hanging call", Duration::from_secs(30), || server.stats().calls.contains_key("t0")).await;
    let asked = Instant::now();
    let (code, stdout, stderr) = s.run(&["cancel", "t0"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "cancelled t0 (was running)");
    wait_for("the server to see the connection closed", Duration::from_secs(30), || !server.stats().closed.is_empty())
        .await;
    let landed = asked.elapsed();
    let status = run.wait().await.unwrap();
    assert_eq!(status.code(), Some(1), "a cancelled task makes the run exit 1");
    let closed = server.stats().closed;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, "t0");
    assert!(closed[0].1 < 30_000, "closed after {} ms, long before the 60 s (here 1 h) hang", closed[0].1);
    let store = SqliteStore::open(s.db()).unwrap();
    assert_eq!(store.get("t0").await.unwrap().unwrap().state, TaskState::Cancelled);
    assert_eq!(store.get("t1").await.unwrap().unwrap().state, TaskState::Completed);
    eprintln!("cancellation landed {} ms after the cancel command started", landed.as_millis());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_new_attempts_and_resume_continues() {
    let server =
        mock(MockConfig { latency: Latency::Fixed(Duration::from_millis(100)), ..MockConfig::default() }).await;
    let s = Scratch::new();
    s.config(&server.base_url(), "");
    let file = s.tasks(60);
    let mut run = s.cmd(&["run", file.to_str().unwrap(), "--quiet", "--concurrency", "2"]).spawn().unwrap();
    wait_for("some calls", Duration::from_secs(30), || server.stats().total_calls >= 6).await;
    let (code, _, stderr) = s.run(&["pause"]).await;
    assert_eq!(code, 0, "{stderr}");
    // In-flight attempts finish (≤ 2, 100 ms each); after that no call may start.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let frozen = server.stats().total_calls;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(server.stats().total_calls, frozen, "no attempt starts while paused");
    let (_, status, _) = s.run(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["paused"], true);
    assert!(status["pendingTasks"].as_u64().unwrap() > 0);
    let (code, _, _) = s.run(&["resume"]).await;
    assert_eq!(code, 0);
    let exit = run.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(server.stats().total_calls, 60);
}

/// `taskexec limits set` from another process changes a running run's limits within its control
/// check, without a restart: a concurrency of 1 set on the deployment holds at the provider (one
/// call at a time), `limits show` reports it, and `limits reset` returns to the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_from_another_process_apply_to_a_running_run_and_reset_restores_them() {
    let server =
        mock(MockConfig { latency: Latency::Fixed(Duration::from_millis(100)), ..MockConfig::default() }).await;
    let s = Scratch::new();
    s.config(&server.base_url(), "");
    let file = s.tasks(60);
    let mut run = s.cmd(&["run", file.to_str().unwrap(), "--quiet", "--concurrency", "4"]).spawn().unwrap();
    wait_for("4 calls at once", Duration::from_secs(30), || server.stats().max_in_flight >= 4).await;

    let (code, stdout, stderr) =
        s.run(&["limits", "set", "mock", "--concurrency", "1", "--rpm", "10000", "--config", "tasks.toml"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("mock: set at run time concurrency=1 rpm=10000 (was as configured)"), "{stdout}");
    // Applied at the runner's next control check; the calls begun before it end within 100 ms.
    // At most one call in progress for 300 ms (three calls' length) on end: calls begun
    // together may end together, so one sample at 1 would prove nothing.
    let mut calm_since: Option<Instant> = None;
    wait_for("one call at a time for 300 ms", Duration::from_secs(30), || {
        if server.stats().in_flight > 1 {
            calm_since = None;
        }
        calm_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(300)
    })
    .await;
    let after_change = server.stats().total_calls;
    server.restart_max_in_flight();
    wait_for("five more calls", Duration::from_secs(30), || server.stats().total_calls >= after_change + 5).await;
    assert_eq!(server.stats().max_in_flight, 1, "the deployment's new limit holds at the provider");

    let (code, stdout, _) = s.run(&["limits", "show", "--json", "--config", "tasks.toml"]).await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["mock"]["setAtRunTime"], serde_json::json!({"concurrency": 1, "rpm": 10000}));
    assert_eq!(shown["mock"]["inForce"]["concurrency"], 1);

    let (code, stdout, stderr) = s.run(&["limits", "reset", "mock", "--config", "tasks.toml"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("set at run time as configured (was concurrency=1 rpm=10000)"), "{stdout}");
    let exit = run.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(server.stats().total_calls, 60);
    let control = taskexec_core::ports::ControlStore::control(&SqliteStore::open(s.db()).unwrap()).await.unwrap();
    assert!(control.limits.is_empty());
}

/// Bad `limits` commands say what is wrong and change nothing.
#[tokio::test]
async fn limits_refuse_unknown_deployments_zero_and_empty_changes() {
    let s = Scratch::new();
    s.config("http://127.0.0.1:9/v1", "");
    let (code, _, stderr) = s.run(&["limits", "set", "nope", "--rpm", "5", "--config", "tasks.toml"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown deployment `nope` (configured: mock)"), "{stderr}");
    let (code, _, stderr) = s.run(&["limits", "set", "mock", "--rpm", "0", "--config", "tasks.toml"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("--rpm"), "{stderr}");
    let (code, _, stderr) = s.run(&["limits", "set", "mock", "--config", "tasks.toml"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("nothing to set"), "{stderr}");
    assert!(!s.db().exists(), "no database created by refused commands");
}
