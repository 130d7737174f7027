//! Concurrency cases: racing claims and racing finishes of one task, from many tokio tasks at
//! once, resolve to exactly one winner.

use std::sync::Arc;

use super::{Store, T0, claimed, completed, finish_of, get, kinds, submit_new, task};
use crate::ports::{ClaimOutcome, ClaimRequest, WriteOutcome};

/// 16 claims of one queued task at the same instant: exactly one wins, the others see its lease.
pub async fn concurrent_claims_claim_once<S: Store>(store: S) {
    let store = Arc::new(store);
    submit_new(&*store, vec![task("t1", "r1")]).await;

    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&store);
            let request =
                ClaimRequest { task_id: "t1".into(), owner: format!("w{i}"), now: T0, lease_until: T0 + 1_000 };
            tokio::spawn(async move { store.claim(request).await.unwrap() })
        })
        .collect();
    let mut wins = 0;
    for racer in racers {
        match racer.await.unwrap() {
            ClaimOutcome::Claimed(_) => wins += 1,
            ClaimOutcome::LeaseHeld { until } => assert_eq!(until, T0 + 1_000),
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(wins, 1);
    let record = get(&*store, "t1").await;
    assert_eq!((record.epoch, record.attempt), (1, 1));
    assert_eq!(kinds(&*store, "t1").await, ["submitted", "claimed"]);
}

/// 8 finishes of one attempt at once: exactly one applies, one history entry, one completion.
pub async fn concurrent_finishes_apply_once<S: Store>(store: S) {
    let store = Arc::new(store);
    submit_new(&*store, vec![task("t1", "r1")]).await;
    let running = claimed(&*store, "t1", T0).await;

    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            let request = finish_of(&running, completed(f64::from(i)), T0 + 10);
            tokio::spawn(async move { store.finish(request).await.unwrap() })
        })
        .collect();
    let mut applied = 0;
    for racer in racers {
        if racer.await.unwrap() == WriteOutcome::Applied {
            applied += 1;
        }
    }

    assert_eq!(applied, 1);
    assert_eq!(get(&*store, "t1").await.history.len(), 1);
    assert_eq!(kinds(&*store, "t1").await, ["submitted", "claimed", "completed"]);
}
