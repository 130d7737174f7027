//! What a sweep did, and which of its parts failed. Every part runs whatever the others did, so
//! a failure is collected rather than returned at once; [`SweepSummary::into_result`] then turns
//! a sweep with any failure into an error naming every failed part, which the function returns
//! so that its `Errors` metric (and the alarm on it) sees the failure.

use std::fmt;

use super::mappings::RebalanceReport;
use super::resend::SweepReport;
use super::stuck::StuckRun;

/// A part of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepPart {
    /// Re-sending tasks whose message is missing.
    Resend,
    /// Rebalancing the event source mappings.
    Rebalance,
    /// Moving breakers to half-open.
    Breakers,
    /// Looking for stuck runs.
    StuckRuns,
    /// Returning the permits of expired limiter leases (done by the function itself).
    LimiterReclaim,
    /// Keeping the worker's mappings disabled exactly while execution is paused globally (done by
    /// the function itself).
    MappingSwitch,
}

impl fmt::Display for SweepPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Resend => "re-send",
            Self::Rebalance => "rebalance",
            Self::Breakers => "breakers",
            Self::StuckRuns => "stuck runs",
            Self::LimiterReclaim => "limiter reclaim",
            Self::MappingSwitch => "mapping switch",
        })
    }
}

/// Some of a part's operations failed; the part went on with the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failed} of {total} {what} failed")]
pub struct Incomplete {
    /// What was done.
    pub what: &'static str,
    /// How many failed.
    pub failed: usize,
    /// How many were tried.
    pub total: usize,
}

/// A part that failed, with why.
#[derive(Debug, thiserror::Error)]
#[error("{part}: {source}")]
pub struct PartFailure {
    /// The part.
    pub part: SweepPart,
    /// Why.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Everything one sweep did.
#[derive(Debug, Default)]
pub struct SweepSummary {
    /// Re-sending (`None`: it failed before sending anything).
    pub resend: Option<SweepReport>,
    /// Rebalancing (`None`: not configured, or it failed).
    pub rebalance: Option<RebalanceReport>,
    /// Breakers moved to half-open.
    pub half_opened: Vec<String>,
    /// Stuck runs (`None`: the check failed).
    pub stuck: Option<Vec<StuckRun>>,
    /// Every part that failed, in the order they ran.
    pub failures: Vec<PartFailure>,
}

impl SweepSummary {
    /// Record that `part` failed (and log it).
    pub fn fail(&mut self, part: SweepPart, error: impl std::error::Error + Send + Sync + 'static) {
        tracing::error!(part = %part, %error, "a part of the sweep failed");
        self.failures.push(PartFailure { part, source: Box::new(error) });
    }

    /// Record that `part` failed when `failed` of its `total` operations did.
    pub fn fail_if(&mut self, part: SweepPart, what: &'static str, failed: usize, total: usize) {
        if failed > 0 {
            self.fail(part, Incomplete { what, failed, total });
        }
    }

    /// `Ok` when every part succeeded, otherwise the error naming every failed part.
    pub fn into_result(self) -> Result<Self, SweepError> {
        if self.failures.is_empty() { Ok(self) } else { Err(SweepError(Box::new(self))) }
    }
}

impl fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resend {
            Some(r) => write!(f, "re-sent {} task(s) whose message was missing, {} failed", r.resent, r.failed)?,
            None => write!(f, "re-send failed")?,
        }
        match &self.rebalance {
            Some(r) => {
                write!(f, "; weights {:?} -> {:?} ({} updated, {} failed)", r.before, r.after, r.updated, r.failed)?;
            }
            None => write!(f, "; no rebalancing")?,
        }
        write!(f, "; {} breaker(s) half-opened", self.half_opened.len())?;
        match &self.stuck {
            Some(s) => write!(f, "; {} stuck run(s)", s.len()),
            None => write!(f, "; stuck-run check failed"),
        }
    }
}

/// A sweep in which at least one part failed: names every failed part, then what was done.
#[derive(Debug)]
pub struct SweepError(pub Box<SweepSummary>);

impl fmt::Display for SweepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = &self.0.failures;
        write!(f, "{} sweeper part(s) failed: ", failures.len())?;
        for (i, failure) in failures.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{failure}")?;
        }
        write!(f, " (done: {})", *self.0)
    }
}

impl std::error::Error for SweepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.failures.first().map(|f| f as &(dyn std::error::Error + 'static))
    }
}
