//! The forward endpoint (`cluster.forward_endpoint`, default `:4319`): the standard
//! OTLP/gRPC services for routers and peers, plus `otel_tail.v1.Handoff/Decisions`.
//!
//! It is its own tonic server rather than `otel_tail_shared::receiver::raw::serve`
//! because it needs two things that one does not give: the request metadata (the
//! [`HOP_HEADER`](super::peer::HOP_HEADER) / [`HANDOFF_HEADER`](super::peer::HANDOFF_HEADER)
//! marks decide whether data may be forwarded again) and a fourth service on the same port.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use metrics::counter;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use otel_tail_proto::v1::{DecisionAck, DecisionBatch};
use otel_tail_shared::forward::{ServerCodec, export_path, split_by};
use otel_tail_shared::otlp::{self, Signal};
use otel_tail_shared::receiver::Accepted;
use otel_tail_shared::receiver::InFlight;
use otel_tail_shared::receiver::grpc::{Bounded, status_of};
use otel_tail_shared::telemetry::names;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::correlation::fanout::NoticesServer;

use super::auth::{Gate, Gated};
use super::peer::{DECISIONS_PATH, HANDOFF_HEADER, HOP_HEADER, SUMMARY_HEADER};
use super::{ClusterIngest, Origin};

/// Serves the forward endpoint on `listener` until `shutdown` completes; in-flight calls
/// finish first. Its OTLP services read bodies within `in_flight`'s bounds (shared with the
/// public receivers); decisions and notices are small control messages from authenticated
/// nodes, capped at `max_request_bytes`.
pub async fn serve(
    listener: otel_tail_shared::tls::server::Listener,
    max_request_bytes: usize,
    in_flight: InFlight,
    ingest: Arc<ClusterIngest>,
    notices: NoticesServer,
    gate: Option<Arc<Gate>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let receiver = Arc::new(ForwardReceiver {
        ingest: ingest.clone(),
    });
    let traces = TracesServer {
        receiver: receiver.clone(),
        max_request_bytes,
    };
    let logs = LogsServiceServer::from_arc(receiver.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    let metrics = MetricsServiceServer::from_arc(receiver)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes);
    // Node authentication first (before any body is read), then the receivers' bounds.
    let limits = Limits {
        in_flight,
        max_request_bytes,
        gate: gate.clone(),
        ingest: ingest.clone(),
    };
    otel_tail_shared::receiver::grpc::hardened_server()
        .add_service(limits.wrap(traces, Signal::Traces))
        .add_service(limits.wrap(logs, Signal::Logs))
        .add_service(limits.wrap(metrics, Signal::Metrics))
        .add_service(Gated::new(DecisionsServer { ingest }, gate.clone()))
        .add_service(Gated::new(notices, gate))
        .serve_with_incoming_shutdown(listener.incoming(), shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// What the forward endpoint's OTLP services are wrapped in.
struct Limits {
    in_flight: InFlight,
    max_request_bytes: usize,
    gate: Option<Arc<Gate>>,
    ingest: Arc<ClusterIngest>,
}

impl Limits {
    /// `service` (of `signal`) behind the node check, then the receivers' bounds.
    fn wrap<S>(&self, service: S, signal: Signal) -> Gated<Bounded<S>> {
        let bounded = Bounded::new(
            service,
            signal,
            self.in_flight.clone(),
            self.max_request_bytes,
            self.ingest.reads(signal),
        );
        Gated::new(bounded.on_forward_endpoint(), self.gate.clone())
    }
}

/// How a request reached the forward endpoint, from its metadata.
fn origin_of(metadata: &MetadataMap) -> Origin {
    if metadata.contains_key(SUMMARY_HEADER) {
        Origin::Summary
    } else if metadata.contains_key(HANDOFF_HEADER) {
        Origin::Handoff
    } else if metadata.contains_key(HOP_HEADER) {
        Origin::Forwarded
    } else {
        Origin::Client
    }
}

/// The OTLP services of the forward endpoint.
struct ForwardReceiver {
    ingest: Arc<ClusterIngest>,
}

/// Counts items first received by this cluster (from a router); data a peer forwarded or
/// handed off was counted where it entered.
fn count_received(origin: Origin, name: &'static str, items: usize) {
    if origin == Origin::Client {
        counter!(name).increment(items as u64);
    }
}

impl ForwardReceiver {
    /// Spans from a router or peer are split and read from the wire
    /// ([`ClusterIngest::encoded_traces_from`]); handed-off spans are decoded (they skip span
    /// metrics and count as handed in).
    async fn traces(
        &self,
        origin: Origin,
        ring: Option<u64>,
        body: Bytes,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let accepted = if origin == Origin::Handoff {
            let mut request = ExportTraceServiceRequest::decode(body)
                .map_err(|e| Status::invalid_argument(format!("invalid protobuf: {e}")))?;
            let mut accepted = otlp::sanitize_traces(&mut request);
            if otlp::span_count(&request) > 0 {
                accepted.merge(
                    self.ingest
                        .traces_from(origin, request)
                        .await
                        .map_err(|e| status_of(&e))?,
                );
            }
            accepted
        } else {
            let (accepted, spans) = self
                .ingest
                .encoded_traces_from(origin, ring, body)
                .await
                .map_err(|e| status_of(&e))?;
            count_received(origin, names::SPANS_RECEIVED, spans as usize);
            accepted
        };
        Ok(ExportTraceServiceResponse {
            partial_success: is_partial(&accepted).then_some(ExportTracePartialSuccess {
                rejected_spans: accepted.rejected,
                error_message: accepted.message,
            }),
        })
    }
}

/// `TraceService` taking the request as bytes, so spans are read from the wire.
#[derive(Clone)]
struct TracesServer {
    receiver: Arc<ForwardReceiver>,
    max_request_bytes: usize,
}

impl NamedService for TracesServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for TracesServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != export_path(Signal::Traces) {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = TracesMethod(self.receiver.clone());
        let limit = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(ServerCodec::<ExportTraceServiceResponse>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// The `Export` call of [`TracesServer`].
struct TracesMethod(Arc<ForwardReceiver>);

impl UnaryService<Bytes> for TracesMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let receiver = self.0.clone();
        Box::pin(async move {
            let origin = origin_of(request.metadata());
            let ring = split_by(request.metadata());
            Ok(Response::new(
                receiver.traces(origin, ring, request.into_inner()).await?,
            ))
        })
    }
}

#[tonic::async_trait]
impl LogsService for ForwardReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let origin = origin_of(request.metadata());
        let mut request = request.into_inner();
        let mut accepted = otlp::sanitize_logs(&mut request);
        let items = otlp::log_count(&request);
        if items > 0 {
            accepted.merge(
                self.ingest
                    .logs_from(origin, request)
                    .await
                    .map_err(|e| status_of(&e))?,
            );
            count_received(origin, names::LOGS_RECEIVED, items);
        }
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: is_partial(&accepted).then_some(ExportLogsPartialSuccess {
                rejected_log_records: accepted.rejected,
                error_message: accepted.message,
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for ForwardReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let origin = origin_of(request.metadata());
        let request = request.into_inner();
        let items = otlp::data_point_count(&request);
        let mut accepted = Accepted::default();
        if !request.resource_metrics.is_empty() {
            accepted.merge(
                self.ingest
                    .metrics_from(origin, request)
                    .await
                    .map_err(|e| status_of(&e))?,
            );
            count_received(origin, names::DATA_POINTS_RECEIVED, items);
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: is_partial(&accepted).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: accepted.rejected,
                error_message: accepted.message,
            }),
        }))
    }
}

fn is_partial(accepted: &Accepted) -> bool {
    accepted.rejected > 0 || !accepted.message.is_empty()
}

/// `otel_tail.v1.Handoff`, written out by hand: the proto crate generates messages only.
#[derive(Clone)]
struct DecisionsServer {
    ingest: Arc<ClusterIngest>,
}

impl NamedService for DecisionsServer {
    const NAME: &'static str = "otel_tail.v1.Handoff";
}

impl<B> Service<http::Request<B>> for DecisionsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        crate::unary::call(
            DECISIONS_PATH,
            request,
            DecisionsMethod(self.ingest.clone()),
        )
    }
}

/// The `Decisions` call.
struct DecisionsMethod(Arc<ClusterIngest>);

impl tonic::server::UnaryService<DecisionBatch> for DecisionsMethod {
    type Response = DecisionAck;
    type Future = BoxFuture<Response<DecisionAck>, Status>;

    fn call(&mut self, request: Request<DecisionBatch>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let accepted = ingest
                .adopt_decisions(request.into_inner())
                .await
                .map_err(|e| status_of(&e))?;
            Ok(Response::new(DecisionAck { accepted }))
        })
    }
}
