//! taskexec-api: the one HTTP API of taskexec, an axum [`Router`](axum::Router) generic over the
//! store and queue ports, with no AWS inside. A Lambda function serves it through `lambda_http`
//! behind API Gateway (IAM authorization); `taskexec serve` serves it on the loopback interface
//! behind [`bearer_auth`]. The OpenAPI document ([`ApiDoc`], `GET /openapi.json`) is generated
//! from the same handlers and types.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use taskexec_api::{ApiSettings, ApiState, SystemSampler, bearer_auth, router};
//! use taskexec_core::memory::{MemoryQueue, MemoryStore};
//! use taskexec_core::time::SystemClock;
//!
//! let queue = Arc::new(MemoryQueue::new(Duration::from_secs(10), SystemClock));
//! let settings = ApiSettings::new(["sim"], Arc::new(SystemSampler::new().unwrap()));
//! let state = ApiState::new(Arc::new(MemoryStore::default()), queue, settings);
//! let app = router(state).layer(bearer_auth("a-long-random-token"));
//! # let _ = app;
//! ```
#![warn(missing_docs)]

mod auth;
mod error;
mod openapi;
mod request_log;
mod resources;
mod routes;
mod state;
mod submit;

pub use auth::{BearerAuth, BearerAuthLayer, bearer_auth};
pub use error::{ApiError, ErrorBody, ErrorInfo, Problem};
pub use openapi::ApiDoc;
pub use request_log::{REQUEST_ID, RequestId};
pub use resources::{ResourceSampler, SampleError, SystemSampler};
pub use routes::observe::{RunProgress, StatusCounts};
pub use routes::{MAX_BODY_BYTES, router};
pub use state::{ApiSettings, ApiState, DEFAULT_RUN_ID, DEFAULT_TIMEOUT_MARGIN, HookError, PauseHook};
pub use submit::{MAX_BATCH, SubmitKind, SubmitResponse, SubmittedTask};
