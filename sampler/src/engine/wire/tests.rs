use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::*;
use crate::engine::group_spans_by_trace;

fn kv(key: &str, value: &str) -> KeyValue {
    otlp::kv_str(key, value)
}

fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if id == 1 { vec![] } else { vec![1; 8] },
        name: format!("op-{id}"),
        kind: 2,
        start_time_unix_nano: 1_000 + u64::from(id),
        end_time_unix_nano: 5_000,
        trace_state: "ot=th:8".into(),
        flags: 0x101,
        attributes: vec![
            kv("http.route", "/cart"),
            KeyValue {
                key: "nested".into(),
                key_strindex: 0,
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::IntValue(7)),
                        }],
                    })),
                }),
            },
        ],
        events: vec![Event {
            name: "retry".into(),
            attributes: vec![kv("attempt", "2")],
            ..Default::default()
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            ..Default::default()
        }],
        status: id.is_multiple_of(2).then(|| Status {
            code: StatusCode::Error as i32,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

/// Two resources, two scopes in the first, three traces interleaved (and two spans of one
/// trace next to each other), and spans with invalid ids.
fn request() -> ExportTraceServiceRequest {
    let scope = |name: &str, spans: Vec<Span>| ScopeSpans {
        scope: Some(InstrumentationScope {
            name: name.into(),
            ..Default::default()
        }),
        spans,
        schema_url: format!("https://schema/{name}"),
    };
    let mut zero_trace = span(0, 3);
    zero_trace.trace_id = vec![0; 16];
    let mut short_span = span(4, 3);
    short_span.span_id = vec![1; 4];
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "cart")],
                    ..Default::default()
                }),
                scope_spans: vec![
                    scope("a", vec![span(1, 1), span(2, 1), zero_trace, span(1, 2)]),
                    scope(
                        "b",
                        vec![span(2, 2), short_span, span(3, 1), span(3, 2), span(1, 3)],
                    ),
                ],
                schema_url: "https://schema/r1".into(),
            },
            ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![span(1, 4)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            },
        ],
    }
}

#[test]
fn each_trace_group_is_the_original_bytes_of_what_the_decoded_grouping_gives() {
    let request = request();
    let mut sanitized = request.clone();
    let expected_refused = otlp::sanitize_traces(&mut sanitized);
    let expected = group_spans_by_trace(sanitized);
    let parsed = parse(Bytes::from(request.encode_to_vec()), SpanNeeds::Fixed).unwrap();
    assert_eq!(
        parsed.refused, expected_refused,
        "the same spans are refused"
    );
    assert_eq!(parsed.span_count(), 8);
    let groups: Vec<(TraceId, ResourceSpans)> = parsed
        .groups
        .iter()
        .map(|group| {
            let mut bytes = Vec::new();
            let lens = parsed.scope_lens(group);
            if let Some(resource) = parsed.resource(group) {
                prost::encoding::bytes::encode(1, &resource.to_vec(), &mut bytes);
            }
            parsed.encode_rest(group, &lens, &mut bytes);
            let rest = parsed.rest_len(group, &lens);
            assert_eq!(bytes.len(), parsed.encoded_len(group, rest));
            (
                group.trace,
                ResourceSpans::decode(bytes.as_slice()).unwrap(),
            )
        })
        .collect();
    assert_eq!(groups, expected);
}

#[test]
fn slim_spans_carry_what_deciding_reads_and_attributes_only_when_asked() {
    let bytes = Bytes::from(request().encode_to_vec());
    let full = span(2, 2);
    let slim_of = |needs| {
        let parsed = parse(bytes.clone(), needs).unwrap();
        parsed.slim.resource_spans[0].scope_spans[1].spans[0].clone()
    };
    assert_eq!(
        slim_of(SpanNeeds::Fixed),
        Span {
            attributes: Vec::new(),
            events: Vec::new(),
            links: Vec::new(),
            ..full.clone()
        }
    );
    assert_eq!(
        slim_of(SpanNeeds::Attributes),
        Span {
            events: Vec::new(),
            links: Vec::new(),
            ..full.clone()
        }
    );
    assert_eq!(slim_of(SpanNeeds::Everything), full);
    let parsed = parse(bytes, SpanNeeds::Fixed).unwrap();
    assert_eq!(
        parsed.slim.resource_spans[0].resource,
        request().resource_spans[0].resource,
        "resources are decoded whole"
    );
    assert_eq!(
        parsed.slim.resource_spans[0].scope_spans[1].scope,
        request().resource_spans[0].scope_spans[1].scope
    );
}

#[test]
fn spans_refilled_from_an_earlier_request_keep_nothing_of_it() {
    // The first request's spans have every field set, some decoded whole; they are
    // handed back and refilled by a request whose only span has nothing but its ids.
    for needs in [
        SpanNeeds::Everything,
        SpanNeeds::Attributes,
        SpanNeeds::Fixed,
    ] {
        let first = parse(Bytes::from(request().encode_to_vec()), needs).unwrap();
        assert!(first.groups.len() > 1);
        recycle(first);
        let bare = Span {
            trace_id: vec![7; 16],
            span_id: vec![7; 8],
            ..Default::default()
        };
        let second = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![bare.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parsed = parse(Bytes::from(second.encode_to_vec()), SpanNeeds::Fixed).unwrap();
        assert_eq!(
            parsed.slim.resource_spans[0].scope_spans[0].spans,
            vec![bare],
            "after {needs:?}"
        );
        assert_eq!(
            parsed
                .groups
                .iter()
                .map(|g| (g.trace, g.spans.to_vec()))
                .collect::<Vec<_>>(),
            vec![([7; 16], vec![(0, 0)])],
            "the groups are the second request's alone"
        );
    }
}

#[test]
fn requests_a_full_decode_refuses_are_refused() {
    let valid = request().encode_to_vec();
    assert!(parse(Bytes::from(valid.clone()), SpanNeeds::Fixed).is_ok());
    let truncated = Bytes::from(valid[..valid.len() - 7].to_vec());
    assert!(parse(truncated, SpanNeeds::Fixed).is_err());
    // Invalid UTF-8 in strings a slim read does not keep (an attribute nested in an
    // array, an event's name, a link's tracestate) and in one it keeps (the name).
    let marker = "\u{1}INVALID\u{1}";
    let mutate = |change: &dyn Fn(&mut Span)| {
        let mut r = request();
        change(&mut r.resource_spans[1].scope_spans[0].spans[0]);
        let mut bytes = r.encode_to_vec();
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .expect("marker present");
        bytes[at + 1] = 0xff;
        assert!(
            ExportTraceServiceRequest::decode(bytes.as_slice()).is_err(),
            "prost refuses it"
        );
        bytes
    };
    let mut cases: Vec<Vec<u8>> = vec![
        mutate(&|s| {
            s.attributes[1].value = Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue(marker.into())),
                    }],
                })),
            })
        }),
        mutate(&|s| s.events[0].name = marker.into()),
        mutate(&|s| s.links[0].trace_state = marker.into()),
        mutate(&|s| s.name = marker.into()),
    ];
    // A ScopeSpans whose spans field is a varint, wrapped in a ResourceSpans and a request.
    let scope_with_varint_spans = [0x0a, 4, 0x12, 2, 0x10, 0x01].to_vec();
    assert!(ExportTraceServiceRequest::decode(scope_with_varint_spans.as_slice()).is_err());
    cases.push(scope_with_varint_spans);
    for (i, bytes) in cases.into_iter().enumerate() {
        for needs in [
            SpanNeeds::Fixed,
            SpanNeeds::Attributes,
            SpanNeeds::Everything,
        ] {
            let error = parse(Bytes::from(bytes.clone()), needs).unwrap_err();
            assert!(error.contains("invalid protobuf"), "case {i}: {error}");
        }
    }
}

#[test]
fn the_plain_attribute_check_accepts_and_refuses_what_the_general_walk_does() {
    let value = |v: any_value::Value| KeyValue {
        key: "http.status_code".into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let attributes = vec![
        kv("service.name", "checkout"),
        kv("", ""),
        kv("k", &"x".repeat(127)),
        kv("k", &"x".repeat(128)),
        kv(&"k".repeat(130), "v"),
        kv("naïve", "v"),
        kv("k", "naïve"),
        value(any_value::Value::IntValue(-1)),
        value(any_value::Value::IntValue(200)),
        value(any_value::Value::BoolValue(true)),
        value(any_value::Value::DoubleValue(0.25)),
        value(any_value::Value::BytesValue(vec![0xff, 0xfe])),
        value(any_value::Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(any_value::Value::StringValue("a".into())),
            }],
        })),
        KeyValue {
            key: "no value".into(),
            ..Default::default()
        },
    ];
    let mut plain = 0;
    for attribute in attributes {
        let encoded = attribute.encode_to_vec();
        // Every prefix and every single-byte change of a valid attribute, and the
        // attribute with a byte appended: the fast path never accepts what the general
        // walk refuses, and the combined check answers as the general walk.
        let mut variants = vec![encoded.clone()];
        variants.extend((0..encoded.len()).map(|n| encoded[..n].to_vec()));
        for at in 0..encoded.len() {
            for byte in [0x00, 0x01, 0x0a, 0x12, 0x7f, 0x80, 0xc3, 0xff] {
                let mut changed = encoded.clone();
                changed[at] = byte;
                variants.push(changed);
            }
        }
        let mut longer = encoded.clone();
        longer.push(0x08);
        variants.push(longer);
        for bytes in variants {
            let general = check_message(Shape::KeyValue, &bytes, 1);
            if is_plain_key_value(&bytes) {
                plain += 1;
                assert!(general.is_ok(), "{bytes:02x?}: {general:?}");
            }
            assert_eq!(check_key_value(&bytes), general, "{bytes:02x?}");
        }
    }
    assert!(
        plain > 100,
        "the fast path is taken for plain attributes ({plain})"
    );
}
