//! [`DynamoLimiter`] on the emulator: several limiters ("containers") sharing limit keys over one
//! table. moto's conditional writes are not atomic under concurrency, so these tests interleave
//! the holders' calls sequentially rather than race them.

mod common;

use std::time::Duration;

use taskexec_aws::{DynamoLimiter, LimiterSettings};
use taskexec_core::ports::{Adapted, LimitKey, LimiterStore, Line, Ticket};
use taskexec_core::time::{Clock, SystemClock};

async fn table() -> (aws_sdk_dynamodb::Client, String) {
    let client = common::dynamo_client();
    let table = common::unique_name("limits");
    taskexec_aws::create_table(&client, &table).await.expect("create the table");
    (client, table)
}

fn limiter(client: &aws_sdk_dynamodb::Client, table: &str, holder: &str, chunk: u32, lease: Duration) -> DynamoLimiter {
    DynamoLimiter::new(client.clone(), table, holder, LimiterSettings { chunk, lease, ..LimiterSettings::default() })
}

/// Acquire alternately on `a` and `b` until both refuse; the permits each got.
async fn fill(a: &DynamoLimiter, b: &DynamoLimiter, key: &LimitKey, limit: u32) -> (u32, u32) {
    let (mut got_a, mut got_b) = (0, 0);
    let (mut a_full, mut b_full) = (false, false);
    while !(a_full && b_full) {
        if !a_full {
            if a.try_acquire(key, limit).await.unwrap() { got_a += 1 } else { a_full = true }
        }
        if !b_full {
            if b.try_acquire(key, limit).await.unwrap() { got_b += 1 } else { b_full = true }
        }
        assert!(got_a + got_b <= limit, "{got_a} + {got_b} permits handed out under a limit of {limit}");
    }
    (got_a, got_b)
}

#[tokio::test]
async fn two_holders_never_exceed_the_limit_and_surplus_goes_back() {
    let (client, table) = table().await;
    let lease = Duration::from_secs(600);
    let a = limiter(&client, &table, "a", 2, lease);
    let b = limiter(&client, &table, "b", 2, lease);
    let key = LimitKey::Deployment("sim".into());
    let (got_a, got_b) = fill(&a, &b, &key, 5).await;
    assert_eq!(got_a + got_b, 5);
    assert!(got_a > 0 && got_b > 0, "both holders got permits: {got_a}, {got_b}");
    assert_eq!(a.leased_total(&key).await.unwrap(), 5);
    assert_eq!(a.in_use(&key).await.unwrap() + b.in_use(&key).await.unwrap(), 5);
    // Other keys are independent.
    assert!(a.try_acquire(&LimitKey::Global, 1).await.unwrap());
    assert!(!b.try_acquire(&LimitKey::Global, 1).await.unwrap());

    // b releases everything: its permits go back and a can take them.
    for _ in 0..got_b {
        b.release(&key).await.unwrap();
    }
    assert_eq!(b.in_use(&key).await.unwrap(), 0);
    assert_eq!(b.leased(&key).await, 0);
    assert_eq!(a.leased_total(&key).await.unwrap(), i64::from(got_a));
    for _ in 0..got_b {
        assert!(a.try_acquire(&key, 5).await.unwrap());
    }
    assert!(!a.try_acquire(&key, 5).await.unwrap());
    assert!(!b.try_acquire(&key, 5).await.unwrap());
    assert_eq!(a.leased_total(&key).await.unwrap(), 5);

    // a releases all: the counter ends at zero, never below.
    for _ in 0..5 {
        a.release(&key).await.unwrap();
        assert!(a.leased_total(&key).await.unwrap() >= 0);
    }
    a.release(&key).await.unwrap(); // one too many: a no-op
    assert_eq!(a.leased_total(&key).await.unwrap(), 0);
    assert_eq!(a.in_use(&key).await.unwrap(), 0);
}

#[tokio::test]
async fn a_surplus_of_two_chunks_is_given_back_while_permits_are_in_use() {
    let (client, table) = table().await;
    let a = limiter(&client, &table, "a", 4, Duration::from_secs(600));
    let key = LimitKey::Model("sim".into(), "m".into());
    for _ in 0..12 {
        assert!(a.try_acquire(&key, 100).await.unwrap());
    }
    assert_eq!(a.leased_total(&key).await.unwrap(), 12);
    for _ in 0..7 {
        a.release(&key).await.unwrap();
    }
    // Surplus 7 < two chunks: kept.
    assert_eq!(a.leased_total(&key).await.unwrap(), 12);
    a.release(&key).await.unwrap();
    // Surplus 8 = two chunks: all but one chunk goes back.
    assert_eq!(a.leased(&key).await, 8);
    assert_eq!(a.leased_total(&key).await.unwrap(), 8);
    assert_eq!(a.in_use(&key).await.unwrap(), 4);
    // Taking the surplus again needs no write; the last release gives everything back.
    for _ in 0..4 {
        assert!(a.try_acquire(&key, 100).await.unwrap());
    }
    assert_eq!(a.leased_total(&key).await.unwrap(), 8);
    for _ in 0..8 {
        a.release(&key).await.unwrap();
    }
    assert_eq!(a.leased_total(&key).await.unwrap(), 0);
}

#[tokio::test]
async fn a_dead_holders_permits_come_back_once_its_lease_expired() {
    let (client, table) = table().await;
    let key = LimitKey::Deployment("sim".into());
    let b = limiter(&client, &table, "b", 2, Duration::from_secs(600));
    {
        let dying = limiter(&client, &table, "dying", 2, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(dying.try_acquire(&key, 3).await.unwrap());
        }
        // Dropped without releasing: the container died.
    }
    assert!(!b.try_acquire(&key, 3).await.unwrap());
    let now = SystemClock.now();
    let sweeper = limiter(&client, &table, "sweeper", 8, Duration::from_secs(600));
    let keys = [key.clone(), LimitKey::Global];
    assert_eq!(sweeper.reclaim_expired(&keys, now).await.unwrap(), 0, "the lease has not expired yet");
    assert!(!b.try_acquire(&key, 3).await.unwrap());
    assert_eq!(sweeper.reclaim_expired(&keys, now + 5_000).await.unwrap(), 3);
    assert_eq!(sweeper.leased_total(&key).await.unwrap(), 0);
    assert!(b.try_acquire(&key, 3).await.unwrap());
    // b's own lease is live at that time: nothing more to reclaim.
    assert_eq!(sweeper.reclaim_expired(&keys, now + 5_000).await.unwrap(), 0);
    assert_eq!(sweeper.leased_total(&key).await.unwrap(), 2);
}

#[tokio::test]
async fn a_holder_whose_lease_was_reclaimed_never_drives_the_counter_negative() {
    let (client, table) = table().await;
    let key = LimitKey::Deployment("sim".into());
    let a = limiter(&client, &table, "a", 2, Duration::from_secs(1));
    assert!(a.try_acquire(&key, 4).await.unwrap());
    assert!(a.try_acquire(&key, 4).await.unwrap());
    let sweeper = limiter(&client, &table, "sweeper", 2, Duration::from_secs(600));
    // a looked dead to the sweeper (frozen past its lease).
    assert_eq!(sweeper.reclaim_expired(std::slice::from_ref(&key), SystemClock.now() + 5_000).await.unwrap(), 2);
    assert_eq!(sweeper.leased_total(&key).await.unwrap(), 0);
    a.release(&key).await.unwrap();
    a.release(&key).await.unwrap();
    assert_eq!(sweeper.leased_total(&key).await.unwrap(), 0);
    assert_eq!(a.in_use(&key).await.unwrap(), 0);
    // And it can lease again.
    assert!(a.try_acquire(&key, 4).await.unwrap());
    assert_eq!(sweeper.leased_total(&key).await.unwrap(), 2);
}

/// The waiting line of a limit key: tickets stand best first next to the counter, a holder's
/// view shows what is free across holders, standing gives back the holder's idle permits,
/// leaving and expiry take a ticket out (an expired one is deleted by the reader that meets it),
/// and the view is read again only after `line_view`.
#[tokio::test]
async fn a_limits_waiting_line_is_shared_best_first_and_forgets_what_left_or_expired() {
    let (client, table) = table().await;
    let key = LimitKey::Deployment("sim".into());
    let settings = LimiterSettings { chunk: 2, line_view: Duration::ZERO, ..LimiterSettings::default() };
    let a = DynamoLimiter::new(client.clone(), table.clone(), "a", settings.clone());
    let b = DynamoLimiter::new(client.clone(), table.clone(), "b", settings);
    let ticket = |score, id: &str| Ticket { score, task_id: id.into() };
    let now = SystemClock.now();

    assert_eq!(a.waiting_front(&key, 16, now).await.unwrap(), Some(Line::default()));
    // a takes one permit and leases a chunk of two: one is idle, still its to take.
    assert!(a.try_acquire(&key, 3).await.unwrap());
    assert_eq!(a.waiting_front(&key, 16, now).await.unwrap().unwrap().available(3), 2);
    assert_eq!(b.waiting_front(&key, 16, now).await.unwrap().unwrap().available(3), 1);

    b.stand_in_line(&key, &ticket(2_000, "low"), now).await.unwrap();
    b.stand_in_line(&key, &ticket(1_000, "high"), now).await.unwrap();
    b.stand_in_line(&key, &ticket(1_000, "high"), now).await.unwrap(); // again: renewed, not doubled
    let line = a.waiting_front(&key, 16, now).await.unwrap().unwrap();
    assert_eq!(line.front, vec![ticket(1_000, "high"), ticket(2_000, "low")]);
    assert_eq!(a.waiting_front(&key, 1, now).await.unwrap().unwrap().front, vec![ticket(1_000, "high")]);

    // a stands in line too: its idle permit goes back for whoever is ahead.
    a.stand_in_line(&key, &ticket(3_000, "a-task"), now).await.unwrap();
    assert_eq!(a.leased(&key).await, 1);
    assert_eq!(b.waiting_front(&key, 16, now).await.unwrap().unwrap().available(3), 2);

    b.leave_line(&key, &ticket(1_000, "high")).await.unwrap();
    let front = a.waiting_front(&key, 16, now).await.unwrap().unwrap().front;
    assert_eq!(front, vec![ticket(2_000, "low"), ticket(3_000, "a-task")]);
    // Past their `line_ttl`, tickets are left out and deleted by the reader.
    let later = now + 11_000;
    assert_eq!(b.waiting_front(&key, 16, later).await.unwrap().unwrap().front, vec![]);
    assert_eq!(a.waiting_front(&key, 16, now).await.unwrap().unwrap().front, vec![], "deleted, not only hidden");

    // A view younger than `line_view` is answered without reading.
    let cached = DynamoLimiter::new(client.clone(), table.clone(), "c", LimiterSettings::default());
    assert_eq!(cached.waiting_front(&key, 16, now).await.unwrap().unwrap().front, vec![]);
    a.stand_in_line(&key, &ticket(500, "new"), now).await.unwrap();
    assert_eq!(cached.waiting_front(&key, 16, now + 500).await.unwrap().unwrap().front, vec![]);
    let read_again = cached.waiting_front(&key, 16, now + 1_000).await.unwrap().unwrap();
    assert_eq!(read_again.front, vec![ticket(500, "new")]);
}

/// A change of a deployment's adaptive limit shared by one holder is seen by another with the
/// line (same query); an older change arriving late is dropped.
#[tokio::test]
async fn an_adaptive_change_shared_by_one_holder_is_seen_by_the_others_and_the_newest_wins() {
    let (client, table) = table().await;
    let key = LimitKey::Deployment("sim".into());
    let settings = LimiterSettings { line_view: Duration::ZERO, ..LimiterSettings::default() };
    let a = DynamoLimiter::new(client.clone(), table.clone(), "a", settings.clone());
    let b = DynamoLimiter::new(client.clone(), table.clone(), "b", settings);
    let now = SystemClock.now();
    assert_eq!(b.waiting_front(&key, 16, now).await.unwrap().unwrap().adapted, None);
    let halved = Adapted { limit: 4, held_until: now + 3_000, at: now };
    a.share_adapted(&key, halved).await.unwrap();
    assert_eq!(b.waiting_front(&key, 16, now).await.unwrap().unwrap().adapted, Some(halved));
    let older = Adapted { limit: 8, held_until: 0, at: now - 1 };
    b.share_adapted(&key, older).await.unwrap();
    assert_eq!(a.waiting_front(&key, 16, now).await.unwrap().unwrap().adapted, Some(halved));
    // The counter item keeps counting permits beside it.
    assert!(a.try_acquire(&key, 4).await.unwrap());
    let line = b.waiting_front(&key, 16, now).await.unwrap().unwrap();
    assert_eq!((line.leased, line.adapted), (4, Some(halved)), "a leased a chunk of min(8, 4)");
}
