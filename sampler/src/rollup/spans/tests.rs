use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otel_tail_shared::config::rollup::{
    ExponentialBucketsConfig, SpanDimensionConfig, SpanMetricsConfig,
};
use otel_tail_shared::otlp::kv_str;

use super::*;

const NOW: u64 = 1_700_000_000_000_000_000;

fn span(trace: u8, id: u8, name: &str, kind: i32, error: bool, millis: u64) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: name.to_owned(),
        kind,
        start_time_unix_nano: NOW,
        end_time_unix_nano: NOW + millis * 1_000_000,
        status: Some(Status {
            code: if error { 2 } else { 0 },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request(service: &str, extra: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut attributes = vec![
        kv_str("service.name", service),
        kv_str("service.instance.id", "pod-1"),
    ];
    attributes.extend(extra);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
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

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn metric<'a>(rm: &'a ResourceMetrics, name: &str) -> &'a Metric {
    rm.scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
        .expect("metric present")
}

/// (span.name, status.code) → spans, from the duration histograms of every resource (the
/// per-request points carry no calls sum: calls are the histogram counts).
fn calls_by_series(resources: &[ResourceMetrics]) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for rm in resources {
        for sm in &rm.scope_metrics {
            assert!(sm.metrics.iter().all(|m| m.name == DURATION));
            for m in &sm.metrics {
                let Some(metric::Data::Histogram(h)) = &m.data else {
                    panic!("duration is a histogram")
                };
                for p in &h.data_points {
                    out.push((
                        attr(&p.attributes, "span.name").unwrap_or("").to_owned(),
                        attr(&p.attributes, "status.code").unwrap_or("").to_owned(),
                        p.count as i64,
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_request_becomes_one_point_per_series_with_the_collector_dimensions() {
    let builder = SpanMetricsBuilder::new(&SpanMetricsConfig::default());
    let spans = vec![
        span(1, 1, "GET /", 2, false, 3),
        span(1, 2, "GET /", 2, false, 7),
        span(2, 3, "GET /", 2, true, 120),
        span(3, 4, "db", 3, false, 1),
    ];
    let points = builder.aggregate(&request("shop", vec![], spans), NOW);
    assert_eq!(points.spans, 4);
    assert_eq!(points.resources.len(), 1);
    let rm = &points.resources[0];
    let resource = &rm.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(resource, "service.name"), Some("shop"));
    assert_eq!(
        attr(resource, "service.instance.id"),
        None,
        "reduced to identity"
    );
    assert!(is_span_metrics_scope(rm.scope_metrics[0].scope.as_ref()));
    assert_eq!(
        calls_by_series(&points.resources),
        vec![
            ("GET /".into(), "STATUS_CODE_ERROR".into(), 1),
            ("GET /".into(), "STATUS_CODE_UNSET".into(), 2),
            ("db".into(), "STATUS_CODE_UNSET".into(), 1),
        ]
    );
    let Some(metric::Data::Histogram(h)) = &metric(rm, DURATION).data else {
        panic!("explicit histogram by default")
    };
    assert_eq!(metric(rm, DURATION).unit, "ms");
    let ok = h
        .data_points
        .iter()
        .find(|p| {
            attr(&p.attributes, "status.code") == Some("STATUS_CODE_UNSET")
                && attr(&p.attributes, "span.name") == Some("GET /")
        })
        .unwrap();
    assert_eq!(attr(&ok.attributes, "span.kind"), Some("SPAN_KIND_SERVER"));
    assert_eq!(attr(&ok.attributes, "service.name"), Some("shop"));
    assert_eq!(ok.count, 2);
    assert_eq!(ok.bucket_counts.iter().sum::<u64>(), 2);
    // 3 ms lands in (2, 4], 7 ms in (6, 8].
    assert_eq!(ok.bucket_counts[1], 1);
    assert_eq!(ok.bucket_counts[3], 1);
    assert_eq!(ok.sum, Some(10.0));
    assert_eq!((ok.min, ok.max), (Some(3.0), Some(7.0)));
    assert_eq!(
        ok.exemplars.len(),
        1,
        "one candidate per series per request"
    );
    assert_eq!(ok.exemplars[0].trace_id, vec![1; 16]);
}

#[test]
fn extra_dimensions_come_from_the_span_then_the_resource_then_the_default() {
    let config = SpanMetricsConfig {
        dimensions: vec![
            SpanDimensionConfig {
                name: "http.route".into(),
                default: None,
            },
            SpanDimensionConfig {
                name: "region".into(),
                default: Some("none".into()),
            },
        ],
        ..SpanMetricsConfig::default()
    };
    let builder = SpanMetricsBuilder::new(&config);
    let mut a = span(1, 1, "op", 1, false, 1);
    a.attributes.push(kv_str("http.route", "/a"));
    a.attributes.push(kv_str("region", "eu"));
    let mut b = span(1, 2, "op", 1, false, 1);
    b.attributes.push(kv_str("http.route", "/b"));
    let c = span(1, 3, "op", 1, false, 1);
    let points = builder.aggregate(
        &request(
            "svc",
            vec![kv_str("region", "us")],
            vec![a, b.clone(), b, c],
        ),
        NOW,
    );
    let Some(metric::Data::Histogram(h)) = &metric(&points.resources[0], DURATION).data else {
        panic!()
    };
    let mut seen: Vec<(Option<&str>, Option<&str>, i64)> = h
        .data_points
        .iter()
        .map(|p| {
            (
                attr(&p.attributes, "http.route"),
                attr(&p.attributes, "region"),
                p.count as i64,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (None, Some("us"), 1),
            (Some("/a"), Some("eu"), 1),
            (Some("/b"), Some("us"), 2)
        ]
    );
    let defaulted = builder.aggregate(
        &request("svc", vec![], vec![span(1, 1, "op", 1, false, 1)]),
        NOW,
    );
    let Some(metric::Data::Histogram(h)) = &metric(&defaulted.resources[0], DURATION).data else {
        panic!()
    };
    assert_eq!(attr(&h.data_points[0].attributes, "region"), Some("none"));
}

#[test]
fn exponential_histograms_hold_every_span_within_max_size() {
    let config = SpanMetricsConfig {
        histogram: otel_tail_shared::config::rollup::SpanHistogramConfig {
            exponential: Some(ExponentialBucketsConfig { max_size: 10 }),
            ..Default::default()
        },
        ..SpanMetricsConfig::default()
    };
    let builder = SpanMetricsBuilder::new(&config);
    let spans: Vec<Span> = (0..200u64)
        .map(|i| span(1, 1, "op", 1, false, i * 37 % 5000))
        .collect();
    let points = builder.aggregate(&request("svc", vec![], spans), NOW);
    let Some(metric::Data::ExponentialHistogram(h)) = &metric(&points.resources[0], DURATION).data
    else {
        panic!("exponential histogram")
    };
    let p = &h.data_points[0];
    let positive = p.positive.as_ref().unwrap();
    assert_eq!(p.count, 200);
    assert_eq!(
        p.zero_count + positive.bucket_counts.iter().sum::<u64>(),
        200
    );
    assert!(
        positive.bucket_counts.len() <= 10,
        "{}",
        positive.bucket_counts.len()
    );
    // Every value lies in its bucket: (base^i, base^(i+1)].
    let base = 2f64.powf(2f64.powi(-p.scale));
    let lowest = base.powi(positive.offset);
    assert!(
        lowest < 37.0 && 4995.0 <= base.powi(positive.offset + positive.bucket_counts.len() as i32)
    );
}

/// Span metrics over one-minute intervals with exemplars on.
fn with_exemplars(cardinality_limit: usize, max_per_data_point: usize) -> SpanMetricsConfig {
    SpanMetricsConfig {
        cardinality_limit,
        exemplars: otel_tail_shared::config::rollup::SpanExemplarsConfig {
            enabled: true,
            max_per_data_point,
        },
        interval: Duration::from_secs(60),
        ..SpanMetricsConfig::default()
    }
}

#[test]
fn the_rollup_adds_requests_exactly_and_keeps_bounded_exemplars() {
    let config = with_exemplars(3, 2);
    let builder = SpanMetricsBuilder::new(&config);
    let mut rollup = SpanRollup::new(&config).unwrap();
    let mut sent = 0;
    for r in 0..20u8 {
        // Five operations: two go over the cardinality limit of three.
        let spans: Vec<Span> = (0..10u8)
            .map(|i| span(r, i, &format!("op{}", i % 5), 2, i % 3 == 0, u64::from(i)))
            .collect();
        sent += spans.len() as u64;
        let points = builder.aggregate(&request("svc", vec![], spans), NOW);
        for rm in &points.resources {
            rollup.add(rm, NOW);
        }
    }
    assert_eq!(rollup.spans_in(), sent);
    let out = rollup.flush(NOW, NOW + 60_000_000_000);
    assert_eq!(out.resource_metrics.len(), 1);
    let rm = &out.resource_metrics[0];
    let Some(metric::Data::Sum(s)) = &metric(rm, CALLS).data else {
        panic!()
    };
    let total: i64 = s
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(n)) => n,
            _ => panic!("int"),
        })
        .sum();
    assert_eq!(
        total as u64, sent,
        "totals exact across the overflow series"
    );
    assert!(s.data_points.iter().any(|p| {
        p.attributes
            .iter()
            .any(|kv| kv.key == "otel.metric.overflow")
    }));
    let Some(metric::Data::Histogram(h)) = &metric(rm, DURATION).data else {
        panic!()
    };
    assert_eq!(h.data_points.iter().map(|p| p.count).sum::<u64>(), sent);
    let admitted: Vec<_> = h
        .data_points
        .iter()
        .filter(|p| {
            !p.attributes
                .iter()
                .any(|kv| kv.key == "otel.metric.overflow")
        })
        .collect();
    assert!(!admitted.is_empty());
    for p in admitted {
        assert_eq!(
            p.exemplars.len(),
            2,
            "bounded per point, filled from many requests"
        );
    }
    assert!(
        rollup.flush(NOW, NOW + 1).resource_metrics.is_empty(),
        "the next interval starts empty"
    );
}

#[test]
fn combined_points_fold_into_the_rollup_the_parts_fold_into() {
    let config = with_exemplars(100, 3);
    let builder = SpanMetricsBuilder::new(&config);
    let mut parts = Vec::new();
    for r in 0..12u8 {
        let spans: Vec<Span> = (0..10u8)
            .map(|i| {
                span(
                    r,
                    i,
                    &format!("op{}", i % 4),
                    2,
                    i % 3 == 0,
                    u64::from(i) * 7,
                )
            })
            .collect();
        let service = if r % 2 == 0 { "even" } else { "odd" };
        parts.extend(
            builder
                .aggregate(&request(service, vec![], spans), NOW)
                .resources,
        );
    }
    let points = |resources: &[ResourceMetrics]| -> usize {
        resources
            .iter()
            .map(otel_tail_shared::otlp::resource_data_points)
            .sum()
    };
    let combined = combine(parts.clone(), 3);
    assert_eq!(combined.len(), 2, "one group per resource");
    // Two services, four operations, with and without errors: one point per series.
    assert_eq!(points(&parts), 12 * 8);
    assert_eq!(points(&combined), 2 * 8);
    for rm in &combined {
        let Some(metric::Data::Histogram(h)) = &metric(rm, DURATION).data else {
            panic!("histogram")
        };
        assert!(h.data_points.iter().all(|p| p.exemplars.len() == 3));
    }

    let mut from_parts = SpanRollup::new(&config).unwrap();
    let mut from_combined = SpanRollup::new(&config).unwrap();
    for rm in &parts {
        from_parts.add(rm, NOW);
    }
    for rm in &combined {
        from_combined.add(rm, NOW);
    }
    assert_eq!(from_parts.spans_in(), 120);
    assert_eq!(from_combined.spans_in(), 120);
    let end = NOW + 60_000_000_000;
    assert_eq!(
        from_combined.flush(NOW, end),
        from_parts.flush(NOW, end),
        "same counts, sums, buckets, bounds and exemplars"
    );
}

#[test]
fn points_combine_only_with_their_own_series_and_buckets() {
    let config = SpanMetricsConfig::default();
    let builder = SpanMetricsBuilder::new(&config);
    let a = builder.aggregate(
        &request("svc", vec![], vec![span(1, 1, "a", 2, false, 5)]),
        NOW,
    );
    let b = builder.aggregate(
        &request("svc", vec![], vec![span(2, 1, "b", 2, false, 9)]),
        NOW,
    );
    let mut other_bounds = a.resources.clone();
    for sm in &mut other_bounds[0].scope_metrics {
        for m in &mut sm.metrics {
            if let Some(metric::Data::Histogram(h)) = &mut m.data {
                for p in &mut h.data_points {
                    p.explicit_bounds = vec![1.0];
                    p.bucket_counts = vec![0, 1];
                }
            }
        }
    }
    let parts: Vec<ResourceMetrics> = a
        .resources
        .iter()
        .chain(&b.resources)
        .chain(&a.resources)
        .chain(&other_bounds)
        .cloned()
        .collect();
    let combined = combine(parts, 1);
    let Some(metric::Data::Histogram(h)) = &metric(&combined[0], DURATION).data else {
        panic!("histogram")
    };
    let by_name: Vec<(Option<&str>, u64, usize)> = h
        .data_points
        .iter()
        .map(|p| {
            (
                attr(&p.attributes, "span.name"),
                p.count,
                p.explicit_bounds.len(),
            )
        })
        .collect();
    let default_bounds = a.resources[0].scope_metrics[0].metrics[0]
        .data
        .as_ref()
        .map(|d| match d {
            metric::Data::Histogram(h) => h.data_points[0].explicit_bounds.len(),
            _ => 0,
        });
    assert_eq!(
        by_name,
        vec![
            (Some("a"), 2, default_bounds.unwrap()),
            (Some("b"), 1, default_bounds.unwrap()),
            (Some("a"), 1, 1),
        ]
    );
}
