//! Breakers whose cool-down has passed, written as half-open.
//!
//! **Not needed for correctness.** The engine moves a breaker open → half-open lazily, when a
//! call asks to be admitted (`Breaker::admit`), so the next worker that loads a breaker whose
//! `open_until` passed already treats it as half-open and admits real tasks as probes. The
//! sweeper calls no provider and never admits anything.
//!
//! **Why it writes anyway.** The stored state and the `BreakerState` metric change only when a
//! worker makes a call for that deployment. With no traffic for it (every task of it deferred to
//! later, or none submitted), the table, `taskexec status` and the dashboard would show "open"
//! long after the cool-down ended. So, per configured deployment, the sweeper reads the breaker
//! item (one `GetItem`) and, when it is open with `open_until` passed, replaces it with the same
//! snapshot in state half-open — a conditional write (the stored snapshot must still be the one
//! read, so a worker's newer transition is never overwritten) — and records the
//! `BreakerChanged` metric (`BreakerState` = 1). A worker restoring that snapshot admits
//! `half_open_probes` probes, exactly as it would have after moving the breaker itself.

use std::future::Future;

use taskexec_core::breaker::{BreakerSnapshot, BreakerState};
use taskexec_core::error::StoreError;
use taskexec_core::ports::{Metric, MetricsSink};
use taskexec_core::time::Clock;

/// The stored breakers, as the sweeper needs them.
pub trait BreakerBoard: Send + Sync {
    /// A deployment's stored snapshot.
    fn load(&self, deployment: &str) -> impl Future<Output = Result<Option<BreakerSnapshot>, StoreError>> + Send;
    /// Store `next` only if the stored snapshot still equals `expected`; `false` when it changed
    /// in between.
    fn replace_if(
        &self,
        deployment: &str,
        expected: &BreakerSnapshot,
        next: &BreakerSnapshot,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// What moving the breakers did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HalfOpened {
    /// Deployments moved to half-open.
    pub moved: Vec<String>,
    /// Deployments whose item could not be read or written.
    pub failed: usize,
}

/// Move every open breaker of `deployments` whose cool-down has passed to half-open. A
/// deployment whose item cannot be read or written is logged, counted and skipped.
pub async fn half_open_breakers<B: BreakerBoard, S: MetricsSink, C: Clock>(
    board: &B,
    deployments: &[String],
    metrics: &S,
    clock: &C,
) -> HalfOpened {
    let now = clock.now();
    let mut done = HalfOpened::default();
    for deployment in deployments {
        let snapshot = match board.load(deployment).await {
            Ok(Some(s)) if s.state == BreakerState::Open && s.open_until.is_some_and(|until| until <= now) => s,
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(deployment, %error, "sweeper could not read the breaker");
                done.failed += 1;
                continue;
            }
        };
        let next = BreakerSnapshot { state: BreakerState::HalfOpen, changed_at: now, ..snapshot.clone() };
        match board.replace_if(deployment, &snapshot, &next).await {
            Ok(true) => {
                tracing::info!(
                    deployment,
                    opens = next.opens,
                    "sweeper moved the breaker to half-open (cool-down over)"
                );
                metrics
                    .record(Metric::BreakerChanged { deployment: deployment.clone(), state: BreakerState::HalfOpen });
                done.moved.push(deployment.clone());
            }
            Ok(false) => {} // a worker changed it meanwhile: its state stands.
            Err(error) => {
                tracing::warn!(deployment, %error, "sweeper could not write the breaker");
                done.failed += 1;
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use taskexec_core::memory::{Counters, CountingSink};
    use taskexec_core::time::FakeClock;

    use super::*;

    #[derive(Default)]
    struct Board(Mutex<HashMap<String, BreakerSnapshot>>);

    impl BreakerBoard for Board {
        async fn load(&self, deployment: &str) -> Result<Option<BreakerSnapshot>, StoreError> {
            Ok(self.0.lock().unwrap().get(deployment).cloned())
        }

        async fn replace_if(
            &self,
            deployment: &str,
            expected: &BreakerSnapshot,
            next: &BreakerSnapshot,
        ) -> Result<bool, StoreError> {
            let mut map = self.0.lock().unwrap();
            if map.get(deployment) != Some(expected) {
                return Ok(false);
            }
            map.insert(deployment.to_owned(), next.clone());
            Ok(true)
        }
    }

    fn open(until: i64) -> BreakerSnapshot {
        BreakerSnapshot { state: BreakerState::Open, opens: 2, open_until: Some(until), changed_at: 10 }
    }

    #[tokio::test]
    async fn only_open_breakers_past_their_cool_down_move() {
        let board = Board::default();
        board.0.lock().unwrap().insert("due".into(), open(1_000));
        board.0.lock().unwrap().insert("later".into(), open(5_000));
        board.0.lock().unwrap().insert("closed".into(), BreakerSnapshot::default());
        let sink = CountingSink::default();
        let names: Vec<String> = ["due", "later", "closed", "unknown"].map(String::from).to_vec();
        let done = half_open_breakers(&board, &names, &sink, &FakeClock::at(2_000)).await;
        assert_eq!(done, HalfOpened { moved: vec!["due".into()], failed: 0 });
        let due = board.0.lock().unwrap()["due"].clone();
        assert_eq!(
            due,
            BreakerSnapshot { state: BreakerState::HalfOpen, opens: 2, open_until: Some(1_000), changed_at: 2_000 }
        );
        assert_eq!(board.0.lock().unwrap()["later"], open(5_000));
        assert_eq!(Counters::get(&sink.counters.open_breakers), 1, "one BreakerChanged(half-open) recorded");
        // Already half-open: nothing more.
        assert!(half_open_breakers(&board, &names, &sink, &FakeClock::at(3_000)).await.moved.is_empty());
    }
}
