//! `taskexec serve` end to end: tasks submitted over HTTP with the bearer token execute on the
//! embedded engine against the local mock provider; requests without the token get 401; the
//! server holds the database's runner lock and refuses to start without a token or on a
//! non-loopback address; SIGTERM stops it cleanly.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Scratch, mock};
use serde_json::{Value, json};
use taskexec_mockserver::MockConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const TOKEN: &str = "test-token-0123456789abcdef";

/// Start `taskexec serve` on a free port; returns the child and its base URL.
async fn start(s: &Scratch, config: &std::path::Path) -> (Child, String) {
    start_with(s, config, &[], &[]).await
}

/// [`start`] with more arguments and environment variables.
async fn start_with(s: &Scratch, config: &std::path::Path, args: &[&str], env: &[(String, String)]) -> (Child, String) {
    let mut all = vec!["serve", "--config", config.to_str().unwrap(), "--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut cmd = s.cmd(&all);
    cmd.env("TASKEXEC_API_TOKEN", TOKEN).envs(env.iter().cloned()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("serving the API on ").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            eprintln!("serve: {line}");
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("the server listens within 30 s");
    // Keep draining its stderr, so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("serve: {line}")
        }
    });
    (child, url)
}

fn tasks(n: usize) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("h{i}"), "providerId": "mock", "modelId": "m", "prompt": format!("q {i}"), "runId": "web"}))
        .collect();
    Value::Array(tasks)
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_submitted_over_http_execute_and_the_token_is_required() {
    let server = mock(MockConfig::default()).await;
    let s = Scratch::new();
    let config = s.config(&server.base_url(), "");
    let (mut child, base) = start(&s, &config).await;
    let client = reqwest::Client::new();

    let anonymous = client.post(format!("{base}/tasks")).json(&tasks(1)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = client.get(format!("{base}/metrics")).bearer_auth("not-the-token-at-all").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    let submitted = client.post(format!("{base}/tasks")).bearer_auth(TOKEN).json(&tasks(20)).send().await.unwrap();
    assert_eq!(submitted.status().as_u16(), 201);
    let start = Instant::now();
    let run = loop {
        let (status, run) = get(&client, &format!("{base}/runs/web")).await;
        assert_eq!(status, 200, "{run}");
        if run["counts"]["completed"] == 20 {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not all completed in 30 s: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["progress"], 1.0);
    assert_eq!(run["metrics"]["completedTasks"], 20);
    assert_eq!(server.stats().total_calls, 20);
    let (status, task) = get(&client, &format!("{base}/tasks/h3")).await;
    assert_eq!((status, task["status"].as_str()), (200, Some("completed")));
    assert!(task["result"]["text"].is_string());

    // The database is this server's: a second runner is refused.
    let mut second = s.cmd(&["serve", "--config", config.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    let out = second.env("TASKEXEC_API_TOKEN", TOKEN).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("holds"), "{stderr}");

    stop(&mut child).await;
}

async fn stop(child: &mut Child) {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("stops on SIGTERM").unwrap();
    assert_eq!(status.code(), Some(0), "a server stopped by SIGTERM exits 0");
}

#[tokio::test]
async fn refuses_to_start_without_a_token_or_on_a_public_address() {
    let s = Scratch::new();
    let mut cmd = s.cmd(&["serve", "--addr", "127.0.0.1:0"]);
    cmd.env_remove("TASKEXEC_API_TOKEN");
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set TASKEXEC_API_TOKEN"));
    let mut cmd = s.cmd(&["serve", "--addr", "0.0.0.0:8080"]);
    cmd.env("TASKEXEC_API_TOKEN", TOKEN);
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    assert!(!s.db().exists(), "nothing was opened");
}

/// `--backend aws` against the local AWS emulator (moto): the same API over DynamoDB and SQS,
/// the worker fed by the local event-source poller.
#[cfg(feature = "aws")]
#[path = "../../shared/aws/tests/common/mod.rs"]
mod emulator;

#[cfg(feature = "aws")]
mod aws {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_aws_backend_serves_the_api_and_runs_tasks_through_sqs() {
        let dynamo = emulator::dynamo_client();
        let sqs = emulator::sqs_client();
        let table = emulator::unique_name("serve");
        taskexec_aws::create_table(&dynamo, &table).await.unwrap();
        let topology = emulator::fresh_topology(&sqs).await;
        let s = Scratch::new();
        let config = s.write(
            "aws.toml",
            "[deployments.mock]\nkind = \"sim\"\n[deployments.mock.sim]\nlatency = { median_ms = 10, p99_ms = 30 }\n",
        );
        let mut env = vec![
            ("AWS_ENDPOINT_URL".to_owned(), emulator::endpoint().to_owned()),
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
            ("TASKEXEC_TABLE".to_owned(), table),
        ];
        for (q, name) in topology.queues.iter().zip(["HIGH", "NORMAL", "LOW"]) {
            env.push((format!("TASKEXEC_QUEUE_URL_{name}"), q.url.clone()));
            env.push((format!("TASKEXEC_DLQ_URL_{name}"), q.dlq_url.clone()));
        }
        let (mut child, base) = start_with(&s, &config, &["--backend", "aws"], &env).await;
        let client = reqwest::Client::new();
        let anonymous = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status().as_u16(), 401);
        let submitted = client.post(format!("{base}/tasks")).bearer_auth(TOKEN).json(&tasks(10)).send().await.unwrap();
        assert_eq!(submitted.status().as_u16(), 201);
        let start = Instant::now();
        loop {
            let (status, run) = get(&client, &format!("{base}/runs/web")).await;
            assert_eq!(status, 200, "{run}");
            if run["counts"]["completed"] == 10 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "not all completed in 60 s: {run}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop(&mut child).await;
    }
}
