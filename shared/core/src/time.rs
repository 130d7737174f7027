//! Time as the engine sees it: milliseconds since the Unix epoch, read through an injected
//! [`Clock`] so leases, backoff and breakers are tested with a fake clock and no sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Wall-clock time source (a port: the engine never calls `SystemTime::now` itself).
///
/// ```
/// use taskexec_core::time::{Clock, FakeClock};
/// let clock = FakeClock::at(1_000);
/// clock.advance(std::time::Duration::from_millis(500));
/// assert_eq!(clock.now(), 1_500);
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the epoch.
    fn now(&self) -> Millis;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock(Arc<AtomicI64>);

impl FakeClock {
    /// A fake clock reading `now`.
    #[must_use]
    pub fn at(now: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(now)))
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_ms(by), Ordering::SeqCst);
    }

    /// Set the time.
    pub fn set(&self, now: Millis) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// A clock that follows tokio's time from a starting reading, so tests that run on tokio's
/// paused clock see wall time move exactly as timers fire.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `origin` now.
    #[must_use]
    pub fn starting_at(origin: Millis) -> Self {
        Self { origin, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.origin + duration_ms(self.start.elapsed())
    }
}

/// A duration in whole milliseconds, saturating.
#[must_use]
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The duration from `now` until `at` (zero if `at` has passed).
#[must_use]
pub fn until(at: Millis, now: Millis) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
}

/// RFC 3339 with milliseconds, UTC (`2026-11-26T12:00:00.000Z`).
#[must_use]
pub fn format_rfc3339(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_saturates_at_zero() {
        assert_eq!(until(100, 200), Duration::ZERO);
        assert_eq!(until(300, 200), Duration::from_millis(100));
    }

    #[test]
    fn formats_utc_millis() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(1_234), "1970-01-01T00:00:01.234Z");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(1_000);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), 1_250);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > 1_577_836_800_000);
    }
}
