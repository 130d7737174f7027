//! Crash test: SIGKILL `taskexec run` mid-run, run the same command again, and check that every
//! task ends completed once, that the only extra provider calls are those of tasks in flight at
//! the kill, and that those tasks were taken back at once (before their leases would expire).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Scratch, mock, wait_for};
use taskexec_core::ports::TaskStore;
use taskexec_core::task::TaskState;
use taskexec_local::SqliteStore;
use taskexec_mockserver::{Latency, MockConfig};

const TASKS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_rerun_completes_every_task_exactly_once() {
    let server = mock(MockConfig { latency: Latency::Fixed(Duration::from_millis(40)), ..MockConfig::default() }).await;
    let s = Scratch::new();
    s.config(&server.base_url(), "");
    let file = s.tasks(TASKS);
    let args = ["run", file.to_str().unwrap(), "--quiet", "--concurrency", "20"];

    let mut child = s.cmd(&args).spawn().unwrap();
    wait_for("a third of the calls", Duration::from_secs(60), || server.stats().total_calls >= (TASKS / 3) as u64)
        .await;
    child.kill().await.unwrap(); // SIGKILL
    let killed_at_calls = server.stats().total_calls;
    assert!(killed_at_calls < TASKS as u64, "the run must be killed mid-way");

    // What the dead runner left: claimed tasks with no committed result.
    let store = SqliteStore::open(s.db()).unwrap();
    let mut in_flight = HashMap::new();
    let (pending, _) = store.pending(0, TASKS).await.unwrap();
    for p in pending {
        let r = store.get(&p.task_id).await.unwrap().unwrap();
        if r.state == TaskState::Running {
            in_flight.insert(p.task_id.clone(), r.lease.unwrap().until);
        }
    }
    assert!(!in_flight.is_empty(), "some tasks were in flight at the kill");
    assert!(in_flight.len() <= 20, "never more in flight than the concurrency");

    let (code, _, stderr) = s.run(&args).await;
    assert_eq!(code, 0, "the rerun finishes everything: {stderr}");

    let stats = server.stats();
    let mut completions = 0;
    for i in 0..TASKS {
        let id = format!("t{i}");
        let r = store.get(&id).await.unwrap().unwrap();
        assert_eq!(r.state, TaskState::Completed, "{id}");
        let events = store.events(&id).await.unwrap();
        let completed = events.iter().filter(|e| e.kind == "completed").count();
        assert_eq!(completed, 1, "{id} has exactly one recorded completion");
        completions += completed;
        let calls = stats.calls.get(&id).copied().unwrap_or(0);
        match in_flight.get(&id) {
            Some(lease_until) => {
                assert!((1..=2).contains(&calls), "{id}: {calls} calls");
                let released = events.iter().find(|e| e.kind == "released").expect("lease taken back");
                assert!(released.at < *lease_until, "{id} restarted at once, not after its lease expired");
            }
            None => assert_eq!(calls, 1, "{id} was not in flight at the kill, so it was called once"),
        }
    }
    assert_eq!(completions, TASKS);
    let extra = stats.total_calls - TASKS as u64;
    assert!(extra <= in_flight.len() as u64, "extra calls {extra} ≤ tasks in flight at the kill {}", in_flight.len());
}
