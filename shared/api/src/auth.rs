//! Bearer-token authentication for `taskexec serve`: a tower layer that answers 401 (with the
//! API's JSON error) unless the request carries `Authorization: Bearer <token>`. The comparison
//! is of SHA-256 digests in constant time, so neither the token nor its length leaks through
//! timing. The Lambda shape relies on API Gateway's IAM authorization instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::ApiError;

/// A layer requiring `Authorization: Bearer <token>` on every request.
///
/// ```
/// use axum::{Router, routing::get};
/// let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(taskexec_api::bearer_auth("s3cret-token"));
/// # let _ = app;
/// ```
pub fn bearer_auth(token: impl AsRef<[u8]>) -> BearerAuthLayer {
    BearerAuthLayer { digest: Arc::new(digest(token.as_ref())) }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The layer of [`bearer_auth`]. Its `Debug` shows no token.
#[derive(Clone)]
pub struct BearerAuthLayer {
    digest: Arc<[u8; 32]>,
}

impl std::fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuthLayer { .. }")
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth { inner, digest: self.digest.clone() }
    }
}

/// The service of [`BearerAuthLayer`].
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    digest: Arc<[u8; 32]>,
}

impl<S> std::fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth { .. }")
    }
}

impl<S> BearerAuth<S> {
    fn allows(&self, request: &Request<Body>) -> bool {
        let Some(presented) = request.headers().get(header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        digest(presented).ct_eq(self.digest.as_ref()).into()
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !rest.is_empty()).then_some(rest)
}

impl<S> Service<Request<Body>> for BearerAuth<S>
where
    S: Service<Request<Body>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if self.allows(&request) {
            Box::pin(self.inner.call(request))
        } else {
            Box::pin(std::future::ready(Ok(ApiError::Unauthorized.into_response())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bearer_scheme() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }
}
