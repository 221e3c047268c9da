//! Malformed and hostile input, over OTLP/HTTP and OTLP/gRPC: each gets a clear
//! error, and good data sent beside it is exported untouched.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::export::hex;
use otel_tail_integration_tests::generate::{Generator, TraceShape, kv_str};
use otel_tail_integration_tests::http_client::{self, HttpResponse};
use otel_tail_integration_tests::load::{connect, unix_nanos_now};
use otel_tail_integration_tests::raw_grpc::{TRACE_EXPORT_PATH, unary_raw};
use prost::Message;
use serde_json::json;
use tonic::Code;
use tonic::codec::CompressionEncoding;

const WAIT: Duration = Duration::from_secs(30);
const LIMIT: usize = 1024 * 1024;
const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");

async fn start() -> SamplerProcess {
    SamplerProcess::start(json!({
        "receiver": {"max_request_bytes": LIMIT},
        "sampler": {"decision_wait": "1s", "policies": [
            {"name": "everything", "type": "always_sample"}
        ]},
    }))
    .await
    .expect("sampler starts")
}

fn shape() -> TraceShape {
    TraceShape {
        spans_per_trace: 3,
        error_share: 0.0,
        logs_per_trace: 0,
    }
}

fn request_trace_ids(request: &ExportTraceServiceRequest) -> BTreeSet<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| hex(&s.trace_id))
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A request whose single span carries `size` bytes of attribute value.
fn huge_request(generator: &mut Generator, size: usize) -> ExportTraceServiceRequest {
    let mut request = generator.trace_batch(1, unix_nanos_now()).traces;
    let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
    span.attributes.push(kv_str("payload", "0".repeat(size)));
    request
}

/// The `google.rpc.Status` message of an HTTP error body.
fn rpc_status(response: &HttpResponse) -> tonic_types::pb::Status {
    tonic_types::pb::Status::decode(response.body.clone()).unwrap_or_else(|e| {
        panic!(
            "status {} body is not a google.rpc.Status ({e}): {:?}",
            response.status,
            response.text()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_payloads_get_clear_errors_and_good_data_is_untouched() {
    let sampler = start().await;
    let url = format!("{}/v1/traces", sampler.http_endpoint());
    let mut generator = Generator::new(5, shape());
    let mut bad_traces = BTreeSet::new();

    // Truncated protobuf.
    let truncated = generator.trace_batch(9, unix_nanos_now()).traces;
    bad_traces.extend(request_trace_ids(&truncated));
    let bytes = truncated.encode_to_vec();
    let response = http_client::post(&url, &[PROTOBUF], bytes[..bytes.len() * 2 / 3].to_vec())
        .await
        .expect("answered");
    assert_eq!(
        response.status,
        400,
        "truncated protobuf: {}",
        response.text()
    );
    let status = rpc_status(&response);
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(!status.message.is_empty(), "the error names the problem");

    // Wrong content type.
    let wrong_type = generator.trace_batch(3, unix_nanos_now()).traces;
    bad_traces.extend(request_trace_ids(&wrong_type));
    let response = http_client::post(
        &url,
        &[("content-type", "text/plain")],
        wrong_type.encode_to_vec(),
    )
    .await
    .expect("answered");
    assert_eq!(
        response.status,
        415,
        "wrong content type: {}",
        response.text()
    );

    // Invalid JSON.
    let response = http_client::post(
        &url,
        &[("content-type", "application/json")],
        r#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "#,
    )
    .await
    .expect("answered");
    assert_eq!(response.status, 400, "invalid JSON: {}", response.text());

    // Gzip bomb: 64 MiB of zeros in well under 100 KiB.
    let bomb = gzip(&vec![0u8; 64 * LIMIT]);
    assert!(bomb.len() < 100 * 1024);
    let response = http_client::post(&url, &[PROTOBUF, ("content-encoding", "gzip")], bomb)
        .await
        .expect("answered");
    assert_eq!(response.status, 413, "gzip bomb: {}", response.text());

    // Oversize, uncompressed.
    let oversize = huge_request(&mut generator, 2 * LIMIT);
    bad_traces.extend(request_trace_ids(&oversize));
    let response = http_client::post(&url, &[PROTOBUF], oversize.encode_to_vec())
        .await
        .expect("answered");
    assert_eq!(response.status, 413, "oversize body: {}", response.text());

    // Zero trace id beside good spans: the good ones are kept, the bad one counted.
    let mut mixed = generator.trace_batch(3, unix_nanos_now()).traces;
    let good_binary = request_trace_ids(&mixed);
    let mut zero = mixed.resource_spans[0].scope_spans[0].spans[0].clone();
    zero.trace_id = vec![0; 16];
    zero.span_id = vec![9; 8];
    mixed.resource_spans[0].scope_spans[0].spans.push(zero);
    let response = http_client::post(&url, &[PROTOBUF], mixed.encode_to_vec())
        .await
        .expect("answered");
    assert_eq!(
        response.status,
        200,
        "partial success is a success: {}",
        response.text()
    );
    let answer = ExportTraceServiceResponse::decode(response.body.clone()).expect("OTLP response");
    assert_eq!(answer.partial_success.map(|p| p.rejected_spans), Some(1));

    // Good OTLP JSON (hex ids, int64 as strings), gzip-compressed.
    let good_json = generator.trace_batch(3, unix_nanos_now()).traces;
    let good_json_ids = request_trace_ids(&good_json);
    let body = gzip(serde_json::to_string(&good_json).expect("json").as_bytes());
    let response = http_client::post(
        &url,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        body,
    )
    .await
    .expect("answered");
    assert_eq!(response.status, 200, "good JSON: {}", response.text());

    let mut good: BTreeSet<String> = good_binary.clone();
    good.extend(good_json_ids);
    sampler
        .wait_for_export("the good traces", WAIT, |d| good.is_subset(&d.trace_ids()))
        .await
        .expect("good data exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    assert_eq!(data.trace_ids(), good, "only the good traces are exported");
    assert_eq!(
        data.span_count(),
        6,
        "3 binary + 3 JSON spans, the zero-id span dropped"
    );
    assert!(bad_traces.is_disjoint(&data.trace_ids()));
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum("otel_tail_spans_rejected_total", &[]) >= 1.0,
        "rejected span counted:\n{}",
        metrics.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_payloads_get_clear_errors_and_good_data_is_untouched() {
    let sampler = start().await;
    let channel = connect(&sampler.grpc_endpoint()).await.expect("connect");
    let mut generator = Generator::new(6, shape());

    let truncated = generator.trace_batch(9, unix_nanos_now()).traces;
    let bytes = truncated.encode_to_vec();
    let status = unary_raw(
        channel.clone(),
        TRACE_EXPORT_PATH,
        Bytes::from(bytes[..bytes.len() / 2].to_vec()),
    )
    .await
    .expect_err("truncated protobuf is rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().is_empty());

    let mut client = TraceServiceClient::new(channel.clone());
    let status = client
        .export(huge_request(&mut generator, 2 * LIMIT))
        .await
        .expect_err("oversize is rejected");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "oversize: {status:?}"
    );

    let mut gzip_client =
        TraceServiceClient::new(channel.clone()).send_compressed(CompressionEncoding::Gzip);
    let status = gzip_client
        .export(huge_request(&mut generator, 32 * LIMIT))
        .await
        .expect_err("gzip bomb is rejected");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "gzip bomb: {status:?}"
    );

    let mut mixed = generator.trace_batch(3, unix_nanos_now()).traces;
    let good = request_trace_ids(&mixed);
    let spans: &mut Vec<Span> = &mut mixed.resource_spans[0].scope_spans[0].spans;
    let mut short = spans[0].clone();
    short.trace_id = vec![1, 2, 3];
    short.span_id = vec![7; 8];
    let mut zero = spans[0].clone();
    zero.trace_id = vec![0; 16];
    zero.span_id = vec![8; 8];
    spans.push(short);
    spans.push(zero);
    let answer = client
        .export(mixed)
        .await
        .expect("partial success")
        .into_inner();
    assert_eq!(answer.partial_success.map(|p| p.rejected_spans), Some(2));

    sampler
        .wait_for_export("the good trace", WAIT, |d| good.is_subset(&d.trace_ids()))
        .await
        .expect("good spans exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    assert_eq!(data.trace_ids(), good);
    assert_eq!(data.span_count(), 3);
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum("otel_tail_spans_rejected_total", &[]) >= 2.0,
        "{}",
        metrics.text
    );
}
