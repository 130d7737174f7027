//! One log line per request, and a request id on every answer: the id a client sent in
//! `x-request-id` (when it is a valid id, [`taskexec_core::validate::ID_PATTERN`]), else a fresh
//! one, echoed in the answer's `x-request-id` and put on the log line with the method, the path
//! (never the query or the body), the status and the time taken. Both hosts get it (the API
//! function logs to CloudWatch, `taskexec serve` to stderr).

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use taskexec_core::validate::is_valid_id;

/// The header carrying a request's id both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A request's id, in the request's extensions for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A fresh id: 32 hex digits, unique in this process (a counter) and unpredictable across
/// processes (hashed with a per-process random key). Written by hand: a random id needs no
/// crate here, and std's `RandomState` is seeded from the OS.
fn fresh_id() -> String {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = key.build_hasher();
    hasher.write_u64(n);
    format!("{:016x}{n:016x}", hasher.finish())
}

/// The middleware: see the module documentation.
pub(crate) async fn log_requests(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_valid_id(id))
        .map_or_else(fresh_id, str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1_000.0;
    tracing::info!(target: "taskexec::api", request_id = %id, %method, %path, status, ms, "request");
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_valid_and_distinct() {
        let ids: std::collections::BTreeSet<String> = (0..1_000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 1_000);
        assert!(ids.iter().all(|id| is_valid_id(id) && id.len() == 32));
    }
}
