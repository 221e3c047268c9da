//! Exporters against real servers on 127.0.0.1: a tonic OTLP server, a hyper OTLP/HTTP
//! server and the file exporter's output read back.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::NumberDataPoint;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::file::FileExporter;
use super::grpc::GrpcExporter;
use super::http::{HttpExporter, parse_retry_after};
use super::*;
use crate::config::{
    Compression, FileExporterConfig, OtlpGrpcExporterConfig, OtlpHttpExporterConfig, TlsConfig,
};
use crate::{otlp, testing};

fn traces(n: usize) -> ExportTraceServiceRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![7; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("span-{i}"),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            ..Default::default()
        })
        .collect();
    let service = testing::resource(vec![otlp::kv_str("service.name", "checkout")]);
    testing::traces_of(Some(service), spans)
}

fn logs() -> ExportLogsServiceRequest {
    let record = LogRecord {
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue("payment failed".into())),
        }),
        trace_id: vec![7; 16],
        ..Default::default()
    };
    testing::logs_of(None, vec![record])
}

fn metrics() -> ExportMetricsServiceRequest {
    let gauge = testing::gauge("queue.depth", vec![NumberDataPoint::default(); 2]);
    testing::metrics_of(None, vec![gauge])
}

// ---------------------------------------------------------------- gRPC

/// How the test OTLP/gRPC server answers.
#[derive(Clone, Copy)]
#[repr(u8)]
enum GrpcMode {
    Accept = 0,
    UnavailableWithRetryInfo = 1,
    InvalidArgument = 2,
    ExhaustedWithoutRetryInfo = 3,
    PartialSuccess = 4,
}

#[derive(Default)]
struct GrpcRecorder {
    mode: AtomicU8,
    requests: Mutex<Vec<ExportRequest>>,
    /// (`x-api-key`, `grpc-encoding`) of every call.
    metadata: Mutex<Vec<(Option<String>, Option<String>)>>,
}

impl GrpcRecorder {
    fn answer<T>(&self, request: Request<T>, wrap: fn(T) -> ExportRequest) -> Result<(), Status> {
        let get = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.metadata
            .lock()
            .unwrap()
            .push((get("x-api-key"), get("grpc-encoding")));
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == GrpcMode::UnavailableWithRetryInfo as u8 {
            return Err(Status::with_error_details(
                Code::Unavailable,
                "shedding load",
                ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
            ));
        }
        if mode == GrpcMode::InvalidArgument as u8 {
            return Err(Status::invalid_argument("bad payload"));
        }
        if mode == GrpcMode::ExhaustedWithoutRetryInfo as u8 {
            return Err(Status::resource_exhausted("too big"));
        }
        self.requests
            .lock()
            .unwrap()
            .push(wrap(request.into_inner()));
        Ok(())
    }

    fn partial(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == GrpcMode::PartialSuccess as u8
    }
}

#[derive(Clone)]
struct GrpcServer(Arc<GrpcRecorder>);

#[tonic::async_trait]
impl TraceService for GrpcServer {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.answer(request, ExportRequest::Traces)?;
        let partial_success = self.0.partial().then(|| ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "one span too old".into(),
        });
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

#[tonic::async_trait]
impl LogsService for GrpcServer {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0.answer(request, ExportRequest::Logs)?;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcServer {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.answer(request, ExportRequest::Metrics)?;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_grpc_server() -> (SocketAddr, Arc<GrpcRecorder>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Arc::new(GrpcRecorder::default());
    let server = GrpcServer(recorder.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(server.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                LogsServiceServer::new(server.clone()).accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                MetricsServiceServer::new(server).accept_compressed(CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, recorder)
}

fn grpc_config(endpoint: String, compression: Compression) -> OtlpGrpcExporterConfig {
    OtlpGrpcExporterConfig {
        endpoint,
        headers: BTreeMap::from([("X-Api-Key".to_owned(), "secret".to_owned())]),
        headers_from_files: BTreeMap::new(),
        tls: TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        },
        compression,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn grpc_delivers_every_signal_with_headers_and_gzip() {
    let (addr, recorder) = start_grpc_server().await;
    let exporter = GrpcExporter::new(&grpc_config(addr.to_string(), Compression::Gzip)).unwrap();
    let sent = [
        ExportRequest::Traces(traces(3)),
        ExportRequest::Logs(logs()),
        ExportRequest::Metrics(metrics()),
    ];
    for request in &sent {
        exporter.export(request).await.unwrap();
    }
    assert_eq!(*recorder.requests.lock().unwrap(), sent);
    let metadata = recorder.metadata.lock().unwrap().clone();
    assert_eq!(metadata.len(), 3);
    for (api_key, encoding) in metadata {
        assert_eq!(api_key.as_deref(), Some("secret"));
        assert_eq!(encoding.as_deref(), Some("gzip"));
    }
}

#[tokio::test]
async fn encoded_requests_go_out_as_they_are_and_concatenated_ones_arrive_merged() {
    let (grpc_addr, grpc) = start_grpc_server().await;
    let (http_addr, http) = start_http_server().await;
    let exporters = [
        Exporter::Grpc(
            GrpcExporter::new(&grpc_config(grpc_addr.to_string(), Compression::Gzip)).unwrap(),
        ),
        Exporter::Http(HttpExporter::new(&http_config(http_addr, Compression::Gzip)).unwrap()),
    ];
    // Two queued requests of one signal are sent as their bytes one after the other.
    let twice = |bytes: Vec<u8>| Bytes::from([bytes.clone(), bytes].concat());
    let sent = [
        (Signal::Traces, twice(traces(2).encode_to_vec())),
        (Signal::Logs, twice(logs().encode_to_vec())),
        (Signal::Metrics, twice(metrics().encode_to_vec())),
    ];
    for exporter in &exporters {
        assert!(exporter.takes_encoded());
        for (signal, body) in &sent {
            exporter
                .export_encoded(*signal, body.clone())
                .await
                .unwrap();
        }
    }
    let mut merged_traces = traces(2);
    merged_traces
        .resource_spans
        .extend(traces(2).resource_spans);
    let mut merged_logs = logs();
    merged_logs.resource_logs.extend(logs().resource_logs);
    let mut merged_metrics = metrics();
    merged_metrics
        .resource_metrics
        .extend(metrics().resource_metrics);
    assert_eq!(
        *grpc.requests.lock().unwrap(),
        [
            ExportRequest::Traces(merged_traces.clone()),
            ExportRequest::Logs(merged_logs),
            ExportRequest::Metrics(merged_metrics),
        ]
    );
    let seen = http.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0, "/v1/traces");
    assert_eq!(seen[0].2.as_deref(), Some("gzip"));
    assert_eq!(
        ExportTraceServiceRequest::decode(&seen[0].4[..]).unwrap(),
        merged_traces
    );
    let file = tempfile::tempdir().unwrap();
    let exporter = Exporter::File(FileExporter::open(&file.path().join("out.jsonl")).unwrap());
    assert!(
        !exporter.takes_encoded(),
        "a file holds JSON: decoded first"
    );
}

#[tokio::test]
async fn grpc_without_compression_sends_identity() {
    let (addr, recorder) = start_grpc_server().await;
    let exporter =
        GrpcExporter::new(&grpc_config(format!("http://{addr}"), Compression::None)).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(1)))
        .await
        .unwrap();
    let metadata = recorder.metadata.lock().unwrap().clone();
    assert_eq!(metadata.len(), 1);
    assert_ne!(metadata[0].1.as_deref(), Some("gzip"));
    assert_eq!(recorder.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn grpc_unavailable_with_retry_info_is_retryable_with_its_delay() {
    let (addr, recorder) = start_grpc_server().await;
    recorder
        .mode
        .store(GrpcMode::UnavailableWithRetryInfo as u8, Ordering::SeqCst);
    let exporter = GrpcExporter::new(&grpc_config(addr.to_string(), Compression::Gzip)).unwrap();
    match exporter.export(&ExportRequest::Traces(traces(1))).await {
        Err(ExportError::Retryable {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_millis(1500)));
            assert!(message.contains("shedding load"), "{message}");
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    assert!(recorder.requests.lock().unwrap().is_empty());
    // Once the server accepts again, the same exporter (and channel) gets through.
    recorder
        .mode
        .store(GrpcMode::Accept as u8, Ordering::SeqCst);
    exporter
        .export(&ExportRequest::Traces(traces(1)))
        .await
        .unwrap();
    assert_eq!(recorder.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn grpc_invalid_argument_and_bare_resource_exhausted_are_permanent() {
    let (addr, recorder) = start_grpc_server().await;
    let exporter = GrpcExporter::new(&grpc_config(addr.to_string(), Compression::Gzip)).unwrap();
    for (mode, text) in [
        (GrpcMode::InvalidArgument, "bad payload"),
        (GrpcMode::ExhaustedWithoutRetryInfo, "too big"),
    ] {
        recorder.mode.store(mode as u8, Ordering::SeqCst);
        match exporter.export(&ExportRequest::Logs(logs())).await {
            Err(ExportError::Permanent(message)) => assert!(message.contains(text), "{message}"),
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }
    assert!(recorder.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn grpc_partial_success_is_success() {
    let (addr, recorder) = start_grpc_server().await;
    recorder
        .mode
        .store(GrpcMode::PartialSuccess as u8, Ordering::SeqCst);
    let exporter = GrpcExporter::new(&grpc_config(addr.to_string(), Compression::Gzip)).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(2)))
        .await
        .unwrap();
    assert_eq!(recorder.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn grpc_unreachable_endpoint_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let exporter =
        GrpcExporter::new(&grpc_config(format!("127.0.0.1:{port}"), Compression::Gzip)).unwrap();
    let result = exporter.export(&ExportRequest::Traces(traces(1))).await;
    assert!(
        matches!(
            result,
            Err(ExportError::Retryable {
                retry_after: None,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn grpc_endpoints_choose_tls_like_the_collector() {
    let mut config = grpc_config("http://collector:4317".into(), Compression::Gzip);
    let exporter = GrpcExporter::new(&config).unwrap();
    assert_eq!(exporter.endpoint(), "http://collector:4317");
    config.endpoint = "collector:4317".into();
    config.tls.ca_file = Some("/nonexistent/ca.pem".into());
    config.tls.insecure = false;
    let err = GrpcExporter::new(&config).unwrap_err().to_string();
    assert!(
        err.contains("exporter.otlp.tls.ca_file"),
        "bare host:port is TLS: {err}"
    );
    config.tls.insecure = true;
    assert!(
        GrpcExporter::new(&config).is_ok(),
        "insecure: plaintext, no TLS files read"
    );
}

#[test]
fn grpc_bad_header_is_refused_at_construction() {
    let mut config = grpc_config("localhost:4317".into(), Compression::Gzip);
    config.headers.insert("bad header".into(), "x".into());
    let err = GrpcExporter::new(&config).unwrap_err();
    assert!(
        matches!(err, ExporterBuildError::InvalidHeader { ref name, .. } if name == "bad header"),
        "{err}"
    );
}

// ---------------------------------------------------------------- HTTP

/// What the test OTLP/HTTP server saw: path, content-type, content-encoding, api key, body
/// (decompressed).
type HttpSeen = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<u8>,
);

#[derive(Default)]
struct HttpRecorder {
    /// 200, 429, 503 or 400.
    status: Mutex<u16>,
    seen: Mutex<Vec<HttpSeen>>,
}

async fn start_http_server() -> (SocketAddr, Arc<HttpRecorder>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Arc::new(HttpRecorder::default());
    *recorder.status.lock().unwrap() = 200;
    let shared = recorder.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let recorder = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let recorder = recorder.clone();
                    async move { Ok::<_, hyper::Error>(http_answer(&recorder, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorder)
}

async fn http_answer(
    recorder: &HttpRecorder,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = request.uri().path().to_owned();
    let content_type = header("content-type");
    let encoding = header("content-encoding");
    let api_key = header("x-api-key");
    let raw = request.into_body().collect().await.unwrap().to_bytes();
    let body = if encoding.as_deref() == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw.to_vec()
    };
    recorder
        .seen
        .lock()
        .unwrap()
        .push((path, content_type, encoding, api_key, body));
    let status = *recorder.status.lock().unwrap();
    let builder = hyper::Response::builder().status(status);
    match status {
        200 => {
            let response = ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 1,
                    error_message: "one span too old".into(),
                }),
            };
            builder
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(response.encode_to_vec())))
        }
        429 => builder.header("retry-after", "7").body(Full::default()),
        503 => {
            let at = SystemTime::now() + Duration::from_secs(120);
            builder
                .header("retry-after", httpdate::fmt_http_date(at))
                .body(Full::default())
        }
        _ => {
            let status = tonic_types::Status {
                code: Code::InvalidArgument as i32,
                message: "cannot decode protobuf".into(),
                details: vec![],
            };
            builder
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(status.encode_to_vec())))
        }
    }
    .unwrap()
}

fn http_config(addr: SocketAddr, compression: Compression) -> OtlpHttpExporterConfig {
    OtlpHttpExporterConfig {
        endpoint: format!("http://{addr}/"),
        headers: BTreeMap::from([("X-Api-Key".to_owned(), "secret".to_owned())]),
        headers_from_files: BTreeMap::new(),
        compression,
        timeout: Duration::from_secs(5),
        tls: TlsConfig::default(),
    }
}

#[tokio::test]
async fn http_posts_protobuf_per_signal_path() {
    let (addr, recorder) = start_http_server().await;
    for compression in [Compression::Gzip, Compression::None] {
        let exporter = HttpExporter::new(&http_config(addr, compression)).unwrap();
        exporter
            .export(&ExportRequest::Traces(traces(2)))
            .await
            .unwrap();
        exporter.export(&ExportRequest::Logs(logs())).await.unwrap();
        exporter
            .export(&ExportRequest::Metrics(metrics()))
            .await
            .unwrap();
    }
    let seen = recorder.seen.lock().unwrap().clone();
    let paths: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/traces",
            "/v1/logs",
            "/v1/metrics",
            "/v1/traces",
            "/v1/logs",
            "/v1/metrics"
        ]
    );
    for (i, (_, content_type, encoding, api_key, _)) in seen.iter().enumerate() {
        assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
        assert_eq!(encoding.as_deref(), (i < 3).then_some("gzip"));
        assert_eq!(api_key.as_deref(), Some("secret"));
    }
    assert_eq!(
        ExportTraceServiceRequest::decode(&seen[0].4[..]).unwrap(),
        traces(2)
    );
    assert_eq!(
        ExportLogsServiceRequest::decode(&seen[4].4[..]).unwrap(),
        logs()
    );
    assert_eq!(
        ExportMetricsServiceRequest::decode(&seen[5].4[..]).unwrap(),
        metrics()
    );
}

#[tokio::test]
async fn http_throttling_is_retryable_with_retry_after() {
    let (addr, recorder) = start_http_server().await;
    let exporter = HttpExporter::new(&http_config(addr, Compression::Gzip)).unwrap();
    *recorder.status.lock().unwrap() = 429;
    match exporter.export(&ExportRequest::Traces(traces(1))).await {
        Err(ExportError::Retryable { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected retryable, got {other:?}"),
    }
    *recorder.status.lock().unwrap() = 503;
    match exporter.export(&ExportRequest::Traces(traces(1))).await {
        Err(ExportError::Retryable { retry_after, .. }) => {
            let delay = retry_after.expect("an HTTP-date Retry-After");
            assert!(
                delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
                "{delay:?}"
            );
        }
        other => panic!("expected retryable, got {other:?}"),
    }
}

#[tokio::test]
async fn http_bad_request_is_permanent_with_the_status_message() {
    let (addr, recorder) = start_http_server().await;
    *recorder.status.lock().unwrap() = 400;
    let exporter = HttpExporter::new(&http_config(addr, Compression::Gzip)).unwrap();
    match exporter.export(&ExportRequest::Logs(logs())).await {
        Err(ExportError::Permanent(message)) => {
            assert!(message.contains("400"), "{message}");
            assert!(message.contains("cannot decode protobuf"), "{message}");
        }
        other => panic!("expected permanent, got {other:?}"),
    }
}

#[tokio::test]
async fn http_connection_refused_is_retryable() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let exporter = HttpExporter::new(&http_config(addr, Compression::Gzip)).unwrap();
    let result = exporter.export(&ExportRequest::Traces(traces(1))).await;
    assert!(
        matches!(
            result,
            Err(ExportError::Retryable {
                retry_after: None,
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

// ---------------------------------------------------------------- file

#[tokio::test]
async fn file_writes_one_otlp_json_request_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/export.jsonl");
    let exporter = FileExporter::open(&path).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(2)))
        .await
        .unwrap();
    exporter.export(&ExportRequest::Logs(logs())).await.unwrap();
    exporter
        .export(&ExportRequest::Metrics(metrics()))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].starts_with(r#"{"resourceSpans":["#),
        "{}",
        lines[0]
    );
    assert_eq!(
        serde_json::from_str::<ExportTraceServiceRequest>(lines[0]).unwrap(),
        traces(2)
    );
    assert_eq!(
        serde_json::from_str::<ExportLogsServiceRequest>(lines[1]).unwrap(),
        logs()
    );
    assert_eq!(
        serde_json::from_str::<ExportMetricsServiceRequest>(lines[2]).unwrap(),
        metrics()
    );
    // OTLP JSON: ids are hex strings.
    assert!(
        lines[0].contains(r#""traceId":"07070707070707070707070707070707""#),
        "{}",
        lines[0]
    );

    // Reopening appends rather than truncating.
    drop(exporter);
    let exporter = FileExporter::open(&path).unwrap();
    exporter
        .export(&ExportRequest::Traces(traces(1)))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
}

#[test]
fn file_in_an_unwritable_place_is_refused_at_construction() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = FileExporter::open(&blocker.join("export.jsonl")).unwrap_err();
    assert!(matches!(err, ExporterBuildError::File { .. }), "{err}");
}

// ---------------------------------------------------------------- Exporter

#[tokio::test]
async fn from_config_defaults_to_a_file_and_describes_each_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let default_file = dir.path().join("export.jsonl");
    let exporters =
        Exporter::from_config(&crate::config::ExporterConfig::default(), &default_file).unwrap();
    assert_eq!(exporters.len(), 1);
    assert_eq!(exporters[0].name(), "file");
    assert_eq!(
        exporters[0].describe(),
        format!("file {}", default_file.display())
    );

    let config = crate::config::ExporterConfig {
        otlp: Some(grpc_config("127.0.0.1:4317".into(), Compression::Gzip)),
        otlphttp: Some(OtlpHttpExporterConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            ..Default::default()
        }),
        file: Some(FileExporterConfig {
            path: dir.path().join("out.jsonl"),
        }),
        ..Default::default()
    };
    let unused_default = dir.path().join("unused.jsonl");
    let exporters = Exporter::from_config(&config, &unused_default).unwrap();
    let names: Vec<_> = exporters.iter().map(Exporter::name).collect();
    assert_eq!(names, ["otlp", "otlphttp", "file"]);
    let described: Vec<_> = exporters.iter().map(Exporter::describe).collect();
    assert_eq!(described[0], "otlp grpc http://127.0.0.1:4317");
    assert_eq!(described[1], "otlphttp http://127.0.0.1:4318");
    assert_eq!(
        described[2],
        format!("file {}", dir.path().join("out.jsonl").display())
    );
    assert!(
        !unused_default.exists(),
        "no default file when exporters are configured"
    );

    exporters[2]
        .export(&ExportRequest::Logs(logs()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

mod tls;
