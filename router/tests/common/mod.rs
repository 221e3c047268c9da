//! Stand-ins for samplers' forward endpoints: real OTLP/gRPC servers (the generated
//! opentelemetry-proto services) on 127.0.0.1 that record what they receive and can be
//! told to throttle.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What a sink has received, and how it answers.
#[derive(Default)]
pub struct Recorded {
    pub traces: Mutex<Vec<ExportTraceServiceRequest>>,
    pub logs: Mutex<Vec<ExportLogsServiceRequest>>,
    pub metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    /// When set, every call is refused with `UNAVAILABLE` + `RetryInfo` of this delay.
    pub throttle: Mutex<Option<Duration>>,
}

impl Recorded {
    fn check(&self) -> Result<(), Status> {
        match *self.throttle.lock().unwrap() {
            Some(delay) => Err(Status::with_error_details(
                Code::Unavailable,
                "sink buffer full",
                ErrorDetails::with_retry_info(Some(delay)),
            )),
            None => Ok(()),
        }
    }
}

/// A running sink.
pub struct Sink {
    pub addr: SocketAddr,
    pub recorded: Arc<Recorded>,
}

impl Sink {
    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.recorded
            .traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }
}

/// Starts a sink on an ephemeral 127.0.0.1 port; it serves until the runtime ends.
pub async fn start_sink() -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Recorded::default());
    let service = Service(recorded.clone());
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(service.clone()).max_decoding_message_size(64 << 20),
            )
            .add_service(
                LogsServiceServer::new(service.clone()).max_decoding_message_size(64 << 20),
            )
            .add_service(MetricsServiceServer::new(service).max_decoding_message_size(64 << 20))
            .serve_with_incoming(incoming),
    );
    Sink { addr, recorded }
}

#[derive(Clone)]
struct Service(Arc<Recorded>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.check()?;
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Service {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0.check()?;
        self.0.logs.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.check()?;
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}
