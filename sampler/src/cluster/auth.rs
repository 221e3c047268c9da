//! The forward endpoint's gate: every call must carry a valid credential from the cluster
//! secret ([`otel_tail_shared::forward::auth`]); others get `UNAUTHENTICATED` before any
//! service sees them, so they change nothing, and are counted in
//! `otel_tail_forward_unauthenticated_total{reason}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::counter;
use otel_tail_shared::forward::auth::{AUTH_HEADER, AuthError, ForwardAuth, ReplayGuard};
use otel_tail_shared::telemetry::names;
use tonic::Status;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

/// What checks credentials: the key and the nonces seen. One per endpoint, shared by all
/// its services.
#[derive(Debug)]
pub struct Gate {
    auth: ForwardAuth,
    guard: ReplayGuard,
}

impl Gate {
    /// A gate for `secret` (the cluster secret).
    pub fn new(secret: &[u8]) -> Gate {
        Gate {
            auth: ForwardAuth::new(secret),
            guard: ReplayGuard::default(),
        }
    }

    fn check<B>(&self, request: &http::Request<B>) -> Result<(), AuthError> {
        let now_ms = otel_tail_shared::otlp::unix_now() / 1_000_000;
        self.auth.verify(
            request.uri().path(),
            request.headers().get(AUTH_HEADER).map(|v| v.as_bytes()),
            now_ms,
            &self.guard,
        )
    }
}

/// `inner` behind the gate (`None`: `cluster.insecure`, every call passes).
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S> Gated<S> {
    /// `inner`, checked by `gate`.
    pub fn new(inner: S, gate: Option<Arc<Gate>>) -> Gated<S> {
        Gated { inner, gate }
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Gated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(gate) = &self.gate
            && let Err(error) = gate.check(&request)
        {
            counter!(names::FORWARD_UNAUTHENTICATED, "reason" => error.reason()).increment(1);
            tracing::debug!(path = request.uri().path(), %error, "forward call refused");
            let response = Status::unauthenticated(error.to_string()).into_http();
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Makes the refusal counters visible at zero.
pub(crate) fn register() {
    for error in [
        AuthError::Missing,
        AuthError::Invalid,
        AuthError::Expired,
        AuthError::Replayed,
    ] {
        counter!(names::FORWARD_UNAUTHENTICATED, "reason" => error.reason()).increment(0);
    }
}
