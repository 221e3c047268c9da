//! Router throughput: split + forward through the real router core ([`Router::route`]) to
//! 2 real OTLP/gRPC sinks on loopback, in one process.
//!
//! The router (split, forwarder, HTTP/2 client connections) runs on a single-threaded
//! runtime, so its thread's CPU time is the router's cost; the sinks (raw receivers that
//! count bytes and acknowledge, as cheap as a receiver gets) run on another thread. Input:
//! one pre-encoded `ExportTraceServiceRequest` of 1000 realistic spans (about 216 B each,
//! 10 spans per trace), sent by 16 concurrent callers. The OTLP receive side is not
//! included (see the end-to-end benchmark for that).
//!
//! Run: `cargo bench -p otel-tail-router --bench forward`. Prints figures, asserts nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use otel_tail_router::routing::{Router, RoutingTable};
use otel_tail_shared::config::ReceiverConfig;
use otel_tail_shared::forward::{ForwardCompression, Forwarder, ForwarderConfig};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::otlp::kv;
use otel_tail_shared::receiver::raw::{self, RawIngest};
use otel_tail_shared::receiver::{Accepted, IngestError};
use otel_tail_shared::ring::{DEFAULT_VNODES, NodeId};
use prost::Message;

const SPANS: usize = 1000;
const CONCURRENCY: usize = 16;
const RUN_FOR: Duration = Duration::from_secs(5);

/// SplitMix64, so the request is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn request() -> Bytes {
    let mut state = 7;
    let mut trace_id = Vec::new();
    let spans = (0..SPANS)
        .map(|i| {
            if i % 10 == 0 {
                trace_id = [
                    next(&mut state).to_le_bytes(),
                    next(&mut state).to_le_bytes(),
                ]
                .concat();
            }
            let start = 1_700_000_000_000_000_000 + next(&mut state) % 1_000_000_000;
            Span {
                trace_id: trace_id.clone(),
                span_id: next(&mut state).to_le_bytes().to_vec(),
                parent_span_id: next(&mut state).to_le_bytes().to_vec(),
                name: format!("GET /api/v1/orders/{}", i % 17),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + next(&mut state) % 50_000_000,
                attributes: vec![
                    kv("http.request.method", Value::StringValue("GET".to_owned())),
                    kv(
                        "http.route",
                        Value::StringValue("/api/v1/orders/{id}".to_owned()),
                    ),
                    kv("http.response.status_code", Value::IntValue(200)),
                    kv(
                        "server.address",
                        Value::StringValue("orders.internal".to_owned()),
                    ),
                ],
                status: Some(Status::default()),
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    let half = spans.len() / 2;
    let scope = |name: &str, spans: Vec<Span>| ScopeSpans {
        scope: Some(InstrumentationScope {
            name: name.to_owned(),
            version: "1.0.0".to_owned(),
            ..Default::default()
        }),
        spans,
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("orders".to_owned())),
                    kv(
                        "service.instance.id",
                        Value::StringValue("orders-7d9f".to_owned()),
                    ),
                ],
                ..Default::default()
            }),
            scope_spans: vec![
                scope("io.opentelemetry.http", spans[..half].to_vec()),
                scope("io.opentelemetry.db", spans[half..].to_vec()),
            ],
            ..Default::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

/// A sink that acknowledges everything and counts bytes.
#[derive(Default)]
struct CountingSink {
    bytes: AtomicU64,
}

impl CountingSink {
    fn take(&self, body: &Bytes) -> Result<Accepted, IngestError> {
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(Accepted::default())
    }
}

impl RawIngest for CountingSink {
    async fn traces(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(&body)
    }
    async fn logs(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(&body)
    }
    async fn metrics(&self, body: Bytes) -> Result<Accepted, IngestError> {
        self.take(&body)
    }
}

/// CPU seconds (user + system) of the calling thread, from `/proc/thread-self/stat`.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of stat(5), counted from the state field (3); in clock ticks (100/s).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

/// Starts the sinks on their own single-threaded runtime thread; returns their addresses.
fn start_sinks(count: usize) -> Vec<std::net::SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            for _ in 0..count {
                let config = ReceiverConfig {
                    grpc_endpoint: ([127, 0, 0, 1], 0).into(),
                    http_endpoint: ([127, 0, 0, 1], 0).into(),
                    max_request_bytes: 64 << 20,
                    ..ReceiverConfig::default()
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    raw::serve(
                        &config,
                        Arc::new(CountingSink::default()),
                        move |addrs| {
                            let _ = tx.send(addrs.grpc);
                        },
                        std::future::pending(),
                    )
                    .await
                });
            }
            std::future::pending::<()>().await;
        });
    });
    (0..count).map(|_| rx.recv().unwrap()).collect()
}

fn measure(
    label: &str,
    compression: ForwardCompression,
    sinks: &[std::net::SocketAddr],
    body: &Bytes,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let forwarder = Arc::new(Forwarder::new(ForwarderConfig {
            compression,
            ..ForwarderConfig::default()
        }));
        let table = RoutingTable::new(
            DEFAULT_VNODES,
            sinks
                .iter()
                .enumerate()
                .map(|(i, addr)| (NodeId::from(format!("sampler-{i}")), *addr)),
        );
        let router = Arc::new(Router::new(forwarder, table));
        // Warm up: connections, buffers.
        for _ in 0..20 {
            router.route(Signal::Traces, body.clone()).await.unwrap();
        }
        let requests = Arc::new(AtomicU64::new(0));
        let cpu_before = thread_cpu_seconds();
        let started = Instant::now();
        let deadline = started + RUN_FOR;
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let router = router.clone();
            let body = body.clone();
            let requests = requests.clone();
            callers.spawn(async move {
                while Instant::now() < deadline {
                    router.route(Signal::Traces, body.clone()).await.unwrap();
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while callers.join_next().await.is_some() {}
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds() - cpu_before;
        let spans = requests.load(Ordering::Relaxed) as f64 * SPANS as f64;
        println!(
            "{label:<28} {:>10.0} spans/s wall   router thread {:>4.0}% CPU   {:>10.0} spans/s per router core",
            spans / wall,
            100.0 * cpu / wall,
            if cpu > 0.0 { spans / cpu } else { f64::NAN },
        );
    });
}

fn main() {
    let body = request();
    println!(
        "router split + forward: {SPANS}-span requests ({} B, {:.0} B/span), {CONCURRENCY} callers, 2 sinks on loopback, {}s per run",
        body.len(),
        body.len() as f64 / SPANS as f64,
        RUN_FOR.as_secs()
    );
    let sinks = start_sinks(2);
    measure(
        "plaintext (default)",
        ForwardCompression::Never,
        &sinks,
        &body,
    );
    measure("gzip", ForwardCompression::Always, &sinks, &body);
}
