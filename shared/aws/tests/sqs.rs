//! [`SqsQueue`] on the local AWS emulator: sending by priority in batches of at most ten, delays,
//! receiving high before normal before low, the worker's visibility change, refresh and raw
//! sends, and the count of SQS requests. Fresh queues per test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use taskexec_aws::{Envelope, QueueUrls, SqsQueue};
use taskexec_core::ports::{Delivery, Route, WorkQueue};
use taskexec_core::task::TaskPriority;

async fn fresh_queue() -> (SqsQueue, aws_sdk_sqs::Client) {
    let client = common::sqs_client();
    let base = common::unique_name("q");
    let mut urls = Vec::new();
    for priority in ["high", "normal", "low"] {
        let out = client.create_queue().queue_name(format!("{base}-{priority}")).send().await.expect("create queue");
        urls.push(out.queue_url.expect("queue url"));
    }
    let urls = QueueUrls { high: urls[0].clone(), normal: urls[1].clone(), low: urls[2].clone() };
    (SqsQueue::new(client.clone(), urls), client)
}

fn parse_envelope(body: &str) -> Envelope {
    serde_json::from_str(body).expect("an envelope")
}

fn delivery(id: &str, priority: TaskPriority) -> Delivery {
    let route = Arc::new(Route { provider_id: "p".into(), model_id: "m".into(), run_id: "r".into() });
    Delivery::new(id, route, priority, 1_700_000_000_000)
}

/// Messages waiting in one queue: (visible, in flight, delayed).
async fn counts(client: &aws_sdk_sqs::Client, url: &str) -> (u64, u64, u64) {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let attributes = out.attributes.unwrap_or_default();
    let get = |name| attributes.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

#[tokio::test]
async fn sends_to_each_prioritys_queue_in_batches_of_ten() {
    let (queue, client) = fresh_queue().await;
    let mut deliveries = Vec::new();
    for i in 0..12 {
        deliveries.push((delivery(&format!("h{i}"), TaskPriority::High), Duration::ZERO));
    }
    deliveries.push((delivery("n0", TaskPriority::Normal), Duration::ZERO));
    for i in 0..10 {
        deliveries.push((delivery(&format!("l{i}"), TaskPriority::Low), Duration::ZERO));
    }

    queue.send(deliveries).await.unwrap();

    assert_eq!(queue.api_calls(), 4, "12 high in two batches, 1 normal, 10 low in one");
    assert_eq!(queue.len(), 23);
    assert_eq!(counts(&client, &queue.urls().high).await.0, 12);
    assert_eq!(counts(&client, &queue.urls().normal).await.0, 1);
    assert_eq!(counts(&client, &queue.urls().low).await.0, 10);
    let body = client.receive_message().queue_url(&queue.urls().normal).send().await.unwrap();
    let body = body.messages.unwrap()[0].body.clone().unwrap();
    assert_eq!(parse_envelope(&body), Envelope::of(&delivery("n0", TaskPriority::Normal)));
}

#[tokio::test]
async fn receives_high_then_normal_then_low_and_deletes_what_it_returns() {
    let (queue, client) = fresh_queue().await;
    queue
        .send(vec![
            (delivery("low", TaskPriority::Low), Duration::ZERO),
            (delivery("normal", TaskPriority::Normal), Duration::ZERO),
            (delivery("high", TaskPriority::High), Duration::ZERO),
        ])
        .await
        .unwrap();

    let mut order = Vec::new();
    while let Some(d) = queue.receive(Duration::ZERO).await.unwrap() {
        assert_eq!(d.receive_count, 1);
        order.push(d.task_id);
    }

    assert_eq!(order, ["high", "normal", "low"]);
    assert_eq!(queue.len(), 0);
    for url in [&queue.urls().high, &queue.urls().normal, &queue.urls().low] {
        assert_eq!(counts(&client, url).await, (0, 0, 0), "{url}: received messages are deleted");
    }
}

#[tokio::test]
async fn delays_hold_messages_back_and_long_ones_are_capped() {
    let (queue, client) = fresh_queue().await;
    queue
        .send(vec![
            (delivery("soon", TaskPriority::Normal), Duration::from_millis(1_500)),
            (delivery("hour", TaskPriority::Low), Duration::from_secs(3_600)),
        ])
        .await
        .unwrap();

    assert_eq!(queue.receive(Duration::ZERO).await.unwrap(), None, "nothing is visible yet");
    assert_eq!(counts(&client, &queue.urls().low).await.2, 1, "an hour is sent as SQS's maximum, 900 s");
    // The long poll waits for the emulator's clock: the message becomes visible after 2 s.
    let soon = queue.receive(Duration::from_secs(10)).await.unwrap().expect("delayed message arrives");
    assert_eq!(soon.task_id, "soon");
}

#[tokio::test]
async fn worker_methods_change_visibility_refresh_and_send_raw() {
    let (queue, client) = fresh_queue().await;
    let url = queue.urls().normal.clone();
    let envelope = Envelope::of(&delivery("t1", TaskPriority::Normal));
    queue.send_raw(&url, &envelope.to_body()).await.unwrap();
    let receive = || async {
        let out = client
            .receive_message()
            .queue_url(&url)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        out.messages.unwrap_or_default().into_iter().next()
    };
    let count_of = |m: &aws_sdk_sqs::types::Message| {
        m.attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount].clone()
    };

    let first = receive().await.expect("sent raw");
    assert!(receive().await.is_none(), "in flight");
    queue.change_visibility(&url, first.receipt_handle().unwrap(), 0).await.unwrap();
    let second = receive().await.expect("visible again at once");
    assert_eq!(count_of(&second), "2");

    // A refresh, as the worker does it: a fresh copy, and the old message gone (the mapping
    // deletes it once the worker reports it done).
    queue.send_body(&url, envelope.to_body(), Duration::ZERO).await.unwrap();
    queue.delete(&url, second.receipt_handle().unwrap()).await.unwrap();

    assert_eq!(counts(&client, &url).await, (1, 0, 0), "the old message is gone, the fresh copy waits");
    let fresh = receive().await.expect("fresh copy");
    assert_eq!(count_of(&fresh), "1");
    assert_eq!(parse_envelope(fresh.body().unwrap()), envelope);
    queue.delete(&url, fresh.receipt_handle().unwrap()).await.unwrap();
    assert_eq!(counts(&client, &url).await, (0, 0, 0));
    assert_eq!(queue.api_calls(), 5, "send_raw, change_visibility, send_body, delete, delete");
}

#[tokio::test]
async fn undecodable_messages_are_left_for_the_dead_letter_queue() {
    let (queue, client) = fresh_queue().await;
    queue.send_raw(&queue.urls().high, "not an envelope").await.unwrap();

    assert_eq!(queue.receive(Duration::ZERO).await.unwrap(), None);

    assert_eq!(counts(&client, &queue.urls().high).await.1, 1, "still there, in flight, for the redrive policy");
    assert!(queue.approximate_len().await.unwrap() <= 1);
}
