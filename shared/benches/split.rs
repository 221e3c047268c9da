//! Throughput of the zero-copy trace request splitter on one core, against the prost
//! decode + group + encode it replaces.
//!
//! Input: one pre-encoded `ExportTraceServiceRequest` of 1000 realistic spans (about 216 B
//! each: ids, name, kind, times, status and four attributes) under one resource with
//! two scopes, split among the 3 members of a real [`Ring`].
//!
//! Run: `cargo bench -p otel-tail-shared --bench split`. Prints figures, asserts nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use otel_tail_shared::otlp::trace_id;
use otel_tail_shared::ring::{DEFAULT_VNODES, NodeId, Ring};
use otel_tail_shared::split::{RouteKey, Splitter, wire_traces_by_owner};
use prost::Message;

const SPANS: usize = 1000;
const OWNERS: usize = 3;
/// How long each measurement runs.
const RUN_FOR: Duration = Duration::from_secs(3);

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// SplitMix64, so the request is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn realistic_span(i: usize, state: &mut u64) -> Span {
    // About 10 spans per trace.
    let mut trace = [0u8; 16];
    let mut trace_seed = (i / 10) as u64;
    trace[..8].copy_from_slice(&next(&mut trace_seed).to_le_bytes());
    trace[8..].copy_from_slice(&next(&mut trace_seed).to_le_bytes());
    let start = 1_700_000_000_000_000_000 + next(state) % 1_000_000_000;
    Span {
        trace_id: trace.to_vec(),
        span_id: next(state).to_le_bytes().to_vec(),
        name: "GET /api/v1/orders/{id}".to_string(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + next(state) % 50_000_000,
        attributes: vec![
            string_kv("http.request.method", "GET"),
            string_kv("http.route", "/api/v1/orders/{id}"),
            int_kv("http.response.status_code", 200),
            string_kv("server.address", "orders.internal"),
        ],
        status: Some(Status {
            code: 1,
            message: String::new(),
        }),
        flags: 0x101,
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let mut state = 7;
    let spans: Vec<Span> = (0..SPANS).map(|i| realistic_span(i, &mut state)).collect();
    let (first, second) = spans.split_at(SPANS / 2);
    let scope = |name: &str, spans: &[Span]| ScopeSpans {
        scope: Some(InstrumentationScope {
            name: name.to_string(),
            version: "1.2.0".to_string(),
            ..Default::default()
        }),
        spans: spans.to_vec(),
        schema_url: String::new(),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_kv("service.name", "orders"),
                    string_kv("service.instance.id", "orders-7f9c6b5d4-x2k8q"),
                    string_kv("deployment.environment.name", "production"),
                    string_kv("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![
                scope("opentelemetry-http", first),
                scope("orders-db", second),
            ],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".to_string(),
        }],
    }
}

/// The path the splitter replaces: decode, group spans per owner, encode each part.
fn prost_reference(bytes: &[u8], ring: &Ring) -> Vec<Vec<u8>> {
    let request = ExportTraceServiceRequest::decode(bytes).expect("valid request");
    let mut parts = vec![ExportTraceServiceRequest::default(); OWNERS];
    for rs in request.resource_spans {
        let mut per_owner: Vec<Option<ResourceSpans>> = vec![None; OWNERS];
        for ss in &rs.scope_spans {
            let mut scoped: Vec<Option<ScopeSpans>> = vec![None; OWNERS];
            for s in &ss.spans {
                let Some(id) = trace_id(&s.trace_id) else {
                    continue;
                };
                let o = ring.owner_index_of_trace(&id).expect("ring has members");
                scoped[o]
                    .get_or_insert_with(|| ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: Vec::new(),
                        schema_url: ss.schema_url.clone(),
                    })
                    .spans
                    .push(s.clone());
            }
            for (o, scope) in scoped.into_iter().enumerate() {
                if let Some(scope) = scope {
                    per_owner[o]
                        .get_or_insert_with(|| ResourceSpans {
                            resource: rs.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: rs.schema_url.clone(),
                        })
                        .scope_spans
                        .push(scope);
                }
            }
        }
        for (o, r) in per_owner.into_iter().enumerate() {
            parts[o].resource_spans.extend(r);
        }
    }
    parts.iter().map(Message::encode_to_vec).collect()
}

/// Runs `f` repeatedly for [`RUN_FOR`]; returns requests per second.
fn measure(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..10 {
            f();
        }
        runs += 10;
    }
    runs as f64 / start.elapsed().as_secs_f64()
}

fn report(name: &str, requests_per_sec: f64, bytes: usize) {
    println!(
        "{name:<48} {:>12.0} spans/s  {:>8.1} MB/s  {:>8.1} µs/request",
        requests_per_sec * SPANS as f64,
        requests_per_sec * bytes as f64 / 1e6,
        1e6 / requests_per_sec,
    );
}

fn main() {
    let ring = Ring::with_members(
        DEFAULT_VNODES,
        (0..OWNERS).map(|i| NodeId::from(format!("otel-tail-sampler-{i}"))),
    );
    let bytes = request().encode_to_vec();
    println!(
        "request: {SPANS} spans, {} bytes ({:.0} B/span), split among {OWNERS} owners",
        bytes.len(),
        bytes.len() as f64 / SPANS as f64
    );
    let owner = |key: RouteKey<'_>| {
        match key {
            RouteKey::Trace(id) => ring.owner_index_of_trace(&id),
            RouteKey::Key(key) => ring.owner_index_of_key(key),
        }
        .expect("ring has members")
    };

    let check = wire_traces_by_owner(&bytes, OWNERS, owner).expect("valid request");
    println!("spans per owner: {:?}", check.counts);

    let mut splitter = Splitter::new();
    let split = measure(|| {
        black_box(
            splitter
                .wire_traces_by_owner(black_box(&bytes), OWNERS, owner)
                .expect("valid request"),
        );
    });
    report("split (reused Splitter, ring lookup)", split, bytes.len());

    let fresh = measure(|| {
        black_box(wire_traces_by_owner(black_box(&bytes), OWNERS, owner).expect("valid request"));
    });
    report("split (fresh scratch per request)", fresh, bytes.len());

    let lookups = measure(|| {
        let mut id = [0u8; 16];
        for i in 0..SPANS {
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            black_box(ring.owner_index_of_trace(black_box(&id)));
        }
    });
    report(
        "ring lookups alone (1000 per request)",
        lookups,
        bytes.len(),
    );

    let reference = measure(|| {
        black_box(prost_reference(black_box(&bytes), &ring));
    });
    report("prost decode + group + encode", reference, bytes.len());
    println!("split speed-up over prost: {:.1}x", split / reference);
}
