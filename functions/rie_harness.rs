//! The harness of the Lambda binaries' tests through the Runtime Interface Emulator (the RIE that
//! ships in aws-sam-cli; `scripts/rie path` installs it): starting the RIE on free 127.0.0.1
//! ports with a function binary and its environment, and a fresh deployment (table and queues)
//! on the local AWS emulator. Shared by `functions/{worker,api,dlq,sweeper}/tests/rie.rs` through `#[path]`;
//! it uses their `common` module (the emulator helper).
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskexec_aws::{DynamoConfig, DynamoStore};

use super::common;

pub(crate) const CONFIG: &str = r#"
[deployments.sim]
kind = "sim"
[deployments.sim.sim]
latency = { median_ms = 20, p99_ms = 60 }
seed = 1
"#;

/// The workspace root (holds `scripts/` and `events/`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

pub(crate) fn event(name: &str) -> serde_json::Value {
    let path = root().join("events").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The RIE binary, installed by `scripts/rie path` if needed; panics when that fails.
pub(crate) fn rie_binary() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("scripts/rie"))
        .arg("path")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/rie (bash missing?)");
    assert!(
        out.status.success(),
        "the Lambda Runtime Interface Emulator is not available (scripts/rie path): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "scripts/rie path printed {path:?}, which is not a file");
    path
}

/// Two ports free on 127.0.0.1 right now (held together, so they differ).
pub(crate) fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// A running RIE with the function binary as its bootstrap. Dropping it stops the RIE with
/// SIGTERM (it kills and reaps the function process) and reaps it; if it has not exited within
/// 3 s, its whole process group (the RIE and the function) is killed.
pub(crate) struct Rie {
    pub(crate) child: Child,
    pub(crate) invoke_url: String,
    pub(crate) log: PathBuf,
}

impl Rie {
    pub(crate) fn start(bootstrap: &Path, env: &[(String, String)]) -> Rie {
        let rie = rie_binary();
        assert!(bootstrap.is_file(), "the function binary {} does not exist", bootstrap.display());
        let mut last = String::new();
        // A port taken between free_ports() and the RIE's bind makes it exit: try again.
        for attempt in 1..=3 {
            let (invoke_port, api_port) = free_ports();
            let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "rie-{}-{invoke_port}.log",
                bootstrap.file_name().and_then(|n| n.to_str()).unwrap_or("function")
            ));
            let out = File::create(&log).expect("create the RIE log");
            let mut command = Command::new(&rie);
            command
                .arg("--runtime-interface-emulator-address")
                .arg(format!("127.0.0.1:{invoke_port}"))
                .arg("--runtime-api-address")
                .arg(format!("127.0.0.1:{api_port}"))
                .arg(bootstrap)
                // Only what the function needs: nothing of the caller's AWS profile leaks in.
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log handle"))
                .stderr(out)
                // Its own process group, so the drop kills the function process too.
                .process_group(0);
            let child = command.spawn().unwrap_or_else(|e| panic!("cannot start the RIE {}: {e}", rie.display()));
            let mut rie = Rie { child, invoke_url: String::new(), log };
            let addr = SocketAddr::from(([127, 0, 0, 1], invoke_port));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(status) = rie.child.try_wait().expect("poll the RIE") {
                    last = format!("attempt {attempt}: the RIE exited ({status}): {}", rie.log_text());
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    rie.invoke_url =
                        format!("http://127.0.0.1:{invoke_port}/2015-03-31/functions/function/invocations");
                    return rie;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                last = format!("attempt {attempt}: the RIE did not listen within 10 s: {}", rie.log_text());
            }
        }
        panic!("the Lambda Runtime Interface Emulator did not start: {last}");
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Invoke the function with `event`; the function's JSON answer.
    pub(crate) async fn invoke(&self, event: &serde_json::Value) -> serde_json::Value {
        let response = reqwest::Client::new()
            .post(&self.invoke_url)
            .timeout(Duration::from_secs(120))
            .json(event)
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoking through the RIE failed: {e}\nRIE log:\n{}", self.log_text()));
        let status = response.status();
        let text = response.text().await.expect("the RIE's answer");
        assert!(status.is_success(), "the RIE answered {status}: {text}\nRIE log:\n{}", self.log_text());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}\nRIE log:\n{}", self.log_text()))
    }

    /// Peak resident set (VmHWM, KiB) of the function process the RIE runs (its child), while
    /// it lives.
    pub(crate) fn function_peak_rss_kib(&self) -> Option<u64> {
        let rie = self.child.id().to_string();
        std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .map(str::to_owned)
            };
            if field("PPid:")? != rie {
                return None;
            }
            field("VmHWM:")?.parse().ok()
        })
    }
}

impl Drop for Rie {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).stderr(Stdio::null()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return; // exited (and reaped by us): it reaped the function process itself
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running, so the group id is still ours.
        let group = format!("-{pid}");
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh table and three fresh queue pairs on the emulator; the function's environment.
pub(crate) struct Deployment {
    pub(crate) table: String,
    pub(crate) dynamo: aws_sdk_dynamodb::Client,
    pub(crate) sqs: aws_sdk_sqs::Client,
    /// (queue url, dlq url) for high, normal, low.
    pub(crate) queues: Vec<(String, String)>,
}

impl Deployment {
    pub(crate) async fn create() -> Deployment {
        let dynamo = common::dynamo_client();
        let sqs = common::sqs_client();
        let table = common::unique_name("rie-tasks");
        taskexec_aws::create_table(&dynamo, &table).await.expect("create the table on the emulator");
        let prefix = common::unique_name("rie");
        let topology = taskexec_aws::create_queues(&sqs, &prefix, 5, Duration::from_secs(30))
            .await
            .expect("create the queues on the emulator");
        let queues = topology.queues.iter().map(|q| (q.url.clone(), q.dlq_url.clone())).collect();
        Deployment { table, dynamo, sqs, queues }
    }

    /// The function's environment, as `template.yaml` sets it, plus the emulator's endpoint.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("TASKEXEC_TABLE", self.table.as_str()),
            ("TASKEXEC_CONFIG", CONFIG),
            ("TASKEXEC_WORKER_TIMEOUT_SECONDS", "120"),
            ("AWS_ENDPOINT_URL", common::endpoint()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("RUST_LOG", "info"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        for ((queue, dlq), priority) in self.queues.iter().zip(["HIGH", "NORMAL", "LOW"]) {
            env.push((format!("TASKEXEC_QUEUE_URL_{priority}"), queue.clone()));
            env.push((format!("TASKEXEC_DLQ_URL_{priority}"), dlq.clone()));
        }
        if let Ok(path) = std::env::var("PATH") {
            env.push(("PATH".into(), path));
        }
        env
    }

    /// The store as the function configures it.
    pub(crate) fn store(&self) -> DynamoStore {
        DynamoStore::new(self.dynamo.clone(), DynamoConfig::new(self.table.clone()))
    }

    /// Every message on `queue_url` (waits up to `limit` for at least `want`).
    pub(crate) async fn drain(&self, queue_url: &str, want: usize, limit: Duration) -> Vec<String> {
        let mut bodies = Vec::new();
        let start = Instant::now();
        while bodies.len() < want && start.elapsed() < limit {
            let out = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive from the emulator");
            bodies.extend(out.messages.unwrap_or_default().into_iter().filter_map(|m| m.body));
        }
        bodies
    }
}

/// `event` with every record's `eventSourceARN` naming the queue at `queue_url` (the fixtures
/// name queues of a real deployment).
pub(crate) fn from_queue(mut event: serde_json::Value, queue_url: &str) -> serde_json::Value {
    let name = queue_url.rsplit('/').next().expect("a queue url has a name");
    for record in event["Records"].as_array_mut().expect("an SQS event has Records") {
        record["eventSourceARN"] = format!("arn:aws:sqs:us-east-1:123456789012:{name}").into();
    }
    event
}
