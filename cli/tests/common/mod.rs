//! Shared helpers of the CLI's end-to-end tests: a scratch directory with a config pointing at a
//! local mock provider, task files, and the `taskexec` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use taskexec_mockserver::{MockConfig, MockServer};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskexec")
}

/// A scratch directory with a database path, a config and a task file.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn db(&self) -> PathBuf {
        self.path("run.db")
    }

    /// Write `tasks.toml` with one OpenAI-compatible deployment `mock` at `base_url`.
    pub fn config(&self, base_url: &str, extra: &str) -> PathBuf {
        let path = self.path("tasks.toml");
        std::fs::write(
            &path,
            format!(
                "[engine]\nconcurrency = 16\nseed = 1\n{extra}\n[deployments.mock]\nkind = \"openai-compatible\"\nbase_url = \"{base_url}\"\n"
            ),
        )
        .unwrap();
        path
    }

    /// Write `tasks.jsonl` with `n` tasks `t0..` for deployment `mock`.
    pub fn tasks(&self, n: usize) -> PathBuf {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                format!(r#"{{"id":"t{i}","providerId":"mock","modelId":"m","prompt":"question {i}","timeout":120000}}"#)
            })
            .collect();
        self.write("tasks.jsonl", &lines.join("\n"))
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `taskexec` command with `--db` set for subcommands that take it.
    pub fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.args(args).arg("--db").arg(self.db()).current_dir(self.dir.path());
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Run to the end, returning (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A mock provider recording calls.
pub async fn mock(config: MockConfig) -> MockServer {
    MockServer::start(config, 0).await.unwrap()
}

/// Poll `check` every 20 ms until it holds, failing after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
