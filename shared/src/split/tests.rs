use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::otlp::{kv_int, kv_str, trace_id};
use crate::ring::{DEFAULT_VNODES, NodeId, Ring};
use crate::testing;

// ---------------------------------------------------------------------------------------
// Owners: a real ring of three samplers.

fn ring(n: usize) -> Ring {
    Ring::with_members(
        DEFAULT_VNODES,
        (0..n).map(|i| NodeId::from(format!("sampler-{i}"))),
    )
}

fn owner_of(ring: &Ring, key: RouteKey<'_>) -> usize {
    match key {
        RouteKey::Trace(id) => ring.owner_index_of_trace(&id).unwrap(),
        RouteKey::Key(k) => ring.owner_index_of_key(k).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Random requests.

fn string_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.to_string())),
    }
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    prop_oneof![
        4 => "[a-c]{0,3}".prop_map(|s| string_value(&s)),
        1 => any::<i64>().prop_map(|i| AnyValue { value: Some(Value::IntValue(i)) }),
    ]
}

fn key_value() -> impl Strategy<Value = KeyValue> {
    let keys = prop::sample::select(vec![
        "service.name",
        "service.namespace",
        "deployment.environment",
        "deployment.environment.name",
        "service.instance.id",
        "k8s.pod.name",
        "host.name",
        "http.route",
        "user.id",
    ]);
    (keys, prop::option::weighted(0.9, any_value())).prop_map(|(key, value)| KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    })
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop::option::weighted(
        0.9,
        (prop::collection::vec(key_value(), 0..5), 0..3u32).prop_map(|(attributes, dropped)| {
            Resource {
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            }
        }),
    )
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop::option::of(("[a-z]{1,6}", "[0-9.]{0,4}").prop_map(|(name, version)| {
        InstrumentationScope {
            name,
            version,
            ..Default::default()
        }
    }))
}

fn schema_url() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("https://opentelemetry.io/schemas/1.26.0".to_string())
    ]
}

/// Mostly valid ids, some empty, all-zero or of the wrong length.
fn trace_id_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => any::<[u8; 16]>().prop_map(|id| id.to_vec()),
        1 => Just(Vec::new()),
        1 => Just(vec![0; 16]),
        1 => prop::collection::vec(any::<u8>(), 1..24),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        trace_id_bytes(),
        any::<[u8; 8]>(),
        "[a-z /]{1,12}",
        prop::collection::vec(key_value(), 0..4),
        0..6i32,
        any::<u64>(),
        prop::option::of((0..3i32, "[a-z]{0,5}")),
    )
        .prop_map(
            |(trace_id, span_id, name, attributes, kind, start, status)| Span {
                trace_id,
                span_id: span_id.to_vec(),
                name,
                attributes,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start.saturating_add(1_000),
                status: status.map(|(code, message)| Status { code, message }),
                ..Default::default()
            },
        )
}

pub(super) fn trace_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope_spans = (scope(), prop::collection::vec(span(), 0..8), schema_url()).prop_map(
        |(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url,
        },
    );
    let resource_spans = (
        resource(),
        prop::collection::vec(scope_spans, 0..4),
        schema_url(),
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        });
    prop::collection::vec(resource_spans, 0..4)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        trace_id_bytes(),
        any::<u64>(),
        0..25i32,
        "[a-z ]{0,16}",
        prop::collection::vec(key_value(), 0..3),
    )
        .prop_map(|(trace_id, time, severity, body, attributes)| LogRecord {
            trace_id,
            time_unix_nano: time,
            severity_number: severity,
            body: Some(string_value(&body)),
            attributes,
            ..Default::default()
        })
}

pub(super) fn logs_request() -> impl Strategy<Value = ExportLogsServiceRequest> {
    let scope_logs = (
        scope(),
        prop::collection::vec(log_record(), 0..8),
        schema_url(),
    )
        .prop_map(|(scope, log_records, schema_url)| ScopeLogs {
            scope,
            log_records,
            schema_url,
        });
    let resource_logs = (
        resource(),
        prop::collection::vec(scope_logs, 0..4),
        schema_url(),
    )
        .prop_map(|(resource, scope_logs, schema_url)| ResourceLogs {
            resource,
            scope_logs,
            schema_url,
        });
    prop::collection::vec(resource_logs, 0..4)
        .prop_map(|resource_logs| ExportLogsServiceRequest { resource_logs })
}

fn number_point() -> impl Strategy<Value = NumberDataPoint> {
    (prop::collection::vec(key_value(), 0..3), any::<u64>()).prop_map(|(attributes, time)| {
        NumberDataPoint {
            attributes,
            time_unix_nano: time,
            ..Default::default()
        }
    })
}

fn metric() -> impl Strategy<Value = Metric> {
    let points = || prop::collection::vec(number_point(), 0..4);
    let data = prop_oneof![
        points().prop_map(|data_points| Data::Gauge(Gauge { data_points })),
        points().prop_map(|data_points| Data::Sum(Sum {
            data_points,
            aggregation_temporality: 1,
            is_monotonic: true,
        })),
        prop::collection::vec(any::<u64>(), 0..4).prop_map(|counts| Data::Histogram(Histogram {
            data_points: counts
                .into_iter()
                .map(|count| HistogramDataPoint {
                    count,
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: 2,
        })),
    ];
    (
        prop::sample::select(vec!["http.server.duration", "queue.depth", "cpu"]),
        prop::option::weighted(0.95, data),
    )
        .prop_map(|(name, data)| Metric {
            name: name.to_string(),
            unit: "1".to_string(),
            data,
            ..Default::default()
        })
}

pub(super) fn metrics_request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let scope_metrics = (scope(), prop::collection::vec(metric(), 0..6), schema_url()).prop_map(
        |(scope, metrics, schema_url)| ScopeMetrics {
            scope,
            metrics,
            schema_url,
        },
    );
    let resource_metrics = (
        resource(),
        prop::collection::vec(scope_metrics, 0..4),
        schema_url(),
    )
        .prop_map(|(resource, scope_metrics, schema_url)| ResourceMetrics {
            resource,
            scope_metrics,
            schema_url,
        });
    prop::collection::vec(resource_metrics, 0..4)
        .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
}

// ---------------------------------------------------------------------------------------
// Reference implementations: decode with prost, group per owner, re-encode.

/// Per-owner requests (empty containers dropped), counts and invalid items.
struct Reference<R> {
    parts: Vec<R>,
    counts: Vec<usize>,
    invalid: usize,
}

fn reference_traces(
    request: &ExportTraceServiceRequest,
    ring: &Ring,
) -> Reference<ExportTraceServiceRequest> {
    let n = ring.len();
    let mut parts = vec![ExportTraceServiceRequest::default(); n];
    let mut counts = vec![0; n];
    let mut invalid = 0;
    for rs in &request.resource_spans {
        let mut per_owner: Vec<ResourceSpans> = (0..n)
            .map(|_| ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans: Vec::new(),
                schema_url: rs.schema_url.clone(),
            })
            .collect();
        for ss in &rs.scope_spans {
            let mut scoped: Vec<ScopeSpans> = (0..n)
                .map(|_| ScopeSpans {
                    scope: ss.scope.clone(),
                    spans: Vec::new(),
                    schema_url: ss.schema_url.clone(),
                })
                .collect();
            for span in &ss.spans {
                match trace_id(&span.trace_id) {
                    Some(id) => {
                        let o = ring.owner_index_of_trace(&id).unwrap();
                        scoped[o].spans.push(span.clone());
                        counts[o] += 1;
                    }
                    None => invalid += 1,
                }
            }
            for (o, s) in scoped.into_iter().enumerate() {
                if !s.spans.is_empty() {
                    per_owner[o].scope_spans.push(s);
                }
            }
        }
        for (o, r) in per_owner.into_iter().enumerate() {
            if !r.scope_spans.is_empty() {
                parts[o].resource_spans.push(r);
            }
        }
    }
    Reference {
        parts,
        counts,
        invalid,
    }
}

fn reference_logs(
    request: &ExportLogsServiceRequest,
    ring: &Ring,
) -> Reference<ExportLogsServiceRequest> {
    let n = ring.len();
    let mut parts = vec![ExportLogsServiceRequest::default(); n];
    let mut counts = vec![0; n];
    let mut invalid = 0;
    let mut key = Vec::new();
    for rl in &request.resource_logs {
        resource_identity_key(rl.resource.as_ref(), &mut key);
        let resource_owner = ring.owner_index_of_key(&key).unwrap();
        let mut per_owner: Vec<ResourceLogs> = (0..n)
            .map(|_| ResourceLogs {
                resource: rl.resource.clone(),
                scope_logs: Vec::new(),
                schema_url: rl.schema_url.clone(),
            })
            .collect();
        for sl in &rl.scope_logs {
            let mut scoped: Vec<ScopeLogs> = (0..n)
                .map(|_| ScopeLogs {
                    scope: sl.scope.clone(),
                    log_records: Vec::new(),
                    schema_url: sl.schema_url.clone(),
                })
                .collect();
            for log in &sl.log_records {
                let o = match (log.trace_id.len(), trace_id(&log.trace_id)) {
                    (_, Some(id)) => ring.owner_index_of_trace(&id).unwrap(),
                    (0 | 16, None) => resource_owner,
                    _ => {
                        invalid += 1;
                        continue;
                    }
                };
                scoped[o].log_records.push(log.clone());
                counts[o] += 1;
            }
            for (o, s) in scoped.into_iter().enumerate() {
                if !s.log_records.is_empty() {
                    per_owner[o].scope_logs.push(s);
                }
            }
        }
        for (o, r) in per_owner.into_iter().enumerate() {
            if !r.scope_logs.is_empty() {
                parts[o].resource_logs.push(r);
            }
        }
    }
    Reference {
        parts,
        counts,
        invalid,
    }
}

fn data_points(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

fn reference_metrics(
    request: &ExportMetricsServiceRequest,
    ring: &Ring,
) -> Reference<ExportMetricsServiceRequest> {
    let n = ring.len();
    let mut parts = vec![ExportMetricsServiceRequest::default(); n];
    let mut counts = vec![0; n];
    let mut key = Vec::new();
    for rm in &request.resource_metrics {
        let mut per_owner: Vec<ResourceMetrics> = (0..n)
            .map(|_| ResourceMetrics {
                resource: rm.resource.clone(),
                scope_metrics: Vec::new(),
                schema_url: rm.schema_url.clone(),
            })
            .collect();
        for sm in &rm.scope_metrics {
            let mut scoped: Vec<ScopeMetrics> = (0..n)
                .map(|_| ScopeMetrics {
                    scope: sm.scope.clone(),
                    metrics: Vec::new(),
                    schema_url: sm.schema_url.clone(),
                })
                .collect();
            for metric in &sm.metrics {
                metric_series_key(rm.resource.as_ref(), &metric.name, &mut key);
                let o = ring.owner_index_of_key(&key).unwrap();
                scoped[o].metrics.push(metric.clone());
                counts[o] += data_points(metric);
            }
            for (o, s) in scoped.into_iter().enumerate() {
                if !s.metrics.is_empty() {
                    per_owner[o].scope_metrics.push(s);
                }
            }
        }
        for (o, r) in per_owner.into_iter().enumerate() {
            if !r.scope_metrics.is_empty() {
                parts[o].resource_metrics.push(r);
            }
        }
    }
    Reference {
        parts,
        counts,
        invalid: 0,
    }
}

// ---------------------------------------------------------------------------------------
// Multisets of (resource, scope, item), each encoded, for order-insensitive comparison.

type Triple = (Vec<u8>, Vec<u8>, Vec<u8>);

fn span_triples(request: &ExportTraceServiceRequest) -> Vec<Triple> {
    let mut triples = Vec::new();
    for rs in &request.resource_spans {
        let resource = (rs.resource.clone(), rs.schema_url.clone());
        for ss in &rs.scope_spans {
            let scope = (ss.scope.clone(), ss.schema_url.clone());
            for span in &ss.spans {
                triples.push((
                    format!("{resource:?}").into_bytes(),
                    format!("{scope:?}").into_bytes(),
                    span.encode_to_vec(),
                ));
            }
        }
    }
    triples.sort();
    triples
}

fn valid_spans_only(request: &ExportTraceServiceRequest) -> ExportTraceServiceRequest {
    let mut request = request.clone();
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| trace_id(&s.trace_id).is_some());
        }
    }
    request
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn trace_split_partitions_the_valid_spans_by_owner(request in trace_request()) {
        let ring = ring(3);
        let bytes = request.encode_to_vec();
        let split = wire_traces_by_owner(&bytes, 3, |k| owner_of(&ring, k)).unwrap();
        prop_assert_eq!(split.parts.len(), 3);

        let mut all = Vec::new();
        for (o, part) in split.parts.iter().enumerate() {
            let decoded = ExportTraceServiceRequest::decode(part.as_ref()).unwrap();
            for span in decoded.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                let id = trace_id(&span.trace_id).expect("only valid trace ids are routed");
                prop_assert_eq!(ring.owner_index_of_trace(&id), Some(o));
            }
            prop_assert_eq!(split.counts[o], crate::otlp::span_count(&decoded));
            prop_assert_eq!(part.is_empty(), split.counts[o] == 0);
            all.extend(span_triples(&decoded));
        }
        all.sort();
        prop_assert_eq!(all, span_triples(&valid_spans_only(&request)));
        prop_assert_eq!(
            split.invalid + split.counts.iter().sum::<usize>(),
            crate::otlp::span_count(&request)
        );
    }

    #[test]
    fn trace_split_matches_decode_group_encode(request in trace_request()) {
        let ring = ring(3);
        let bytes = request.encode_to_vec();
        let split = wire_traces_by_owner(&bytes, 3, |k| owner_of(&ring, k)).unwrap();
        let reference = reference_traces(&request, &ring);
        for (part, expected) in split.parts.iter().zip(&reference.parts) {
            prop_assert_eq!(&ExportTraceServiceRequest::decode(part.as_ref()).unwrap(), expected);
        }
        prop_assert_eq!(split.counts, reference.counts);
        prop_assert_eq!(split.invalid, reference.invalid);
    }

    #[test]
    fn log_split_matches_decode_group_encode(request in logs_request()) {
        let ring = ring(3);
        let bytes = request.encode_to_vec();
        let split = wire_logs_by_owner(&bytes, 3, |k| owner_of(&ring, k)).unwrap();
        let reference = reference_logs(&request, &ring);
        for (part, expected) in split.parts.iter().zip(&reference.parts) {
            prop_assert_eq!(&ExportLogsServiceRequest::decode(part.as_ref()).unwrap(), expected);
        }
        prop_assert_eq!(split.counts, reference.counts);
        prop_assert_eq!(split.invalid, reference.invalid);
    }

    #[test]
    fn metric_split_matches_decode_group_encode(request in metrics_request()) {
        let ring = ring(3);
        let bytes = request.encode_to_vec();
        let split = wire_metrics_by_owner(&bytes, 3, |k| owner_of(&ring, k)).unwrap();
        let reference = reference_metrics(&request, &ring);
        for (part, expected) in split.parts.iter().zip(&reference.parts) {
            prop_assert_eq!(&ExportMetricsServiceRequest::decode(part.as_ref()).unwrap(), expected);
        }
        prop_assert_eq!(split.counts, reference.counts);
        prop_assert_eq!(split.invalid, 0);
    }

    #[test]
    fn truncated_or_corrupted_requests_never_panic(
        request in trace_request(),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let bytes = request.encode_to_vec();
        prop_assume!(!bytes.is_empty());
        let mut splitter = Splitter::new();
        let truncated = &bytes[..cut.index(bytes.len())];
        let _ = splitter.wire_traces_by_owner(truncated, 2, |k| match k {
            RouteKey::Trace(id) => usize::from(id[0] & 1),
            RouteKey::Key(_) => 0,
        });
        let mut corrupted = bytes.clone();
        let at = flip.0.index(corrupted.len());
        corrupted[at] ^= flip.1;
        // Whatever the result, a success must still decode into valid requests.
        if let Ok(split) = splitter.wire_traces_by_owner(&corrupted, 2, |k| match k {
            RouteKey::Trace(id) => usize::from(id[0] & 1),
            RouteKey::Key(_) => 0,
        }) {
            prop_assert_eq!(split.parts.len(), 2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hand-built cases.

fn span_with_id(id: u8) -> Span {
    Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: format!("span-{id}"),
        ..Default::default()
    }
}

fn one_container(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Owner = first byte of the trace id, modulo 2.
fn by_first_byte(key: RouteKey<'_>) -> usize {
    match key {
        RouteKey::Trace(id) => usize::from(id[0] % 2),
        RouteKey::Key(_) => 0,
    }
}

fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, u64::from(number << 3 | 2));
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

#[test]
fn unknown_fields_at_every_level_are_carried_to_the_owner() {
    // Span 1 (owner 1) and span 2 (owner 0), each with an unknown string field and an
    // unknown group; unknown fields in the scope and resource containers too.
    let unknown_in_span = len_field(100, b"span-extension");
    // Field 50 as a group: start-group tag (50 << 3 | 3 = 403 as a varint), field 1 = 7,
    // end-group tag (404).
    let group = [0x93, 0x03, 0x08, 0x07, 0x94, 0x03];
    let mut span_1 = span_with_id(1).encode_to_vec();
    span_1.extend_from_slice(&unknown_in_span);
    span_1.extend_from_slice(&group);
    let span_2 = span_with_id(2).encode_to_vec();

    let mut scope = len_field(
        1,
        &InstrumentationScope {
            name: "lib".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    scope.extend(len_field(2, &span_1));
    scope.extend(len_field(99, b"scope-extension"));
    scope.extend(len_field(2, &span_2));

    let mut resource = len_field(
        1,
        &Resource {
            attributes: vec![kv_str("service.name", "checkout")],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    resource.extend(len_field(98, b"resource-extension"));
    resource.extend(len_field(2, &scope));

    let mut request = len_field(1, &resource);
    request.extend(len_field(97, b"request-extension"));

    let split = wire_traces_by_owner(&request, 2, by_first_byte).unwrap();
    assert_eq!(split.counts, vec![1, 1]);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let (even, odd) = (&split.parts[0], &split.parts[1]);
    assert!(
        contains(odd, &span_1),
        "span 1 is copied whole, unknown fields and group included"
    );
    assert!(!contains(even, b"span-extension"));
    for part in [even, odd] {
        assert!(contains(part, b"scope-extension"));
        assert!(contains(part, b"resource-extension"));
        assert!(
            !contains(part, b"request-extension"),
            "request-level fields belong to no owner"
        );
    }
    let decoded = ExportTraceServiceRequest::decode(odd.as_ref()).unwrap();
    assert_eq!(
        decoded.resource_spans[0].scope_spans[0].spans,
        vec![span_with_id(1)]
    );
    let decoded = ExportTraceServiceRequest::decode(even.as_ref()).unwrap();
    assert_eq!(
        decoded.resource_spans[0].scope_spans[0].spans,
        vec![span_with_id(2)]
    );
}

#[test]
fn invalid_trace_ids_are_counted_and_left_out() {
    let mut empty = span_with_id(3);
    empty.trace_id.clear();
    let mut zero = span_with_id(3);
    zero.trace_id = vec![0; 16];
    let mut short = span_with_id(3);
    short.trace_id.truncate(8);
    let request = one_container(vec![empty, span_with_id(4), zero, short]).encode_to_vec();

    let split = wire_traces_by_owner(&request, 2, by_first_byte).unwrap();
    assert_eq!(split.invalid, 3);
    assert_eq!(split.counts, vec![1, 0]);
    assert!(split.parts[1].is_empty());
    let decoded = ExportTraceServiceRequest::decode(split.parts[0].as_ref()).unwrap();
    assert_eq!(decoded, one_container(vec![span_with_id(4)]));
}

#[test]
fn the_last_trace_id_field_wins_as_in_protobuf() {
    // trace_id 1 then trace_id 2 in the same span: a decoder sees 2, so does routing.
    let mut span = span_with_id(1).encode_to_vec();
    span.extend(len_field(1, &[2; 16]));
    let scope = len_field(2, &span);
    let request = len_field(1, &len_field(2, &scope));
    let split = wire_traces_by_owner(&request, 2, by_first_byte).unwrap();
    assert_eq!(split.counts, vec![1, 0]);
}

#[test]
fn empty_request_gives_empty_parts() {
    let split = wire_traces_by_owner(&[], 3, by_first_byte).unwrap();
    assert_eq!(split.parts, vec![Bytes::new(); 3]);
    assert_eq!(split.counts, vec![0; 3]);
    assert_eq!(split.invalid, 0);
}

#[test]
fn every_truncation_of_a_request_is_malformed() {
    let request = one_container(vec![span_with_id(1), span_with_id(2)]).encode_to_vec();
    for cut in 1..request.len() {
        let err = wire_traces_by_owner(&request[..cut], 2, by_first_byte).unwrap_err();
        assert!(
            matches!(err, SplitError::Malformed { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn malformed_input_names_the_message_and_the_problem() {
    // A length that runs past the end of the ScopeSpans.
    let span = span_with_id(1).encode_to_vec();
    let mut scope = len_field(2, &span);
    scope.truncate(scope.len() - 1);
    let request = len_field(1, &len_field(2, &scope));
    let err = wire_traces_by_owner(&request, 2, by_first_byte).unwrap_err();
    assert!(
        matches!(
            err,
            SplitError::Malformed {
                message: "ScopeSpans",
                problem: Problem::Overrun { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("malformed ScopeSpans at byte 4: a "),
        "{err}"
    );

    // trace_id sent as a varint.
    let span = [0x08, 0x01];
    let request = len_field(1, &len_field(2, &len_field(2, &span)));
    let err = wire_traces_by_owner(&request, 2, by_first_byte).unwrap_err();
    assert_eq!(
        err,
        SplitError::Malformed {
            message: "Span",
            offset: 6,
            problem: Problem::WrongWireType {
                field: 1,
                found: 0,
                expected: 2
            },
        }
    );

    // Wire type 7 at the top level, field number 0, an unterminated varint.
    let err = wire_traces_by_owner(&[0x0f], 2, by_first_byte).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed ExportTraceServiceRequest at byte 0: invalid wire type 7"
    );
    let err = wire_traces_by_owner(&[0x02, 0x00], 2, by_first_byte).unwrap_err();
    assert!(matches!(
        err,
        SplitError::Malformed {
            problem: Problem::ZeroFieldNumber,
            ..
        }
    ));
    let err = wire_traces_by_owner(&[0x08, 0xff], 2, by_first_byte).unwrap_err();
    assert!(matches!(
        err,
        SplitError::Malformed {
            problem: Problem::TruncatedVarint,
            ..
        }
    ));
    let err = wire_traces_by_owner(
        &[0x08; 1]
            .iter()
            .chain(&[0xff; 10])
            .copied()
            .collect::<Vec<_>>(),
        2,
        by_first_byte,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        SplitError::Malformed {
            problem: Problem::VarintOverflow,
            ..
        }
    ));
    // An end-group with no group, and a group that never ends.
    let err = wire_traces_by_owner(&[0x0c], 2, by_first_byte).unwrap_err();
    assert!(matches!(
        err,
        SplitError::Malformed {
            problem: Problem::UnexpectedEndGroup,
            ..
        }
    ));
    let err = wire_traces_by_owner(&[0x0b, 0x10, 0x01], 2, by_first_byte).unwrap_err();
    assert!(matches!(
        err,
        SplitError::Malformed {
            problem: Problem::UnterminatedGroup,
            ..
        }
    ));
}

#[test]
fn consecutive_spans_of_a_trace_ask_the_owner_once() {
    let request = one_container(vec![
        span_with_id(1),
        span_with_id(1),
        span_with_id(2),
        span_with_id(1),
        span_with_id(1),
    ])
    .encode_to_vec();
    let mut asked = Vec::new();
    let split = wire_traces_by_owner(&request, 2, |key| {
        let RouteKey::Trace(id) = key else {
            panic!("spans route by trace id")
        };
        asked.push(id[0]);
        usize::from(id[0] == 2)
    })
    .unwrap();
    assert_eq!(asked, vec![1, 2, 1], "once per run of one trace's spans");
    assert_eq!(split.counts, vec![4, 1]);
    let parts: Vec<Vec<u8>> = split
        .parts
        .iter()
        .map(|part| {
            ExportTraceServiceRequest::decode(part.as_ref())
                .unwrap()
                .resource_spans[0]
                .scope_spans[0]
                .spans
                .iter()
                .map(|span| span.trace_id[0])
                .collect()
        })
        .collect();
    assert_eq!(parts, vec![vec![1, 1, 1, 1], vec![2]]);
}

#[test]
fn owner_function_misuse_is_an_error() {
    let request = one_container(vec![span_with_id(1)]).encode_to_vec();
    assert_eq!(
        wire_traces_by_owner(&request, 2, |_| 5).unwrap_err(),
        SplitError::OwnerOutOfRange {
            owner: 5,
            owners: 2
        }
    );
    assert_eq!(
        wire_traces_by_owner(&request, 0, |_| 0).unwrap_err(),
        SplitError::NoOwners
    );
}

#[test]
fn logs_without_trace_id_route_by_resource_identity() {
    let resource = Resource {
        attributes: vec![
            kv_str("host.name", "node-7"),
            kv_str("service.name", "checkout"),
            kv_str("k8s.pod.name", "checkout-5d9f"),
            kv_str("service.name", "ignored-duplicate"),
        ],
        ..Default::default()
    };
    let mut key = Vec::new();
    resource_identity_key(Some(&resource), &mut key);
    assert_eq!(key, b"checkout\0checkout-5d9f");

    let with_trace = LogRecord {
        trace_id: vec![9; 16],
        ..Default::default()
    };
    let zero_trace = LogRecord {
        trace_id: vec![0; 16],
        ..Default::default()
    };
    let no_trace = LogRecord::default();
    let bad_trace = LogRecord {
        trace_id: vec![9; 5],
        ..Default::default()
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs {
                log_records: vec![with_trace, zero_trace, no_trace, bad_trace],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();

    let mut seen = Vec::new();
    let split = wire_logs_by_owner(&request, 3, |k| {
        let owner = match k {
            RouteKey::Trace(_) => 1,
            RouteKey::Key(_) => 2,
        };
        seen.push(match k {
            RouteKey::Trace(id) => id.to_vec(),
            RouteKey::Key(k) => k.to_vec(),
        });
        owner
    })
    .unwrap();
    assert_eq!(split.counts, vec![0, 1, 2]);
    assert_eq!(split.invalid, 1);
    // The resource key is asked for once per resource container.
    assert_eq!(seen, vec![vec![9; 16], b"checkout\0checkout-5d9f".to_vec()]);
}

#[test]
fn resource_identity_falls_back_in_order() {
    let key_of = |attributes: Vec<KeyValue>| {
        let mut key = Vec::new();
        resource_identity_key(
            Some(&Resource {
                attributes,
                ..Default::default()
            }),
            &mut key,
        );
        key
    };
    assert_eq!(
        key_of(vec![
            kv_str("service.instance.id", "i-1"),
            kv_str("k8s.pod.name", "p"),
            kv_str("service.name", "a")
        ]),
        b"a\0i-1"
    );
    assert_eq!(
        key_of(vec![kv_str("host.name", "h"), kv_str("service.name", "a")]),
        b"a\0h"
    );
    assert_eq!(key_of(vec![kv_str("user.id", "u")]), b"\0");
    let int_name = kv_int("service.name", 3);
    assert_eq!(
        key_of(vec![int_name, kv_str("service.name", "later")]),
        b"\0",
        "first occurrence counts"
    );
    let mut key = vec![1, 2, 3];
    resource_identity_key(None, &mut key);
    assert_eq!(key, b"\0");
    metric_series_key(None, "cpu", &mut key);
    assert_eq!(key, b"\0\0\0\0\0cpu");
}

fn series_key_of(attributes: Vec<KeyValue>, metric: &str) -> Vec<u8> {
    let mut key = Vec::new();
    metric_series_key(Some(&testing::resource(attributes)), metric, &mut key);
    key
}

/// One pod of service `checkout` in namespace `namespace`, identified every usual way.
fn pod(namespace: &str, pod: &str) -> Vec<KeyValue> {
    vec![
        kv_str("service.instance.id", format!("{pod}-id")),
        kv_str("k8s.pod.name", pod),
        kv_str("host.name", format!("{pod}-host")),
        kv_str("deployment.environment.name", "prod"),
        kv_str("service.namespace", namespace),
        kv_str("service.name", "checkout"),
    ]
}

#[test]
fn metric_series_key_is_the_service_identity_and_the_name() {
    assert_eq!(
        series_key_of(pod("shop", "checkout-5d9f"), "http.server.duration"),
        b"checkout\0shop\0\0prod\0\0http.server.duration"
    );
    assert_eq!(
        SERVICE_IDENTITY_ATTRIBUTES,
        [
            "service.name",
            "service.namespace",
            "deployment.environment",
            "deployment.environment.name"
        ]
    );
    let int_namespace = kv_int("service.namespace", 3);
    assert_eq!(
        series_key_of(
            vec![
                kv_str("deployment.environment", "staging"),
                int_namespace,
                kv_str("service.namespace", "later"),
                kv_str("service.name", "a"),
                kv_str("deployment.environment", "ignored-duplicate"),
            ],
            "cpu"
        ),
        b"a\0\0staging\0\0\0cpu",
        "fixed order, non-strings empty, first occurrence counts"
    );
}

#[test]
fn pods_of_one_service_share_metric_keys_but_not_log_keys() {
    let a = pod("shop", "checkout-5d9f");
    let b = pod("shop", "checkout-7c2a");
    assert_eq!(
        series_key_of(a.clone(), "cpu"),
        series_key_of(b.clone(), "cpu")
    );
    assert_ne!(
        series_key_of(a.clone(), "cpu"),
        series_key_of(pod("billing", "checkout-5d9f"), "cpu"),
        "another namespace is another service"
    );
    assert_ne!(
        series_key_of(a.clone(), "cpu"),
        series_key_of(a.clone(), "memory")
    );

    // On the wire: both pods' metrics go to one owner, their trace-less logs to two.
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: [&a, &b]
            .into_iter()
            .map(|attributes| ResourceMetrics {
                resource: Some(testing::resource(attributes.clone())),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "cpu".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let mut metric_keys = Vec::new();
    wire_metrics_by_owner(&metrics.encode_to_vec(), 1, |k| {
        if let RouteKey::Key(k) = k {
            metric_keys.push(k.to_vec());
        }
        0
    })
    .unwrap();
    assert_eq!(metric_keys, vec![series_key_of(a.clone(), "cpu"); 2]);

    let logs = ExportLogsServiceRequest {
        resource_logs: [&a, &b]
            .into_iter()
            .map(|attributes| ResourceLogs {
                resource: Some(testing::resource(attributes.clone())),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let mut log_keys = Vec::new();
    wire_logs_by_owner(&logs.encode_to_vec(), 1, |k| {
        if let RouteKey::Key(k) = k {
            log_keys.push(k.to_vec());
        }
        0
    })
    .unwrap();
    assert_eq!(
        log_keys,
        vec![
            b"checkout\0checkout-5d9f-id".to_vec(),
            b"checkout\0checkout-7c2a-id".to_vec()
        ]
    );
}

/// A resource container's `resource` field written as `pieces` occurrences (which
/// protobuf merges), each holding a consecutive share of `attributes`, followed by one
/// scope container holding `items` (field 2 of the scope).
fn container_with_split_resource(
    attributes: &[KeyValue],
    pieces: usize,
    items: &[Vec<u8>],
) -> Vec<u8> {
    let mut container = Vec::new();
    for (i, chunk) in attributes
        .chunks(attributes.len().div_ceil(pieces.max(1)).max(1))
        .enumerate()
    {
        let piece = Resource {
            attributes: chunk.to_vec(),
            dropped_attributes_count: i as u32,
            ..Default::default()
        };
        container.extend(len_field(1, &piece.encode_to_vec()));
    }
    if pieces > 0 && attributes.is_empty() {
        container.extend(len_field(1, &[]));
    }
    let scope: Vec<u8> = items.iter().flat_map(|item| len_field(2, item)).collect();
    container.extend(len_field(2, &scope));
    len_field(1, &container)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn wire_keys_equal_decoded_keys(
        attributes in prop::collection::vec(key_value(), 0..8),
        pieces in 0..4usize,
    ) {
        let attributes = if pieces == 0 { Vec::new() } else { attributes };

        let names = ["cpu", "", "queue.depth"];
        let metrics: Vec<Vec<u8>> = names
            .iter()
            .map(|name| Metric { name: name.to_string(), ..Default::default() }.encode_to_vec())
            .collect();
        let request = container_with_split_resource(&attributes, pieces, &metrics);
        let decoded = ExportMetricsServiceRequest::decode(request.as_slice()).unwrap();
        let resource = decoded.resource_metrics[0].resource.as_ref();
        prop_assert_eq!(resource.is_some(), pieces > 0);
        let mut seen = Vec::new();
        wire_metrics_by_owner(&request, 1, |k| {
            if let RouteKey::Key(k) = k {
                seen.push(k.to_vec());
            }
            0
        })
        .unwrap();
        let expected: Vec<Vec<u8>> = names
            .iter()
            .map(|name| {
                let mut key = Vec::new();
                metric_series_key(resource, name, &mut key);
                key
            })
            .collect();
        prop_assert_eq!(seen, expected);

        let request =
            container_with_split_resource(&attributes, pieces, &[LogRecord::default().encode_to_vec()]);
        let decoded = ExportLogsServiceRequest::decode(request.as_slice()).unwrap();
        let mut seen = Vec::new();
        wire_logs_by_owner(&request, 1, |k| {
            if let RouteKey::Key(k) = k {
                seen.push(k.to_vec());
            }
            0
        })
        .unwrap();
        let mut expected = Vec::new();
        resource_identity_key(decoded.resource_logs[0].resource.as_ref(), &mut expected);
        prop_assert_eq!(seen, vec![expected]);
    }
}

#[test]
fn metric_counts_follow_oneof_merge_rules() {
    let point = NumberDataPoint::default().encode_to_vec();
    let gauge = |n: usize| {
        let mut g = Vec::new();
        for _ in 0..n {
            g.extend(len_field(1, &point));
        }
        g
    };
    // name, gauge(2 points), gauge(1 point) -> merged: 3 points; then sum(1) -> replaces: 1.
    let mut merged = len_field(1, b"cpu");
    merged.extend(len_field(5, &gauge(2)));
    merged.extend(len_field(5, &gauge(1)));
    let mut replaced = merged.clone();
    replaced.extend(len_field(7, &gauge(1)));

    for (metric, points) in [(merged, 3), (replaced, 1)] {
        let request = len_field(1, &len_field(2, &len_field(2, &metric)));
        let decoded = ExportMetricsServiceRequest::decode(request.as_slice()).unwrap();
        assert_eq!(crate::otlp::data_point_count(&decoded), points);
        let split = wire_metrics_by_owner(&request, 1, |_| 0).unwrap();
        assert_eq!(split.counts, vec![points]);
    }
}

#[test]
fn splitter_scratch_is_reusable_across_signals() {
    let ring = ring(3);
    let mut splitter = Splitter::new();
    let traces = one_container((1..40).map(span_with_id).collect()).encode_to_vec();
    let first = splitter
        .wire_traces_by_owner(&traces, 3, |k| owner_of(&ring, k))
        .unwrap();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let wire_logs_by_owner = splitter
        .wire_logs_by_owner(&logs.encode_to_vec(), 3, |k| owner_of(&ring, k))
        .unwrap();
    assert_eq!(wire_logs_by_owner.counts.iter().sum::<usize>(), 1);
    let again = splitter
        .wire_traces_by_owner(&traces, 3, |k| owner_of(&ring, k))
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first.counts.iter().sum::<usize>(), 39);
}

#[test]
fn varint_length_matches_encoding() {
    for value in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(wire::varint_len(value), out.len(), "{value}");
        assert_eq!(
            prost::encoding::decode_varint(&mut out.as_slice()).unwrap(),
            value
        );
    }
}
