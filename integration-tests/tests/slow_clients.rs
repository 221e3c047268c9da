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
    let mut trace_ids = Vec::new();
    for transport in [Transport::Grpc, Transport::Http] {
        let provider = sdk::tracer_provider(
            transport,
            &sampler.grpc_endpoint(),
            &sampler.http_endpoint(),
            "checkout",
        )
        .expect("tracer pipeline");
        let tracer = provider.tracer("slow-clients");
        for i in 0..20 {
            let mut span = tracer.start(format!("op-{i}"));
            trace_ids.push(span.span_context().trace_id().to_string());
            span.end();
        }
        sdk::shutdown_traces(provider)
            .await
            .expect("the well-behaved client is acknowledged despite the slow ones");
    }
    let data = sampler
        .wait_for_export("the good client's spans", Duration::from_secs(20), |d| {
            d.span_count() >= 40
        })
        .await
        .expect("exported");
    let exported = data.trace_ids();
    for id in &trace_ids {
        assert!(exported.contains(id), "trace {id} not exported");
    }

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
