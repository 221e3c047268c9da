//! OTLP/gRPC pieces of the receivers ([`super::raw`] serves the endpoints): the hardened
//! server builder, the status of a sink's refusal, and the wrapper around each service.
//!
//! Size limits are tonic's: the 5-byte gRPC frame header is checked against
//! `max_request_bytes` before the message is buffered, and gzip messages are decompressed
//! into a buffer capped at the same size. tonic answers those failures with codes the OTLP
//! specification does not use (`OUT_OF_RANGE` for an over-size frame, `INTERNAL` for
//! undecodable bytes), so [`DecodeStatus`] rewrites them to `RESOURCE_EXHAUSTED` and
//! `INVALID_ARGUMENT` on the way out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::events::{self, Transport, reason};
use super::{HeldBytes, InFlight, IngestError};
use crate::otlp::Signal;

/// A tonic server builder with the receivers' connection limits: HTTP/2 keepalive pings
/// (dead peers are dropped) and a cap on concurrent streams per connection.
pub fn hardened_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(super::http::HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(super::http::HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(super::http::HTTP2_MAX_STREAMS))
}

/// The gRPC status for a request the sink refused: throttling is retryable and says when
/// to retry (`RetryInfo`), as the OTLP specification asks.
pub fn status_of(error: &IngestError) -> Status {
    match error {
        IngestError::Overloaded { retry_after, .. } => Status::with_error_details(
            Code::Unavailable,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(*retry_after)),
        ),
        IngestError::Invalid(_) => Status::invalid_argument(error.to_string()),
        IngestError::Unavailable { .. } => Status::unavailable(error.detail()),
    }
}

/// Wraps a generated service to give request-decoding failures the OTLP status codes and
/// count them.
///
/// tonic reports a failure to decode the request as a headers-only response before the
/// handler runs: `OUT_OF_RANGE` when the frame announces more than the size limit,
/// `RESOURCE_EXHAUSTED` when gzip output exceeds it, `INTERNAL` for undecodable protobuf,
/// corrupt gzip or bad framing. The handlers never answer `OUT_OF_RANGE` or `INTERNAL`
/// themselves ([`status_of`]), so those codes in response headers always mean a bad request.
#[derive(Debug, Clone)]
pub(crate) struct DecodeStatus<S> {
    inner: S,
    signal: Signal,
    in_flight: InFlight,
    /// Largest body accepted on the wire (the message cap plus gRPC framing).
    wire_limit: usize,
}

impl<S> DecodeStatus<S> {
    pub(crate) fn new(
        inner: S,
        signal: Signal,
        in_flight: InFlight,
        max_request_bytes: usize,
    ) -> Self {
        DecodeStatus {
            inner,
            signal,
            in_flight,
            wire_limit: max_request_bytes.saturating_add(GRPC_FRAMING),
        }
    }
}

/// Bytes a gRPC body may carry beyond the message: the 5-byte frame header, with room.
const GRPC_FRAMING: usize = 1024;

impl<S: NamedService> NamedService for DecodeStatus<S> {
    const NAME: &'static str = S::NAME;
}

/// Reads a request body whole within the read deadline, the wire cap and the byte budget.
async fn read_grpc_body(
    mut body: tonic::body::Body,
    in_flight: &InFlight,
    wire_limit: usize,
    held: &mut HeldBytes,
) -> Result<bytes::Bytes, (Status, &'static str)> {
    use http_body_util::BodyExt;
    let read = async {
        let mut buffer = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                (
                    Status::invalid_argument(format!("could not read the request body: {e}")),
                    reason::BODY_READ,
                )
            })?;
            if let Some(data) = frame.data_ref() {
                if buffer.len() + data.len() > wire_limit {
                    return Err((
                        Status::resource_exhausted(format!(
                            "request body exceeds the limit of {wire_limit} bytes (receiver.max_request_bytes)"
                        )),
                        reason::TOO_LARGE,
                    ));
                }
                held.take(in_flight, data.len())
                    .map_err(|e| (status_of(&e), reason::OVERLOADED))?;
                buffer.extend_from_slice(data);
            }
        }
        Ok(buffer.freeze())
    };
    tokio::time::timeout(in_flight.read_timeout(), read)
        .await
        .unwrap_or_else(|_| {
            Err((
                Status::deadline_exceeded(format!(
                    "the request body did not arrive within {:?} (receiver.read_timeout)",
                    in_flight.read_timeout()
                )),
                reason::READ_TIMEOUT,
            ))
        })
}

impl<S> Service<http::Request<tonic::body::Body>> for DecodeStatus<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let signal = self.signal;
        let in_flight = self.in_flight.clone();
        let wire_limit = self.wire_limit;
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !in_flight.authorized(
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ) {
            events::request_refused(signal, Transport::Grpc, reason::UNAUTHENTICATED);
            let response =
                Status::unauthenticated("missing or unknown bearer token (receiver.auth)")
                    .into_http();
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // The body is read first, holding only its bytes of the budget; the slot is
            // taken once it is in, so slow senders cannot starve the others.
            let mut held = InFlight::no_bytes();
            let body = match read_grpc_body(body, &in_flight, wire_limit, &mut held).await {
                Ok(body) => body,
                Err((status, refusal)) => {
                    events::request_refused(signal, Transport::Grpc, refusal);
                    return Ok(status.into_http());
                }
            };
            let Some(permit) = in_flight.try_enter() else {
                events::request_refused(signal, Transport::Grpc, reason::OVERLOADED);
                return Ok(status_of(&InFlight::busy()).into_http());
            };
            let request = http::Request::from_parts(
                parts,
                tonic::body::Body::new(http_body_util::Full::new(body)),
            );
            let mut response = inner.call(request).await?;
            drop(permit);
            drop(held);
            rewrite_decode_status(response.headers_mut(), signal);
            Ok(response)
        })
    }
}

/// Rewrites the `grpc-status` of a decoding failure (see [`DecodeStatus`]) and counts it.
fn rewrite_decode_status(headers: &mut http::HeaderMap, signal: Signal) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32)
    else {
        return;
    };
    let (code, refusal) = match code {
        Code::OutOfRange => (Code::ResourceExhausted, reason::TOO_LARGE),
        Code::ResourceExhausted => (code, reason::TOO_LARGE),
        Code::Internal => (Code::InvalidArgument, reason::MALFORMED),
        _ => return,
    };
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    events::request_refused(signal, Transport::Grpc, refusal);
}
