//! The built-in `sim` provider: answers after a lognormal latency, or injects the faults real
//! providers produce (429 with a retry hint, 503, hangs, malformed bodies, resets, 400), at
//! configured rates, in configured outage windows, or on demand through
//! `parameters.extra["sim_fault"]`. It waits with `tokio::time`, so tests run it under
//! `tokio::time::pause()` without sleeping, and with a seed it is deterministic.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use taskexec_core::error::ProviderError;
use taskexec_core::provider::{Provider, ProviderRequest, ProviderResponse};
use taskexec_core::task::Usage;
use tokio::time::Instant;

use crate::config::{LatencyConfig, SimConfig};

/// The `extra` key a task uses to force a fault on every attempt.
pub const SIM_FAULT_KEY: &str = "sim_fault";

/// The 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874_040_841;

/// A fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// 429 `rate_limit_exceeded` with the configured retry hint.
    RateLimit,
    /// 503.
    ServerError,
    /// Never completes.
    Hang,
    /// A 200 whose body cannot be parsed.
    Malformed,
    /// The connection is reset.
    Reset,
    /// 400.
    BadRequest,
}

impl SimFault {
    /// Every fault, in the order [`crate::config::FaultRates::named`] lists their rates.
    pub const ALL: [Self; 6] =
        [Self::RateLimit, Self::ServerError, Self::Hang, Self::Malformed, Self::Reset, Self::BadRequest];

    /// The fault named `name` (the `sim_fault` values, as in the config).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The name used in config and in `sim_fault`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::ServerError => "server_error",
            Self::Hang => "hang",
            Self::Malformed => "malformed",
            Self::Reset => "reset",
            Self::BadRequest => "bad_request",
        }
    }

    /// The error this fault produces; `None` for [`SimFault::Hang`], which produces nothing.
    #[must_use]
    pub fn error(self, retry_after: Duration) -> Option<ProviderError> {
        let error = match self {
            Self::RateLimit => ProviderError::RateLimited {
                retry_after: Some(retry_after),
                status: Some(429),
                code: Some("rate_limit_exceeded".into()),
                detail: "simulated rate limit".into(),
                limits: Default::default(),
            },
            Self::ServerError => unavailable("simulated server error"),
            Self::Hang => return None,
            Self::Malformed => ProviderError::transient("malformed response body"),
            Self::Reset => ProviderError::transient("connection reset"),
            Self::BadRequest => bad_request("simulated bad request".into()),
        };
        Some(error)
    }
}

fn unavailable(detail: &str) -> ProviderError {
    ProviderError::Transient {
        retry_after: None,
        status: Some(503),
        code: Some("service_unavailable".into()),
        detail: detail.into(),
        limits: Default::default(),
    }
}

fn bad_request(detail: String) -> ProviderError {
    ProviderError::Permanent {
        status: Some(400),
        code: Some("invalid_request_error".into()),
        detail,
        limits: Default::default(),
    }
}

/// Latency drawn from a lognormal fitted to a median and a 99th percentile.
#[derive(Debug, Clone, Copy)]
enum LatencyModel {
    Fixed(Duration),
    LogNormal(LogNormal<f64>),
}

impl LatencyModel {
    /// `median = e^mu` and `p99 = e^(mu + Z99 sigma)`; equal values (or a median of 0) are fixed.
    fn fit(config: &LatencyConfig) -> Self {
        let fixed = Self::Fixed(Duration::from_secs_f64(config.median_ms.max(0.0) / 1000.0));
        if config.median_ms <= 0.0 || config.p99_ms <= config.median_ms {
            return fixed;
        }
        let mu = config.median_ms.ln();
        let sigma = (config.p99_ms.ln() - mu) / Z99;
        LogNormal::new(mu, sigma).map_or(fixed, Self::LogNormal)
    }

    fn sample(&self, rng: &mut impl Rng) -> Duration {
        match self {
            Self::Fixed(d) => *d,
            Self::LogNormal(dist) => Duration::from_secs_f64(dist.sample(rng).max(0.0) / 1000.0),
        }
    }
}

/// What one call will do, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answer,
    Fault(SimFault),
    Outage,
}

/// The simulated provider. Its clock (for outages) starts when it is created.
pub struct SimProvider {
    config: SimConfig,
    latency: LatencyModel,
    /// Boxed: the generator's state is large, and adapters are kept in one enum.
    rng: Box<Mutex<StdRng>>,
    created: Instant,
    calls: AtomicU64,
}

impl fmt::Debug for SimProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimProvider").field("config", &self.config).finish_non_exhaustive()
    }
}

impl SimProvider {
    /// A simulator behaving as `config` says (assumed validated).
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
        Self {
            latency: LatencyModel::fit(&config.latency),
            config,
            rng: Box::new(Mutex::new(rng)),
            created: Instant::now(),
            calls: AtomicU64::new(0),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    async fn run(&self, request: ProviderRequest) -> Result<ProviderResponse, ProviderError> {
        let started = Instant::now();
        let (latency, outcome) = self.plan(&request, started)?;
        let ttft = if request.stream {
            tokio::time::sleep(latency / 4).await;
            Some(started.elapsed())
        } else {
            None
        };
        tokio::time::sleep_until(started + latency).await;
        let retry_after = Duration::from_millis(self.config.faults.retry_after_ms);
        match outcome {
            Outcome::Answer => Ok(self.answer(&request, started.elapsed(), ttft)),
            Outcome::Outage => Err(unavailable("simulated outage")),
            Outcome::Fault(fault) => match fault.error(retry_after) {
                Some(error) => Err(error),
                None => std::future::pending().await,
            },
        }
    }

    /// Draw the latency and the outcome. A forced fault still draws, so that forcing a fault on
    /// one task does not shift the random sequence of the others.
    fn plan(&self, request: &ProviderRequest, now: Instant) -> Result<(Duration, Outcome), ProviderError> {
        let forced = forced_fault(request)?;
        let (latency, drawn) = {
            let mut rng = self.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (self.latency.sample(&mut *rng), self.draw_fault(rng.random()))
        };
        let outcome = match (forced, self.in_outage(now)) {
            (Some(fault), _) => Outcome::Fault(fault),
            (None, true) => Outcome::Outage,
            (None, false) => drawn.map_or(Outcome::Answer, Outcome::Fault),
        };
        Ok((latency, outcome))
    }

    fn draw_fault(&self, u: f64) -> Option<SimFault> {
        let mut cumulative = 0.0;
        for ((_, rate), fault) in self.config.faults.named().into_iter().zip(SimFault::ALL) {
            cumulative += rate;
            if u < cumulative {
                return Some(fault);
            }
        }
        None
    }

    fn in_outage(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.created);
        self.config.outages.iter().any(|o| {
            let start = Duration::from_millis(o.start_ms);
            since >= start && since < start + Duration::from_millis(o.duration_ms)
        })
    }

    fn answer(&self, request: &ProviderRequest, latency: Duration, ttft: Option<Duration>) -> ProviderResponse {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let configured = u64::from(self.config.output_tokens);
        let (output_tokens, finish_reason) = match request.max_tokens.map(u64::from) {
            Some(max) if max < configured => (max, "length"),
            _ => (configured, "stop"),
        };
        ProviderResponse {
            text: answer_text(request),
            finish_reason: finish_reason.into(),
            usage: Usage { input_tokens: input_tokens(request), output_tokens, cached_tokens: None },
            model: request.model.clone(),
            request_id: Some(format!("sim-{n}")),
            latency,
            ttft,
            limits: Default::default(),
            raw: None,
        }
    }
}

/// The fault a task forces through `extra["sim_fault"]`; an unknown value is a bad request.
fn forced_fault(request: &ProviderRequest) -> Result<Option<SimFault>, ProviderError> {
    let Some(value) = request.extra.get(SIM_FAULT_KEY) else {
        return Ok(None);
    };
    match value.as_str().and_then(SimFault::parse) {
        Some(fault) => Ok(Some(fault)),
        None => {
            let names: Vec<_> = SimFault::ALL.iter().map(|f| f.name()).collect();
            Err(bad_request(format!("`{SIM_FAULT_KEY}` must be one of {}", names.join(", "))))
        }
    }
}

/// About one token per four characters of every message, at least 1.
fn input_tokens(request: &ProviderRequest) -> u64 {
    let chars: usize = request.messages.iter().map(|m| m.content.chars().count()).sum();
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// A deterministic answer: a hash of the whole conversation and the start of the prompt.
fn answer_text(request: &ProviderRequest) -> String {
    let prompt = request.messages.last().map_or("", |m| m.content.as_str());
    let hash = request.messages.iter().fold(FNV_OFFSET, |h, m| fnv1a(h, m.content.as_bytes()));
    let echo: String = prompt.chars().take(64).collect();
    format!("[sim {hash:016x}] {echo}")
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Provider for SimProvider {
    fn call(&self, request: ProviderRequest) -> impl Future<Output = Result<ProviderResponse, ProviderError>> + Send {
        self.run(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantile(sorted: &[Duration], q: f64) -> f64 {
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[i].as_secs_f64() * 1000.0
    }

    #[test]
    fn lognormal_fit_hits_median_and_p99() {
        let model = LatencyModel::fit(&LatencyConfig { median_ms: 200.0, p99_ms: 1000.0 });
        let mut rng = StdRng::seed_from_u64(1);
        let mut samples: Vec<_> = (0..40_000).map(|_| model.sample(&mut rng)).collect();
        samples.sort();
        let (median, p99) = (quantile(&samples, 0.5), quantile(&samples, 0.99));
        assert!((median - 200.0).abs() < 10.0, "median {median}");
        assert!((p99 - 1000.0).abs() < 100.0, "p99 {p99}");
    }

    #[test]
    fn equal_median_and_p99_is_fixed() {
        let model = LatencyModel::fit(&LatencyConfig { median_ms: 40.0, p99_ms: 40.0 });
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..100).all(|_| model.sample(&mut rng) == Duration::from_millis(40)));
        let zero = LatencyModel::fit(&LatencyConfig { median_ms: 0.0, p99_ms: 10.0 });
        assert_eq!(zero.sample(&mut rng), Duration::ZERO);
    }

    #[test]
    fn fault_names_round_trip_and_match_config_order() {
        let rates = crate::config::FaultRates::default().named();
        for (fault, (name, _)) in SimFault::ALL.into_iter().zip(rates) {
            assert_eq!(fault.name(), name);
            assert_eq!(SimFault::parse(name), Some(fault));
        }
        assert_eq!(SimFault::parse("explode"), None);
    }

    #[test]
    fn fnv1a_matches_its_reference_vector() {
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
