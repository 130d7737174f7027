//! Error classes: the five values of `TaskError.class`, the error a provider adapter returns
//! (classified once, at the adapter) and the error a store returns.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::RateLimits;

/// The only values of `TaskError.class` (DESIGN.md, "Errors are classified once").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorClass {
    /// 429 for request or token rate: retried without using an attempt, counted in `throttles`.
    RateLimited,
    /// Connect/reset, attempt timeout, 5xx, overload, malformed 200: retried with backoff.
    Transient,
    /// Invalid request, auth, unknown model, context length, policy, quota: never retried.
    Permanent,
    /// Cancelled by a user.
    Cancelled,
    /// The overall deadline passed.
    DeadlineExceeded,
}

impl ErrorClass {
    /// The JSON value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rateLimited",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadlineExceeded",
        }
    }

    /// Whether the engine would try again after this class.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Transient)
    }
}

/// The error reported on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskError {
    /// One of the five classes.
    pub class: ErrorClass,
    /// Human-readable cause (never contains a key).
    pub message: String,
    /// HTTP status from the provider, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
    /// The provider's error code or type (`rate_limit_exceeded`, `overloaded_error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    /// Whether the class is one the engine retries (false on a final error after exhaustion
    /// is still true: it says what kind of error it was, not whether budget remains).
    pub retryable: bool,
}

impl TaskError {
    /// An error of `class` with a message and no provider details.
    #[must_use]
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            provider_status: None,
            provider_code: None,
            retryable: class.is_retryable(),
        }
    }
}

/// What a provider adapter returns when a call did not produce an answer. The variant carries
/// the decision (retry, retry after, don't).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// Request or token rate exceeded.
    #[error("rate limited{}: {detail}", fmt_status(*status))]
    RateLimited {
        /// The provider's own hint, if any (`Retry-After`, `retry-after-ms`, `RetryInfo`).
        retry_after: Option<Duration>,
        /// HTTP status and provider code/message.
        status: Option<u16>,
        /// Provider error code.
        code: Option<String>,
        /// Description.
        detail: String,
        /// Rate limits from the response headers.
        limits: RateLimits,
    },
    /// Worth retrying with backoff; counts toward the breaker.
    #[error("transient failure{}: {detail}", fmt_status(*status))]
    Transient {
        /// The provider's own hint, if any.
        retry_after: Option<Duration>,
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// Provider error code.
        code: Option<String>,
        /// Description.
        detail: String,
        /// Rate limits from the response headers.
        limits: RateLimits,
    },
    /// Never worth retrying.
    #[error("permanent failure{}: {detail}", fmt_status(*status))]
    Permanent {
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// Provider error code.
        code: Option<String>,
        /// Description.
        detail: String,
        /// Rate limits from the response headers.
        limits: RateLimits,
    },
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl ProviderError {
    /// A transient error without a response (connect, reset, timeout, malformed body).
    #[must_use]
    pub fn transient(detail: impl Into<String>) -> Self {
        Self::Transient {
            retry_after: None,
            status: None,
            code: None,
            detail: detail.into(),
            limits: RateLimits::default(),
        }
    }

    /// A permanent error without a response.
    #[must_use]
    pub fn permanent(detail: impl Into<String>) -> Self {
        Self::Permanent { status: None, code: None, detail: detail.into(), limits: RateLimits::default() }
    }

    /// The rate limits the provider reported with this error.
    #[must_use]
    pub fn limits(&self) -> &RateLimits {
        match self {
            Self::RateLimited { limits, .. } | Self::Transient { limits, .. } | Self::Permanent { limits, .. } => {
                limits
            }
        }
    }

    /// This error with `limits` attached.
    #[must_use]
    pub fn with_limits(mut self, new: RateLimits) -> Self {
        match &mut self {
            Self::RateLimited { limits, .. } | Self::Transient { limits, .. } | Self::Permanent { limits, .. } => {
                *limits = new;
            }
        }
        self
    }

    /// This error with `f` applied to its detail (to scrub a key a server echoed back).
    #[must_use]
    pub fn map_detail(mut self, f: impl FnOnce(&str) -> String) -> Self {
        match &mut self {
            Self::RateLimited { detail, .. } | Self::Transient { detail, .. } | Self::Permanent { detail, .. } => {
                *detail = f(detail);
            }
        }
        self
    }

    /// The class this error maps to.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::RateLimited { .. } => ErrorClass::RateLimited,
            Self::Transient { .. } => ErrorClass::Transient,
            Self::Permanent { .. } => ErrorClass::Permanent,
        }
    }

    /// The provider's retry hint.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    /// HTTP status, if any.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::RateLimited { status, .. } | Self::Transient { status, .. } | Self::Permanent { status, .. } => {
                *status
            }
        }
    }

    /// The error as reported on the task.
    #[must_use]
    pub fn to_task_error(&self) -> TaskError {
        let (status, code, detail) = match self {
            Self::RateLimited { status, code, detail, .. }
            | Self::Transient { status, code, detail, .. }
            | Self::Permanent { status, code, detail, .. } => (status, code, detail),
        };
        TaskError {
            class: self.class(),
            message: detail.clone(),
            provider_status: *status,
            provider_code: code.clone(),
            retryable: self.class().is_retryable(),
        }
    }
}

/// What a store returns when it could not do what was asked. Conditional-write failures are not
/// errors (they are outcomes such as [`crate::ports::WriteOutcome::Stale`]); this is for I/O.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption, connection).
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A submission reused an id with different content.
    #[error("task {id} already exists with different content")]
    Conflict {
        /// The id.
        id: String,
    },
    /// No such task.
    #[error("no task with id {0}")]
    NotFound(String),
    /// The transition is not legal from the task's current state.
    #[error(transparent)]
    Transition(#[from] crate::lifecycle::InvalidTransition),
}

impl StoreError {
    /// Wrap a backend error, keeping it as the source.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_serialise_as_documented() {
        for (class, json) in [
            (ErrorClass::RateLimited, "\"rateLimited\""),
            (ErrorClass::Transient, "\"transient\""),
            (ErrorClass::Permanent, "\"permanent\""),
            (ErrorClass::Cancelled, "\"cancelled\""),
            (ErrorClass::DeadlineExceeded, "\"deadlineExceeded\""),
        ] {
            assert_eq!(serde_json::to_string(&class).unwrap(), json);
            assert_eq!(format!("\"{}\"", class.as_str()), json);
        }
    }

    #[test]
    fn provider_error_maps_to_task_error() {
        let e = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
            status: Some(429),
            code: Some("rate_limit_exceeded".into()),
            detail: "slow down".into(),
            limits: Default::default(),
        };
        assert_eq!(e.class(), ErrorClass::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.status(), Some(429));
        let t = e.to_task_error();
        assert!(t.retryable);
        assert_eq!(t.provider_code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(e.to_string(), "rate limited (HTTP 429): slow down");
        let p = ProviderError::permanent("bad");
        assert!(!p.to_task_error().retryable);
        assert_eq!(p.retry_after(), None);
        assert_eq!(ProviderError::transient("reset").status(), None);
    }
}
