//! Priority scheduling with aging for the embedded queue.
//!
//! Each due delivery gets a score `ready_at + rank × aging` (rank 0 high, 1 normal, 2 low) and
//! the lowest score is served first. So among tasks that became due at the same time high goes
//! first (strict priority), but a task that has waited `aging` longer than another outranks it by
//! one class: a low task due at `t` is served before any high task that became due after
//! `t + 2·aging`. Low never starves, and the score is fixed at enqueue, so a binary heap serves
//! it in O(log n). Delayed deliveries wait in a second heap ordered by due time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::ports::{Delivery, Line};
use crate::task::TaskPriority;
use crate::time::{Millis, duration_ms};

/// A waiting task's aged score, `ready_at + rank × aging` (rank 0 high, 1 normal, 2 low):
/// lowest first. The one order of waiting work in both shapes: this scheduler's heap (embedded)
/// and the shared waiting lines of full limits ([`line_check`], the AWS shape).
#[must_use]
pub fn aged_score(priority: TaskPriority, ready_at: Millis, aging: Millis) -> Millis {
    ready_at.saturating_add(i64::from(priority.rank()).saturating_mul(aging))
}

/// The class a task waiting since `ready_at` ranks in at `now` (0 high, 1 normal, 2 low): its
/// own, promoted one class per `aging` waited, as [`aged_score`] orders it.
#[must_use]
pub fn effective_rank(priority: TaskPriority, ready_at: Millis, now: Millis, aging: Millis) -> u8 {
    let promoted = now.saturating_sub(ready_at).max(0) / aging.max(1);
    priority.rank().saturating_sub(u8::try_from(promoted).unwrap_or(u8::MAX))
}

/// Tickets at the front of a limit's waiting line that ask again soon; the rest back off.
pub const LINE_FRONT: usize = 16;

/// What the front of a limit key's shared waiting line says to a delivery about to take one of
/// its permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCheck {
    /// This delivery leaves the capacity to those ahead of it and waits: a delivery in line
    /// outranks it by a whole class (its score is lower by `aging` or more: strict priority
    /// between classes, as the embedded scheduler serves them), or those ahead of it (lower
    /// scores) are at least as many as the permits free (within a class, capacity is shared in
    /// score order as far as the view shows). Equals never wait on each other, and since the
    /// score ages, a low task outranks high ones that arrived `2 × aging` after it.
    pub yields: bool,
    /// Fewer than [`LINE_FRONT`] deliveries in line outrank this one: if it has to wait, it
    /// asks again soon.
    pub in_front: bool,
}

/// Check a limit's `line` (its front best first, as
/// [`crate::ports::LimiterStore::waiting_front`] returns it, at most [`LINE_FRONT`] long) under
/// `limit` for the delivery of `task_id` with score `score`, promoted one class per `aging`.
#[must_use]
pub fn line_check(line: &Line, limit: u32, task_id: &str, score: Millis, aging: Millis) -> LineCheck {
    let mut ahead = line.front.iter().filter(|t| t.task_id != task_id).take_while(|t| t.score < score).peekable();
    let outranked = ahead.peek().is_some_and(|best| best.score.saturating_add(aging) <= score);
    let ahead = ahead.count();
    let available = usize::try_from(line.available(limit)).unwrap_or(usize::MAX);
    // Nobody ahead: try (the view of what is free may be a little old).
    LineCheck { yields: outranked || (ahead > 0 && ahead >= available), in_front: ahead < LINE_FRONT }
}

#[derive(Debug)]
struct Entry {
    key: Millis,
    seq: u64,
    delivery: Delivery,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

/// Due and delayed deliveries, served by aged priority.
#[derive(Debug)]
pub struct Scheduler {
    aging: Millis,
    seq: u64,
    due: BinaryHeap<Reverse<Entry>>,
    delayed: BinaryHeap<Reverse<Entry>>,
}

impl Scheduler {
    /// A scheduler promoting a waiting task by one class per `aging`.
    #[must_use]
    pub fn new(aging: Duration) -> Self {
        Self { aging: duration_ms(aging).max(1), seq: 0, due: BinaryHeap::new(), delayed: BinaryHeap::new() }
    }

    /// Add a delivery that becomes due at `due_at`; `delivery.ready_at` is set to it. One that
    /// is due already goes straight to the due heap (a recovery of 100,000 tasks must not fill
    /// the delayed heap, whose capacity would stay allocated).
    pub fn push(&mut self, mut delivery: Delivery, due_at: Millis, now: Millis) {
        delivery.ready_at = due_at;
        self.seq += 1;
        if due_at <= now {
            let key = self.score(&delivery);
            self.due.push(Reverse(Entry { key, seq: self.seq, delivery }));
        } else {
            self.delayed.push(Reverse(Entry { key: due_at, seq: self.seq, delivery }));
        }
    }

    fn score(&self, d: &Delivery) -> Millis {
        aged_score(d.priority, d.ready_at, self.aging)
    }

    /// Take the best due delivery at `now`.
    pub fn pop(&mut self, now: Millis) -> Option<Delivery> {
        self.promote(now);
        self.due.pop().map(|Reverse(e)| e.delivery)
    }

    /// When the next delayed delivery becomes due, if nothing is due now.
    #[must_use]
    pub fn next_due(&self) -> Option<Millis> {
        if self.due.is_empty() { self.delayed.peek().map(|Reverse(e)| e.key) } else { Some(Millis::MIN) }
    }

    /// Deliveries held (due and delayed).
    #[must_use]
    pub fn len(&self) -> usize {
        self.due.len() + self.delayed.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn promote(&mut self, now: Millis) {
        while self.delayed.peek().is_some_and(|Reverse(e)| e.key <= now) {
            let Reverse(mut e) = self.delayed.pop().expect("peeked");
            e.key = self.score(&e.delivery);
            self.due.push(Reverse(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{Route, Ticket};
    use crate::task::TaskPriority;

    fn d(id: &str, priority: TaskPriority) -> Delivery {
        Delivery::new(
            id,
            std::sync::Arc::new(Route { provider_id: "p".into(), model_id: "m".into(), run_id: "r".into() }),
            priority,
            0,
        )
    }

    fn drain(s: &mut Scheduler, now: Millis) -> Vec<String> {
        std::iter::from_fn(|| s.pop(now)).map(|d| d.task_id).collect()
    }

    #[test]
    fn strict_priority_when_due_together_fifo_within_class() {
        let mut s = Scheduler::new(Duration::from_secs(10));
        s.push(d("l1", TaskPriority::Low), 0, 0);
        s.push(d("n1", TaskPriority::Normal), 0, 0);
        s.push(d("h1", TaskPriority::High), 0, 0);
        s.push(d("n2", TaskPriority::Normal), 0, 0);
        s.push(d("h2", TaskPriority::High), 0, 0);
        assert_eq!(drain(&mut s, 0), ["h1", "h2", "n1", "n2", "l1"]);
    }

    #[test]
    fn aging_lets_a_long_waiting_low_task_overtake_new_high_ones() {
        let mut s = Scheduler::new(Duration::from_secs(10));
        s.push(d("old-low", TaskPriority::Low), 0, 0);
        // High tasks keep arriving; those due after 2 × aging rank below the old low one.
        s.push(d("h-early", TaskPriority::High), 19_999, 0);
        s.push(d("h-late", TaskPriority::High), 20_001, 0);
        s.push(d("n-late", TaskPriority::Normal), 10_001, 0);
        assert_eq!(drain(&mut s, 30_000), ["h-early", "old-low", "h-late", "n-late"]);
    }

    #[test]
    fn low_never_starves_under_a_steady_stream_of_high() {
        let mut s = Scheduler::new(Duration::from_millis(100));
        s.push(d("low", TaskPriority::Low), 0, 0);
        // Every 10 ms a high task arrives and one task is served.
        let mut served_at = None;
        for t in (0..10_000).step_by(10) {
            s.push(d(&format!("h{t}"), TaskPriority::High), t, t);
            if s.pop(t).is_some_and(|d| d.task_id == "low") {
                served_at = Some(t);
                break;
            }
        }
        let t = served_at.expect("low was served");
        assert!(t <= 200 + 10, "low served at {t} ms, aging bound is 2 × 100 ms");
    }

    #[test]
    fn a_waiting_task_is_promoted_one_class_per_aging() {
        assert_eq!(effective_rank(TaskPriority::Low, 0, 0, 10), 2);
        assert_eq!(effective_rank(TaskPriority::Low, 0, 10, 10), 1);
        assert_eq!(effective_rank(TaskPriority::Low, 0, 25, 10), 0);
        assert_eq!(effective_rank(TaskPriority::Normal, 50, 0, 10), 1, "not yet due: its own class");
        assert_eq!(effective_rank(TaskPriority::High, 0, 1_000, 10), 0);
    }

    /// A line with `available` permits free under a limit of 10.
    fn line(available: u32, tickets: &[(Millis, &str)]) -> Line {
        let front = tickets.iter().map(|(score, id)| Ticket { score: *score, task_id: (*id).into() }).collect();
        Line { leased: 10 - available, front, ..Line::default() }
    }

    /// Classes ten seconds apart.
    const AGING: Millis = 10_000;

    fn line_check(line: &Line, task_id: &str, score: Millis) -> LineCheck {
        super::line_check(line, 10, task_id, score, AGING)
    }

    #[test]
    fn what_is_available_counts_this_processs_idle_permits() {
        let line = Line { leased: 8, idle: 3, ..Line::default() };
        assert_eq!(line.available(10), 5);
        assert_eq!(line.available(6), 3, "a limit lowered below what is leased");
    }

    #[test]
    fn a_delivery_yields_to_a_better_class_and_within_its_class_to_those_ahead_of_it() {
        let high = aged_score(TaskPriority::High, 5_000, AGING);
        let low = aged_score(TaskPriority::Low, 0, AGING);
        // A low task that has waited 5 s yields to a high one that just arrived, however many
        // permits are free: strict priority between classes.
        assert_eq!(line_check(&line(1, &[(high, "h")]), "l", low), LineCheck { yields: true, in_front: true });
        assert!(line_check(&line(5, &[(high, "h")]), "l", low).yields);
        // Within a class (scores less than `aging` apart), those ahead take the free permits
        // first, and the rest is shared.
        let early = aged_score(TaskPriority::Normal, 0, AGING);
        let later = aged_score(TaskPriority::Normal, 3_000, AGING);
        assert!(line_check(&line(1, &[(early, "e")]), "n", later).yields);
        assert!(!line_check(&line(2, &[(early, "e")]), "n", later).yields);
        // Nobody yields to itself, to an equal or to a worse ticket; with no line, nobody yields.
        assert!(!line_check(&line(1, &[(high, "h")]), "h", high).yields);
        assert!(!line_check(&line(1, &[(high, "h")]), "h2", high).yields);
        assert!(!line_check(&line(1, &[(low, "l")]), "h", high).yields);
        assert!(!line_check(&line(1, &[]), "x", 0).yields);
        // Nobody ahead: try, whatever the (possibly old) view says is free.
        assert!(!line_check(&line(0, &[(high, "h")]), "h", high).yields);
        // Aging: a low task outranks high tasks arriving more than 2 × aging after it.
        let late_high = aged_score(TaskPriority::High, 20_001, AGING);
        assert!(line_check(&line(1, &[(low, "l")]), "h", late_high).yields);
        assert!(!line_check(&line(1, &[(late_high, "h")]), "l", low).yields);
    }

    #[test]
    fn only_the_front_of_a_line_asks_again_soon() {
        let ids: Vec<String> = (0..LINE_FRONT).map(|i| format!("t{i}")).collect();
        let tickets: Vec<(Millis, &str)> =
            ids.iter().enumerate().map(|(i, id)| (i as Millis * 10, id.as_str())).collect();
        let full = line(0, &tickets);
        // Better than the last of the front, or one of it: in front.
        assert!(line_check(&full, "new", 5).in_front);
        assert!(line_check(&full, "t15", 150).in_front);
        // Behind all of a full front: backs off.
        assert!(!line_check(&full, "new", 1_000).in_front);
    }

    #[test]
    fn delayed_deliveries_wait_until_due() {
        let mut s = Scheduler::new(Duration::from_secs(1));
        s.push(d("later", TaskPriority::High), 500, 0);
        assert_eq!(s.pop(499), None);
        assert_eq!(s.next_due(), Some(500));
        assert_eq!(s.len(), 1);
        let got = s.pop(500).unwrap();
        assert_eq!((got.task_id.as_str(), got.ready_at), ("later", 500));
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }
}
