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

use crate::ports::Delivery;
use crate::time::{Millis, duration_ms};

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

    /// Add a delivery that becomes due at `due_at`; `delivery.ready_at` is set to it.
    pub fn push(&mut self, mut delivery: Delivery, due_at: Millis) {
        delivery.ready_at = due_at;
        self.seq += 1;
        let entry = Entry { key: due_at, seq: self.seq, delivery };
        self.delayed.push(Reverse(entry));
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
            e.key = e.delivery.ready_at + i64::from(e.delivery.priority.rank()) * self.aging;
            self.due.push(Reverse(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskPriority;

    fn d(id: &str, priority: TaskPriority) -> Delivery {
        Delivery {
            task_id: id.into(),
            provider_id: "p".into(),
            model_id: "m".into(),
            run_id: "r".into(),
            priority,
            receive_count: 0,
            ready_at: 0,
        }
    }

    fn drain(s: &mut Scheduler, now: Millis) -> Vec<String> {
        std::iter::from_fn(|| s.pop(now)).map(|d| d.task_id).collect()
    }

    #[test]
    fn strict_priority_when_due_together_fifo_within_class() {
        let mut s = Scheduler::new(Duration::from_secs(10));
        s.push(d("l1", TaskPriority::Low), 0);
        s.push(d("n1", TaskPriority::Normal), 0);
        s.push(d("h1", TaskPriority::High), 0);
        s.push(d("n2", TaskPriority::Normal), 0);
        s.push(d("h2", TaskPriority::High), 0);
        assert_eq!(drain(&mut s, 0), ["h1", "h2", "n1", "n2", "l1"]);
    }

    #[test]
    fn aging_lets_a_long_waiting_low_task_overtake_new_high_ones() {
        let mut s = Scheduler::new(Duration::from_secs(10));
        s.push(d("old-low", TaskPriority::Low), 0);
        // High tasks keep arriving; those due after 2 × aging rank below the old low one.
        s.push(d("h-early", TaskPriority::High), 19_999);
        s.push(d("h-late", TaskPriority::High), 20_001);
        s.push(d("n-late", TaskPriority::Normal), 10_001);
        assert_eq!(drain(&mut s, 30_000), ["h-early", "old-low", "h-late", "n-late"]);
    }

    #[test]
    fn low_never_starves_under_a_steady_stream_of_high() {
        let mut s = Scheduler::new(Duration::from_millis(100));
        s.push(d("low", TaskPriority::Low), 0);
        // Every 10 ms a high task arrives and one task is served.
        let mut served_at = None;
        for t in (0..10_000).step_by(10) {
            s.push(d(&format!("h{t}"), TaskPriority::High), t);
            if s.pop(t).is_some_and(|d| d.task_id == "low") {
                served_at = Some(t);
                break;
            }
        }
        let t = served_at.expect("low was served");
        assert!(t <= 200 + 10, "low served at {t} ms, aging bound is 2 × 100 ms");
    }

    #[test]
    fn delayed_deliveries_wait_until_due() {
        let mut s = Scheduler::new(Duration::from_secs(1));
        s.push(d("later", TaskPriority::High), 500);
        assert_eq!(s.pop(499), None);
        assert_eq!(s.next_due(), Some(500));
        assert_eq!(s.len(), 1);
        let got = s.pop(500).unwrap();
        assert_eq!((got.task_id.as_str(), got.ready_at), ("later", 500));
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }
}
