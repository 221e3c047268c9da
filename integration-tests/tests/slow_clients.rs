//! Slow and hostile senders cannot stop a sampler: 200 requests that send their headers and
//! never their body — over HTTP/1 and as gRPC streams over HTTP/2 — hold no request slot,
//! so a well-behaved OpenTelemetry SDK client sending at the same time gets its spans
//! acknowledged and exported; after `receiver.read_timeout` the slow requests are refused
//! and counted (`reason="read_timeout"`).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::sdk::{self, Transport};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SLOW: usize = 200;
const REFUSED: &str = "otel_tail_requests_refused_total";

/// A body that never yields a frame.
type Stalled = StreamBody<futures_util::stream::Pending<Result<Frame<Bytes>, Infallible>>>;

fn stalled() -> Stalled {
    StreamBody::new(futures_util::stream::pending())
}

fn addr(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").to_owned()
}

/// 20 spans from an OpenTelemetry SDK client over each transport, each acknowledged
/// (`despite` says what else was going on); returns their trace ids.
async fn well_behaved_client(sampler: &SamplerProcess, despite: &str) -> Vec<String> {
    let mut trace_ids = Vec::new();
    for transport in [Transport::Grpc, Transport::Http] {
        let provider = sdk::tracer_provider(
            transport,
            &sampler.grpc_endpoint(),
            &sampler.http_endpoint(),
            "checkout",
        )
        .expect("tracer pipeline");
        let tracer = provider.tracer("well-behaved");
        for i in 0..20 {
            let mut span = tracer.start(format!("op-{i}"));
            trace_ids.push(span.span_context().trace_id().to_string());
            span.end();
        }
        sdk::shutdown_traces(provider)
            .await
            .unwrap_or_else(|e| panic!("the well-behaved client is acknowledged {despite}: {e}"));
    }
    trace_ids
}

/// Waits until every trace of `trace_ids` is exported.
async fn expect_exported(sampler: &SamplerProcess, trace_ids: &[String]) {
    let data = sampler
        .wait_for_export("the good client's spans", Duration::from_secs(20), |d| {
            d.span_count() >= trace_ids.len()
        })
        .await
        .expect("exported");
    let exported = data.trace_ids();
    for id in trace_ids {
        assert!(exported.contains(id), "trace {id} not exported");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_that_never_send_their_body_do_not_starve_other_clients() {
    let sampler = SamplerProcess::start(json!({
        "receiver": {"max_concurrent_requests": 16, "read_timeout": "4s"},
        "sampler": {"decision_wait": "1s", "policies": [{"name": "all", "type": "always_sample"}]},
    }))
    .await
    .expect("sampler starts");

    // HTTP/1: headers with a Content-Length, then silence.
    let mut held = Vec::new();
    for _ in 0..SLOW / 2 {
        let mut stream = TcpStream::connect(addr(&sampler.http_endpoint()))
            .await
            .expect("connect");
        stream
            .write_all(
                b"POST /v1/traces HTTP/1.1\r\nHost: sampler\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100000\r\n\r\n",
            )
            .await
            .expect("headers sent");
        held.push(stream);
    }
    // gRPC: streams over HTTP/2 whose body never comes, 50 per connection.
    let mut pending = Vec::new();
    for _ in 0..SLOW / 2 / 50 {
        let stream = TcpStream::connect(addr(&sampler.grpc_endpoint()))
            .await
            .expect("connect");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        for _ in 0..50 {
            let request = http::Request::post(format!(
                "{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                sampler.grpc_endpoint()
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(stalled())
            .expect("request");
            let mut sender = sender.clone();
            pending.push(tokio::spawn(async move {
                sender.ready().await.ok()?;
                let response = sender.send_request(request).await.ok()?;
                response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A well-behaved client over both transports, while all of that is open.
    let trace_ids = well_behaved_client(&sampler, "despite the slow ones").await;
    expect_exported(&sampler, &trace_ids).await;

    // Past the read deadline every slow request is refused and counted.
    let statuses: Vec<Option<String>> = futures_util::future::join_all(pending)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    assert!(
        statuses.iter().all(|s| s.as_deref() == Some("4")),
        "gRPC streams end DEADLINE_EXCEEDED: {statuses:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = sampler.metrics().await.expect("metrics");
    let timed_out = metrics.sum(REFUSED, &[("reason", "read_timeout")]);
    assert_eq!(timed_out, SLOW as f64, "every slow request counted");
    drop(held);
}

/// Empty spans (no ids): a few bytes each on the wire, a whole span struct each once read.
fn empty_spans(count: usize) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); count],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Empty log records: two bytes each on the wire, a whole record struct each once decoded.
fn empty_logs(count: usize) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use prost::Message as _;
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default(); count],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// `message` in a gRPC frame.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("fits").to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// One HTTP/2 connection to `endpoint` sending `requests` (path, content type, body) over
/// `streams` concurrent streams in a loop until `stop`; returns the response statuses
/// seen (HTTP status, with `grpc-status` when present).
async fn flood(
    endpoint: String,
    requests: Vec<(&'static str, &'static str, Bytes)>,
    streams: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(u16, Option<String>)> {
    let stream = TcpStream::connect(addr(&endpoint)).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut tasks = Vec::new();
    for n in 0..streams {
        let (mut sender, stop, endpoint) = (sender.clone(), stop.clone(), endpoint.clone());
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = n;
            while !*stop.borrow() {
                let (path, content_type, body) = &requests[i % requests.len()];
                i += 1;
                let request = http::Request::post(format!("{endpoint}{path}"))
                    .header("content-type", *content_type)
                    .header("te", "trailers")
                    .body(http_body_util::Full::new(body.clone()))
                    .expect("request");
                if sender.ready().await.is_err() {
                    break;
                }
                let Ok(response) = sender.send_request(request).await else {
                    break;
                };
                let status = response.status().as_u16();
                let grpc = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                use http_body_util::BodyExt as _;
                let trailers = response
                    .into_body()
                    .collect()
                    .await
                    .ok()
                    .and_then(|c| c.trailers().cloned());
                let grpc = grpc.or_else(|| {
                    trailers
                        .and_then(|t| t.get("grpc-status").cloned())
                        .and_then(|v| v.to_str().ok().map(str::to_owned))
                });
                seen.push((status, grpc));
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.expect("flood task"));
    }
    seen
}

/// Requests built to amplify — empty spans and log records, a few bytes each on the wire
/// and a whole struct each once read — sent as fast as two HTTP/2 connections carry them
/// (one per receiver, 16 streams each), with bombs too large to ever fit among them. Each
/// connection may hold at most `receiver.max_connection_bytes` of the budget, so the
/// well-behaved SDK client sending at the same time still finds room: its spans are
/// acknowledged and exported. The sampler's memory stays within the bound the
/// configuration states (the request budget plus the buffer's memtables, plus a fixed
/// allowance), and every refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amplifying_requests_stay_within_the_memory_budget_and_do_not_starve_other_clients() {
    const MIB: u64 = 1 << 20;
    let (budget, per_connection, memtables) = (48 * MIB, 16 * MIB, 32 * MIB);
    let sampler = SamplerProcess::start(json!({
        "receiver": {
            "max_request_bytes": 8 * MIB,
            "max_buffered_bytes": budget,
            "max_connection_bytes": per_connection,
        },
        "sampler": {
            "decision_wait": "1s",
            "buffer_memory_bytes": memtables,
            "policies": [{"name": "all", "type": "always_sample"}],
        },
    }))
    .await
    .expect("sampler starts");
    let pid = sampler.pid().expect("pid");
    let baseline = otel_tail_integration_tests::procfs::rss_bytes(pid).expect("rss");

    // 12k empty spans: ~24 KB on the wire, ~11 MB as read (one fits a connection's budget);
    // 300k empty log records: ~600 KB on the wire, over 100 MB decoded (never fits).
    let spans = empty_spans(12_000);
    let logs = empty_logs(300_000);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let traces_path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let logs_path = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    let grpc_flood = tokio::spawn(flood(
        sampler.grpc_endpoint(),
        vec![
            (traces_path, "application/grpc", grpc_frame(&spans)),
            (logs_path, "application/grpc", grpc_frame(&logs)),
        ],
        16,
        stop.clone(),
    ));
    let http_flood = tokio::spawn(flood(
        sampler.http_endpoint(),
        vec![
            ("/v1/traces", "application/x-protobuf", Bytes::from(spans)),
            ("/v1/logs", "application/x-protobuf", Bytes::from(logs)),
        ],
        16,
        stop,
    ));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let watcher = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                if let Ok(rss) = otel_tail_integration_tests::procfs::rss_bytes(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A well-behaved client over both transports, in the middle of the flood.
    let trace_ids = well_behaved_client(&sampler, "despite the flood").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).expect("stop the flood");
    let mut seen = grpc_flood.await.expect("gRPC flood");
    seen.extend(http_flood.await.expect("HTTP flood"));
    watcher.abort();

    expect_exported(&sampler, &trace_ids).await;

    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let allowance = 96 * MIB;
    let bound = budget + memtables + allowance;
    println!(
        "flood: {} requests answered; RSS baseline {} MiB, peak {} MiB, growth {} MiB, bound {} MiB",
        seen.len(),
        baseline / MIB,
        peak / MIB,
        (peak - baseline) / MIB,
        bound / MIB
    );
    assert!(
        peak - baseline <= bound,
        "RSS grew by {} MiB, more than the {} MiB the configuration bounds it to",
        (peak - baseline) / MIB,
        bound / MIB
    );
    let refused = |code: &str, http: u16| {
        seen.iter()
            .filter(|(status, grpc)| grpc.as_deref() == Some(code) || *status == http)
            .count()
    };
    assert!(refused("8", 413) > 0, "bombs refused as too large");
    assert!(refused("14", 503) > 0, "the flood was throttled");
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(metrics.sum(REFUSED, &[("reason", "too_large")]) > 0.0);
    assert!(metrics.sum(REFUSED, &[("reason", "overloaded")]) > 0.0);
}
