//! [`SqsQueue`], the work queue port, on the local AWS emulator: sending by priority in batches
//! of at most ten, delays, receiving high before normal before low with receipts, acknowledging,
//! retrying by visibility, dead-lettering to the DLQ of the queue a copy came from, and the count
//! of SQS requests. Fresh queues per test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use taskexec_aws::SqsQueue;
use taskexec_core::message::{PoisonNote, QueueMessage, decode};
use taskexec_core::ports::{DeadLetter, Delivery, Receipt, Route, WorkQueue};
use taskexec_core::task::TaskPriority;

async fn fresh_queue() -> (SqsQueue, aws_sdk_sqs::Client) {
    let client = common::sqs_client();
    let topology = common::fresh_topology(&client).await;
    (SqsQueue::new(client.clone(), topology), client)
}

fn url(queue: &SqsQueue, priority: TaskPriority) -> String {
    queue.topology().for_priority(priority).url.clone()
}

fn dlq(queue: &SqsQueue, priority: TaskPriority) -> String {
    queue.topology().for_priority(priority).dlq_url.clone()
}

fn delivery(id: &str, priority: TaskPriority) -> Delivery {
    let route = Arc::new(Route { provider_id: "p".into(), model_id: "m".into(), run_id: "r".into() });
    Delivery::new(id, route, priority, 1_700_000_000_000)
}

fn ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.task_id.as_str()).collect()
}

/// The bodies waiting in one queue (received, so in flight afterwards).
async fn bodies(client: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let out = client.receive_message().queue_url(url).max_number_of_messages(10).send().await.unwrap();
    out.messages.unwrap_or_default().into_iter().filter_map(|m| m.body).collect()
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
    assert_eq!(counts(&client, &url(&queue, TaskPriority::High)).await.0, 12);
    assert_eq!(counts(&client, &url(&queue, TaskPriority::Normal)).await.0, 1);
    assert_eq!(counts(&client, &url(&queue, TaskPriority::Low)).await.0, 10);
    let body = bodies(&client, &url(&queue, TaskPriority::Normal)).await;
    assert_eq!(decode(&body[0]).unwrap(), QueueMessage::Task(delivery("n0", TaskPriority::Normal)));
}

#[tokio::test]
async fn receives_high_then_normal_then_low_with_receipts_and_acks_delete() {
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
    loop {
        let batch = queue.receive(10, Duration::ZERO).await.unwrap();
        let Some(d) = batch.first() else { break };
        assert_eq!(d.receive_count, 1);
        assert_eq!(d.receipt.source(), Some(url(&queue, d.priority).as_str()), "the receipt names its queue");
        for received in &batch {
            queue.ack(&received.receipt).await.unwrap();
        }
        order.extend(batch.into_iter().map(|d| d.task_id));
    }

    assert_eq!(order, ["high", "normal", "low"]);
    assert_eq!(queue.len(), 0);
    for priority in [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low] {
        assert_eq!(counts(&client, &url(&queue, priority)).await, (0, 0, 0), "{priority:?}: acknowledged, deleted");
    }
}

#[tokio::test]
async fn a_copy_received_and_not_settled_is_in_flight_not_lost() {
    let (queue, client) = fresh_queue().await;
    let batch: Vec<_> = (0..12).map(|i| (delivery(&format!("n{i}"), TaskPriority::Normal), Duration::ZERO)).collect();
    queue.send(batch).await.unwrap();
    let first = queue.receive(12, Duration::ZERO).await.unwrap();
    assert!(!first.is_empty() && first.len() <= 10, "one request: at most ten, got {}", first.len());
    let (visible, in_flight, _) = counts(&client, &url(&queue, TaskPriority::Normal)).await;
    assert_eq!((visible + in_flight, in_flight), (12, first.len() as u64), "received, not deleted");
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

    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty(), "nothing is visible yet");
    assert_eq!(counts(&client, &url(&queue, TaskPriority::Low)).await.2, 1, "an hour is sent as SQS's maximum, 900 s");
    // The long poll waits for the emulator's clock: the message becomes visible after 2 s.
    let soon = queue.receive(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&soon), ["soon"]);
}

#[tokio::test]
async fn retry_after_brings_the_same_message_back_and_a_refresh_is_a_fresh_one() {
    let (queue, client) = fresh_queue().await;
    queue.send(vec![(delivery("t1", TaskPriority::Normal), Duration::ZERO)]).await.unwrap();
    let first = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
    assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty(), "in flight");

    queue.retry_after(&first, Duration::ZERO).await.unwrap();
    let second = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!((second.task_id.as_str(), second.receive_count), ("t1", 2), "the same message, received again");

    // A refresh, as the worker does it: a fresh copy, and the old message acknowledged.
    queue.send(vec![(second.fresh_copy(), Duration::ZERO)]).await.unwrap();
    queue.ack(&second.receipt).await.unwrap();
    let fresh = queue.receive(1, Duration::from_secs(2)).await.unwrap().remove(0);
    assert_eq!((fresh.receive_count, fresh.deferrals), (1, 2), "a new message carrying the deferrals so far");
    queue.ack(&fresh.receipt).await.unwrap();
    assert_eq!(counts(&client, &url(&queue, TaskPriority::Normal)).await, (0, 0, 0));
}

#[tokio::test]
async fn dead_letters_go_to_the_dlq_of_the_queue_the_copy_came_from() {
    let (queue, client) = fresh_queue().await;
    // An envelope that says low, put on the high queue by another producer: its DLQ is high's.
    queue.send_raw(&url(&queue, TaskPriority::High), &delivery("odd", TaskPriority::Low).to_body()).await.unwrap();
    let odd = queue.receive(1, Duration::ZERO).await.unwrap().remove(0);
    queue.dead_letter(DeadLetter::Task(&odd)).await.unwrap();
    let dead = bodies(&client, &dlq(&queue, TaskPriority::High)).await;
    assert_eq!(dead.len(), 1);
    assert!(matches!(decode(&dead[0]).unwrap(), QueueMessage::Task(d) if d.task_id == "odd"));

    // A copy never received goes to its priority's DLQ.
    queue.dead_letter(DeadLetter::Task(&delivery("never", TaskPriority::Normal))).await.unwrap();
    assert_eq!(bodies(&client, &dlq(&queue, TaskPriority::Normal)).await.len(), 1);

    let note = PoisonNote { message_id: "m-1".into(), reason: "not JSON".into(), body: "{{".into() };
    let receipt = Receipt::new(url(&queue, TaskPriority::Low), "handle");
    queue.dead_letter(DeadLetter::Poison { receipt: &receipt, note: &note }).await.unwrap();
    let poison = bodies(&client, &dlq(&queue, TaskPriority::Low)).await;
    assert_eq!(PoisonNote::from_body(&poison[0]), Some(note));

    let elsewhere = Receipt::new("https://elsewhere/queue", "handle");
    let note = PoisonNote { message_id: "m-2".into(), reason: "x".into(), body: "y".into() };
    let error = queue.dead_letter(DeadLetter::Poison { receipt: &elsewhere, note: &note }).await.unwrap_err();
    assert!(error.to_string().contains("https://elsewhere/queue"), "{error}");
}

#[tokio::test]
async fn undecodable_messages_are_left_for_the_dead_letter_queue() {
    let (queue, client) = fresh_queue().await;
    queue.send_raw(&url(&queue, TaskPriority::High), "not an envelope").await.unwrap();

    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());

    let high = url(&queue, TaskPriority::High);
    assert_eq!(counts(&client, &high).await.1, 1, "still there, in flight, for the redrive policy");
    assert!(queue.approximate_len().await.unwrap() <= 1);
}

/// A delivery's correlation id (the submitting request's) travels as the message attribute
/// `correlationId` and comes back on the received delivery; one without none comes back without.
#[tokio::test]
async fn a_correlation_id_travels_as_a_message_attribute() {
    let (queue, _) = fresh_queue().await;
    let mut with = delivery("with", TaskPriority::Normal);
    with.correlation = Some(Arc::from("req-42"));
    let without = delivery("without", TaskPriority::Normal);
    queue.send(vec![(with, Duration::ZERO), (without, Duration::ZERO)]).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(queue.receive(10, Duration::from_secs(2)).await.unwrap());
    }
    got.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let correlations: Vec<(&str, Option<&str>)> =
        got.iter().map(|d| (d.task_id.as_str(), d.correlation.as_deref())).collect();
    assert_eq!(correlations, [("with", Some("req-42")), ("without", None)]);
}
