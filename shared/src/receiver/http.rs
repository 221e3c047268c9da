//! OTLP/HTTP request handling for the receivers ([`super::raw`] serves the endpoints):
//! `POST /v1/traces`, `/v1/logs` and `/v1/metrics` over HTTP/1.1 and cleartext HTTP/2,
//! with protobuf or OTLP JSON bodies, plain or gzip.
//!
//! The body is read through a cap of `max_request_bytes` (a `Content-Length` above it is
//! refused before reading), and gzip is inflated chunk by chunk into a buffer that never
//! grows past the same cap, so a gzip bomb costs at most the cap. Responses use the
//! request's encoding: the `Export*ServiceResponse` on success, a `google.rpc.Status`
//! naming the problem on failure.

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio_stream::StreamExt as _;
use tonic::Code;

use super::events::{self, Transport, reason};
use super::signal::{OtlpRequest, ingest_error_reason};
use super::{Accepted, ChargeRefused, HeldBytes, InFlight, IngestError};
use crate::otlp::Signal;
use crate::tls::server::{ConnectionBudget, Listener};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// HTTP/2 keepalive ping interval on every connection (OTLP/HTTP and gRPC alike).
pub(crate) const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams (requests) per HTTP/2 connection.
pub(crate) const HTTP2_MAX_STREAMS: u32 = 64;
/// Largest HTTP/2 frame a client may send: OTLP requests run to hundreds of KiB, and with
/// the protocol's default of 16 KiB each arrived as dozens of frames, each handled and
/// copied on its own.
pub(crate) const HTTP2_MAX_FRAME_BYTES: u32 = 256 * 1024;
/// Flow-control window of a whole HTTP/2 connection. The receiver tells the client it may
/// send more once half the window is read: at hyper's 1 MiB that was a WINDOW_UPDATE every
/// two or three requests of a few hundred KiB, each its own socket write (and a wake-up of
/// the client). Streams keep hyper's 1 MiB window.
pub(crate) const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Accepts connections on `listener` and serves each with `service` (HTTP/1.1 or HTTP/2,
/// over TLS when the listener has it, else h2c) until `shutdown` completes; then stops
/// accepting, asks open connections to close once idle, and waits for them. Shared with
/// the admin endpoint.
pub(crate) async fn serve_connections<S>(
    listener: Listener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer lets hyper enforce its header-read timeout against slow clients.
    builder.http1().timer(TokioTimer::new());
    // Pings find dead peers; a stream cap keeps one connection from taking every slot.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEPALIVE))
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES);
    let graceful = GracefulShutdown::new();
    let mut incoming = listener.incoming();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(error)) => {
                    tracing::debug!(%error, "accepting an HTTP connection failed");
                    continue;
                }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let budget = stream.budget();
        let inner = service.clone();
        // Each request of the connection carries the connection's byte budget.
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(budget.clone());
            inner.call(request)
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}

/// The OTLP/HTTP request handler.
pub(crate) struct HttpReceiver<I> {
    pub(crate) ingest: Arc<I>,
    pub(crate) max_request_bytes: usize,
    /// Bound on requests handled at once (shared with the gRPC receiver).
    pub(crate) in_flight: InFlight,
}

/// Request reading, for the raw receivers ([`super::raw`]).
impl<I> HttpReceiver<I> {
    /// Checks method, media type, content coding and declared length before any body byte
    /// is read; returns the negotiated encodings and the declared length.
    pub(crate) fn check_headers(
        &self,
        request: &Request<Incoming>,
        encoding: Result<Encoding, Refusal>,
    ) -> Result<(Encoding, Compression, Option<u64>), Refusal> {
        if request.method() != Method::POST {
            return Err(Refusal::MethodNotAllowed(request.method().clone()));
        }
        if !self.in_flight.authorized(
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ) {
            return Err(Refusal::Unauthenticated);
        }
        let headers = request.headers();
        let encoding = encoding?;
        let compression = Compression::of(headers)?;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_request_bytes as u64) {
            return Err(Refusal::TooLarge {
                limit: self.max_request_bytes,
            });
        }
        Ok((encoding, compression, declared))
    }

    /// Reads the body through the size cap, within `receiver.read_timeout` and the byte
    /// budget, and inflates it if gzip; returns it with the budget bytes it holds (until
    /// the request is answered). `declared` is the `Content-Length`, already checked
    /// against the cap, used to size the buffer once.
    pub(crate) async fn read_body(
        &self,
        mut body: Incoming,
        declared: Option<u64>,
        compression: Compression,
        connection: Option<ConnectionBudget>,
    ) -> Result<(Vec<u8>, HeldBytes), Refusal> {
        let limit = self.max_request_bytes;
        let mut held = InFlight::hold(connection);
        let read = async {
            let mut raw = CappedBuffer::new(declared.map_or(0, |length| length as usize), limit);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| Refusal::BodyRead(error.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    held.take(&self.in_flight, data.len())
                        .map_err(Refusal::Ingest)?;
                    raw.extend(data)?;
                }
            }
            Ok(raw.bytes)
        };
        let raw = match tokio::time::timeout(self.in_flight.read_timeout(), read).await {
            Err(_) => return Err(Refusal::ReadTimeout(self.in_flight.read_timeout())),
            Ok(Err(refusal @ (Refusal::TooLarge { .. } | Refusal::Ingest(_)))) => {
                linger(body);
                return Err(refusal);
            }
            Ok(read) => read?,
        };
        let body = match compression {
            Compression::None => raw,
            Compression::Gzip => {
                let inflated = gunzip(&raw, limit)?;
                drop(raw);
                held.take(&self.in_flight, inflated.len())
                    .map_err(Refusal::Ingest)?;
                inflated
            }
        };
        Ok((body, held))
    }
}

/// Longest a refused request's unread body is read and discarded for.
const LINGER: Duration = Duration::from_secs(5);

/// Reads and discards what is left of a refused request's body, for at most [`LINGER`],
/// while the refusal is answered. An HTTP/1 client still writing its body when the server
/// closes gets a reset and never sees the 413 or 401; draining lets it finish writing and
/// read the answer. Nothing is kept, so the cost is bandwidth and one task, not memory.
pub(crate) fn linger(mut body: Incoming) {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// A byte buffer that refuses to hold more than `limit` bytes and whose allocation never
/// exceeds it either (it grows by doubling, clamped to the limit).
struct CappedBuffer {
    bytes: Vec<u8>,
    limit: usize,
}

impl CappedBuffer {
    fn new(capacity: usize, limit: usize) -> Self {
        CappedBuffer {
            bytes: Vec::with_capacity(capacity.min(limit)),
            limit,
        }
    }

    fn extend(&mut self, data: &[u8]) -> Result<(), Refusal> {
        let needed = self.bytes.len() + data.len();
        if needed > self.limit {
            return Err(Refusal::TooLarge { limit: self.limit });
        }
        if needed > self.bytes.capacity() {
            let target = (self.bytes.capacity() * 2)
                .max(MIN_GROWTH)
                .max(needed)
                .min(self.limit);
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }
}

/// Smallest step a [`CappedBuffer`] grows by, and the inflation chunk size.
const MIN_GROWTH: usize = 16 * 1024;

/// Inflates a gzip body (one or more members) into at most `limit` bytes, stopping as soon
/// as the output would exceed it.
pub(crate) fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = CappedBuffer::new(compressed.len().saturating_mul(4), limit);
    let mut chunk = [0u8; MIN_GROWTH];
    loop {
        let read = decoder
            .read(&mut chunk)
            .map_err(|error| Refusal::Malformed(format!("invalid gzip body: {error}")))?;
        if read == 0 {
            return Ok(out.bytes);
        }
        out.extend(&chunk[..read])?;
    }
}

/// Decodes an export request in the given encoding.
pub(crate) fn decode<R: OtlpRequest>(body: &[u8], encoding: Encoding) -> Result<R, Refusal> {
    let signal = R::SIGNAL.as_str();
    match encoding {
        Encoding::Protobuf => R::decode(body).map_err(|error| {
            Refusal::Malformed(format!("invalid OTLP protobuf {signal} request: {error}"))
        }),
        Encoding::Json => serde_json::from_slice(body).map_err(|error| {
            Refusal::Malformed(format!("invalid OTLP JSON {signal} request: {error}"))
        }),
    }
}

/// An OTLP request decoded by [`decode_body`].
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedBody {
    /// A `/v1/traces` body.
    Traces(ExportTraceServiceRequest),
    /// A `/v1/logs` body.
    Logs(ExportLogsServiceRequest),
    /// A `/v1/metrics` body.
    Metrics(ExportMetricsServiceRequest),
}

/// Decodes a request body exactly as the receiver does once it is read: inflates it when
/// `gzip` (at most `limit` bytes out), then parses OTLP JSON when `json`, else protobuf.
/// The receiver's whole decoder of untrusted bytes in one call, so it can be fuzzed; an
/// error is the message the client would get.
pub fn decode_body(
    signal: Signal,
    body: &[u8],
    json: bool,
    gzip: bool,
    limit: usize,
) -> Result<DecodedBody, String> {
    let inflated;
    let body = if gzip {
        inflated = gunzip(body, limit).map_err(|e| e.to_string())?;
        inflated.as_slice()
    } else {
        body
    };
    let encoding = if json {
        Encoding::Json
    } else {
        Encoding::Protobuf
    };
    let decoded = match signal {
        Signal::Traces => DecodedBody::Traces(decode(body, encoding).map_err(|e| e.to_string())?),
        Signal::Logs => DecodedBody::Logs(decode(body, encoding).map_err(|e| e.to_string())?),
        Signal::Metrics => DecodedBody::Metrics(decode(body, encoding).map_err(|e| e.to_string())?),
    };
    Ok(decoded)
}

/// The body encoding of a request, and so of its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From `Content-Type`, ignoring parameters such as `charset`.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Self, Refusal> {
        let value = headers
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default();
        let media_type = value.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case(PROTOBUF) {
            Ok(Encoding::Protobuf)
        } else if media_type.eq_ignore_ascii_case(JSON) {
            Ok(Encoding::Json)
        } else {
            Err(Refusal::UnsupportedMediaType(value))
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// The content coding of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

impl Compression {
    /// From `Content-Encoding`; absent or `identity` means none.
    fn of(headers: &HeaderMap) -> Result<Self, Refusal> {
        let Some(value) = headers.get(CONTENT_ENCODING) else {
            return Ok(Compression::None);
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let coding = value.trim();
        if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
            Ok(Compression::None)
        } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            Ok(Compression::Gzip)
        } else {
            Err(Refusal::UnsupportedEncoding(value.into_owned()))
        }
    }
}

/// Why a request was refused whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no OTLP endpoint at {0}; use /v1/traces, /v1/logs or /v1/metrics")]
    NotFound(String),
    #[error("method {0} not allowed; OTLP/HTTP requests use POST")]
    MethodNotAllowed(Method),
    #[error("unsupported Content-Type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported Content-Encoding {0:?}; use gzip or none")]
    UnsupportedEncoding(String),
    #[error("request body exceeds the limit of {limit} bytes (receiver.max_request_bytes)")]
    TooLarge { limit: usize },
    #[error("{0}")]
    DecodedTooLarge(String),
    #[error("{0}")]
    Malformed(String),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive within {0:?} (receiver.read_timeout)")]
    ReadTimeout(Duration),
    #[error("missing or unknown bearer token (receiver.auth)")]
    Unauthenticated,
    #[error(transparent)]
    Ingest(IngestError),
}

impl From<ChargeRefused> for Refusal {
    fn from(refused: ChargeRefused) -> Self {
        match refused {
            ChargeRefused::Malformed(message) => Refusal::Malformed(message),
            ChargeRefused::TooLarge { .. } => Refusal::DecodedTooLarge(refused.to_string()),
            ChargeRefused::Overloaded(error) => Refusal::Ingest(error),
        }
    }
}

impl Refusal {
    fn http_status(&self) -> StatusCode {
        match self {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UnsupportedMediaType(_) | Refusal::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::TooLarge { .. } | Refusal::DecodedTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::ReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
            Refusal::Malformed(_)
            | Refusal::BodyRead(_)
            | Refusal::Ingest(IngestError::Invalid(_)) => StatusCode::BAD_REQUEST,
            Refusal::Ingest(IngestError::Overloaded { .. } | IngestError::Unavailable { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `google.rpc.Code` carried in the `Status` body.
    fn rpc_code(&self) -> Code {
        match self {
            Refusal::NotFound(_) => Code::NotFound,
            Refusal::MethodNotAllowed(_) => Code::Unimplemented,
            Refusal::UnsupportedMediaType(_)
            | Refusal::UnsupportedEncoding(_)
            | Refusal::Malformed(_)
            | Refusal::BodyRead(_)
            | Refusal::Ingest(IngestError::Invalid(_)) => Code::InvalidArgument,
            Refusal::TooLarge { .. } | Refusal::DecodedTooLarge(_) => Code::ResourceExhausted,
            Refusal::ReadTimeout(_) => Code::DeadlineExceeded,
            Refusal::Unauthenticated => Code::Unauthenticated,
            Refusal::Ingest(IngestError::Overloaded { .. } | IngestError::Unavailable { .. }) => {
                Code::Unavailable
            }
        }
    }

    /// The `reason` label under which the refusal is counted; `None` for paths that are
    /// not an OTLP endpoint at all.
    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::NotFound(_) => return None,
            Refusal::MethodNotAllowed(_) => reason::METHOD_NOT_ALLOWED,
            Refusal::UnsupportedMediaType(_) => reason::UNSUPPORTED_MEDIA_TYPE,
            Refusal::UnsupportedEncoding(_) => reason::UNSUPPORTED_ENCODING,
            Refusal::TooLarge { .. } | Refusal::DecodedTooLarge(_) => reason::TOO_LARGE,
            Refusal::Malformed(_) => reason::MALFORMED,
            Refusal::BodyRead(_) => reason::BODY_READ,
            Refusal::ReadTimeout(_) => reason::READ_TIMEOUT,
            Refusal::Unauthenticated => reason::UNAUTHENTICATED,
            Refusal::Ingest(error) => ingest_error_reason(error),
        })
    }

    /// `Retry-After` in whole seconds (rounded up, at least 1) when throttling.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::Ingest(IngestError::Overloaded { retry_after, .. }) => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }
}

/// Counts a refusal of a request to a known endpoint and builds its response.
pub(crate) fn refuse(
    signal: Signal,
    refusal: &Refusal,
    encoding: Encoding,
) -> Response<Full<Bytes>> {
    if let Some(label) = refusal.reason() {
        events::request_refused(signal, Transport::Http, label);
    }
    refusal_response(refusal, encoding)
}

/// An error response: the status code and a `google.rpc.Status` body in `encoding`.
pub(crate) fn refusal_response(refusal: &Refusal, encoding: Encoding) -> Response<Full<Bytes>> {
    let code = refusal.rpc_code() as i32;
    let message = refusal.to_string();
    let body = match encoding {
        Encoding::Protobuf => tonic_types::pb::Status {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut response = response(refusal.http_status(), encoding, body);
    if let Some(seconds) = refusal.retry_after_secs() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if matches!(refusal, Refusal::MethodNotAllowed(_)) {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
    }
    if matches!(refusal, Refusal::Unauthenticated) {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// 200 with the `Export*ServiceResponse`, carrying `partial_success` when items were refused.
pub(crate) fn success_response<R: OtlpRequest>(
    accepted: &Accepted,
    encoding: Encoding,
) -> Response<Full<Bytes>> {
    let body = match encoding {
        Encoding::Protobuf => R::response(accepted).encode_to_vec(),
        Encoding::Json => json_response::<R>(accepted).into_bytes(),
    };
    response(StatusCode::OK, encoding, body)
}

/// The OTLP JSON export response. Written by hand rather than through serde so that it
/// follows OTLP JSON to the letter: int64 counters as strings, absent (not null)
/// `partialSuccess` when everything was accepted.
fn json_response<R: OtlpRequest>(accepted: &Accepted) -> String {
    if accepted.rejected == 0 && accepted.message.is_empty() {
        return "{}".to_owned();
    }
    let mut partial = serde_json::Map::new();
    partial.insert(
        R::REJECTED_JSON_FIELD.to_owned(),
        accepted.rejected.to_string().into(),
    );
    partial.insert("errorMessage".to_owned(), accepted.message.clone().into());
    serde_json::json!({ "partialSuccess": partial }).to_string()
}

fn response(status: StatusCode, encoding: Encoding, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gunzip_round_trips_within_the_limit() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(gunzip(&gzip(&data), data.len()).unwrap(), data);
    }

    #[test]
    fn gunzip_stops_at_the_limit_without_growing_past_it() {
        let data = vec![0u8; 10 * 1024 * 1024];
        let error = gunzip(&gzip(&data), 1024 * 1024).unwrap_err();
        assert!(
            matches!(error, Refusal::TooLarge { limit } if limit == 1024 * 1024),
            "{error}"
        );
    }

    #[test]
    fn capped_buffer_never_allocates_past_its_limit() {
        let limit = 100_000;
        let mut buffer = CappedBuffer::new(0, limit);
        for _ in 0..limit / 1000 {
            buffer.extend(&[7; 1000]).unwrap();
            assert!(
                buffer.bytes.capacity() <= limit,
                "{}",
                buffer.bytes.capacity()
            );
        }
        assert_eq!(buffer.bytes.len(), limit);
        assert!(matches!(buffer.extend(&[7]), Err(Refusal::TooLarge { .. })));
        assert_eq!(CappedBuffer::new(usize::MAX, 10).bytes.capacity(), 10);
    }

    #[test]
    fn gunzip_reads_concatenated_members() {
        let mut body = gzip(b"hello ");
        body.extend(gzip(b"world"));
        assert_eq!(gunzip(&body, 100).unwrap(), b"hello world");
    }

    #[test]
    fn gunzip_rejects_corrupt_input() {
        let error = gunzip(b"definitely not gzip", 100).unwrap_err();
        assert!(
            matches!(&error, Refusal::Malformed(message) if message.contains("gzip")),
            "{error}"
        );
    }

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(Encoding::of(&headers).unwrap(), Encoding::Json);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert_eq!(Encoding::of(&headers).unwrap(), Encoding::Protobuf);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            Encoding::of(&headers),
            Err(Refusal::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            Encoding::of(&HeaderMap::new()),
            Err(Refusal::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn content_encoding_accepts_gzip_and_identity_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(Compression::of(&headers).unwrap(), Compression::None);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
        assert_eq!(Compression::of(&headers).unwrap(), Compression::None);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(Compression::of(&headers).unwrap(), Compression::Gzip);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(
            Compression::of(&headers),
            Err(Refusal::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let overloaded = |millis| {
            Refusal::Ingest(IngestError::Overloaded {
                retry_after: Duration::from_millis(millis),
                reason: "test",
            })
        };
        assert_eq!(overloaded(0).retry_after_secs(), Some(1));
        assert_eq!(overloaded(1500).retry_after_secs(), Some(2));
        assert_eq!(overloaded(3000).retry_after_secs(), Some(3));
        assert_eq!(Refusal::Malformed(String::new()).retry_after_secs(), None);
    }

    #[test]
    fn json_response_follows_otlp_json() {
        assert_eq!(
            json_response::<ExportTraceServiceRequest>(&Accepted::default()),
            "{}"
        );
        let partial = Accepted {
            rejected: 2,
            message: "bad ids".to_owned(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&json_response::<ExportLogsServiceRequest>(&partial)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "bad ids"}})
        );
    }
}
