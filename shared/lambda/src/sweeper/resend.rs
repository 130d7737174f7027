//! Re-sending the tasks whose message is missing: the rule, its two ports and the sweep that
//! applies it.
//!
//! **What can go missing.** Every unfinished task must have a live message. A message goes
//! missing when the API stored a task and then its send failed (or its process died in
//! between), when someone purges or deletes messages, or when a message outlives its queue's
//! retention period. A task whose worker died does *not* lose its message: the message stays
//! in flight and comes back after its visibility timeout.
//!
//! **Why "due for a while" does not mean "missing".** A message waits in its queue as long as
//! the backlog ahead of it, hours for a large run, and SQS cannot be searched for one message.
//!
//! **What the store knows** ([`ResendIndex::missing`]). On DynamoDB every submission writes a
//! journal entry of its tasks *before* storing them, marked unsent, and the sender removes the
//! mark once its send succeeded (`TaskStore::mark_sent`): one write per request, not per task.
//! An entry still marked unsent after the grace (default [`DEFAULT_RESEND_GRACE`],
//! `TASKEXEC_RESEND_GRACE_SECONDS`: longer than any request takes) belongs to a submission whose
//! send failed or whose process died; its tasks that are still queued and were never claimed
//! (epoch 0: no message of theirs was ever received) nor re-sent are missing their message,
//! whatever the queues hold, so a lost send is re-sent at the first sweep past the grace, also
//! behind a backlog. A backlog of any size is never re-sent: its entries were settled by their
//! senders. Messages lost otherwise (purged, expired) are not found this way: a run with such a
//! task stops finishing and is reported by the stuck-run check ([`super::stuck`]); the unfinished
//! tasks of each stuck run are then judged by the rule below ([`resend_in_stuck_runs`]).
//!
//! **The rule** ([`ResendRule::is_missing`]) is applied to the unfinished tasks of stuck runs
//! (and by the in-memory index of the tests to every task): a queued task, or a running one whose
//! lease ran out more than the grace ago, is re-sent when its state item has not changed for
//! longer than the grace and either its priority's queue holds no message at all (visible +
//! delayed + in flight, one `GetQueueAttributes` per queue), or its state has not changed for
//! longer than the queue's retention period plus the grace.
//!
//! **Once.** A re-send is recorded on the task as a `resent` entry of its trail (conditional on
//! the status and epoch read; 1 WCU), which counts as a change of state; on DynamoDB a task with
//! a `resent` entry is not re-sent from its journal entry again, and the entry is settled at the
//! next sweep.
//!
//! A duplicate is harmless (claims are fenced by the epoch; the extra message is acknowledged
//! as soon as it finds the task claimed or finished). One is made when a sender sent but died
//! before settling its entry (or its settle failed), and the task was still unclaimed after the
//! grace.

use std::future::Future;
use std::time::Duration;

use taskexec_core::error::StoreError;
use taskexec_core::ports::{Delivery, WorkQueue};
use taskexec_core::task::{TaskPriority, TaskState};
use taskexec_core::time::{Clock, Millis};

use crate::actions::ActionError;

/// Default of the grace: SQS's approximate counts lag up to about a minute, and the sweeper runs
/// once a minute.
pub const DEFAULT_RESEND_GRACE: Duration = Duration::from_secs(120);
/// Default of the index entries read per sweep at most (about 150 bytes each: 20,000 cost about
/// 370 read units).
pub const DEFAULT_SCAN_LIMIT: usize = 20_000;

/// A queue as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages it holds: visible + delayed + in flight (`ApproximateNumberOfMessages`,
    /// `…Delayed`, `…NotVisible`).
    pub messages: u64,
    /// How long it keeps a message (`MessageRetentionPeriod`).
    pub retention: Duration,
}

/// The three queues' depths, as a port (SQS `GetQueueAttributes` in `taskexec-aws`).
pub trait QueueDepths: Send + Sync {
    /// The high, normal and low queues.
    fn depths(&self) -> impl Future<Output = Result<[QueueDepth; 3], ActionError>> + Send;
}

/// An unfinished task as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Route and priority; `ready_at` is its due time (submission, redrive, or the
    /// retry's time).
    pub task: Delivery,
    /// `Queued` or `Running`.
    pub status: TaskState,
    /// The epoch read (the re-send is recorded only if it is unchanged).
    pub epoch: u64,
    /// The lease's end, while running.
    pub lease_until: Option<Millis>,
    /// The last change of its state: the latest trail entry (a `resent` one included).
    pub last_change: Millis,
}

/// The re-send rule at one sweep (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResendRule {
    /// The sweep's time.
    pub now: Millis,
    /// How long a task's state must have been still before it is re-sent.
    pub grace: Duration,
    /// The high, normal and low queues, read at the start of the sweep.
    pub queues: [QueueDepth; 3],
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 4)
}

impl ResendRule {
    /// A task of `priority` can be missing its message only if its state is unchanged since this
    /// time (and it was due by then).
    #[must_use]
    pub fn still_since(&self, priority: TaskPriority) -> Millis {
        let queue = &self.queues[usize::from(priority.rank())];
        let wait = if queue.messages == 0 { self.grace } else { queue.retention + self.grace };
        self.now.saturating_sub(millis(wait))
    }

    /// The latest due time a store listing unfinished tasks must read to: no task due later can be
    /// missing.
    #[must_use]
    pub fn scan_to(&self) -> Millis {
        [TaskPriority::High, TaskPriority::Normal, TaskPriority::Low]
            .into_iter()
            .map(|p| self.still_since(p))
            .max()
            .unwrap_or(self.now)
    }

    /// Whether a task's index entry is worth reading its state for.
    #[must_use]
    pub fn may_be_missing(&self, priority: TaskPriority, due: Millis) -> bool {
        due <= self.still_since(priority)
    }

    /// Whether the task's message is missing.
    #[must_use]
    pub fn is_missing(&self, task: &Candidate) -> bool {
        let settled = match task.status {
            TaskState::Queued => true,
            // A live lease: a worker holds the message. A lease just run out: the message comes
            // back after its visibility timeout.
            TaskState::Running => task.lease_until.is_none_or(|until| until <= self.now - millis(self.grace)),
            _ => false,
        };
        let since = self.still_since(task.task.priority);
        settled && task.task.ready_at <= since && task.last_change <= since
    }
}

/// Where the sweeper finds unfinished tasks and records its re-sends, as a port (the DynamoDB
/// store in `taskexec-aws`).
pub trait ResendIndex: Send + Sync {
    /// Up to `limit` unfinished tasks whose message `rule` finds missing, reading at most
    /// `scan_limit` index entries.
    fn missing(
        &self,
        rule: &ResendRule,
        limit: usize,
        scan_limit: usize,
    ) -> impl Future<Output = Result<Vec<Candidate>, StoreError>> + Send;
    /// Record that the task's message was re-sent at `at`, only if its status and epoch are
    /// still the ones read; `false` when the task changed meanwhile.
    fn mark_resent(&self, task: &Candidate, at: Millis) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Every unfinished task of a run, for [`resend_in_stuck_runs`] (the default: none, for an
    /// index whose `missing` already applies [`ResendRule::is_missing`] to every task).
    fn unfinished_of_run(&self, run_id: &str) -> impl Future<Output = Result<Vec<Candidate>, StoreError>> + Send {
        let _ = run_id;
        async { Ok(Vec::new()) }
    }
}

/// How the re-sending runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendSettings {
    /// See [`ResendRule::grace`].
    pub grace: Duration,
    /// Tasks re-sent per sweep at most.
    pub limit: usize,
    /// Index entries read per sweep at most.
    pub scan_limit: usize,
}

impl Default for ResendSettings {
    fn default() -> Self {
        Self { grace: DEFAULT_RESEND_GRACE, limit: 1_000, scan_limit: DEFAULT_SCAN_LIMIT }
    }
}

/// What a re-sending did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Tasks re-sent.
    pub resent: usize,
    /// Sends that failed (they are found again next sweep).
    pub failed: usize,
    /// Re-sent, but the record of it could not be written (a later sweep may send it again).
    pub unrecorded: usize,
}

/// Why nothing was re-sent.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// The queues' depths could not be read.
    #[error("cannot read the queues' depths: {0}")]
    Depths(#[source] ActionError),
    /// The store's record of unsent messages could not be read.
    #[error("cannot read the store's unsent submissions: {0}")]
    Index(#[source] StoreError),
}

/// Re-send every task whose message is missing (see the module documentation) to the queue of
/// its priority, in one batched send, and record each re-send on the task. If the send fails,
/// every task of it counts as failed and none is recorded (a later sweep tries again; a part
/// that did go out is a harmless duplicate).
pub async fn resend_missing<I, Q, C>(
    index: &I,
    queue: &Q,
    clock: &C,
    settings: ResendSettings,
) -> Result<SweepReport, ResendError>
where
    I: ResendIndex,
    Q: WorkQueue + QueueDepths,
    C: Clock,
{
    let depths = queue.depths().await.map_err(ResendError::Depths)?;
    let rule = ResendRule { now: clock.now(), grace: settings.grace, queues: depths };
    let missing = index.missing(&rule, settings.limit, settings.scan_limit).await.map_err(ResendError::Index)?;
    Ok(resend(index, queue, clock, &rule, missing).await)
}

/// Re-send the unfinished tasks of stuck runs that [`ResendRule::is_missing`] finds missing (a
/// message lost after it was sent: purged, or older than its queue's retention), at most
/// `settings.limit`. The stuck-run check found these runs not finishing anything, so their
/// tasks are read once more ([`ResendIndex::unfinished_of_run`]); a run's tasks that wait in a
/// queue holding messages are left alone, as the rule says.
pub async fn resend_in_stuck_runs<I, Q, C>(
    index: &I,
    queue: &Q,
    clock: &C,
    settings: ResendSettings,
    runs: &[String],
) -> Result<SweepReport, ResendError>
where
    I: ResendIndex,
    Q: WorkQueue + QueueDepths,
    C: Clock,
{
    if runs.is_empty() {
        return Ok(SweepReport::default());
    }
    let depths = queue.depths().await.map_err(ResendError::Depths)?;
    let rule = ResendRule { now: clock.now(), grace: settings.grace, queues: depths };
    let mut missing = Vec::new();
    for run in runs {
        let tasks = index.unfinished_of_run(run).await.map_err(ResendError::Index)?;
        missing.extend(tasks.into_iter().filter(|t| rule.is_missing(t)));
    }
    missing.truncate(settings.limit);
    Ok(resend(index, queue, clock, &rule, missing).await)
}

/// Send `missing` and record each re-send.
async fn resend<I, Q, C>(index: &I, queue: &Q, clock: &C, rule: &ResendRule, missing: Vec<Candidate>) -> SweepReport
where
    I: ResendIndex,
    Q: WorkQueue,
    C: Clock,
{
    let mut report = SweepReport::default();
    if missing.is_empty() {
        return report;
    }
    let deliveries = missing.iter().map(|c| (c.task.clone(), Duration::ZERO)).collect();
    if let Err(error) = queue.send(deliveries).await {
        tracing::warn!(tasks = missing.len(), %error, "sweeper could not re-send");
        report.failed = missing.len();
    } else {
        report.resent = missing.len();
        for task in &missing {
            match index.mark_resent(task, clock.now()).await {
                Ok(true) => {}
                // Claimed or finished meanwhile: the message sent is a duplicate, acknowledged on arrival.
                Ok(false) => tracing::info!(task_id = %task.task.task_id, "task changed while the sweeper re-sent it"),
                Err(error) => {
                    tracing::warn!(task_id = %task.task.task_id, %error, "sweeper could not record a re-send");
                    report.unrecorded += 1;
                }
            }
        }
    }
    if report.resent + report.failed > 0 {
        tracing::info!(
            resent = report.resent,
            failed = report.failed,
            unrecorded = report.unrecorded,
            queues = ?rule.queues.map(|q| q.messages),
            "sweep re-sent tasks whose message was missing"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use taskexec_core::time::FakeClock;

    use taskexec_core::ports::{DeadLetter, Receipt, Route, StoreResult};

    use super::*;
    use crate::actions::{Op, RecordingQueue};

    const MIN: Millis = 60_000;
    const DAY: Millis = 24 * 60 * MIN;
    const NOW: Millis = 100 * DAY;

    fn depth(messages: u64) -> QueueDepth {
        QueueDepth { messages, retention: Duration::from_secs(14 * 24 * 3600) }
    }

    fn rule(messages: [u64; 3]) -> ResendRule {
        ResendRule { now: NOW, grace: DEFAULT_RESEND_GRACE, queues: messages.map(depth) }
    }

    fn queued(id: &str, priority: TaskPriority, due: Millis, last_change: Millis) -> Candidate {
        let route = Route { provider_id: "sim".into(), model_id: "m".into(), run_id: "r".into() };
        Candidate {
            task: Delivery::new(id, std::sync::Arc::new(route), priority, due),
            status: TaskState::Queued,
            epoch: 0,
            lease_until: None,
            last_change,
        }
    }

    #[test]
    fn an_empty_queue_means_its_settled_tasks_have_no_message() {
        let r = rule([0, 5_000, 0]);
        let old = NOW - 10 * MIN;
        assert!(r.is_missing(&queued("lost", TaskPriority::High, old, old)));
        assert!(!r.is_missing(&queued("fresh", TaskPriority::High, NOW - MIN, NOW - MIN)), "within the grace");
        let just_resent = queued("resent", TaskPriority::High, old, NOW - 30_000);
        assert!(!r.is_missing(&just_resent), "a recent re-send is a recent change");
        let retry_later = queued("retry", TaskPriority::Low, NOW + MIN, old);
        assert!(!r.is_missing(&retry_later), "a retry is looked at once it is due plus the grace");
    }

    #[test]
    fn a_backlog_waits_unless_older_than_the_retention_period() {
        let r = rule([0, 5_000, 0]);
        assert!(!r.is_missing(&queued("waiting", TaskPriority::Normal, NOW - 3 * 60 * MIN, NOW - 3 * 60 * MIN)));
        assert!(!r.is_missing(&queued("a-week", TaskPriority::Normal, NOW - 7 * DAY, NOW - 7 * DAY)));
        let expired = NOW - 15 * DAY;
        assert!(r.is_missing(&queued("expired", TaskPriority::Normal, expired, expired)));
        let released = queued("released", TaskPriority::Normal, expired, NOW - 10 * MIN);
        assert!(!r.is_missing(&released), "changed recently: its message is recent");
        assert_eq!(r.scan_to(), NOW - 2 * MIN, "the empty queues' tasks are read up to the grace");
        assert_eq!(rule([1, 1, 1]).scan_to(), NOW - 14 * DAY - 2 * MIN, "only expired messages");
        assert!(!r.may_be_missing(TaskPriority::Normal, NOW - DAY));
        assert!(r.may_be_missing(TaskPriority::Low, NOW - DAY));
    }

    #[test]
    fn running_tasks_wait_for_their_lease_and_the_grace() {
        let r = rule([0, 0, 0]);
        let old = NOW - 60 * MIN;
        let running = |lease_until| Candidate {
            status: TaskState::Running,
            lease_until: Some(lease_until),
            ..queued("t", TaskPriority::Normal, old, old)
        };
        assert!(!r.is_missing(&running(NOW + MIN)), "a live lease: a worker holds the message");
        assert!(!r.is_missing(&running(NOW - MIN)), "its message comes back after the visibility timeout");
        assert!(r.is_missing(&running(NOW - 5 * MIN)));
        let done = Candidate { status: TaskState::Completed, ..queued("d", TaskPriority::Normal, old, old) };
        assert!(!r.is_missing(&done));
    }

    /// An index that answers with the rule applied to a fixed list, and records the re-sends.
    struct Index {
        tasks: Mutex<Vec<Candidate>>,
        fail_mark: bool,
    }

    impl ResendIndex for Index {
        async fn missing(&self, rule: &ResendRule, limit: usize, _scan: usize) -> Result<Vec<Candidate>, StoreError> {
            let tasks = self.tasks.lock().unwrap();
            Ok(tasks.iter().filter(|t| rule.is_missing(t)).take(limit).cloned().collect())
        }

        async fn mark_resent(&self, task: &Candidate, at: Millis) -> Result<bool, StoreError> {
            if self.fail_mark {
                return Err(StoreError::backend(std::io::Error::other("throttled")));
            }
            let mut tasks = self.tasks.lock().unwrap();
            let found = tasks.iter_mut().find(|t| t.task.task_id == task.task.task_id && t.epoch == task.epoch);
            Ok(found.map(|t| t.last_change = at).is_some())
        }
    }

    /// Queues whose depths grow with every send, or whose sends fail.
    #[derive(Default)]
    struct Queues {
        recorded: RecordingQueue,
        messages: Mutex<[u64; 3]>,
        fail_send: bool,
    }

    impl WorkQueue for Queues {
        async fn send(&self, deliveries: Vec<(Delivery, Duration)>) -> StoreResult<()> {
            if self.fail_send {
                return Err(StoreError::backend(std::io::Error::other("AWS.SimpleQueueService.NonExistentQueue")));
            }
            for (d, _) in &deliveries {
                self.messages.lock().unwrap()[usize::from(d.priority.rank())] += 1;
            }
            self.recorded.send(deliveries).await
        }

        async fn receive(&self, max: usize, wait: Duration) -> StoreResult<Vec<Delivery>> {
            self.recorded.receive(max, wait).await
        }

        async fn ack(&self, receipt: &Receipt) -> StoreResult<()> {
            self.recorded.ack(receipt).await
        }

        async fn retry_after(&self, delivery: &Delivery, delay: Duration) -> StoreResult<()> {
            self.recorded.retry_after(delivery, delay).await
        }

        async fn dead_letter(&self, letter: DeadLetter<'_>) -> StoreResult<()> {
            self.recorded.dead_letter(letter).await
        }

        fn len(&self) -> usize {
            0
        }
    }

    impl QueueDepths for Queues {
        async fn depths(&self) -> Result<[QueueDepth; 3], ActionError> {
            Ok(self.messages.lock().unwrap().map(depth))
        }
    }

    #[tokio::test]
    async fn a_lost_task_is_resent_once_and_a_backlog_never() {
        let old = NOW - 30 * MIN;
        let mut tasks: Vec<Candidate> =
            (0..50).map(|i| queued(&format!("b{i}"), TaskPriority::Normal, old, old)).collect();
        tasks.push(queued("lost", TaskPriority::High, old, old));
        let index = Index { tasks: Mutex::new(tasks), fail_mark: false };
        let queues = Queues { messages: Mutex::new([0, 50, 0]), ..Queues::default() };
        let clock = FakeClock::at(NOW);
        for sweep in 0..4 {
            let report = resend_missing(&index, &queues, &clock, ResendSettings::default()).await;
            let expected = usize::from(sweep == 0);
            assert_eq!(report.unwrap(), SweepReport { resent: expected, ..SweepReport::default() }, "sweep {sweep}");
            clock.advance(Duration::from_secs(60));
        }
        let sends = queues.recorded.ops();
        assert_eq!(sends.len(), 1, "{sends:?}");
        let Op::Send(sent, delay) = &sends[0] else { panic!("{sends:?}") };
        assert_eq!((sent.task_id.as_str(), sent.priority, *delay), ("lost", TaskPriority::High, Duration::ZERO));
    }

    #[tokio::test]
    async fn a_send_or_a_record_that_fails_is_reported() {
        let old = NOW - 30 * MIN;
        let lost = || vec![queued("lost", TaskPriority::Low, old, old), queued("gone", TaskPriority::High, old, old)];
        let clock = FakeClock::at(NOW);
        let index = Index { tasks: Mutex::new(lost()), fail_mark: true };
        let report = resend_missing(&index, &Queues::default(), &clock, ResendSettings::default()).await;
        assert_eq!(report.unwrap(), SweepReport { resent: 2, failed: 0, unrecorded: 2 });
        let index = Index { tasks: Mutex::new(lost()), fail_mark: false };
        let failing = Queues { fail_send: true, ..Queues::default() };
        let report = resend_missing(&index, &failing, &clock, ResendSettings::default()).await;
        assert_eq!(report.unwrap(), SweepReport { resent: 0, failed: 2, unrecorded: 0 });
        assert!(index.tasks.lock().unwrap().iter().all(|t| t.last_change == old), "nothing recorded as re-sent");
    }
}
