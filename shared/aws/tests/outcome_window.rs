//! [`DynamoWindow`] on the local AWS emulator: the breakers' outcome buckets add up over the
//! window asked for, ignore older buckets and other deployments, and sit beside the breaker
//! snapshot in its partition without being mistaken for it.

mod common;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use taskexec_aws::DynamoWindow;
use taskexec_core::breaker::{BreakerSnapshot, BreakerState};
use taskexec_core::ports::BreakerStore;
use taskexec_lambda::window::OutcomeWindow;

const T: i64 = 1_700_000_000_000;

#[tokio::test]
async fn buckets_add_up_over_the_window_and_older_ones_are_ignored() {
    let store = common::fresh_store().await;
    let window = DynamoWindow::new(store.client().clone(), store.config().table.clone(), 120_000);
    // A breaker snapshot in the same partition is not counted.
    let open = BreakerSnapshot { state: BreakerState::Open, opens: 1, open_until: Some(T), changed_at: T - 1 };
    store.save("dep", open.clone()).await.unwrap();
    OutcomeWindow::add(&window, "dep", T - 60_000, 50, 50).await.unwrap();
    OutcomeWindow::add(&window, "dep", T - 27_000, 4, 1).await.unwrap();
    OutcomeWindow::add(&window, "dep", T, 3, 2).await.unwrap();
    OutcomeWindow::add(&window, "dep", T, 1, 1).await.unwrap();
    OutcomeWindow::add(&window, "other", T, 9, 9).await.unwrap();

    assert_eq!(OutcomeWindow::window(&window, "dep", T - 30_000).await.unwrap(), (8, 4));
    assert_eq!(
        OutcomeWindow::window(&window, "dep", T - 27_000).await.unwrap(),
        (8, 4),
        "a bucket starting at since counts"
    );
    assert_eq!(OutcomeWindow::window(&window, "dep", T - 26_999).await.unwrap(), (4, 3));
    assert_eq!(OutcomeWindow::window(&window, "dep", 0).await.unwrap(), (58, 54));
    assert_eq!(OutcomeWindow::window(&window, "nobody", 0).await.unwrap(), (0, 0));
    assert_eq!(store.load("dep").await.unwrap(), Some(open), "the snapshot is untouched");

    // One item per bucket, with a TTL a window-keep past its start.
    let key = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("BREAKER#dep".into())),
        ("sk".to_owned(), AttributeValue::S(format!("BUCKET#{T:015}"))),
    ]);
    let item = store.client().get_item().table_name(&store.config().table).set_key(Some(key)).send().await.unwrap();
    let item = item.item.unwrap();
    assert_eq!(item["calls"], AttributeValue::N("4".into()));
    assert_eq!(item["expiresAt"], AttributeValue::N(((T + 120_000) / 1000).to_string()));
}
