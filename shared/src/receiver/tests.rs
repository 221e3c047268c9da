//! End-to-end tests of both receivers: real servers on 127.0.0.1 port 0, real tonic and
//! hyper clients, and a recording [`Ingest`] sink.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

use super::running::{RunningReceivers, loopback_config};
use super::{Accepted, BoundAddrs, Ingest, IngestError};
use crate::config::ReceiverConfig;
use crate::{otlp, testing};

/// Cap used by most tests: small enough to exceed cheaply.
const LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// An [`Ingest`] that stores what it is given, or refuses everything as overloaded.
#[derive(Default)]
struct RecordingIngest {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    logs: Mutex<Vec<ExportLogsServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    overloaded: Mutex<Option<Duration>>,
}

impl RecordingIngest {
    fn check_load(&self) -> Result<(), IngestError> {
        match *self.overloaded.lock().unwrap() {
            Some(retry_after) => Err(IngestError::Overloaded {
                retry_after,
                reason: "test buffer full",
            }),
            None => Ok(()),
        }
    }

    fn spans(&self) -> Vec<Span> {
        let traces = self.traces.lock().unwrap();
        traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    fn log_count(&self) -> usize {
        self.logs.lock().unwrap().iter().map(otlp::log_count).sum()
    }

    fn data_point_count(&self) -> usize {
        self.metrics
            .lock()
            .unwrap()
            .iter()
            .map(otlp::data_point_count)
            .sum()
    }
}

impl Ingest for RecordingIngest {
    async fn traces(&self, request: ExportTraceServiceRequest) -> Result<Accepted, IngestError> {
        self.check_load()?;
        self.traces.lock().unwrap().push(request);
        Ok(Accepted::default())
    }

    async fn logs(&self, request: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        self.check_load()?;
        self.logs.lock().unwrap().push(request);
        Ok(Accepted::default())
    }

    async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        self.check_load()?;
        self.metrics.lock().unwrap().push(request);
        Ok(Accepted::default())
    }
}

/// Both receivers running on ephemeral ports.
struct Harness {
    ingest: Arc<RecordingIngest>,
    addrs: BoundAddrs,
    running: RunningReceivers,
}

impl Harness {
    async fn start(max_request_bytes: usize) -> Harness {
        Harness::with_config(loopback_config(max_request_bytes)).await
    }

    async fn with_config(config: ReceiverConfig) -> Harness {
        let ingest = Arc::new(RecordingIngest::default());
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

    fn overload(&self, retry_after: Option<Duration>) {
        *self.ingest.overloaded.lock().unwrap() = retry_after;
    }

    async fn traces_client(&self) -> TraceServiceClient<tonic::transport::Channel> {
        TraceServiceClient::connect(format!("http://{}", self.addrs.grpc))
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        http_request(
            self.addrs.http,
            Method::POST,
            path,
            content_type,
            None,
            full(body),
        )
        .await
    }

    async fn post_gzip(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        http_request(
            self.addrs.http,
            Method::POST,
            path,
            content_type,
            Some("gzip"),
            full(body),
        )
        .await
    }

    /// Stops the receivers and checks they shut down cleanly.
    async fn stop(self) {
        self.running.stop().await;
    }
}

/// An HTTP response, fully read.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The `google.rpc.Status` of a protobuf error response.
    fn pb_status(&self) -> tonic_types::pb::Status {
        assert_eq!(self.content_type(), "application/x-protobuf");
        tonic_types::pb::Status::decode(self.body.clone()).expect("a google.rpc.Status body")
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.content_type(), "application/json");
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

type TestBody = BoxBody<Bytes, std::convert::Infallible>;

fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).boxed()
}

/// A body of unknown length, sent with chunked transfer encoding (no `Content-Length`).
struct UnsizedBody(Option<Bytes>);

impl hyper::body::Body for UnsizedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

async fn http_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: &str,
    content_encoding: Option<&str>,
    body: TestBody,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<TestBody>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, content_type);
    if let Some(encoding) = content_encoding {
        request = request.header(CONTENT_ENCODING, encoding);
    }
    let response = client.request(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Sends one hand-built gRPC frame over HTTP/2 (for payloads a generated client cannot
/// produce: truncated messages, gzip bombs) and returns the gRPC status code and message.
async fn raw_grpc(addr: SocketAddr, method: &str, message: &[u8], gzip: bool) -> (Code, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(u8::from(gzip));
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{method}"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    let response = client
        .request(request.body(full(frame)).unwrap())
        .await
        .unwrap();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let code = grpc_field(&headers, &trailers, "grpc-status").expect("grpc-status");
    let code = Code::from_i32(code.parse().unwrap());
    let message = grpc_field(&headers, &trailers, "grpc-message").unwrap_or_default();
    (code, message)
}

/// A gRPC status field, from the headers (trailers-only response) or the trailers.
fn grpc_field(headers: &HeaderMap, trailers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .or_else(|| trailers.get(name))
        .map(|v| v.to_str().unwrap().to_owned())
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// ---------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------

fn span(trace_id: Vec<u8>, span_id: Vec<u8>, name: &str) -> Span {
    Span {
        trace_id,
        span_id,
        name: name.to_owned(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        ..Default::default()
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    testing::traces_of(None, spans)
}

/// `count` valid spans of trace `0x01..`, named `span-<i>`.
fn good_traces(count: u8) -> ExportTraceServiceRequest {
    traces(
        (1..=count)
            .map(|i| span(vec![1; 16], vec![i; 8], &format!("span-{i}")))
            .collect(),
    )
}

/// Two good spans around a zero trace id and a 15-byte one.
fn traces_with_bad_ids() -> ExportTraceServiceRequest {
    traces(vec![
        span(vec![7; 16], vec![1; 8], "good-1"),
        span(vec![0; 16], vec![2; 8], "zero-trace-id"),
        span(vec![7; 15], vec![3; 8], "short-trace-id"),
        span(vec![7; 16], vec![4; 8], "good-2"),
    ])
}

fn logs(count: usize) -> ExportLogsServiceRequest {
    let records = (0..count)
        .map(|i| LogRecord {
            body: Some(AnyValue {
                value: Some(Value::StringValue(format!("log {i}"))),
            }),
            ..Default::default()
        })
        .collect();
    testing::logs_of(None, records)
}

fn gauge(points: usize) -> ExportMetricsServiceRequest {
    let points = (0..points).map(|i| testing::int_point(i as i64)).collect();
    testing::metrics_of(None, vec![testing::gauge("queue.depth", points)])
}

/// Spans whose encoding exceeds `bytes`.
fn oversized_traces(bytes: usize) -> ExportTraceServiceRequest {
    let mut request = good_traces(1);
    request.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(bytes);
    request
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A valid single-member gzip stream of `mib` MiB of zeros, about 1/1000 of that size.
///
/// Compressing a GiB takes long in a debug build, so one MiB is compressed with a sync
/// flush (byte-aligned block boundaries) and the steady-state block, which encodes a MiB of
/// zeros following zeros, is repeated; the CRC is combined arithmetically.
fn gzip_bomb(mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    let zeros = vec![0u8; 1 << 20];
    let mut deflate = Compress::new(Compression::best(), false);
    let mut block = |input: &[u8], flush| {
        let mut out = Vec::with_capacity(64 * 1024);
        deflate.compress_vec(input, &mut out, flush).unwrap();
        assert!(out.len() < out.capacity(), "output buffer was large enough");
        out
    };
    let first = block(&zeros, FlushCompress::Sync);
    let steady = block(&zeros, FlushCompress::Sync);
    assert_eq!(
        block(&zeros, FlushCompress::Sync),
        steady,
        "steady state reached"
    );
    let finish = block(&[], FlushCompress::Finish);

    let mut chunk_crc = Crc::new();
    chunk_crc.update(&zeros);
    let mut crc = Crc::new();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&first);
    crc.combine(&chunk_crc);
    for _ in 1..mib {
        out.extend_from_slice(&steady);
        crc.combine(&chunk_crc);
    }
    out.extend_from_slice(&finish);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&((mib as u64) << 20).to_le_bytes()[..4]);
    out
}

// ---------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------

#[test]
fn gzip_bomb_is_valid_gzip_of_zeros() {
    use std::io::Read;
    let bomb = gzip_bomb(4);
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&bomb[..])
        .read_to_end(&mut inflated)
        .expect("valid gzip with a correct CRC");
    assert_eq!(inflated.len(), 4 << 20);
    assert!(inflated.iter().all(|&b| b == 0));
    let big = gzip_bomb(1024);
    assert!(
        big.len() < 2 << 20,
        "1 GiB of zeros compresses to {} bytes",
        big.len()
    );
}

#[tokio::test]
async fn grpc_accepts_all_three_signals() {
    let harness = Harness::start(LIMIT).await;
    let endpoint = format!("http://{}", harness.addrs.grpc);

    let response = harness
        .traces_client()
        .await
        .export(good_traces(3))
        .await
        .unwrap();
    assert_eq!(response.into_inner(), ExportTraceServiceResponse::default());
    let response = LogsServiceClient::connect(endpoint.clone())
        .await
        .unwrap()
        .export(logs(4))
        .await
        .unwrap();
    assert_eq!(response.into_inner(), ExportLogsServiceResponse::default());
    let response = MetricsServiceClient::connect(endpoint)
        .await
        .unwrap()
        .export(gauge(5))
        .await
        .unwrap();
    assert_eq!(
        response.into_inner(),
        ExportMetricsServiceResponse::default()
    );

    assert_eq!(harness.ingest.traces.lock().unwrap()[0], good_traces(3));
    assert_eq!(harness.ingest.log_count(), 4);
    assert_eq!(harness.ingest.data_point_count(), 5);
    harness.stop().await;
}

/// A body of several HTTP/2 frames is joined in order; one of a single frame is taken as
/// it came. Both must reach the ingest unchanged.
#[tokio::test]
async fn grpc_requests_of_one_frame_and_of_many_arrive_whole() {
    let harness = Harness::start(4 << 20).await;
    let mut client = harness.traces_client().await;
    let large = oversized_traces(1 << 20);
    client.export(large.clone()).await.unwrap();
    client.export(good_traces(2)).await.unwrap();
    let received = harness.ingest.traces.lock().unwrap().clone();
    assert_eq!(received, vec![large, good_traces(2)]);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_accepts_gzip() {
    let harness = Harness::start(LIMIT).await;
    let mut client = harness
        .traces_client()
        .await
        .send_compressed(CompressionEncoding::Gzip);
    client.export(good_traces(2)).await.unwrap();
    assert_eq!(harness.ingest.spans().len(), 2);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_reports_bad_ids_through_partial_success() {
    let harness = Harness::start(LIMIT).await;
    let response = harness
        .traces_client()
        .await
        .export(traces_with_bad_ids())
        .await
        .unwrap()
        .into_inner();
    let partial = response.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("trace_id"),
        "{}",
        partial.error_message
    );
    let names: Vec<_> = harness.ingest.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["good-1", "good-2"]);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_truncated_message_is_invalid_argument_and_the_server_carries_on() {
    let harness = Harness::start(LIMIT).await;
    let encoded = good_traces(3).encode_to_vec();
    let (code, message) = raw_grpc(
        harness.addrs.grpc,
        TRACE_EXPORT,
        &encoded[..encoded.len() - 3],
        false,
    )
    .await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("decode"), "{message}");

    harness
        .traces_client()
        .await
        .export(good_traces(1))
        .await
        .unwrap();
    assert_eq!(harness.ingest.spans().len(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_corrupt_gzip_is_invalid_argument() {
    let harness = Harness::start(LIMIT).await;
    let (code, message) =
        raw_grpc(harness.addrs.grpc, TRACE_EXPORT, b"not gzip at all", true).await;
    assert_eq!(code, Code::InvalidArgument, "{message}");
    harness.stop().await;
}

#[tokio::test]
async fn grpc_oversize_message_is_resource_exhausted() {
    let harness = Harness::start(LIMIT).await;
    let status = harness
        .traces_client()
        .await
        .export(oversized_traces(LIMIT + 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(harness.ingest.spans().is_empty());

    harness
        .traces_client()
        .await
        .export(good_traces(1))
        .await
        .unwrap();
    assert_eq!(harness.ingest.spans().len(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn grpc_gzip_bomb_is_resource_exhausted() {
    // The ~1 MB frame is within the limit; its 1 GiB of output is not.
    let harness = Harness::start(4 << 20).await;
    let (code, message) = raw_grpc(harness.addrs.grpc, TRACE_EXPORT, &gzip_bomb(1024), true).await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(harness.ingest.spans().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn grpc_overload_is_unavailable_with_retry_info() {
    let harness = Harness::start(LIMIT).await;
    harness.overload(Some(Duration::from_secs(3)));
    let status = harness
        .traces_client()
        .await
        .export(good_traces(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let retry = status.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(3)));

    harness.overload(None);
    harness
        .traces_client()
        .await
        .export(good_traces(1))
        .await
        .unwrap();
    assert_eq!(harness.ingest.spans().len(), 1);
    harness.stop().await;
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn http_protobuf_accepts_all_three_signals() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            good_traces(3).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/x-protobuf");
    assert_eq!(
        ExportTraceServiceResponse::decode(reply.body).unwrap(),
        ExportTraceServiceResponse::default()
    );
    let reply = harness
        .post(
            "/v1/logs",
            "application/x-protobuf",
            logs(2).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = harness
        .post(
            "/v1/metrics",
            "application/x-protobuf",
            gauge(6).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    assert_eq!(harness.ingest.traces.lock().unwrap()[0], good_traces(3));
    assert_eq!(harness.ingest.log_count(), 2);
    assert_eq!(harness.ingest.data_point_count(), 6);
    harness.stop().await;
}

#[tokio::test]
async fn http_accepts_h2c() {
    let harness = Harness::start(LIMIT).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let request = Request::post(format!("http://{}/v1/traces", harness.addrs.http))
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(full(good_traces(1).encode_to_vec()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(harness.ingest.spans().len(), 1);
    harness.stop().await;
}

/// The OTLP specification's example trace (opentelemetry-proto `examples/trace.json`):
/// upper-case hex ids, integer timestamps and enums.
const SPEC_TRACE_JSON: &str = r#"{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
    "scopeSpans": [{
      "scope": {"name": "my.library", "version": "1.0.0",
                "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
      "spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "parentSpanId": "EEE19B7EC3C1B173",
        "name": "I'm a server span",
        "startTimeUnixNano": 1544712660000000000,
        "endTimeUnixNano": 1544712661000000000,
        "kind": 2,
        "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}]
      }]
    }]
  }]
}"#;

/// What the OpenTelemetry JS OTLP/HTTP JSON exporter sends: lower-case hex ids, int64
/// timestamps as strings, `intValue` as a number, empty arrays, zero counters, a status.
const JS_EXPORTER_TRACE_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
  {"key":"service.name","value":{"stringValue":"checkout"}},
  {"key":"telemetry.sdk.language","value":{"stringValue":"nodejs"}}],"droppedAttributesCount":0},
  "scopeSpans":[{"scope":{"name":"@opentelemetry/instrumentation-http","version":"0.52.1"},
  "spans":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7",
  "name":"GET /cart","kind":2,"startTimeUnixNano":"1718900000000000000",
  "endTimeUnixNano":"1718900000123000000","attributes":[{"key":"http.response.status_code",
  "value":{"intValue":500}},{"key":"retry","value":{"boolValue":false}}],"droppedAttributesCount":0,
  "events":[{"attributes":[],"name":"cache miss","timeUnixNano":"1718900000050000000",
  "droppedAttributesCount":0}],"droppedEventsCount":0,"status":{"code":2,"message":"boom"},
  "links":[],"droppedLinksCount":0}]}]}]}"#;

#[tokio::test]
async fn http_json_traces_decode_per_otlp_json_rules() {
    let harness = Harness::start(LIMIT).await;
    for sample in [SPEC_TRACE_JSON, JS_EXPORTER_TRACE_JSON] {
        let reply = harness.post("/v1/traces", "application/json", sample).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json(), serde_json::json!({}));
    }
    let spans = harness.ingest.spans();
    assert_eq!(spans.len(), 2);

    let spec = &spans[0];
    assert_eq!(
        spec.trace_id,
        [
            0x5B, 0x8E, 0xFF, 0xF7, 0x98, 0x03, 0x81, 0x03, 0xD2, 0x69, 0xB6, 0x33, 0x81, 0x3F,
            0xC6, 0x0C
        ]
    );
    assert_eq!(
        spec.span_id,
        [0xEE, 0xE1, 0x9B, 0x7E, 0xC3, 0xC1, 0xB1, 0x74]
    );
    assert_eq!(
        spec.parent_span_id,
        [0xEE, 0xE1, 0x9B, 0x7E, 0xC3, 0xC1, 0xB1, 0x73]
    );
    assert_eq!(spec.kind, 2);
    assert_eq!(spec.start_time_unix_nano, 1_544_712_660_000_000_000);

    let js = &spans[1];
    assert_eq!(js.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
    assert_eq!(js.end_time_unix_nano, 1_718_900_000_123_000_000);
    assert_eq!(
        js.attributes[0].value,
        Some(AnyValue {
            value: Some(Value::IntValue(500))
        })
    );
    assert_eq!(js.events[0].time_unix_nano, 1_718_900_000_050_000_000);
    assert_eq!(js.status.as_ref().unwrap().code, 2);
    harness.stop().await;
}

/// The OTLP specification's example logs (`examples/logs.json`), with every AnyValue kind.
const SPEC_LOGS_JSON: &str = r#"{"resourceLogs":[{"resource":{"attributes":[
  {"key":"service.name","value":{"stringValue":"my.service"}}]},
  "scopeLogs":[{"scope":{"name":"my.library","version":"1.0.0"},
  "logRecords":[{"timeUnixNano":1544712660300000000,"observedTimeUnixNano":"1544712660300000000",
  "severityNumber":10,"severityText":"Information",
  "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
  "body":{"stringValue":"Example log record"},
  "attributes":[
    {"key":"string.attribute","value":{"stringValue":"some string"}},
    {"key":"boolean.attribute","value":{"boolValue":true}},
    {"key":"int.attribute","value":{"intValue":"10"}},
    {"key":"double.attribute","value":{"doubleValue":637.704}},
    {"key":"array.attribute","value":{"arrayValue":{"values":[{"stringValue":"many"},{"stringValue":"values"}]}}},
    {"key":"map.attribute","value":{"kvlistValue":{"values":[{"key":"some.map.key","value":{"stringValue":"some value"}}]}}}
  ]}]}]}]}"#;

/// Metrics as the Collector writes them: int64 and fixed64 as strings (`asInt`, `count`,
/// `bucketCounts`), integer enums, doubles as numbers.
const METRICS_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[
  {"key":"service.name","value":{"stringValue":"my.service"}}]},
  "scopeMetrics":[{"scope":{"name":"my.library"},"metrics":[
    {"name":"my.counter","unit":"1","sum":{"aggregationTemporality":1,"isMonotonic":true,
      "dataPoints":[{"asInt":"5","startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000"}]}},
    {"name":"my.gauge","gauge":{"dataPoints":[{"asDouble":10,"timeUnixNano":1544712660300000000}]}},
    {"name":"my.histogram","histogram":{"aggregationTemporality":2,"dataPoints":[
      {"startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000",
       "count":"3","sum":3,"bucketCounts":["1","1","1"],"explicitBounds":[1,2],"min":1,"max":1}]}}
  ]}]}]}"#;

#[tokio::test]
async fn http_json_logs_and_metrics_decode_per_otlp_json_rules() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness
        .post(
            "/v1/logs",
            "application/json; charset=utf-8",
            SPEC_LOGS_JSON,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = harness
        .post("/v1/metrics", "application/json", METRICS_JSON)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    let logs = harness.ingest.logs.lock().unwrap().clone();
    let record = &logs[0].resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, 10);
    assert_eq!(record.observed_time_unix_nano, 1_544_712_660_300_000_000);
    assert_eq!(record.trace_id.len(), 16);
    assert_eq!(record.attributes[2].key, "int.attribute");
    assert_eq!(
        record.attributes[2].value,
        Some(AnyValue {
            value: Some(Value::IntValue(10))
        })
    );
    assert!(matches!(
        &record.attributes[5].value,
        Some(AnyValue { value: Some(Value::KvlistValue(list)) }) if list.values[0].key == "some.map.key"
    ));

    let metrics = harness.ingest.metrics.lock().unwrap().clone();
    let decoded = &metrics[0].resource_metrics[0].scope_metrics[0].metrics;
    let Some(Data::Sum(sum)) = &decoded[0].data else {
        panic!("sum: {:?}", decoded[0])
    };
    assert_eq!(sum.aggregation_temporality, 1);
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsInt(5))
    );
    let Some(Data::Gauge(gauge)) = &decoded[1].data else {
        panic!("gauge: {:?}", decoded[1])
    };
    assert_eq!(
        gauge.data_points[0].value,
        Some(number_data_point::Value::AsDouble(10.0))
    );
    let Some(Data::Histogram(histogram)) = &decoded[2].data else {
        panic!("histogram: {:?}", decoded[2])
    };
    assert_eq!(histogram.data_points[0].count, 3);
    assert_eq!(histogram.data_points[0].bucket_counts, [1, 1, 1]);
    assert_eq!(histogram.data_points[0].explicit_bounds, [1.0, 2.0]);
    harness.stop().await;
}

#[tokio::test]
async fn http_accepts_gzip_bodies() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness
        .post_gzip(
            "/v1/traces",
            "application/x-protobuf",
            gzip(&good_traces(2).encode_to_vec()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = harness
        .post_gzip(
            "/v1/traces",
            "application/json",
            gzip(SPEC_TRACE_JSON.as_bytes()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(harness.ingest.spans().len(), 3);
    harness.stop().await;
}

#[tokio::test]
async fn http_reports_bad_ids_through_partial_success() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            traces_with_bad_ids().encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let partial = ExportTraceServiceResponse::decode(reply.body)
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(partial.rejected_spans, 2);

    let json = serde_json::to_string(&traces_with_bad_ids()).unwrap();
    let reply = harness.post("/v1/traces", "application/json", json).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "2");
    assert!(
        body["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("trace_id")
    );

    let names: Vec<_> = harness.ingest.spans().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["good-1", "good-2", "good-1", "good-2"]);
    harness.stop().await;
}

#[tokio::test]
async fn http_truncated_protobuf_is_400_with_a_status_body() {
    let harness = Harness::start(LIMIT).await;
    let encoded = good_traces(3).encode_to_vec();
    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            encoded[..encoded.len() - 3].to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let status = reply.pb_status();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(status.message.contains("protobuf"), "{}", status.message);
    assert!(harness.ingest.spans().is_empty());

    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            good_traces(1).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(harness.ingest.spans().len(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn http_invalid_json_is_400_with_a_json_status() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness
        .post("/v1/traces", "application/json", r#"{"resourceSpans": [{"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let body = reply.json();
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap().contains("JSON"), "{body}");

    // A trace id that is not hex is malformed too, and the message says where.
    let bad_hex = SPEC_TRACE_JSON.replace("5B8EFFF798038103D269B633813FC60C", "not-hex");
    let reply = harness
        .post("/v1/traces", "application/json", bad_hex)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["message"].as_str().unwrap().contains("line"));
    assert!(harness.ingest.spans().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn http_refuses_unsupported_types_encodings_methods_and_paths() {
    let harness = Harness::start(LIMIT).await;
    let reply = harness.post("/v1/traces", "text/plain", "hello").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("text/plain")
    );

    let body = full(good_traces(1).encode_to_vec());
    let reply = http_request(
        harness.addrs.http,
        Method::POST,
        "/v1/traces",
        "application/x-protobuf",
        Some("br"),
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(reply.pb_status().message.contains("br"));

    let reply = http_request(
        harness.addrs.http,
        Method::GET,
        "/v1/traces",
        "application/x-protobuf",
        None,
        full(Bytes::new()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers.get(http::header::ALLOW).unwrap(), "POST");

    let reply = harness
        .post("/v1/profiles", "application/x-protobuf", Bytes::new())
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(harness.ingest.spans().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn http_oversize_body_is_413() {
    let harness = Harness::start(LIMIT).await;
    let encoded = oversized_traces(LIMIT + 1).encode_to_vec();

    // Declared by Content-Length: refused before reading.
    let reply = harness
        .post("/v1/traces", "application/x-protobuf", encoded.clone())
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.pb_status().code, Code::ResourceExhausted as i32);

    // Chunked, length unknown: refused while reading.
    let body = UnsizedBody(Some(encoded.into())).boxed();
    let reply = http_request(
        harness.addrs.http,
        Method::POST,
        "/v1/traces",
        "application/x-protobuf",
        None,
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(harness.ingest.spans().is_empty());

    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            good_traces(1).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    harness.stop().await;
}

/// Writes a whole HTTP/1.1 request over a plain socket, then reads the status line of the
/// answer: what a client that does not wait for `100-continue` does.
async fn post_whole(addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {line:?}")))
}

#[tokio::test]
async fn a_refused_body_is_drained_so_the_client_reads_the_413() {
    // Far more than socket buffers hold: without draining, the client's write fails with a
    // reset before it can read the answer.
    let harness = Harness::start(LIMIT).await;
    let body = vec![b'x'; 256 * LIMIT];
    let head = "POST /v1/traces HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-protobuf\r\n";
    // Declared too large: refused before a byte is read.
    let mut declared = format!("{head}content-length: {}\r\n\r\n", body.len()).into_bytes();
    declared.extend_from_slice(&body);
    // Chunked: refused once the cap is crossed mid-body.
    let mut chunked = format!("{head}transfer-encoding: chunked\r\n\r\n").into_bytes();
    for part in body.chunks(LIMIT / 2) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for request in [declared, chunked] {
        let status = post_whole(harness.addrs.http, &request)
            .await
            .expect("the client writes its body and reads the answer");
        assert_eq!(status, 413);
    }
    assert!(harness.ingest.spans().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn http_gzip_bomb_is_413() {
    // The ~1 MB body is within the limit; its 1 GiB of output is not.
    let harness = Harness::start(4 << 20).await;
    let reply = harness
        .post_gzip("/v1/traces", "application/x-protobuf", gzip_bomb(1024))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.pb_status().message.contains("limit"));
    assert!(harness.ingest.spans().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn http_overload_is_503_with_retry_after() {
    let harness = Harness::start(LIMIT).await;
    harness.overload(Some(Duration::from_millis(1500)));
    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            good_traces(1).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers.get(RETRY_AFTER).unwrap(), "2");
    assert_eq!(reply.pb_status().code, Code::Unavailable as i32);

    harness.overload(None);
    let reply = harness
        .post(
            "/v1/traces",
            "application/x-protobuf",
            good_traces(1).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    harness.stop().await;
}

// ---------------------------------------------------------------------------------------
// Self-metrics
// ---------------------------------------------------------------------------------------

/// A current-thread runtime (the `tokio::test` default) runs the servers on this thread,
/// so a thread-local recorder sees everything they record.
#[tokio::test]
async fn receivers_count_accepted_rejected_and_refused() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let harness = Harness::start(LIMIT).await;

    harness
        .traces_client()
        .await
        .export(traces_with_bad_ids())
        .await
        .unwrap();
    let reply = harness
        .post(
            "/v1/logs",
            "application/x-protobuf",
            logs(3).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = harness.post("/v1/traces", "application/json", "{").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let encoded = good_traces(1).encode_to_vec();
    let (code, _) = raw_grpc(harness.addrs.grpc, TRACE_EXPORT, &encoded[..5], false).await;
    assert_eq!(code, Code::InvalidArgument);
    harness.overload(Some(Duration::from_secs(1)));
    let reply = harness
        .post(
            "/v1/metrics",
            "application/x-protobuf",
            gauge(2).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    harness.stop().await;

    let rendered = handle.render();
    for line in [
        "otel_tail_spans_received_total 2",
        "otel_tail_spans_rejected_total{reason=\"invalid_id\"} 2",
        "otel_tail_items_rejected_total{signal=\"traces\",reason=\"invalid_id\"} 2",
        "otel_tail_log_records_received_total 3",
        "otel_tail_requests_refused_total{signal=\"traces\",transport=\"http\",reason=\"malformed\"} 1",
        "otel_tail_requests_refused_total{signal=\"traces\",transport=\"grpc\",reason=\"malformed\"} 1",
        "otel_tail_requests_refused_total{signal=\"metrics\",transport=\"http\",reason=\"overloaded\"} 1",
    ] {
        assert!(
            rendered.lines().any(|l| l == line),
            "missing {line:?} in\n{rendered}"
        );
    }
}

/// A sink whose trace calls wait until released, to hold requests in flight.
struct GatedIngest {
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for GatedIngest {
    fn default() -> Self {
        GatedIngest {
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Ingest for GatedIngest {
    async fn traces(&self, _: ExportTraceServiceRequest) -> Result<Accepted, IngestError> {
        self.entered.notify_one();
        let _ = self.release.acquire().await;
        Ok(Accepted::default())
    }

    async fn logs(&self, _: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        Ok(Accepted::default())
    }

    async fn metrics(&self, _: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        Ok(Accepted::default())
    }
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_are_throttled_on_both_transports() {
    let config = ReceiverConfig {
        max_concurrent_requests: 1,
        ..loopback_config(ReceiverConfig::default().max_request_bytes)
    };
    let ingest = Arc::new(GatedIngest::default());
    let sink = ingest.clone();
    let running = RunningReceivers::start(move |on_bound, shutdown| async move {
        super::serve(&config, sink, on_bound, shutdown).await
    })
    .await;
    let addrs = running.addrs;

    // One request occupies the only slot.
    let mut client = TraceServiceClient::connect(format!("http://{}", addrs.grpc))
        .await
        .unwrap();
    let first = tokio::spawn({
        let mut client = client.clone();
        async move { client.export(good_traces(1)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), ingest.entered.notified())
        .await
        .expect("first request reached the sink");

    // gRPC: UNAVAILABLE with RetryInfo.
    let status = client.export(good_traces(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_some(), "{status:?}");

    // HTTP: 503 with Retry-After.
    let reply = http_request(
        addrs.http,
        Method::POST,
        "/v1/traces",
        "application/x-protobuf",
        None,
        full(good_traces(1).encode_to_vec()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key(RETRY_AFTER));

    // Once the slot frees up, requests are served again.
    ingest.release.add_permits(10);
    first.await.unwrap().expect("first request accepted");
    client
        .export(good_traces(1))
        .await
        .expect("served after release");

    running.stop().await;
}

// ---------------------------------------------------------------------------------------
// Byte budgets: decoded size, per connection
// ---------------------------------------------------------------------------------------

/// 300,000 empty log records: about 600 KB on the wire, over 100 MB decoded.
fn log_bomb() -> ExportLogsServiceRequest {
    testing::logs_of(None, vec![LogRecord::default(); 300_000])
}

#[tokio::test]
async fn requests_that_decode_beyond_the_budget_are_refused_before_decoding() {
    let harness = Harness::with_config(ReceiverConfig {
        max_buffered_bytes: 16 << 20,
        max_connection_bytes: 8 << 20,
        ..loopback_config(4 << 20)
    })
    .await;
    let bomb = log_bomb().encode_to_vec();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

    let reply = harness
        .post("/v1/logs", "application/x-protobuf", bomb.clone())
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let status = reply.pb_status();
    assert_eq!(status.code, Code::ResourceExhausted as i32);
    assert!(
        status.message.contains("once decoded"),
        "{}",
        status.message
    );
    let reply = harness
        .post_gzip("/v1/logs", "application/x-protobuf", gzip(&bomb))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    for gzipped in [false, true] {
        let message = if gzipped { gzip(&bomb) } else { bomb.clone() };
        let (code, message) = raw_grpc(harness.addrs.grpc, LOGS_EXPORT, &message, gzipped).await;
        assert_eq!(code, Code::ResourceExhausted, "gzip {gzipped}: {message}");
        assert!(message.contains("decoded"), "{message}");
    }
    // JSON: `{}` per record is three bytes and a whole struct once decoded.
    let json = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{}{{}}]}}]}}]}}"#,
        "{},".repeat(200_000)
    );
    let reply = harness.post("/v1/logs", "application/json", json).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        harness.ingest.log_count(),
        0,
        "nothing of a refused bomb arrives"
    );

    // Ordinary requests, gzip included, pass on both transports.
    let reply = harness
        .post(
            "/v1/logs",
            "application/x-protobuf",
            logs(100).encode_to_vec(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let (code, message) = raw_grpc(
        harness.addrs.grpc,
        LOGS_EXPORT,
        &gzip(&logs(50).encode_to_vec()),
        true,
    )
    .await;
    assert_eq!(code, Code::Ok, "{message}");
    assert_eq!(harness.ingest.log_count(), 150);
    harness.stop().await;
}

/// A body that sends `first` and then waits for more from the returned sender (the test
/// sends none: the body stays unfinished until the sender is dropped).
fn stalled_body(first: Vec<u8>) -> (TestBody, tokio::sync::mpsc::Sender<Bytes>) {
    use tokio_stream::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tx.try_send(Bytes::from(first)).unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|data| Ok::<_, std::convert::Infallible>(Frame::data(data)));
    (http_body_util::StreamBody::new(stream).boxed(), tx)
}

#[tokio::test]
async fn one_connection_cannot_take_the_whole_byte_budget() {
    let harness = Harness::with_config(ReceiverConfig {
        max_buffered_bytes: 32 << 20,
        max_connection_bytes: 1 << 20,
        ..loopback_config(1 << 20)
    })
    .await;
    let request = oversized_traces(300_000).encode_to_vec();
    for (addr, path, content_type) in [
        (harness.addrs.http, "/v1/traces", "application/x-protobuf"),
        (harness.addrs.grpc, TRACE_EXPORT, "application/grpc"),
    ] {
        // One HTTP/2 connection: a stream holds 900 KB of a body it does not finish.
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<TestBody>();
        let (body, stall) = stalled_body(vec![0x0a; 900_000]);
        let stalled = client.request(
            Request::post(format!("http://{addr}{path}"))
                .header(CONTENT_TYPE, content_type)
                .body(body)
                .unwrap(),
        );
        let stalled = tokio::spawn(stalled);
        // Another stream of the same connection finds the connection's budget spent
        // (retried until the first stream's bytes have arrived).
        let mut refused = None;
        for _ in 0..100 {
            let response = client
                .request(
                    Request::post(format!("http://{addr}{path}"))
                        .header(CONTENT_TYPE, content_type)
                        .body(full(framed(content_type, &request)))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let message = grpc_field(&headers, &trailers, "grpc-message")
                .unwrap_or_else(|| String::from_utf8_lossy(&collected.to_bytes()).into_owned());
            if message.contains("max_connection_bytes") {
                refused = Some((status, message));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, message) = refused.expect("the second stream was throttled");
        if path == TRACE_EXPORT {
            assert!(message.contains("in%20flight"), "{message}");
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{message}");
        }
        // Another connection is served meanwhile.
        let reply = if path == TRACE_EXPORT {
            let (code, message) = raw_grpc(addr, TRACE_EXPORT, &request, false).await;
            assert_eq!(code, Code::Ok, "{message}");
            None
        } else {
            Some(harness.post(path, content_type, request.clone()).await)
        };
        if let Some(reply) = reply {
            assert_eq!(reply.status, StatusCode::OK);
        }
        drop(stall);
        stalled.abort();
    }
    // The other connections' requests (and any second stream served before the stalled
    // bytes arrived) were taken.
    assert!(harness.ingest.spans().len() >= 2);
    harness.stop().await;
}

/// `message` as the body of a request of `content_type`: gRPC-framed for gRPC.
fn framed(content_type: &str, message: &[u8]) -> Vec<u8> {
    if content_type != "application/grpc" {
        return message.to_vec();
    }
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// The `SETTINGS_MAX_FRAME_SIZE` a server announces in its first HTTP/2 frame, read over a
/// plain socket after the client preface.
async fn announced_max_frame_size(addr: SocketAddr) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    payload.chunks_exact(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == 5)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

#[tokio::test]
async fn both_transports_let_clients_send_a_request_in_few_large_frames() {
    let harness = Harness::start(LIMIT).await;
    for addr in [harness.addrs.grpc, harness.addrs.http] {
        assert_eq!(
            announced_max_frame_size(addr).await,
            Some(super::http::HTTP2_MAX_FRAME_BYTES),
            "{addr}"
        );
    }
    harness.stop().await;
}
