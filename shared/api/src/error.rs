//! The API's one error type and its JSON body, `{"error": {"code", "message", "details"?}}`.
//! Store and queue failures are logged with their cause and answered with a generic message:
//! no internal detail reaches a client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use taskexec_core::error::StoreError;
use taskexec_core::validate::FieldError;
use utoipa::ToSchema;

use crate::resources::SampleError;

/// One problem in a request: which task (by its index in the submitted array), which field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Index of the task in the submitted array (0 for a single task object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field's path (`priority`, `parameters.temperature`); empty for the whole document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem with the task at `index`.
    #[must_use]
    pub fn at(index: usize, error: FieldError) -> Self {
        Self { index: Some(index), field: error.field, message: error.message }
    }

    /// A problem with the request as a whole (or with one field of a non-task body).
    pub fn general(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { index: None, field: field.into(), message: message.into() }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    /// Stable machine-readable code: `invalid_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`, `unavailable`, `internal`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Each problem, when there are several (validation, conflicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Problem>>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks the contract: 400.
    #[error("{message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Each problem.
        details: Vec<Problem>,
    },
    /// No or wrong credentials: 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// No such task, run or route: 404.
    #[error("{0}")]
    NotFound(String),
    /// The method is not served on this path: 405.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// The request conflicts with the stored state: 409.
    #[error("{message}")]
    Conflict {
        /// Summary.
        message: String,
        /// Each conflicting item.
        details: Vec<Problem>,
    },
    /// The body exceeds [`crate::MAX_BODY_BYTES`]: 413.
    #[error("the request body exceeds {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The store failed: 503, retry later.
    #[error("the task store is unavailable")]
    Store(#[source] StoreError),
    /// The tasks were stored but could not be queued: 503, retry the same (idempotent) request.
    #[error("the tasks were stored but could not be queued")]
    Queue(#[source] StoreError),
    /// The resource sample failed: 500.
    #[error("the resource sample failed")]
    Sampling(#[source] SampleError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl ApiError {
    /// A 400 with one problem.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let problem = Problem::general(field, message);
        Self::Invalid { message: problem.message.clone(), details: vec![problem] }
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Store(_) | Self::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Sampling(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { .. } => "conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Store(_) | Self::Queue(_) => "unavailable",
            Self::Sampling(_) => "internal",
        }
    }

    /// The body: what a client may see (causes of internal failures are only logged).
    #[must_use]
    pub fn body(&self) -> ErrorBody {
        let (message, details) = match self {
            Self::Invalid { message, details } | Self::Conflict { message, details } => {
                (message.clone(), (!details.is_empty()).then(|| details.clone()))
            }
            Self::Store(_) => ("the task store is unavailable; retry later".to_owned(), None),
            Self::Queue(_) => (
                "the tasks were stored but could not be queued; send the same request again (submission is idempotent)"
                    .to_owned(),
                None,
            ),
            other => (other.to_string(), None),
        };
        ErrorBody { error: ErrorInfo { code: self.code().to_owned(), message, details } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Store(cause) | Self::Queue(cause) = &self {
            tracing::error!(error = %cause, code = self.code(), "request failed: {self}");
        } else if let Self::Sampling(cause) = &self {
            tracing::error!(error = %cause, "request failed: {self}");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_stay_out_of_the_body() {
        let secret = std::io::Error::other("disk /var/secret/db is corrupt");
        let e = ApiError::Store(StoreError::backend(secret));
        let body = serde_json::to_string(&e.body()).unwrap();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.contains("secret"), "{body}");
        assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    }

    #[test]
    fn validation_lists_each_problem() {
        let e = ApiError::Invalid {
            message: "1 problem".into(),
            details: vec![Problem::at(3, FieldError { field: "timeout".into(), message: "too long".into() })],
        };
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["details"][0]["index"], 3);
        assert_eq!(body["error"]["details"][0]["field"], "timeout");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
