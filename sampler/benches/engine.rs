//! In-process benchmark of the sampler core (no network): ingest → RocksDB → index →
//! decide → export queue, with 2% error traces kept, from the encoded request through a
//! prost decode and through the wire reader. Prints spans/s on one thread and the
//! resident memory per active trace. Figures only; nothing is asserted.
//!
//! `cargo bench -p otel-tail-sampler --bench engine`

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use otel_tail_sampler::clock::ManualClock;
use otel_tail_sampler::engine::{Engine, Wiring};
use otel_tail_sampler::export_queue::ExportQueues;
use otel_tail_sampler::settle::SettleLinks;
use otel_tail_sampler::storage::Storage;
use otel_tail_shared::config::Config;
use otel_tail_shared::exporter::Exporter;
use otel_tail_shared::otlp::kv_str;
use prost::Message;

const SPANS_PER_TRACE: u64 = 8;
const SPANS_PER_REQUEST: u64 = 512;

/// A request of 512 spans: 64 traces of 8 spans, every 50th trace with an error span.
fn request(first_trace: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(SPANS_PER_REQUEST as usize);
    for t in 0..SPANS_PER_REQUEST / SPANS_PER_TRACE {
        let trace = first_trace + t;
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&trace.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        trace_id[8..].copy_from_slice(&trace.to_be_bytes());
        for s in 0..SPANS_PER_TRACE {
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: (trace * 16 + s + 1).to_be_bytes().to_vec(),
                parent_span_id: if s == 0 {
                    vec![]
                } else {
                    (trace * 16 + 1).to_be_bytes().to_vec()
                },
                name: "GET /api/orders/{id}".to_owned(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + s * 1000,
                end_time_unix_nano: 1_700_000_000_000_500_000 + s * 1000,
                attributes: vec![
                    kv_str("http.request.method", "GET"),
                    kv_str("http.route", "/api/orders/{id}"),
                    kv_str("user.id", format!("user-{}", trace % 9973)),
                ],
                status: (trace.is_multiple_of(50) && s == 3).then(|| Status {
                    code: status::StatusCode::Error as i32,
                    message: "boom".to_owned(),
                }),
                ..Default::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv_str("service.name", "checkout"),
                    kv_str("service.instance.id", "pod-1"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn engine(dir: &std::path::Path, num_traces: usize, clock: Arc<ManualClock>) -> Engine {
    let yaml = format!(
        "sampler:\n  decision_wait: 1s\n  num_traces: {num_traces}\n  max_storage_bytes: 1000000000000\n  policies:\n    - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\nexporter:\n  queue: {{max_bytes: 1000000000000}}\n"
    );
    let config = Config::from_yaml(&yaml, &|_| None).expect("bench config");
    let storage = Arc::new(Storage::open(&dir.join("db"), false).expect("storage"));
    let exporters =
        Exporter::from_config(&config.exporter, &dir.join("out.jsonl")).expect("exporter");
    let queues = ExportQueues::open(storage.clone(), exporters, &config.exporter).expect("queues");
    let wiring = Wiring {
        clock,
        links: SettleLinks::default(),
    };
    Engine::new(&config, storage, queues, wiring).expect("engine")
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Memory: hold 200k traces undecided and compare resident memory; first, before the
    // other phases leave freed memory for the allocator to reuse.
    let eng = engine(
        &dir.path().join("memory"),
        1_000_000,
        Arc::new(ManualClock::now()),
    );
    let before = rss_bytes();
    let traces = 200_000u64;
    let mut first = 0;
    while first < traces {
        let mut r = request(first);
        for s in &mut r.resource_spans[0].scope_spans[0].spans {
            s.trace_id[15] ^= 0xa5;
        }
        eng.ingest_traces(r).expect("ingest");
        first += SPANS_PER_REQUEST / SPANS_PER_TRACE;
    }
    let after = rss_bytes();
    let active = eng.active_traces() as u64;
    println!(
        "memory: {active} active traces, RSS +{} MiB (includes RocksDB memtables) = {} bytes/trace",
        (after.saturating_sub(before)) / (1024 * 1024),
        after.saturating_sub(before) / active.max(1)
    );
    drop(eng);

    // Throughput: ingest for a simulated 10 s at 1 s decision_wait; decide as time passes.
    // Both paths start from the encoded request, as a receiver has it.
    for wire in [false, true] {
        let clock = Arc::new(ManualClock::now());
        let name = if wire { "wire" } else { "decoded" };
        let eng = engine(&dir.path().join(name), 1_000_000, clock.clone());
        let requests: Vec<_> = (0..200u64).map(|i| request(i * 64)).collect();
        let mut busy = Duration::ZERO;
        let mut spans = 0u64;
        for round in 0..20u64 {
            for (i, r) in requests.iter().enumerate() {
                let mut r = r.clone();
                // Fresh trace ids every round.
                for s in &mut r.resource_spans[0].scope_spans[0].spans {
                    s.trace_id[0] ^= round as u8;
                    s.trace_id[1] ^= (round >> 8) as u8 ^ 0x5a;
                }
                let body = bytes::Bytes::from(r.encode_to_vec());
                let started = Instant::now();
                if wire {
                    eng.ingest_encoded_traces(body).expect("ingest");
                } else {
                    let decoded = ExportTraceServiceRequest::decode(body).expect("decode");
                    eng.ingest_traces(decoded).expect("ingest");
                }
                spans += SPANS_PER_REQUEST;
                if i.is_multiple_of(20) {
                    clock.advance(Duration::from_millis(50));
                    eng.decide_due().expect("decide");
                }
                busy += started.elapsed();
            }
        }
        let started = Instant::now();
        clock.advance(Duration::from_secs(5));
        eng.decide_due().expect("decide");
        let secs = (busy + started.elapsed()).as_secs_f64();
        println!(
            "engine {name:>7} decode+ingest+decide: {spans} spans in {secs:.2}s = {:.0} spans/s on one thread (8 spans/trace, 2% of traces kept)",
            spans as f64 / secs
        );
    }
}
