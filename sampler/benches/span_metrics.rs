//! Throughput of span metrics on one thread (no network): the whole path a span takes —
//! aggregated with its request at ingest, the per-request points encoded as held, decoded
//! at settle, exemplar candidates of traces not kept removed (1% of traces kept, looked up
//! in a set as the kept index does), folded into the span rollup, which is flushed every
//! 100 requests. Requests of 1,000 spans from one of 20 services (10 spans per trace, 30
//! operations, 1% errors), with the default dimensions and with an extra `http.route`
//! dimension of 8 values. Prints spans per CPU second of this process. Figures only.
//!
//! `cargo bench -p otel-tail-sampler --bench span_metrics`

use std::collections::HashSet;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otel_tail_sampler::rollup::spans::{SpanMetricsBuilder, SpanRollup};
use otel_tail_shared::config::rollup::{SpanDimensionConfig, SpanMetricsConfig};
use otel_tail_shared::otlp::kv_str;
use prost::Message;

/// The allocator the sampler binary runs with.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SPANS_PER_REQUEST: u64 = 1_000;
const REQUESTS: u64 = 4_000;
const FLUSH_EVERY: u64 = 100;

fn request(r: u64) -> ExportTraceServiceRequest {
    let service = r % 20;
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let n = r * SPANS_PER_REQUEST + i;
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&(n / 10 + 1).to_be_bytes());
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (n + 1).to_be_bytes().to_vec(),
                name: format!("operation-{}", n.wrapping_mul(2_654_435_761) % 30),
                kind: 2,
                start_time_unix_nano: 1_000_000_000,
                end_time_unix_nano: 1_000_000_000 + (n % 997) * 1_000_000,
                attributes: vec![
                    kv_str("http.route", format!("/api/{}", n % 8)),
                    kv_str("user.id", format!("user-{}", n % 10_000)),
                ],
                status: Some(Status {
                    code: if n.is_multiple_of(100) { 2 } else { 0 },
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv_str("service.name", format!("service-{service}")),
                    kv_str("service.instance.id", format!("pod-{}", r % 3)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Runs the whole path over `REQUESTS` requests; prints and returns spans per CPU second.
fn run(label: &str, config: &SpanMetricsConfig, requests: &[ExportTraceServiceRequest]) {
    let builder = SpanMetricsBuilder::new(config);
    let mut rollup = SpanRollup::new(config).expect("valid config");
    // Trace n is kept when n % 100 == 0 (the first 8 bytes of its id hold n + 1).
    let kept: HashSet<Vec<u8>> = (0..REQUESTS * SPANS_PER_REQUEST / 10)
        .step_by(100)
        .map(|n| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(n + 1).to_be_bytes());
            id.to_vec()
        })
        .collect();
    let (start_cpu, start) = (cpu_seconds(), Instant::now());
    let mut held_bytes = 0usize;
    for r in 0..REQUESTS {
        let points = builder.aggregate(&requests[(r % 40) as usize], r);
        for rm in &points.resources {
            let held = rm.encode_to_vec();
            held_bytes += held.len();
            let mut settled = ResourceMetrics::decode(held.as_slice()).expect("decodes");
            for m in settled
                .scope_metrics
                .iter_mut()
                .flat_map(|sm| &mut sm.metrics)
            {
                if let Some(metric::Data::Histogram(h)) = &mut m.data {
                    for p in &mut h.data_points {
                        p.exemplars.retain(|e| kept.contains(&e.trace_id));
                    }
                }
            }
            rollup.add(&settled, r);
        }
        if (r + 1) % FLUSH_EVERY == 0 {
            rollup.flush(r, r + 1);
        }
    }
    let (cpu, wall) = (cpu_seconds() - start_cpu, start.elapsed().as_secs_f64());
    let spans = (REQUESTS * SPANS_PER_REQUEST) as f64;
    assert_eq!(
        rollup.spans_in(),
        REQUESTS * SPANS_PER_REQUEST,
        "every span counted once"
    );
    println!(
        "span metrics, {label}: {:.0} spans per CPU second ({spans} spans, {cpu:.2} CPU s, {wall:.2} s wall); held {:.1} bytes per span",
        spans / cpu.max(0.01),
        held_bytes as f64 / spans
    );
}

fn main() {
    // Distinct requests, built before timing (a client's work, not ours).
    let requests: Vec<ExportTraceServiceRequest> = (0..40).map(request).collect();
    run(
        "default dimensions",
        &SpanMetricsConfig::default(),
        &requests,
    );
    let routes = SpanMetricsConfig {
        dimensions: vec![SpanDimensionConfig {
            name: "http.route".into(),
            default: None,
        }],
        ..SpanMetricsConfig::default()
    };
    run("+ http.route (8 values)", &routes, &requests);
}
