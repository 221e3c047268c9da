//! The OTLP receivers. They hand over the encoded request instead of a decoded one: the
//! router regroups requests by walking their wire format ([`crate::split`]), the sampler
//! reads spans from it, and a sink that wants decoded requests puts
//! [`super::Decoding`] in front ([`super::serve`]).
//!
//! OTLP/gRPC on the three standard `Export` methods with gzip (pieces in [`super::grpc`]),
//! and
//! OTLP/HTTP `POST /v1/{traces,logs,metrics}`. `receiver.max_request_bytes` caps the
//! decompressed message while it is read (gzip bombs included). What the sink receives is
//! always an encoded `Export*ServiceRequest`:
//! - gRPC: the message bytes, after gzip, untouched;
//! - HTTP protobuf: the body, after gzip, untouched;
//! - HTTP JSON: decoded with serde and re-encoded with prost (JSON is rare; this is the
//!   one path that pays for a full decode).
//!
//! The bytes are not validated here: the sink finds malformed framing or ids while
//! reading them and answers [`IngestError::Invalid`] (counted as `malformed`) or a partial
//! success.

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tonic::codec::CompressionEncoding;
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};

use super::events::{self, Transport};
use super::grpc::{Bounded, PreparedMessage, status_of, unary_response};
use super::http::{
    Encoding, HttpReceiver, Refusal, decode, linger, refusal_response, refuse, serve_connections,
    success_response,
};
use super::signal::{OtlpRequest, ingest_error_reason};
use super::{Accepted, BoundAddrs, InFlight, IngestError, Reads, serve_both, wait_stop};
use crate::config::ReceiverConfig;
use crate::forward::{ServerCodec, export_path};
use crate::otlp::Signal;
use crate::split::Spans;
use crate::tls::server::{ConnectionBudget, Listener};

/// The sink raw receivers deliver encoded `Export*ServiceRequest` bytes to. `Ok` means
/// the data is accepted (for the router: every owner accepted its part); the
/// [`Accepted`] carries what was refused item by item.
pub trait RawIngest: Send + Sync + 'static {
    /// Takes an encoded `ExportTraceServiceRequest`.
    fn traces(&self, body: Bytes) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// Takes an encoded `ExportLogsServiceRequest`.
    fn logs(&self, body: Bytes) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// Takes an encoded `ExportMetricsServiceRequest`.
    fn metrics(&self, body: Bytes) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// How this sink reads requests of `signal`: what the receivers charge their byte
    /// budget for beyond the body. Default: decoded whole.
    fn reads(&self, signal: Signal) -> Reads {
        let _ = signal;
        Reads::Decodes(Spans::Whole)
    }
}

/// Binds both raw receivers and serves them until `shutdown` completes; in-flight requests
/// finish first. `on_bound` is told the real addresses as soon as the sockets are bound.
/// The raw counterpart of [`super::serve`].
pub async fn serve<I: RawIngest>(
    config: &ReceiverConfig,
    ingest: Arc<I>,
    on_bound: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_within(config, InFlight::of(config)?, ingest, on_bound, shutdown).await
}

/// [`serve`] within `in_flight`'s bounds, which other servers of the process (a sampler's
/// forward endpoint) may share.
pub async fn serve_within<I: RawIngest>(
    config: &ReceiverConfig,
    in_flight: InFlight,
    ingest: Arc<I>,
    on_bound: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limit = config.max_request_bytes;
    serve_both(
        config,
        on_bound,
        shutdown,
        |grpc_listener, http_listener, stop| {
            (
                serve_grpc(
                    grpc_listener,
                    limit,
                    in_flight.clone(),
                    ingest.clone(),
                    wait_stop(stop.clone()),
                ),
                serve_http(http_listener, limit, in_flight, ingest, wait_stop(stop)),
            )
        },
    )
    .await
}

/// Hands `body` to the sink method of `signal`.
async fn deliver<I: RawIngest>(
    ingest: &I,
    signal: Signal,
    body: Bytes,
) -> Result<Accepted, IngestError> {
    match signal {
        Signal::Traces => ingest.traces(body).await,
        Signal::Logs => ingest.logs(body).await,
        Signal::Metrics => ingest.metrics(body).await,
    }
}

/// A request type whose gRPC service the raw receiver serves.
trait RawRequest: OtlpRequest {
    /// The fully qualified gRPC service name.
    const SERVICE: &'static str;
}

impl RawRequest for ExportTraceServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl RawRequest for ExportLogsServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl RawRequest for ExportMetricsServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

// ---------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------

/// Serves the three OTLP/gRPC export methods with a bytes codec on `listener` until
/// `shutdown` completes.
async fn serve_grpc<I: RawIngest>(
    listener: Listener,
    max_request_bytes: usize,
    in_flight: InFlight,
    ingest: Arc<I>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    super::grpc::hardened_server()
        .add_service(Bounded::new(
            RawGrpcService::<I, ExportTraceServiceRequest>::new(ingest.clone(), max_request_bytes),
            Signal::Traces,
            in_flight.clone(),
            max_request_bytes,
            ingest.reads(Signal::Traces),
        ))
        .add_service(Bounded::new(
            RawGrpcService::<I, ExportLogsServiceRequest>::new(ingest.clone(), max_request_bytes),
            Signal::Logs,
            in_flight.clone(),
            max_request_bytes,
            ingest.reads(Signal::Logs),
        ))
        .add_service(Bounded::new(
            RawGrpcService::<I, ExportMetricsServiceRequest>::new(
                ingest.clone(),
                max_request_bytes,
            ),
            Signal::Metrics,
            in_flight,
            max_request_bytes,
            ingest.reads(Signal::Metrics),
        ))
        .serve_with_incoming_shutdown(listener.incoming(), shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// One OTLP export service (`R`'s) whose `Export` method takes the message as bytes.
struct RawGrpcService<I, R> {
    ingest: Arc<I>,
    max_request_bytes: usize,
    request: PhantomData<fn() -> R>,
}

impl<I, R> RawGrpcService<I, R> {
    fn new(ingest: Arc<I>, max_request_bytes: usize) -> Self {
        RawGrpcService {
            ingest,
            max_request_bytes,
            request: PhantomData,
        }
    }
}

impl<I, R> Clone for RawGrpcService<I, R> {
    fn clone(&self) -> Self {
        RawGrpcService::new(self.ingest.clone(), self.max_request_bytes)
    }
}

impl<I, R: RawRequest> NamedService for RawGrpcService<I, R> {
    const NAME: &'static str = R::SERVICE;
}

impl<I, R, B> Service<Request<B>> for RawGrpcService<I, R>
where
    I: RawIngest,
    R: RawRequest,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if request.uri().path() != export_path(R::SIGNAL) {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        // The message [`Bounded`] read already goes straight to the sink: no second read
        // of the body, no copy into tonic's decode buffer.
        if let Some(PreparedMessage(message)) = request.extensions_mut().remove() {
            let ingest = self.ingest.clone();
            return Box::pin(async move {
                Ok(match deliver(&*ingest, R::SIGNAL, message).await {
                    Ok(accepted) => unary_response(&R::response(&accepted)),
                    Err(error) => {
                        events::request_refused(
                            R::SIGNAL,
                            Transport::Grpc,
                            ingest_error_reason(&error),
                        );
                        status_of(&error).into_http()
                    }
                })
            });
        }
        let export = RawExport::<I, R> {
            ingest: self.ingest.clone(),
            request: PhantomData,
        };
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ServerCodec::<R::Response>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// The `Export` handler: bytes to the sink, its answer to a response or status.
struct RawExport<I, R> {
    ingest: Arc<I>,
    request: PhantomData<fn() -> R>,
}

impl<I: RawIngest, R: RawRequest> UnaryService<Bytes> for RawExport<I, R> {
    type Response = R::Response;
    type Future = BoxFuture<tonic::Response<R::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            match deliver(&*ingest, R::SIGNAL, request.into_inner()).await {
                Ok(accepted) => Ok(tonic::Response::new(R::response(&accepted))),
                Err(error) => {
                    events::request_refused(
                        R::SIGNAL,
                        Transport::Grpc,
                        ingest_error_reason(&error),
                    );
                    Err(status_of(&error))
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// Serves OTLP/HTTP on `listener` until `shutdown` completes.
async fn serve_http<I: RawIngest>(
    listener: Listener,
    max_request_bytes: usize,
    in_flight: InFlight,
    ingest: Arc<I>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let receiver = Arc::new(HttpReceiver {
        ingest,
        max_request_bytes,
        in_flight,
    });
    let service = hyper::service::service_fn(move |request| {
        let receiver = receiver.clone();
        async move { Ok::<_, Infallible>(handle(&receiver, request).await) }
    });
    serve_connections(listener, service, shutdown).await
}

async fn handle<I: RawIngest>(
    receiver: &HttpReceiver<I>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/v1/traces" => export::<I, ExportTraceServiceRequest>(receiver, request).await,
        "/v1/logs" => export::<I, ExportLogsServiceRequest>(receiver, request).await,
        "/v1/metrics" => export::<I, ExportMetricsServiceRequest>(receiver, request).await,
        path => refusal_response(&Refusal::NotFound(path.to_owned()), Encoding::Json),
    }
}

async fn export<I: RawIngest, R: OtlpRequest>(
    receiver: &HttpReceiver<I>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // Errors are answered in the request's encoding when it is one we speak, else JSON.
    let encoding = Encoding::of(request.headers());
    let reply_encoding = *encoding.as_ref().unwrap_or(&Encoding::Json);
    let (encoding, compression, declared) = match receiver.check_headers(&request, encoding) {
        Ok(negotiated) => negotiated,
        Err(refusal) => {
            linger(request.into_body());
            return refuse(R::SIGNAL, &refusal, reply_encoding);
        }
    };
    // The slot is taken once the body is in: a slow sender holds only its bytes.
    let connection = request.extensions().get::<ConnectionBudget>().cloned();
    let (body, mut held) = match receiver
        .read_body(request.into_body(), declared, compression, connection)
        .await
    {
        Ok(read) => read,
        Err(refusal) => return refuse(R::SIGNAL, &refusal, encoding),
    };
    let body = match encoding {
        Encoding::Protobuf => Bytes::from(body),
        Encoding::Json => {
            let footprint = crate::split::json_decoded_footprint(&body);
            if let Err(refused) = held.charge(&receiver.in_flight, footprint) {
                return refuse(R::SIGNAL, &Refusal::from(refused), encoding);
            }
            match decode::<R>(&body, encoding) {
                Ok(request) => Bytes::from(request.encode_to_vec()),
                Err(refusal) => return refuse(R::SIGNAL, &refusal, encoding),
            }
        }
    };
    let reads = receiver.ingest.reads(R::SIGNAL);
    if let Err(refused) = held.charge_decoded(&receiver.in_flight, R::SIGNAL, &body, reads) {
        return refuse(R::SIGNAL, &Refusal::from(refused), encoding);
    }
    let Some(_permit) = receiver.in_flight.try_enter() else {
        return refuse(R::SIGNAL, &Refusal::Ingest(InFlight::busy()), encoding);
    };
    match deliver(&*receiver.ingest, R::SIGNAL, body).await {
        Ok(accepted) => success_response::<R>(&accepted, encoding),
        Err(error) => refuse(R::SIGNAL, &Refusal::Ingest(error), encoding),
    }
}
