//! The raw receivers end to end: real servers on 127.0.0.1 port 0, real tonic and hyper
//! clients, and a sink that records the bytes it is handed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

use super::RawIngest;
use crate::otlp::Signal;
use crate::receiver::running::{RunningReceivers, loopback_config};
use crate::receiver::{Accepted, BoundAddrs, IngestError};
use crate::testing;

/// Receiver limit used by the tests: small enough to exceed cheaply.
const LIMIT: usize = 64 * 1024;

/// Records every body with its signal; answers with a configurable result.
#[derive(Default)]
struct RecordingRaw {
    bodies: Mutex<Vec<(Signal, Bytes)>>,
    answer: Mutex<Option<Result<Accepted, IngestError>>>,
}

impl RecordingRaw {
    fn take(&self, signal: Signal, body: Bytes) -> Result<Accepted, IngestError> {
        self.bodies.lock().unwrap().push((signal, body));
        self.answer
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Ok(Accepted::default()))
    }

    fn bodies(&self) -> Vec<(Signal, Bytes)> {
        self.bodies.lock().unwrap().clone()
    }

    fn answer_with(&self, answer: Result<Accepted, IngestError>) {
        *self.answer.lock().unwrap() = Some(answer);
    }
}

impl RawIngest for RecordingRaw {
    async fn traces(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(Signal::Traces, body)
    }

    async fn logs(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(Signal::Logs, body)
    }

    async fn metrics(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(Signal::Metrics, body)
    }
}

struct Harness {
    ingest: Arc<RecordingRaw>,
    addrs: BoundAddrs,
    running: RunningReceivers,
}

impl Harness {
    async fn start() -> Harness {
        let config = loopback_config(LIMIT);
        let ingest = Arc::new(RecordingRaw::default());
        let sink = ingest.clone();
        let running = RunningReceivers::start(move |on_bound, shutdown| async move {
            super::serve(&config, sink, on_bound, shutdown).await
        })
        .await;
        Harness {
            ingest,
            addrs: running.addrs,
            running,
        }
    }

    fn grpc_uri(&self) -> String {
        format!("http://{}", self.addrs.grpc)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn traces(spans: usize, name_len: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: vec![i as u8 + 1; 16],
            span_id: vec![7; 8],
            name: "n".repeat(name_len),
            ..Default::default()
        })
        .collect();
    testing::traces_of(None, spans)
}

fn logs() -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: 42,
        trace_id: vec![3; 16],
        ..Default::default()
    };
    testing::logs_of(None, vec![record])
}

fn metrics() -> ExportMetricsServiceRequest {
    let gauge = testing::gauge("queue.depth", vec![testing::int_point(5)]);
    testing::metrics_of(None, vec![gauge])
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, content_type);
    if gzipped {
        request = request.header(CONTENT_ENCODING, "gzip");
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn grpc_hands_over_each_signal_byte_for_byte() {
    let harness = Harness::start().await;
    let trace_request = traces(3, 10);
    let mut client = TraceServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap();
    client.export(trace_request.clone()).await.unwrap();
    let mut client = TraceServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    client.export(trace_request.clone()).await.unwrap();
    let mut client = LogsServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap();
    client.export(logs()).await.unwrap();
    let mut client = MetricsServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap();
    client.export(metrics()).await.unwrap();

    let expected = vec![
        (Signal::Traces, Bytes::from(trace_request.encode_to_vec())),
        (Signal::Traces, Bytes::from(trace_request.encode_to_vec())),
        (Signal::Logs, Bytes::from(logs().encode_to_vec())),
        (Signal::Metrics, Bytes::from(metrics().encode_to_vec())),
    ];
    assert_eq!(harness.ingest.bodies(), expected);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_reports_partial_success_and_maps_refusals() {
    let harness = Harness::start().await;
    let mut client = TraceServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap();

    harness.ingest.answer_with(Ok(Accepted {
        rejected: 2,
        message: "2 spans with invalid trace ids".to_owned(),
    }));
    let response = client.export(traces(3, 1)).await.unwrap().into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert_eq!(partial.error_message, "2 spans with invalid trace ids");

    harness.ingest.answer_with(Err(IngestError::Overloaded {
        retry_after: Duration::from_secs(3),
        reason: "test",
    }));
    let status = client.export(traces(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(3)));

    harness
        .ingest
        .answer_with(Err(IngestError::Invalid("bad framing".to_owned())));
    let status = client.export(traces(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("bad framing"), "{status:?}");

    harness
        .ingest
        .answer_with(Err(IngestError::unavailable_msg("no samplers")));
    let status = client.export(traces(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.get_details_retry_info().is_none());
    harness.stop().await;
}

#[tokio::test]
async fn grpc_enforces_the_size_limit_plain_and_gzip() {
    let harness = Harness::start().await;
    let big = traces(1, 2 * LIMIT);
    let mut client = TraceServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap();
    let status = client.export(big.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A long run of one byte compresses far below the limit but inflates past it.
    let mut client = TraceServiceClient::connect(harness.grpc_uri())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let status = client.export(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(harness.ingest.bodies().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn http_protobuf_is_passed_as_is_after_gzip() {
    let harness = Harness::start().await;
    let request = traces(2, 5).encode_to_vec();
    let reply = post(
        harness.addrs.http,
        "/v1/traces",
        "application/x-protobuf",
        false,
        request.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let response = ExportTraceServiceResponse::decode(reply.body).unwrap();
    assert_eq!(response.partial_success, None);
    let reply = post(
        harness.addrs.http,
        "/v1/logs",
        "application/x-protobuf",
        true,
        gzip(&logs().encode_to_vec()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        harness.ingest.bodies(),
        vec![
            (Signal::Traces, Bytes::from(request)),
            (Signal::Logs, Bytes::from(logs().encode_to_vec())),
        ]
    );
    harness.stop().await;
}

#[tokio::test]
async fn http_json_is_reencoded_as_protobuf() {
    let harness = Harness::start().await;
    let json = serde_json::to_vec(&metrics()).unwrap();
    let reply = post(
        harness.addrs.http,
        "/v1/metrics",
        "application/json",
        false,
        json,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.body[..], b"{}");
    let bodies = harness.ingest.bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].0, Signal::Metrics);
    assert_eq!(
        ExportMetricsServiceRequest::decode(bodies[0].1.clone()).unwrap(),
        metrics()
    );

    let reply = post(
        harness.addrs.http,
        "/v1/traces",
        "application/json",
        false,
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        harness.ingest.bodies().len(),
        1,
        "malformed JSON is not delivered"
    );
    harness.stop().await;
}

#[tokio::test]
async fn http_refusals_follow_otlp() {
    let harness = Harness::start().await;
    let addr = harness.addrs.http;
    let reply = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        false,
        vec![0; LIMIT + 1],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        true,
        gzip(&vec![0; 4 * LIMIT]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = post(addr, "/v1/traces", "text/plain", false, vec![1]).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = post(addr, "/v2/traces", "application/x-protobuf", false, vec![1]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(harness.ingest.bodies().is_empty());

    harness.ingest.answer_with(Err(IngestError::Overloaded {
        retry_after: Duration::from_millis(1500),
        reason: "test",
    }));
    let reply = post(addr, "/v1/traces", "application/x-protobuf", false, vec![]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers.get(RETRY_AFTER).unwrap(), "2");

    harness
        .ingest
        .answer_with(Err(IngestError::Invalid("bad framing".to_owned())));
    // Well-framed (one empty resource), so only the sink finds fault with it.
    let reply = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        false,
        vec![0x0a, 0],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let status = tonic_types::pb::Status::decode(reply.body).unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(status.message.contains("bad framing"), "{}", status.message);
    harness.stop().await;
}
