//! The rate-limit headers providers send with every response, read into [`RateLimits`]:
//!
//! - OpenAI, Azure OpenAI, Groq and most OpenAI-compatible servers:
//!   `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, the reset as a Go-style duration
//!   (`1s`, `6m0s`, `20ms`, `2m59.56s`)
//!   (<https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers>);
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`,
//!   the reset as an RFC 3339 time, input and output tokens counted apart
//!   (<https://docs.anthropic.com/en/api/rate-limits#response-headers>).
//!
//! A header that does not parse is ignored: limits are advice for the limiter, never a reason to
//! fail a call.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use taskexec_core::provider::{LimitKind, RateLimit, RateLimits};

/// The `limit`, `remaining` and `reset` header names of one kind.
type Names = [&'static str; 3];

/// Per kind: the OpenAI-style `limit`, `remaining`, `reset` headers (none for the kinds only
/// Anthropic reports), then Anthropic's.
const HEADERS: [(LimitKind, Option<Names>, Names); 4] = [
    (
        LimitKind::Requests,
        Some(["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]),
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
    ),
    (
        LimitKind::Tokens,
        Some(["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
        [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
    ),
    (
        LimitKind::InputTokens,
        None,
        [
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ],
    ),
    (
        LimitKind::OutputTokens,
        None,
        [
            "anthropic-ratelimit-output-tokens-limit",
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ],
    ),
];

/// Every rate limit in `headers`; `now` turns Anthropic's reset times into durations. Called on
/// every response, so it looks headers up by static names and allocates only what it returns.
pub(crate) fn rate_limits(headers: &HeaderMap, now: SystemTime) -> RateLimits {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    let mut limits = Vec::new();
    for (kind, openai, [limit, remaining, reset]) in HEADERS {
        let mut found = RateLimit { kind, limit: None, remaining: None, reset: None };
        if let Some([limit, remaining, reset]) = openai {
            found.limit = number(limit);
            found.remaining = number(remaining);
            found.reset = text(reset).and_then(go_duration);
        }
        found.limit = found.limit.or_else(|| number(limit));
        found.remaining = found.remaining.or_else(|| number(remaining));
        found.reset = found.reset.or_else(|| text(reset).and_then(|t| until(t, now)));
        if found.limit.is_some() || found.remaining.is_some() || found.reset.is_some() {
            limits.push(found);
        }
    }
    RateLimits(limits)
}

/// A Go `time.Duration` string (`1h2m3.5s`, `20ms`, `0s`); a bare number is seconds.
pub(crate) fn go_duration(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let mut rest = text;
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Time from `now` until the RFC 3339 instant `text` (zero when it has passed).
fn until(text: &str, now: SystemTime) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z').trim_end_matches("+00:00")).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("2m59.56s"), Some(Duration::from_millis(179_560)));
        assert_eq!(go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(go_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration("3d"), None);
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        let l = rate_limits(&h, SystemTime::now());
        assert_eq!(l.0.len(), 2);
        let r = l.get(LimitKind::Requests).unwrap();
        assert_eq!((r.limit, r.remaining, r.reset), (Some(60), Some(59), Some(Duration::from_secs(1))));
        let t = l.get(LimitKind::Tokens).unwrap();
        assert_eq!((t.limit, t.remaining, t.reset), (Some(150_000), Some(149_984), Some(Duration::from_secs(360))));
    }

    #[test]
    fn anthropic_headers_count_input_and_output_apart() {
        let now = humantime::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:30Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            ("anthropic-ratelimit-input-tokens-reset", "2025-01-01T00:00:01Z"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7990"),
            ("anthropic-ratelimit-output-tokens-reset", "2024-12-31T23:59:59Z"),
        ]);
        let l = rate_limits(&h, now);
        let r = l.get(LimitKind::Requests).unwrap();
        assert_eq!((r.limit, r.remaining, r.reset), (Some(50), Some(0), Some(Duration::from_secs(30))));
        let i = l.get(LimitKind::InputTokens).unwrap();
        assert_eq!((i.limit, i.remaining, i.reset), (Some(40_000), Some(39_000), Some(Duration::from_secs(1))));
        assert_eq!(l.get(LimitKind::OutputTokens).unwrap().reset, Some(Duration::ZERO));
        assert!(l.get(LimitKind::Tokens).is_none());
    }

    #[test]
    fn nothing_or_garbage_gives_nothing() {
        assert!(rate_limits(&HeaderMap::new(), SystemTime::now()).is_empty());
        let h = headers(&[("x-ratelimit-limit-requests", "lots"), ("anthropic-ratelimit-tokens-reset", "later")]);
        assert!(rate_limits(&h, SystemTime::now()).is_empty());
    }
}
