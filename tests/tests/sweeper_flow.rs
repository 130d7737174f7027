//! The sweeper's newer parts against the local AWS emulator (LocalStack unless
//! `TASKEXEC_TEST_EMULATOR=moto`; started by `scripts/emulators` when `TASKEXEC_TEST_AWS_ENDPOINT`
//! is unset): the re-send rule (a backlog is never re-sent, a lost send is re-sent once),
//! rebalancing written to real event source mappings (on moto whatever the switch: it keeps and
//! returns `ScalingConfig`, though it never delivers; LocalStack's Lambda needs Docker and a real
//! package, and its mappings need the queues on the same emulator), breakers moved to
//! half-open with a conditional write, and stuck runs found from the active runs and confirmed
//! from the tasks' states.

#[path = "../../shared/aws/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use taskexec_aws::{EventSourceMappings, SqsQueue};
use taskexec_core::breaker::{BreakerSnapshot, BreakerState};
use taskexec_core::memory::{Counters, CountingSink};
use taskexec_core::ports::Topology;
use taskexec_core::ports::{BreakerStore, DeliveryBuilder, TaskStore, WorkQueue};
use taskexec_core::task::{BenchmarkTask, TaskRecord};
use taskexec_core::time::{Clock, Millis, SystemClock};
use taskexec_lambda::sweeper::breakers::half_open_breakers;
use taskexec_lambda::sweeper::mappings::rebalance_mappings;
use taskexec_lambda::sweeper::resend::{ResendSettings, resend_missing};
use taskexec_lambda::sweeper::stuck::{DEFAULT_STUCK_AFTER, stuck_runs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIN: Millis = 60_000;

fn lambda_client() -> aws_sdk_lambda::Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
        .region(aws_sdk_lambda::config::Region::new("us-east-1"))
        .endpoint_url(common::moto_endpoint())
        .credentials_provider(aws_sdk_lambda::config::Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_lambda::Client::from_conf(config)
}

/// moto creates a function only for an existing IAM role. There is no IAM SDK crate in the
/// workspace, so the role is created with one raw query-protocol request (moto does not check
/// signatures; the credential scope routes it to IAM).
async fn create_role(name: &str) -> String {
    let endpoint = common::moto_endpoint();
    let host = endpoint.trim_start_matches("http://");
    let body = format!("Action=CreateRole&Version=2010-05-08&RoleName={name}&AssumeRolePolicyDocument=%7B%7D");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("CreateRoleResponse"), "IAM CreateRole on the emulator: {reply}");
    format!("arn:aws:iam::123456789012:role/{name}")
}

/// A function stub (moto stores the code, it never runs it) and one disabled mapping per queue
/// with the given `MaximumConcurrency`; disabled, because moto tries to invoke the function on
/// every send to a queue with an enabled mapping. Returns the mappings' UUIDs.
async fn mappings(lambda: &aws_sdk_lambda::Client, topology: &Topology, start: [i32; 3]) -> [String; 3] {
    let role = create_role(&common::unique_name("sweeper-role")).await;
    let function = common::unique_name("worker");
    lambda
        .create_function()
        .function_name(&function)
        .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
        .handler("bootstrap")
        .role(role)
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(b"stub".to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sqs = common::moto_sqs_client();
    let mut uuids = Vec::new();
    for (pair, value) in topology.queues.iter().zip(start) {
        let attributes = sqs.get_queue_attributes().queue_url(&pair.url).attribute_names(QueueAttributeName::QueueArn);
        let arn = attributes.send().await.unwrap().attributes.unwrap()[&QueueAttributeName::QueueArn].clone();
        let scaling = aws_sdk_lambda::types::ScalingConfig::builder().maximum_concurrency(value).build();
        let mapping = lambda
            .create_event_source_mapping()
            .function_name(&function)
            .event_source_arn(arn)
            .batch_size(10)
            .enabled(false)
            .scaling_config(scaling)
            .send()
            .await
            .unwrap();
        uuids.push(mapping.uuid.unwrap());
    }
    uuids.try_into().unwrap()
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, n: usize, delay: i32) {
    for i in 0..n {
        sqs.send_message().queue_url(url).message_body(format!("m{i}")).delay_seconds(delay).send().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_writes_the_changed_mappings_maximum_concurrency() {
    let sqs = common::moto_sqs_client();
    let lambda = lambda_client();
    let topology = common::fresh_topology(&sqs).await;
    // Backlogs: high 6 visible + 2 delayed, normal none, low 1 (and one in flight, not counted).
    send(&sqs, &topology.queues[0].url, 6, 0).await;
    send(&sqs, &topology.queues[0].url, 2, 600).await;
    send(&sqs, &topology.queues[2].url, 2, 0).await;
    let received = sqs.receive_message().queue_url(&topology.queues[2].url).max_number_of_messages(1).send().await;
    assert_eq!(received.unwrap().messages.unwrap_or_default().len(), 1, "one low message in flight");
    let uuids = mappings(&lambda, &topology, [10, 10, 10]).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let weights = EventSourceMappings::new(lambda.clone(), uuids.clone());

    let report = rebalance_mappings(&queue, &weights).await.unwrap();
    assert_eq!(report.backlogs, [8, 0, 1], "visible + delayed, in flight left out");
    assert_eq!(report.before, [10, 10, 10]);
    let expected = taskexec_lambda::sweeper::rebalance([8, 0, 1], 30);
    assert_eq!(report.after, expected);
    assert_eq!(report.after.iter().sum::<u32>(), 30, "the total (the reserved concurrency) is kept");
    assert!(report.after[0] > report.after[2] && report.after[1] == 2 && report.after[2] >= 2, "{report:?}");
    assert_eq!((report.updated, report.failed), (3, 0));
    for (uuid, want) in uuids.iter().zip(expected) {
        let mapping = lambda.get_event_source_mapping().uuid(uuid).send().await.unwrap();
        let value = mapping.scaling_config().and_then(|s| s.maximum_concurrency());
        assert_eq!(value, i32::try_from(want).ok(), "mapping {uuid} as the emulator returns it");
    }

    // Unchanged backlogs: nothing is written.
    let again = rebalance_mappings(&queue, &weights).await.unwrap();
    assert_eq!((again.before, again.after, again.updated), (expected, expected, 0));

    // Everything drained: back to an even share.
    for pair in &topology.queues {
        sqs.purge_queue().queue_url(&pair.url).send().await.unwrap();
    }
    let drained = rebalance_mappings(&queue, &weights).await.unwrap();
    assert_eq!((drained.backlogs, drained.after), ([0, 0, 0], [10, 10, 10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_past_their_cool_down_are_written_half_open_only_if_unchanged() {
    let store = common::fresh_store().await;
    let now = SystemClock.now();
    let open =
        |until| BreakerSnapshot { state: BreakerState::Open, opens: 1, open_until: Some(until), changed_at: now - MIN };
    store.save("due", open(now - 1_000)).await.unwrap();
    store.save("cooling", open(now + 10 * MIN)).await.unwrap();
    let sink = CountingSink::default();
    let names: Vec<String> = ["due", "cooling", "never-opened"].map(String::from).to_vec();
    let done = half_open_breakers(&store, &names, &sink, &SystemClock).await;
    assert_eq!((done.moved, done.failed), (vec!["due".to_owned()], 0));
    let due = BreakerStore::load(&store, "due").await.unwrap().unwrap();
    assert_eq!((due.state, due.opens, due.open_until), (BreakerState::HalfOpen, 1, Some(now - 1_000)));
    assert_eq!(BreakerStore::load(&store, "cooling").await.unwrap().unwrap(), open(now + 10 * MIN));
    assert_eq!(Counters::get(&sink.counters.open_breakers), 1, "BreakerChanged(half-open) recorded once");

    // A worker re-opened the breaker after the sweeper read it: the conditional write loses.
    let read = open(now - 1_000);
    store.save("raced", read.clone()).await.unwrap();
    let reopened = BreakerSnapshot { opens: 2, open_until: Some(now + 5 * MIN), changed_at: now, ..read.clone() };
    store.save("raced", reopened.clone()).await.unwrap();
    let half = BreakerSnapshot { state: BreakerState::HalfOpen, changed_at: now, ..read.clone() };
    assert!(!store.replace_breaker_if("raced", &read, &half).await.unwrap());
    assert_eq!(BreakerStore::load(&store, "raced").await.unwrap().unwrap(), reopened);
    assert!(!store.replace_breaker_if("absent", &read, &half).await.unwrap(), "no item, no write");
}

fn task(run: &str, i: usize) -> BenchmarkTask {
    task_at(run, i, "normal")
}

fn task_at(run: &str, i: usize, priority: &str) -> BenchmarkTask {
    serde_json::from_value(serde_json::json!({"id": format!("{run}-{i}"), "providerId": "sim", "modelId": "sim-small",
        "prompt": format!("q{i}"), "priority": priority, "runId": run}))
    .unwrap()
}

/// Store `records` and send their messages, as the API does (`store.submit`, then one
/// `SendMessageBatch` per ten deliveries through the work queue, then `store.mark_sent`).
async fn submit_and_send(store: &taskexec_aws::DynamoStore, queue: &SqsQueue, records: Vec<TaskRecord>) {
    let mut builder = DeliveryBuilder::default();
    let deliveries: Vec<_> = records.iter().map(|r| builder.of_task(&r.task, r.run_id(), r.submitted_at)).collect();
    store.submit(records).await.unwrap();
    WorkQueue::send(queue, deliveries.iter().map(|d| (d.clone(), Duration::ZERO)).collect()).await.unwrap();
    store.mark_sent(&deliveries).await.unwrap();
}

/// Messages in a queue: visible, delayed and in flight, as SQS counts them.
async fn messages(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let names = [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ];
    let out = sqs.get_queue_attributes().queue_url(url).set_attribute_names(Some(names.to_vec())).send().await;
    out.unwrap().attributes.unwrap_or_default().values().map(|v| v.parse::<u64>().unwrap()).sum()
}

/// Issue 8, point 2: a backlog of 5,000 queued tasks (stored and sent normally, submitted half an
/// hour ago: 2,500 normal, 2,500 low) and several sweeps: no message is sent for them. Two tasks
/// whose send was lost (stored, never sent: their journal entry stays unsent), a high one and a
/// normal one behind the backlog, are re-sent exactly once over the same sweeps, whether their new
/// message is waiting or in flight.
///
/// The backlog is split over two queues because moto 5.2.5 recomputes a queue's attributes,
/// walking all its messages, on every send: sending n messages to one queue takes time in n²
/// (measured: 2,000 messages in one queue, 65 s on a private moto server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_never_resent_and_a_lost_send_is_resent_once() {
    const BACKLOG: usize = 5_000;
    let sqs = common::sqs_client();
    let store = common::fresh_store().await;
    let topology = common::fresh_topology(&sqs).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let submitted = SystemClock.now() - 30 * MIN;
    let started = std::time::Instant::now();
    let ids: Vec<usize> = (0..BACKLOG).collect();
    for chunk in ids.chunks(500) {
        let priority = |i: usize| if i.is_multiple_of(2) { "normal" } else { "low" };
        let records = chunk.iter().map(|i| TaskRecord::new(task_at("backlog", *i, priority(*i)), submitted)).collect();
        submit_and_send(&store, &queue, records).await;
    }
    eprintln!("{BACKLOG} tasks stored and sent in {:.1} s", started.elapsed().as_secs_f64());
    let lost = [TaskRecord::new(task_at("lost", 0, "high"), submitted), TaskRecord::new(task("lost", 1), submitted)];
    store.submit(lost.to_vec()).await.unwrap();
    let urls: Vec<&str> = topology.queues.iter().map(|q| q.url.as_str()).collect();
    let depths =
        || async { [messages(&sqs, urls[0]).await, messages(&sqs, urls[1]).await, messages(&sqs, urls[2]).await] };
    assert_eq!(depths().await, [0, 2_500, 2_500]);
    // What the rule replaced: all of them are due by their own timing, so the old sweeper sent
    // its limit of 1,000 a minute.
    assert_eq!(store.overdue(SystemClock.now(), 1_000).await.unwrap().len(), 1_000);

    let sweep = || resend_missing(&store, &queue, &SystemClock, ResendSettings::default());
    let started = std::time::Instant::now();
    let first = sweep().await.unwrap();
    eprintln!("first sweep over {} tasks: {:.2} s", BACKLOG + 2, started.elapsed().as_secs_f64());
    assert_eq!((first.resent, first.failed, first.unrecorded), (2, 0, 0), "only the two lost tasks: {first:?}");
    assert_eq!(depths().await, [1, 2_501, 2_500]);
    for _ in 0..3 {
        assert_eq!(sweep().await.unwrap().resent, 0, "its new message is waiting");
    }
    // A worker received the re-sent message (in flight now): still not sent again.
    let received = sqs.receive_message().queue_url(urls[0]).visibility_timeout(600).send().await.unwrap();
    let bodies: Vec<String> = received.messages.unwrap_or_default().into_iter().filter_map(|m| m.body).collect();
    assert_eq!(bodies.len(), 1);
    assert!(bodies[0].contains("\"lost-0\""), "{bodies:?}");
    for _ in 0..2 {
        assert_eq!(sweep().await.unwrap().resent, 0, "its new message is in flight");
    }
    assert_eq!(depths().await, [1, 2_501, 2_500], "no message sent for the backlog, none twice");
    for id in ["lost-0", "lost-1"] {
        let events = store.events(id).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == "resent").count(), 1, "the re-send is on its trail: {events:?}");
    }
}

/// A lost send behind a backlog is re-sent at the first sweep past the grace, once, and a task
/// claimed or finished before the sweep is never re-sent (its message was received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_send_behind_a_backlog_is_resent_once_and_a_claimed_one_never() {
    let sqs = common::sqs_client();
    let store = common::fresh_store().await;
    let topology = common::fresh_topology(&sqs).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let submitted = SystemClock.now() - 30 * MIN;
    let records = (0..3).map(|i| TaskRecord::new(task("drained", i), submitted)).collect();
    submit_and_send(&store, &queue, records).await;
    store.submit(vec![TaskRecord::new(task("drained", 3), submitted)]).await.unwrap();
    // Lost too, but cancelled before the sweep: nothing to send.
    store.submit(vec![TaskRecord::new(task("drained", 4), submitted)]).await.unwrap();
    store.cancel("drained-4", SystemClock.now()).await.unwrap();
    // Submitted within the grace and not settled yet: the API may still be sending it.
    store.submit(vec![TaskRecord::new(task("drained", 5), SystemClock.now())]).await.unwrap();
    let sweep = || resend_missing(&store, &queue, &SystemClock, ResendSettings::default());
    let report = sweep().await.unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    for _ in 0..2 {
        assert_eq!(sweep().await.unwrap().resent, 0, "once");
    }
    let normal = &topology.queues[1].url;
    assert_eq!(messages(&sqs, normal).await, 4, "three sent by the submission, one by the sweeper");
    let events = store.events("drained-3").await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "resent").count(), 1, "{events:?}");
}

/// A redriven task whose send was lost (redriven, never sent) is re-sent once; one redriven and
/// sent (settled by `mark_sent`) never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_whose_send_was_lost_is_resent_once() {
    use taskexec_core::error::{ErrorClass, TaskError};
    use taskexec_core::ports::{ClaimOutcome, ClaimRequest, FinishRequest, Outcome};
    let sqs = common::sqs_client();
    let store = common::fresh_store().await;
    let topology = common::fresh_topology(&sqs).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let at = SystemClock.now() - 30 * MIN;
    let records = (0..2).map(|i| TaskRecord::new(task("redriven", i), at)).collect();
    submit_and_send(&store, &queue, records).await;
    let normal = &topology.queues[1].url;
    for i in 0..2 {
        let id = format!("redriven-{i}");
        let claim = ClaimRequest { task_id: id.clone(), owner: "w".into(), now: at + 10, lease_until: at + 60_000 };
        let ClaimOutcome::Claimed(running) = store.claim(claim).await.unwrap() else { panic!("not claimed") };
        let error = TaskError::new(ErrorClass::Permanent, "bad request");
        let finish = FinishRequest {
            task_id: id.clone(),
            epoch: running.epoch,
            outcome: Outcome::Failed { error, dead_letter_reason: None },
            attempt: 1,
            throttles: 0,
            record: None,
            now: at + 20,
        };
        store.finish(finish).await.unwrap();
        store.redrive(&id, at + 30).await.unwrap();
    }
    // The first one's message goes out and its entry is settled, as the API does; the second's
    // send is lost.
    let sent = store.get("redriven-0").await.unwrap().unwrap();
    let delivery = DeliveryBuilder::default().of_task(&sent.task, sent.run_id(), at + 30);
    WorkQueue::send(&queue, vec![(delivery.clone(), Duration::ZERO)]).await.unwrap();
    store.mark_sent(&[delivery]).await.unwrap();
    let sweep = || resend_missing(&store, &queue, &SystemClock, ResendSettings::default());
    assert_eq!(sweep().await.unwrap().resent, 1);
    assert_eq!(sweep().await.unwrap().resent, 0, "once");
    let events = store.events("redriven-1").await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "resent").count(), 1, "{events:?}");
    assert_eq!(messages(&sqs, normal).await, 4, "2 at submission, the sent redrive, the re-sent one");
}

/// Messages lost after they were sent (here: the queue purged) are not in any unsent journal
/// entry: the run stops finishing, the stuck-run check reports it, and its tasks go through the
/// queue rule (their queue is empty): re-sent once, by the same sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_stuck_run_whose_messages_were_purged_are_resent_once() {
    use taskexec_lambda::sweeper::{SweeperPorts, SweeperSettings};
    let sqs = common::sqs_client();
    let store = common::fresh_store().await;
    let topology = common::fresh_topology(&sqs).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let records = (0..3).map(|i| TaskRecord::new(task("purged", i), SystemClock.now() - 20 * MIN)).collect();
    submit_and_send(&store, &queue, records).await;
    let normal = &topology.queues[1].url;
    sqs.purge_queue().queue_url(normal).send().await.unwrap();
    assert_eq!(messages(&sqs, normal).await, 0);
    let sink = CountingSink::default();
    let ports = SweeperPorts {
        index: &store,
        queue: &queue,
        breakers: &store,
        weights: None::<(&SqsQueue, &EventSourceMappings)>,
        runs: &store,
        metrics: &sink,
    };
    let summary = ports.run(&SystemClock, &SweeperSettings::default()).await;
    assert_eq!(summary.stuck.as_ref().map(Vec::len), Some(1), "{summary}");
    assert_eq!(summary.resend.as_ref().map(|r| r.resent), Some(3), "{summary}");
    let again = ports.run(&SystemClock, &SweeperSettings::default()).await;
    assert_eq!(again.resend.as_ref().map(|r| r.resent), Some(0), "once: {again}");
    assert_eq!(messages(&sqs, normal).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_runs_are_found_from_the_active_runs_and_confirmed_from_the_states() {
    let store = common::fresh_store().await;
    let now = SystemClock.now();
    let submit = |run: &'static str, n: usize, at: Millis| {
        let store = &store;
        async move {
            let records = (0..n).map(|i| TaskRecord::new(task(run, i), at)).collect();
            store.submit(records).await.unwrap();
        }
    };
    // Nothing finished, submitted 20 minutes ago: stuck.
    submit("idle", 3, now - 20 * MIN).await;
    // Last finish 18 minutes ago, two left: stuck.
    submit("stalled", 3, now - 30 * MIN).await;
    store.cancel("stalled-0", now - 18 * MIN).await.unwrap();
    // A task finished a minute ago: moving.
    submit("moving", 3, now - 20 * MIN).await;
    store.cancel("moving-0", now - MIN).await.unwrap();
    // Submitted a minute ago: not a candidate yet.
    submit("fresh", 2, now - MIN).await;
    // Everything finished: a candidate by its counters, not stuck, and then no candidate at all.
    submit("done", 1, now - 40 * MIN).await;
    store.cancel("done-0", now - 39 * MIN).await.unwrap();
    assert!(store.waiting_runs(now - 15 * MIN, 20).await.unwrap().iter().any(|(run, _)| run == "done"));

    let mut stuck = stuck_runs(&store, &SystemClock, DEFAULT_STUCK_AFTER, 20).await.unwrap();
    stuck.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let found: Vec<(&str, u64, Option<Millis>)> =
        stuck.iter().map(|s| (s.run_id.as_str(), s.unfinished, s.last_finished_at)).collect();
    assert_eq!(found, [("idle", 3, None), ("stalled", 2, Some(now - 18 * MIN))]);
    assert_eq!(stuck[0].oldest_due_at, now - 20 * MIN);

    // A shorter threshold makes the moving run's minute-old finish too old as well.
    let short = stuck_runs(&store, &SystemClock, Duration::from_secs(30), 20).await.unwrap();
    assert!(short.iter().any(|s| s.run_id == "moving"), "{short:?}");
    assert!(!short.iter().any(|s| s.run_id == "done"), "{short:?}");
    // The candidate limit bounds the confirmations.
    assert_eq!(stuck_runs(&store, &SystemClock, DEFAULT_STUCK_AFTER, 1).await.unwrap().len(), 1);
    let waiting = store.waiting_runs(now, 20).await.unwrap();
    assert!(!waiting.iter().any(|(run, _)| run == "done"), "a finished run leaves the active index: {waiting:?}");
    // New work for it marks it active again.
    submit("done", 2, now - 20 * MIN).await;
    let stuck = stuck_runs(&store, &SystemClock, DEFAULT_STUCK_AFTER, 20).await.unwrap();
    assert!(stuck.iter().any(|s| s.run_id == "done" && s.unfinished == 1), "{stuck:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sweep_does_every_part() {
    use taskexec_lambda::sweeper::{SweeperPorts, SweeperSettings};
    let sqs = common::moto_sqs_client();
    let lambda = lambda_client();
    let store = common::fresh_store().await;
    let topology = common::fresh_topology(&sqs).await;
    send(&sqs, &topology.queues[2].url, 3, 0).await;
    let uuids = mappings(&lambda, &topology, [4, 4, 4]).await;
    let queue = SqsQueue::new(sqs.clone(), topology.clone());
    let weights = EventSourceMappings::new(lambda.clone(), uuids);
    let now = SystemClock.now();
    store.submit(vec![TaskRecord::new(task("old", 0), now - 20 * MIN)]).await.unwrap();
    let open =
        BreakerSnapshot { state: BreakerState::Open, opens: 1, open_until: Some(now - 1), changed_at: now - MIN };
    store.save("sim", open).await.unwrap();
    let sink = CountingSink::default();
    let ports = SweeperPorts {
        index: &store,
        queue: &queue,
        breakers: &store,
        weights: Some((&queue, &weights)),
        runs: &store,
        metrics: &sink,
    };
    let settings = SweeperSettings { deployments: vec!["sim".into()], ..SweeperSettings::default() };
    let summary = ports.run(&SystemClock, &settings).await;
    assert_eq!(summary.resend.as_ref().map(|r| r.resent), Some(1), "{summary}");
    // The re-sent normal task counts: backlogs [0, 1, 3], weighted 0 : 2 : 3 over the spare 6.
    assert_eq!(summary.rebalance.as_ref().map(|r| r.backlogs), Some([0, 1, 3]), "{summary}");
    assert_eq!(summary.rebalance.as_ref().map(|r| r.after), Some([2, 4, 6]), "{summary}");
    assert_eq!(summary.half_opened, ["sim"]);
    assert_eq!(summary.stuck.as_ref().map(Vec::len), Some(1), "{summary}");
    let text = summary.to_string();
    assert!(text.contains("re-sent 1 task(s) whose message was missing") && text.contains("1 stuck run(s)"), "{text}");
}

/// A global pause disables the worker's three mappings and a resume enables them again (the api
/// does it at once, the sweeper each sweep): only mappings in the other state are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_pause_switches_the_worker_mappings_off_and_a_resume_on() {
    let sqs = common::moto_sqs_client();
    let lambda = lambda_client();
    let topology = common::fresh_topology(&sqs).await;
    let uuids = mappings(&lambda, &topology, [10, 10, 10]).await; // created disabled
    let switch = EventSourceMappings::new(lambda.clone(), uuids.clone());
    let states = || async {
        let mut out = Vec::new();
        for uuid in &uuids {
            let mapping = lambda.get_event_source_mapping().uuid(uuid).send().await.unwrap();
            out.push(mapping.state().unwrap_or("").to_owned());
        }
        out
    };
    assert_eq!(switch.set_enabled(true).await.unwrap(), 3, "resume: the three disabled mappings enabled");
    assert!(states().await.iter().all(|s| s == "Enabled" || s == "Enabling"), "{:?}", states().await);
    assert_eq!(switch.set_enabled(true).await.unwrap(), 0, "already enabled: nothing written");
    assert_eq!(switch.set_enabled(false).await.unwrap(), 3, "pause: the three disabled");
    assert!(states().await.iter().all(|s| s == "Disabled" || s == "Disabling"), "{:?}", states().await);
    assert_eq!(switch.set_enabled(false).await.unwrap(), 0);
}
