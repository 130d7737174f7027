//! Live progress of a run: an indicatif bar on a terminal, plain periodic lines otherwise
//! (CI logs, pipes). Notable events (a breaker changing state, a task dead-lettered) are printed
//! as they happen, above the bar.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use taskexec_core::breaker::BreakerState;
use taskexec_core::memory::{Counters, CountingSink};
use taskexec_core::ports::{Metric, MetricsSink};
use taskexec_core::runner::Progress;

/// The metrics sink of the CLI: counts, and keeps notable events for the display.
#[derive(Debug, Default)]
pub struct CliSink {
    /// The counters.
    pub counting: CountingSink,
    notes: Mutex<Vec<String>>,
}

impl CliSink {
    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("poisoned"))
    }

    fn note(&self, text: String) {
        self.notes.lock().expect("poisoned").push(text);
    }
}

impl MetricsSink for CliSink {
    fn record(&self, metric: Metric) {
        match &metric {
            Metric::BreakerChanged { deployment, state } => {
                let what = match state {
                    BreakerState::Open => "OPEN (calls deferred until its cool-down ends)",
                    BreakerState::HalfOpen => "half-open (probing)",
                    BreakerState::Closed => "closed again",
                };
                self.note(format!("breaker {deployment}: {what}"));
            }
            Metric::DeadLettered { task_id, reason } => self.note(format!("dead-lettered {task_id}: {reason}")),
            // Decreases only: growth back is one step per limit's worth of successes.
            Metric::ConcurrencyChanged { deployment, previous, limit } if limit < previous => {
                self.note(format!("{deployment}: concurrency {previous} → {limit} after a rate-limit answer"));
            }
            _ => {}
        }
        self.counting.record(metric);
    }
}

/// Where the run started from (tasks already terminal when this process began).
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    /// Tasks in the run(s).
    pub total: u64,
    /// Already completed.
    pub completed: u64,
    /// Already failed.
    pub failed: u64,
    /// Already terminal in any way.
    pub done: u64,
}

/// One snapshot of the figures shown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Terminal tasks.
    pub done: u64,
    /// Of which completed.
    pub ok: u64,
    /// Of which failed.
    pub failed: u64,
    /// Waiting for a retry.
    pub retrying: usize,
    /// Tasks finished per second by this process.
    pub rate: f64,
    /// Seconds left at that rate.
    pub eta_secs: Option<u64>,
    /// Breakers not closed.
    pub open_breakers: u64,
    /// Deliveries parked by a pause.
    pub paused: usize,
}

impl Figures {
    /// Compute from the runner's progress and the sink's counters.
    #[must_use]
    pub fn compute(base: Baseline, progress: Progress, counters: &Counters, elapsed: Duration) -> Self {
        let finished = progress.finished;
        let rate = if elapsed.as_secs_f64() > 0.0 { finished as f64 / elapsed.as_secs_f64() } else { 0.0 };
        let done = base.done + finished;
        let left = base.total.saturating_sub(done);
        Self {
            done,
            ok: base.completed + Counters::get(&counters.completed),
            failed: base.failed + Counters::get(&counters.failed),
            retrying: progress.retrying,
            rate,
            eta_secs: (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64),
            open_breakers: Counters::get(&counters.open_breakers),
            paused: progress.paused,
        }
    }

    fn line(&self, total: u64) -> String {
        let eta = self.eta_secs.map_or_else(|| "-".into(), |s| format!("{s}s"));
        let mut line = format!(
            "{}/{} done · ok {} · failed {} · retrying {} · {:.1}/s · ETA {} · open breakers {}",
            self.done, total, self.ok, self.failed, self.retrying, self.rate, eta, self.open_breakers
        );
        if self.paused > 0 {
            line.push_str(&format!(" · PAUSED ({} waiting)", self.paused));
        }
        line
    }
}

/// The display: a bar or plain lines.
pub struct Display {
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    last_plain: Instant,
    plain_every: Duration,
    quiet: bool,
}

impl Display {
    /// A bar on a terminal, plain lines (every `plain_every`) otherwise; `quiet` prints nothing.
    #[must_use]
    pub fn new(total: u64, quiet: bool, plain_every: Duration) -> Self {
        let bar = (!quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30.cyan/blue} {msg}")
                    .expect("valid template")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar
        });
        let now = Instant::now();
        Self { bar, total, started: now, last_plain: now, plain_every, quiet }
    }

    /// Time since the display started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Show the latest figures and any notes.
    pub fn update(&mut self, figures: &Figures, sink: &CliSink, force: bool) {
        let notes = sink.take_notes();
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => {
                for note in notes {
                    bar.println(format!("  {note}"));
                }
                bar.set_position(figures.done);
                bar.set_message(figures.line(self.total));
            }
            None => {
                for note in notes {
                    eprintln!("  {note}");
                }
                if force || self.last_plain.elapsed() >= self.plain_every {
                    self.last_plain = Instant::now();
                    eprintln!("[{:>5.1}s] {}", self.started.elapsed().as_secs_f64(), figures.line(self.total));
                }
            }
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_add_the_baseline_and_estimate_time_left() {
        let counters = Counters::default();
        counters.completed.store(30, std::sync::atomic::Ordering::Relaxed);
        counters.failed.store(5, std::sync::atomic::Ordering::Relaxed);
        let base = Baseline { total: 100, completed: 10, failed: 0, done: 10 };
        let progress = Progress { finished: 40, retrying: 3, ..Progress::default() };
        let f = Figures::compute(base, progress, &counters, Duration::from_secs(4));
        assert_eq!((f.done, f.ok, f.failed, f.retrying), (50, 40, 5, 3));
        assert_eq!(f.rate, 10.0);
        assert_eq!(f.eta_secs, Some(5));
        assert!(f.line(100).starts_with("50/100 done · ok 40 · failed 5 · retrying 3 · 10.0/s · ETA 5s"));
    }

    #[test]
    fn sink_keeps_breaker_and_dead_letter_notes() {
        let sink = CliSink::default();
        sink.record(Metric::BreakerChanged { deployment: "d".into(), state: BreakerState::Open });
        sink.record(Metric::DeadLettered { task_id: "t".into(), reason: "attempts exhausted".into() });
        sink.record(Metric::AttemptStarted { deployment: "d".into() });
        let notes = sink.take_notes();
        assert_eq!(notes.len(), 2);
        assert!(notes[0].starts_with("breaker d: OPEN"));
        assert_eq!(notes[1], "dead-lettered t: attempts exhausted");
        assert_eq!(Counters::get(&sink.counting.counters.attempts), 1);
    }
}
