//! OTLP/gRPC pieces of the receivers ([`super::raw`] serves the endpoints; a sampler's
//! forward endpoint uses them too): the hardened server builder, the status of a sink's
//! refusal, and [`Bounded`], the wrapper around each service that reads the body within the
//! budgets and deadline, inflates gzip and charges what decoding will take.
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
use super::http::Refusal;
use super::{ChargeRefused, HeldBytes, InFlight, IngestError, Reads};
use crate::otlp::Signal;
use crate::tls::server::ConnInfo;

/// A tonic server builder with the receivers' connection limits: HTTP/2 keepalive pings
/// (dead peers are dropped) and a cap on concurrent streams per connection.
pub fn hardened_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(super::http::HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(super::http::HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(super::http::HTTP2_MAX_STREAMS))
        .max_frame_size(Some(super::http::HTTP2_MAX_FRAME_BYTES))
        .initial_connection_window_size(Some(super::http::HTTP2_CONNECTION_WINDOW_BYTES))
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

/// Wraps an OTLP export service: reads the request body within the read deadline, the
/// size cap and the byte budgets (total and the connection's), inflates a gzip message
/// (its bytes charged too), charges what the sink's reading will allocate
/// ([`super::Reads`]), takes a request slot, and only then calls the service; gives
/// request-decoding failures the OTLP status codes and counts them.
///
/// tonic reports a failure to decode the request as a headers-only response before the
/// handler runs: `OUT_OF_RANGE` when the frame announces more than the size limit,
/// `RESOURCE_EXHAUSTED` when gzip output exceeds it, `INTERNAL` for undecodable protobuf,
/// corrupt gzip or bad framing. The handlers never answer `OUT_OF_RANGE` or `INTERNAL`
/// themselves ([`status_of`]), so those codes in response headers always mean a bad request.
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    signal: Signal,
    transport: Transport,
    in_flight: InFlight,
    max_request_bytes: usize,
    /// Largest body accepted on the wire (the message cap plus gRPC framing).
    wire_limit: usize,
    reads: Reads,
}

impl<S> Bounded<S> {
    /// `inner`, the export service of `signal`, under `in_flight`'s bounds; messages up to
    /// `max_request_bytes` once inflated; its sink `reads` them so.
    pub fn new(
        inner: S,
        signal: Signal,
        in_flight: InFlight,
        max_request_bytes: usize,
        reads: Reads,
    ) -> Self {
        Bounded {
            inner,
            signal,
            transport: Transport::Grpc,
            in_flight,
            max_request_bytes,
            wire_limit: max_request_bytes.saturating_add(GRPC_FRAMING),
            reads,
        }
    }

    /// Counts refusals under `transport="forward"` (a sampler's forward endpoint).
    pub fn on_forward_endpoint(mut self) -> Self {
        self.transport = Transport::Forward;
        self
    }
}

/// Bytes a gRPC body may carry beyond the message: the 5-byte frame header, with room.
const GRPC_FRAMING: usize = 1024;

impl<S: NamedService> NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

/// Most a body buffer is sized for in advance from its frame header.
const PRESIZE_LIMIT: usize = 4 << 20;

/// The body length a gRPC frame header at the start of `data` announces (header
/// included); `data.len()` when it holds no whole header.
fn announced_len(data: &[u8]) -> usize {
    match data.get(..FRAME_HEADER) {
        Some(head) => {
            FRAME_HEADER + u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize
        }
        None => data.len(),
    }
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
        // The first chunk as it came: a body that arrives in one HTTP/2 frame (the usual
        // case, frames being up to `HTTP2_MAX_FRAME_BYTES`) is handed on without a copy.
        let mut first: Option<bytes::Bytes> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                (
                    Status::invalid_argument(format!("could not read the request body: {e}")),
                    reason::BODY_READ,
                )
            })?;
            // Trailers, and the empty frame that often only ends the stream, add nothing.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let read = buffer.len() + first.as_ref().map_or(0, bytes::Bytes::len);
            if read + data.len() > wire_limit {
                return Err((
                    Status::resource_exhausted(format!(
                        "request body exceeds the limit of {wire_limit} bytes (receiver.max_request_bytes)"
                    )),
                    reason::TOO_LARGE,
                ));
            }
            held.take(in_flight, data.len())
                .map_err(|e| (status_of(&e), reason::OVERLOADED))?;
            if read == 0 {
                first = Some(data);
                continue;
            }
            if let Some(earlier) = first.take() {
                // The frame header announces the message's length: room for it at once
                // rather than growing (and copying) as it comes — up to a few MiB, so a
                // header that lies costs no more than that before its bytes arrive.
                let room = announced_len(&earlier).min(wire_limit).min(PRESIZE_LIMIT);
                buffer.reserve(room.max(earlier.len() + data.len()));
                buffer.extend_from_slice(&earlier);
            }
            buffer.extend_from_slice(&data);
        }
        Ok(first.unwrap_or_else(|| buffer.freeze()))
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

impl<S> Service<http::Request<tonic::body::Body>> for Bounded<S>
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
        let (signal, transport, reads) = (self.signal, self.transport, self.reads);
        let in_flight = self.in_flight.clone();
        let (wire_limit, max_request_bytes) = (self.wire_limit, self.max_request_bytes);
        // The ready service answers this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !in_flight.authorized(
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ) {
            events::request_refused(signal, transport, reason::UNAUTHENTICATED);
            let response =
                Status::unauthenticated("missing or unknown bearer token (receiver.auth)")
                    .into_http();
            return Box::pin(async move { Ok(response) });
        }
        let connection = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.budget.clone());
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // The body is read first, holding only its bytes of the budget; the slot is
            // taken once it is in, so slow senders cannot starve the others.
            let mut held = InFlight::hold(connection);
            let prepared = async {
                let body = read_grpc_body(body, &in_flight, wire_limit, &mut held).await?;
                let message = Message {
                    signal,
                    reads,
                    max_request_bytes,
                };
                message.prepare(&mut parts.headers, body, &in_flight, &mut held)
            };
            let body = match prepared.await {
                Ok((body, message)) => {
                    if let Some(message) = message {
                        parts.extensions.insert(PreparedMessage(message));
                    }
                    body
                }
                Err((status, refusal)) => {
                    events::request_refused(signal, transport, refusal);
                    return Ok(status.into_http());
                }
            };
            let Some(permit) = in_flight.try_enter() else {
                events::request_refused(signal, transport, reason::OVERLOADED);
                return Ok(status_of(&InFlight::busy()).into_http());
            };
            let request = http::Request::from_parts(parts, body);
            let mut response = inner.call(request).await?;
            drop(permit);
            drop(held);
            rewrite_decode_status(response.headers_mut(), signal, transport);
            Ok(response)
        })
    }
}

/// The request's message, whole and inflated, as [`Bounded`] read it: a service that
/// finds it in the request's extensions can take it from there instead of reading (and
/// copying) the body again.
#[derive(Debug, Clone)]
pub(crate) struct PreparedMessage(pub(crate) bytes::Bytes);

/// How one service's messages are taken in.
struct Message {
    signal: Signal,
    reads: Reads,
    max_request_bytes: usize,
}

/// Bytes of the gRPC frame header: a compressed flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

impl Message {
    /// The body to hand the service: a gzip message inflated here (within the size cap,
    /// its bytes charged, `grpc-encoding` removed) so that its decoded size can be charged
    /// before anything decodes it; with the message itself when the body is one
    /// well-framed message. Other bodies go through as they are, for tonic to refuse.
    fn prepare(
        &self,
        headers: &mut http::HeaderMap,
        body: bytes::Bytes,
        in_flight: &InFlight,
        held: &mut HeldBytes,
    ) -> Result<(tonic::body::Body, Option<bytes::Bytes>), (Status, &'static str)> {
        let unchanged = |body| {
            Ok((
                tonic::body::Body::new(http_body_util::Full::new(body)),
                None,
            ))
        };
        let Some((flag, length)) = body.get(..FRAME_HEADER).map(|head| {
            (
                head[0],
                u32::from_be_bytes([head[1], head[2], head[3], head[4]]),
            )
        }) else {
            return unchanged(body);
        };
        if body.len() != FRAME_HEADER + length as usize {
            return unchanged(body);
        }
        let gzip = headers
            .get("grpc-encoding")
            .is_some_and(|encoding| encoding.as_bytes() == b"gzip");
        let inflated = match (flag, gzip) {
            (0, _) if length as usize > self.max_request_bytes => {
                return Err((
                    Status::resource_exhausted(format!(
                        "request message of {length} bytes exceeds the limit of {} bytes (receiver.max_request_bytes)",
                        self.max_request_bytes
                    )),
                    reason::TOO_LARGE,
                ));
            }
            (0, _) => None,
            (1, true) => {
                let inflated = super::http::gunzip(&body[FRAME_HEADER..], self.max_request_bytes)
                    .map_err(|refusal| match refusal {
                    Refusal::TooLarge { .. } => (
                        Status::resource_exhausted(refusal.to_string()),
                        reason::TOO_LARGE,
                    ),
                    other => (
                        Status::invalid_argument(other.to_string()),
                        reason::MALFORMED,
                    ),
                })?;
                held.take(in_flight, inflated.len())
                    .map_err(|e| (status_of(&e), reason::OVERLOADED))?;
                headers.remove("grpc-encoding");
                Some(bytes::Bytes::from(inflated))
            }
            _ => return unchanged(body),
        };
        let message = inflated
            .as_ref()
            .map_or_else(|| &body[FRAME_HEADER..], |inflated| &inflated[..]);
        held.charge_decoded(in_flight, self.signal, message, self.reads)
            .map_err(|refused| match refused {
                ChargeRefused::Malformed(_) => (
                    Status::invalid_argument(refused.to_string()),
                    reason::MALFORMED,
                ),
                ChargeRefused::TooLarge { .. } => (
                    Status::resource_exhausted(refused.to_string()),
                    reason::TOO_LARGE,
                ),
                ChargeRefused::Overloaded(error) => (status_of(&error), reason::OVERLOADED),
            })?;
        let Some(inflated) = inflated else {
            let message = body.slice(FRAME_HEADER..);
            return Ok((
                tonic::body::Body::new(http_body_util::Full::new(body)),
                Some(message),
            ));
        };
        let mut head = [0u8; FRAME_HEADER];
        head[1..].copy_from_slice(&(inflated.len() as u32).to_be_bytes());
        let frames = [bytes::Bytes::copy_from_slice(&head), inflated.clone()]
            .map(|data| Ok::<_, Infallible>(hyper::body::Frame::data(data)));
        let body =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        Ok((body, Some(inflated)))
    }
}

/// A unary gRPC response carrying `message` with status OK, framed as tonic frames it.
pub(crate) fn unary_response(message: &impl prost::Message) -> http::Response<tonic::body::Body> {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(FRAME_HEADER + len);
    frame.push(0);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode_raw(&mut frame);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [
        hyper::body::Frame::data(bytes::Bytes::from(frame)),
        hyper::body::Frame::trailers(trailers),
    ]
    .map(Ok::<_, Infallible>);
    let mut response = http::Response::new(tonic::body::Body::new(
        http_body_util::StreamBody::new(tokio_stream::iter(frames)),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// Rewrites the `grpc-status` of a decoding failure (see [`Bounded`]) and counts it.
fn rewrite_decode_status(headers: &mut http::HeaderMap, signal: Signal, transport: Transport) {
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
    events::request_refused(signal, transport, refusal);
}
