use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otel_tail_shared::otlp::{self, kv_int, kv_str};
use prost::Message;

use super::*;
use crate::dedup::SpanDedup;
use crate::engine::annotate_kept;

fn kept(probability: Option<f64>) -> Kept {
    Kept {
        policy: Arc::from("errors"),
        probability,
        correlate: true,
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", service),
            kv_str("host.name", "node-1"),
        ],
        ..Default::default()
    }
}

fn scope(name: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: name.into(),
        version: "1.0".into(),
        ..Default::default()
    }
}

fn span(trace: u8, id: u8, trace_state: &str) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if id > 1 { vec![1; 8] } else { Vec::new() },
        trace_state: trace_state.into(),
        name: format!("op-{id}"),
        kind: 2,
        start_time_unix_nano: 1_000 + u64::from(id),
        end_time_unix_nano: 2_000 + u64::from(id),
        attributes: vec![kv_str("http.route", "/cart"), kv_int("retries", 2)],
        events: vec![Event {
            name: "cache miss".into(),
            time_unix_nano: 1_500,
            ..Default::default()
        }],
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

fn group(service: &str, scopes: Vec<(&str, Vec<Span>)>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(resource(service)),
        scope_spans: scopes
            .into_iter()
            .map(|(name, spans)| ScopeSpans {
                scope: Some(scope(name)),
                spans,
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            })
            .collect(),
        schema_url: String::new(),
    }
}

/// A stored span item of the current layout: the trace's groups as a request.
fn item(groups: Vec<ResourceSpans>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: groups,
    }
    .encode_to_vec()
}

/// Three kept traces: one across two services and two requests, one with a trace state
/// on some spans, one of a single span.
fn traces() -> Vec<Vec<(BufferedKind, Vec<u8>)>> {
    vec![
        vec![
            (
                BufferedKind::TraceSpans,
                item(vec![
                    group("cart", vec![("http", vec![span(1, 1, ""), span(1, 2, "")])]),
                    group("db", vec![("sql", vec![span(1, 3, "")])]),
                ]),
            ),
            (
                BufferedKind::TraceSpans,
                item(vec![group("cart", vec![("http", vec![span(1, 4, "")])])]),
            ),
        ],
        vec![(
            BufferedKind::TraceSpans,
            item(vec![group(
                "cart",
                vec![
                    ("http", vec![span(2, 1, "ot=th:8;rv:ab,vendor=x")]),
                    ("grpc", vec![span(2, 2, ""), span(2, 3, "vendor=y")]),
                ],
            )]),
        )],
        vec![(
            BufferedKind::Spans,
            group("db", vec![("sql", vec![span(3, 1, "")])]).encode_to_vec(),
        )],
    ]
}

/// What the decoded path exports for `traces`, all kept as `kept`.
fn decoded(traces: &[Vec<(BufferedKind, Vec<u8>)>], kept: &Kept) -> ExportTraceServiceRequest {
    let mut dedup = SpanDedup::new(16, 256);
    let mut all = Vec::new();
    for (n, trace) in traces.iter().enumerate() {
        for (kind, payload) in trace {
            for mut rs in kind.decode_spans(payload).unwrap() {
                dedup.keep_first(&[n as u8; 16], &mut rs);
                annotate_kept(&mut rs, kept);
                all.push(rs);
            }
        }
    }
    ExportTraceServiceRequest {
        resource_spans: otlp::merge_spans(all),
    }
}

/// What the splice exports for `traces`, all kept as `kept`.
fn spliced(traces: &[Vec<(BufferedKind, Vec<u8>)>], kept: &Kept) -> ExportTraceServiceRequest {
    let mut dedup = SpanDedup::new(16, 256);
    let mut request = SplicedRequest::default();
    let mut spans = 0;
    for (n, trace) in traces.iter().enumerate() {
        let read = KeptSpans::read(trace.iter().map(|(kind, payload)| (*kind, &payload[..])))
            .expect("stored spans read");
        assert!(read.fits(kept));
        assert!(dedup.first_time(&[n as u8; 16], read.span_ids()));
        spans += request.add(read, kept);
    }
    assert_eq!(request.span_count(), spans);
    let mut bytes = Vec::new();
    request.encode(&mut bytes);
    ExportTraceServiceRequest::decode(&bytes[..]).expect("a spliced request decodes")
}

#[test]
fn spliced_traces_decode_as_the_decoded_path_builds_them() {
    let traces = traces();
    for kept in [kept(None), kept(Some(0.25)), kept(Some(1.0))] {
        let expected = decoded(&traces, &kept);
        let actual = spliced(&traces, &kept);
        assert_eq!(actual, expected, "kept as {kept:?}");
        assert_eq!(otlp::span_count(&actual), 8);
        // Each resource and scope once: cart (http, grpc) and db (sql).
        assert_eq!(actual.resource_spans.len(), 2);
        assert_eq!(actual.resource_spans[0].scope_spans.len(), 2);
    }
    let with_probability = spliced(&traces, &kept(Some(0.25)));
    let span = &with_probability.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(
        span.attributes[2..],
        [
            kv_str(crate::engine::POLICY_ATTRIBUTE, "errors"),
            kv_int(SAMPLE_RATE_ATTRIBUTE, 4)
        ]
    );
    assert!(
        span.trace_state.starts_with("ot=th:c"),
        "{}",
        span.trace_state
    );
}

#[test]
fn the_spliced_groups_and_the_decoded_ones_make_one_request() {
    let traces = traces();
    let kept = kept(None);
    let mut bytes = Vec::new();
    let mut request = SplicedRequest::default();
    let read = KeptSpans::read(
        traces[0]
            .iter()
            .map(|(kind, payload)| (*kind, &payload[..])),
    )
    .expect("stored spans read");
    request.add(read, &kept);
    request.encode(&mut bytes);
    decoded(&traces[1..], &kept).encode_raw(&mut bytes);
    let both = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
    assert_eq!(otlp::span_count(&both), 8);
}

#[test]
fn traces_the_splice_cannot_serve_exactly_take_the_decoded_path() {
    let read = |groups: Vec<ResourceSpans>| {
        let payload = item(groups);
        KeptSpans::read([(BufferedKind::TraceSpans, &payload[..])]).map(|spans| {
            (
                spans.fits(&kept(None)),
                spans.fits(&kept(Some(0.5))),
                spans.span_ids().count(),
            )
        })
    };
    assert_eq!(
        read(vec![group("a", vec![("s", vec![span(1, 1, "")])])]),
        Some((true, true, 1))
    );

    let mut tagged = span(1, 1, "");
    tagged
        .attributes
        .push(kv_str(crate::engine::POLICY_ATTRIBUTE, "upstream"));
    assert_eq!(read(vec![group("a", vec![("s", vec![tagged])])]), None);

    let mut rated = span(1, 1, "");
    rated.attributes.push(kv_int(SAMPLE_RATE_ATTRIBUTE, 10));
    assert_eq!(
        read(vec![group("a", vec![("s", vec![rated])])]),
        Some((true, false, 1)),
        "an upstream rate is multiplied on the decoded path"
    );

    // A resource given twice in one ResourceSpans is merged by a decoder.
    let mut twice = group("a", vec![("s", vec![span(1, 1, "")])]).encode_to_vec();
    twice.extend(
        ResourceSpans {
            resource: Some(resource("b")),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(KeptSpans::read([(BufferedKind::Spans, &twice[..])]).is_none());

    let truncated = item(vec![group("a", vec![("s", vec![span(1, 1, "")])])]);
    let truncated = &truncated[..truncated.len() - 3];
    assert!(KeptSpans::read([(BufferedKind::TraceSpans, truncated)]).is_none());
}
