//! A real OTLP/gRPC receiver standing in for the downstream backend: it records
//! (or just counts) everything the sampler exports, and can be stopped and started
//! again on the same port to simulate an outage. Several samplers can share one sink:
//! each names itself in the [`SOURCE_HEADER`] request header (an
//! `exporter.otlp.headers` entry) and the sink records it with every trace request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::HarnessError;
use crate::export::{ExportedData, data_points};

/// gRPC metadata key a sampler puts its node id in, so a shared sink can attribute
/// each export request to the sampler that sent it.
pub const SOURCE_HEADER: &str = "x-otel-tail-source";

/// What the sink keeps of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// Keep every request (for assertions on content).
    Record,
    /// Only count items (for the benchmark; constant memory).
    Count,
}

/// Item counters of a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Export requests received, all signals.
    pub requests: u64,
    /// Spans received.
    pub spans: u64,
    /// Log records received.
    pub logs: u64,
    /// Metric data points received.
    pub data_points: u64,
}

/// Everything recorded, under one lock so requests and their sources stay aligned.
#[derive(Debug, Default)]
struct Recorded {
    data: ExportedData,
    /// `trace_sources[i]`: the [`SOURCE_HEADER`] of `data.traces[i]` ("" if absent).
    trace_sources: Vec<String>,
}

#[derive(Debug)]
struct Store {
    mode: SinkMode,
    recorded: Mutex<Recorded>,
    requests: AtomicU64,
    spans: AtomicU64,
    logs: AtomicU64,
    data_points: AtomicU64,
    /// Per trace and export request: milliseconds from the trace's latest span end to
    /// the sink receiving it (the first [`MAX_DELAYS`]).
    delays: Mutex<Vec<u64>>,
}

/// Most export delays remembered.
const MAX_DELAYS: usize = 1 << 20;

/// Largest request the sink accepts (the sampler may batch generously).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A running (or stopped) OTLP/gRPC sink on a fixed `127.0.0.1` port.
pub struct OtlpSink {
    addr: SocketAddr,
    store: Arc<Store>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// Starts a sink on a free port.
    pub async fn start(mode: SinkMode) -> Result<Self, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::io("binding the OTLP sink", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("reading the sink address", e))?;
        let store = Arc::new(Store {
            mode,
            recorded: Mutex::default(),
            requests: AtomicU64::new(0),
            spans: AtomicU64::new(0),
            logs: AtomicU64::new(0),
            data_points: AtomicU64::new(0),
            delays: Mutex::default(),
        });
        let mut sink = Self {
            addr,
            store,
            shutdown: None,
            task: None,
        };
        sink.serve(listener);
        Ok(sink)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let handler = Handler(Arc::clone(&self.store));
        let router = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(handler.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                LogsServiceServer::new(handler.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                MetricsServiceServer::new(handler)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        let incoming = TcpListenerStream::new(listener);
        self.task = Some(tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        }));
        self.shutdown = Some(tx);
    }

    /// The sink's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`, as an `exporter.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and closes the port (open connections are cut after a short
    /// grace period), so clients see the backend as gone.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port (retrying the bind for up to 10 s while the
    /// old socket is released). Recorded data is kept.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(HarnessError::io(
                        format!("re-binding the sink on {}", self.addr),
                        e,
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Milliseconds from each exported trace's latest span end to its arrival here, one
    /// entry per trace and request (a benchmark's decision latency: span arrival →
    /// export, when spans end as they are sent).
    pub fn export_delays_ms(&self) -> Vec<u64> {
        self.store.delays.lock().expect("sink lock").clone()
    }

    /// Forgets the export delays recorded so far.
    pub fn clear_export_delays(&self) {
        self.store.delays.lock().expect("sink lock").clear();
    }

    /// A copy of everything recorded (empty in [`SinkMode::Count`]).
    pub fn snapshot(&self) -> ExportedData {
        self.store.recorded.lock().expect("sink lock").data.clone()
    }

    /// Every recorded trace export request with the [`SOURCE_HEADER`] it came with
    /// ("" when the exporter set none), in arrival order.
    pub fn trace_requests_by_source(&self) -> Vec<(String, ExportTraceServiceRequest)> {
        let recorded = self.store.recorded.lock().expect("sink lock");
        recorded
            .trace_sources
            .iter()
            .cloned()
            .zip(recorded.data.traces.iter().cloned())
            .collect()
    }

    /// Item counters.
    pub fn counts(&self) -> SinkCounts {
        SinkCounts {
            requests: self.store.requests.load(Ordering::Relaxed),
            spans: self.store.spans.load(Ordering::Relaxed),
            logs: self.store.logs.load(Ordering::Relaxed),
            data_points: self.store.data_points.load(Ordering::Relaxed),
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug, Clone)]
struct Handler(Arc<Store>);

impl Handler {
    /// Remembers, per trace in `request`, how long after its latest span ended it arrived.
    fn record_delays(&self, request: &ExportTraceServiceRequest) {
        let now = otel_tail_shared::otlp::unix_now();
        let mut latest: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let end = latest.entry(span.trace_id.as_slice()).or_default();
            *end = (*end).max(span.end_time_unix_nano);
        }
        let mut delays = self.0.delays.lock().expect("sink lock");
        for end in latest.into_values() {
            if delays.len() < MAX_DELAYS {
                delays.push(now.saturating_sub(end) / 1_000_000);
            }
        }
    }

    fn record(&self, add: impl FnOnce(&mut Recorded)) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        if self.0.mode == SinkMode::Record {
            add(&mut self.0.recorded.lock().expect("sink lock"));
        }
    }
}

#[tonic::async_trait]
impl TraceService for Handler {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let source = request
            .metadata()
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.record_delays(&request);
        self.record(|r| {
            r.data.traces.push(request);
            r.trace_sources.push(source);
        });
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Handler {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let request = request.into_inner();
        let logs: usize = request
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        self.0.logs.fetch_add(logs as u64, Ordering::Relaxed);
        self.record(|r| r.data.logs.push(request));
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Handler {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let request = request.into_inner();
        let points: usize = request
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(data_points)
            .sum();
        self.0
            .data_points
            .fetch_add(points as u64, Ordering::Relaxed);
        self.record(|r| r.data.metrics.push(request));
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}
