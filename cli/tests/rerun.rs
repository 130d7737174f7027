//! Idempotent submission and results: running the same file again records nothing twice;
//! the same id with other content is a conflict; results export as JSON Lines and CSV.

mod common;

use std::time::Duration;

use common::{Scratch, mock};
use taskexec_mockserver::{Latency, MockConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_is_a_no_op_conflicts_are_refused_and_results_export() {
    let server = mock(MockConfig { latency: Latency::Fixed(Duration::from_millis(5)), ..MockConfig::default() }).await;
    let s = Scratch::new();
    s.config(&server.base_url(), "");
    let file = s.tasks(20);
    let path = file.to_str().unwrap();
    let (code, stdout, stderr) = s.run(&["run", path]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("run tasks: 20 tasks · 20 completed"), "{stdout}");

    let (code, _, stderr) = s.run(&["run", path]).await;
    assert_eq!(code, 0);
    assert!(stderr.contains("20 of 20 task(s) already finished, 0 to run"), "{stderr}");
    assert_eq!(server.stats().total_calls, 20, "nothing ran twice");

    let (code, stdout, _) = s.run(&["run", path, "--json"]).await;
    assert_eq!(code, 0);
    let metrics: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((metrics["totalTasks"].as_u64(), metrics["completedTasks"].as_u64()), (Some(20), Some(20)));
    assert_eq!(metrics["scope"], "run");
    assert_eq!(metrics["errorRate"], 0.0);

    let changed = std::fs::read_to_string(&file).unwrap().replacen("question 3", "question three", 1);
    let changed = s.write("tasks.jsonl", &changed);
    let (code, _, stderr) = s.run(&["run", changed.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("line 4: field `id`: task `t3` already exists in the database with different content"),
        "{stderr}"
    );

    let (code, jsonl, _) = s.run(&["export", "tasks", "--format", "jsonl"]).await;
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 20);
    assert_eq!(rows[0]["id"], "t0");
    assert_eq!(rows[0]["status"], "completed");
    assert_eq!(rows[0]["result"]["text"], "answer to t0");
    assert!(rows[0]["result"]["attempts"][0]["latencyMs"].as_f64().unwrap() >= 5.0, "latency ≥ the server's delay");

    let (code, csv, _) = s.run(&["export", "tasks", "--format", "csv"]).await;
    assert_eq!(code, 0);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("id,runId,providerId,modelId,status,attempt"));
    assert!(lines.next().unwrap().starts_with("t0,tasks,mock,m,completed,1,0,"));
    assert_eq!(csv.lines().count(), 21);

    let (code, status, _) = s.run(&["status", "t5", "--events"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let kinds: Vec<&str> = status["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["submitted", "claimed", "completed"]);
}

/// A run over a route prints, after the tables (which group tasks by the route they named),
/// what each of the route's deployments served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_summary_shows_what_each_deployment_of_a_route_served() {
    let s = Scratch::new();
    let config = "[engine]\nconcurrency = 8\nseed = 1\n\
        [deployments.east]\nkind = \"sim\"\n[deployments.east.sim]\nlatency = { median_ms = 5, p99_ms = 10 }\n\
        [deployments.west]\nkind = \"sim\"\n[deployments.west.sim]\nlatency = { median_ms = 5, p99_ms = 10 }\n\
        [routes.both]\ntargets = [{ deployment = \"east\" }, { deployment = \"west\" }]\n";
    s.write("tasks.toml", config);
    let lines: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id":"t{i}","providerId":"both","modelId":"m","prompt":"question {i}"}}"#))
        .collect();
    let file = s.write("tasks.jsonl", &lines.join("\n"));
    let (code, stdout, stderr) = s.run(&["run", file.to_str().unwrap(), "--quiet"]).await;
    assert_eq!(code, 0, "{stderr}");
    let served = stdout.split("served by deployment").nth(1).unwrap_or_else(|| panic!("no split: {stdout}"));
    let completed = |name: &str| -> u64 {
        let line = served.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{served}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let (east, west) = (completed("east"), completed("west"));
    assert_eq!(east + west, 20, "{served}");
    assert!(east > 0 && west > 0, "both deployments served: {served}");
}
