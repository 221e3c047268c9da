//! Tests of the metric rollup: one per rule, and property tests that totals survive rollup
//! across intervals and across nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::otlp::kv_str;
use proptest::prelude::*;
use prost::Message;

use super::exponential::{ExpBuckets, ExpHist};
use super::*;

const DELTA: i32 = AggregationTemporality::Delta as i32;
const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;
const SEC: u64 = 1_000_000_000;

fn resource(pod: &str) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", "checkout"),
            kv_str("k8s.pod.name", pod),
            kv_str("deployment.environment", "prod"),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "app".to_owned(),
        ..Default::default()
    }
}

fn sum_metric(name: &str, temporality: i32, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.to_owned(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn int_point(attrs: Vec<KeyValue>, start: u64, time: u64, v: i64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

fn rollup(config: MetricRollupConfig) -> MetricRollup {
    MetricRollup::new(config).expect("valid config")
}

fn all_metrics(req: &ExportMetricsServiceRequest) -> Vec<&Metric> {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// (attributes without the rollup marker, value) of every number point of `name`.
fn number_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<(Vec<String>, f64)> {
    let mut out = Vec::new();
    for m in all_metrics(req).into_iter().filter(|m| m.name == name) {
        let points = match m.data.as_ref().expect("data") {
            metric::Data::Sum(s) => &s.data_points,
            metric::Data::Gauge(g) => &g.data_points,
            other => panic!("not a number metric: {other:?}"),
        };
        for p in points {
            assert_eq!(
                attr(&p.attributes, ROLLUP_ATTRIBUTE),
                Some(&any_value::Value::BoolValue(true))
            );
            let keys = p
                .attributes
                .iter()
                .filter(|kv| kv.key != ROLLUP_ATTRIBUTE)
                .map(|kv| kv.key.clone())
                .collect();
            let v = match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => panic!("point without value"),
            };
            out.push((keys, v));
        }
    }
    out
}

#[test]
fn config_defaults_and_rejects_unknown_keys() {
    let config: MetricRollupConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(config.interval, Duration::from_secs(60));
    assert_eq!(config.cardinality_limit, 2000);
    assert_eq!(config.temporality, Temporality::Delta);
    let config: MetricRollupConfig = serde_json::from_str(
        r#"{"interval":"10s","temporality":"cumulative","rules":[{"metric":"http.*","drop_attributes":["user.id"]}]}"#,
    )
    .expect("valid config");
    assert_eq!(config.interval, Duration::from_secs(10));
    assert_eq!(config.temporality, Temporality::Cumulative);
    let err = serde_json::from_str::<MetricRollupConfig>(r#"{"intervall":"10s"}"#)
        .expect_err("unknown key");
    assert!(err.to_string().contains("intervall"), "{err}");
    let err = MetricRollup::new(MetricRollupConfig {
        rules: vec![MetricRuleConfig {
            metric: "/([/".to_owned(),
            keep_attributes: None,
            drop_attributes: vec![],
        }],
        ..Default::default()
    })
    .expect_err("bad regex");
    assert!(err.to_string().contains("invalid pattern"), "{err}");
}

#[test]
fn delta_sums_add_and_resource_is_reduced_to_identity() {
    let mut r = rollup(MetricRollupConfig::default());
    for (pod, v) in [("a", 3), ("b", 4), ("a", 5)] {
        let m = sum_metric("requests", DELTA, vec![int_point(vec![], 0, SEC, v)]);
        r.add(Some(&resource(pod)), Some(&scope()), &m, SEC);
    }
    let out = r.flush(0, 60 * SEC);
    assert_eq!(out.resource_metrics.len(), 1, "pods roll up together");
    let res = out.resource_metrics[0].resource.as_ref().expect("resource");
    let keys: Vec<&str> = res.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["deployment.environment", "service.name"]);
    assert_eq!(number_points(&out, "requests"), vec![(vec![], 12.0)]);
    let m = all_metrics(&out)[0];
    let Some(metric::Data::Sum(s)) = &m.data else {
        panic!("sum expected")
    };
    assert_eq!(s.aggregation_temporality, DELTA);
    assert_eq!(s.data_points[0].start_time_unix_nano, 0);
    assert_eq!(s.data_points[0].time_unix_nano, 60 * SEC);
    assert!(r.flush(60 * SEC, 120 * SEC).resource_metrics.is_empty());
}

#[test]
fn cumulative_sums_become_deltas_with_resets() {
    let mut r = rollup(MetricRollupConfig::default());
    let feed = |r: &mut MetricRollup, start: u64, time: u64, v: i64| {
        let m = sum_metric("c", CUMULATIVE, vec![int_point(vec![], start, time, v)]);
        r.add(Some(&resource("a")), Some(&scope()), &m, time);
    };
    feed(&mut r, 1, 10, 10); // first point: counts since its start
    feed(&mut r, 1, 20, 15); // +5
    assert_eq!(number_points(&r.flush(0, 30), "c"), vec![(vec![], 15.0)]);
    feed(&mut r, 1, 40, 18); // +3
    feed(&mut r, 1, 35, 99); // older than the last point: ignored
    feed(&mut r, 1, 50, 4); // value dropped: reset, +4
    feed(&mut r, 45, 60, 6); // start changed: reset, +6
    feed(&mut r, 45, 70, 7); // +1
    assert_eq!(number_points(&r.flush(30, 80), "c"), vec![(vec![], 14.0)]);
    assert_eq!(r.stats().resets, 3);
    assert_eq!(r.stats().points_ignored, 1);
}

/// Encodes and decodes a request, as storing it does.
fn stored(req: &ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).expect("decodes")
}

#[test]
fn primed_state_carries_deltas_across_a_restart() {
    let feed = |r: &mut MetricRollup, time: u64, v: i64| {
        let point = int_point(vec![kv_str("route", "/")], 1, time, v);
        let m = sum_metric("c", CUMULATIVE, vec![point]);
        r.add(Some(&resource("a")), Some(&scope()), &m, time);
    };
    let route = || vec!["route".to_owned()];
    let mut before = rollup(MetricRollupConfig::default());
    feed(&mut before, 10, 10);
    assert_eq!(
        number_points(&before.flush(0, 30), "c"),
        vec![(route(), 10.0)]
    );
    let state = stored(&before.cumulative_state());
    // The stream's last point, with its full resource (pod included) and scope.
    assert_eq!(state.resource_metrics.len(), 1);
    let res = state.resource_metrics[0]
        .resource
        .as_ref()
        .expect("resource");
    assert_eq!(
        attr(&res.attributes, "k8s.pod.name"),
        Some(&any_value::Value::StringValue("a".to_owned()))
    );
    assert_eq!(
        state.resource_metrics[0].scope_metrics[0]
            .scope
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("app")
    );
    let Some(metric::Data::Sum(s)) = &all_metrics(&state)[0].data else {
        panic!("sum expected")
    };
    assert_eq!(
        (s.aggregation_temporality, s.is_monotonic),
        (CUMULATIVE, true)
    );
    assert_eq!(
        s.data_points,
        vec![int_point(vec![kv_str("route", "/")], 1, 10, 10)]
    );

    let mut primed = rollup(MetricRollupConfig::default());
    primed.prime(&state, 40);
    assert_eq!(
        primed.stats(),
        RollupStats {
            streams_primed: 1,
            ..Default::default()
        }
    );
    assert_eq!(primed.cumulative_state(), state);
    feed(&mut primed, 40, 15);
    assert_eq!(
        number_points(&primed.flush(30, 60), "c"),
        vec![(route(), 5.0)]
    );
    // An older state does not replace a newer point; delta metrics carry no state.
    primed.prime(&state, 70);
    let delta = sum_metric("c", DELTA, vec![int_point(vec![], 1, 80, 3)]);
    primed.prime(
        &ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![delta],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        },
        70,
    );
    assert_eq!(
        (primed.stats().streams_primed, primed.tracked_streams()),
        (1, 1)
    );
    feed(&mut primed, 80, 16);
    assert_eq!(
        number_points(&primed.flush(60, 90), "c"),
        vec![(route(), 1.0)]
    );

    // Without the state the first point after the restart counts in full: 10 counts twice.
    let mut unprimed = rollup(MetricRollupConfig::default());
    feed(&mut unprimed, 40, 15);
    assert_eq!(
        number_points(&unprimed.flush(30, 60), "c"),
        vec![(route(), 15.0)]
    );
}

#[test]
fn cumulative_output_keeps_running_totals() {
    let mut r = rollup(MetricRollupConfig {
        temporality: Temporality::Cumulative,
        ..Default::default()
    });
    for (interval, v) in [(0, 2), (1, 3), (2, 4)] {
        let m = sum_metric("d", DELTA, vec![int_point(vec![], 0, 1, v)]);
        r.add(None, None, &m, 0);
        let out = r.flush(interval * 60, (interval + 1) * 60);
        let Some(metric::Data::Sum(s)) = &all_metrics(&out)[0].data else {
            panic!("sum expected")
        };
        assert_eq!(s.aggregation_temporality, CUMULATIVE);
        assert_eq!(s.data_points[0].start_time_unix_nano, 0, "series start");
    }
    let m = sum_metric("d", DELTA, vec![int_point(vec![], 0, 1, 1)]);
    r.add(None, None, &m, 0);
    assert_eq!(number_points(&r.flush(180, 240), "d"), vec![(vec![], 10.0)]);
}

#[test]
fn keep_and_drop_attribute_rules() {
    let mut r = rollup(MetricRollupConfig {
        rules: vec![
            MetricRuleConfig {
                metric: "http.*".to_owned(),
                keep_attributes: Some(vec!["http.*".to_owned(), "user.id".to_owned()]),
                drop_attributes: vec!["user.id".to_owned()],
            },
            MetricRuleConfig {
                metric: "/^db\\.(calls|errors)$/".to_owned(),
                keep_attributes: None,
                drop_attributes: vec!["query".to_owned()],
            },
        ],
        ..Default::default()
    });
    for user in ["u1", "u2", "u3"] {
        let attrs = vec![
            kv_str("http.route", "/pay"),
            kv_str("user.id", user),
            kv_str("request.id", user),
        ];
        let m = sum_metric("http.calls", DELTA, vec![int_point(attrs.clone(), 0, 1, 1)]);
        r.add(None, None, &m, 0);
        let m = sum_metric("db.calls", DELTA, vec![int_point(attrs.clone(), 0, 1, 2)]);
        r.add(None, None, &m, 0);
        let attrs = vec![kv_str("query", user), kv_str("db", "main")];
        let m = sum_metric("db.calls", DELTA, vec![int_point(attrs, 0, 1, 4)]);
        r.add(None, None, &m, 0);
    }
    let out = r.flush(0, 60);
    assert_eq!(
        number_points(&out, "http.calls"),
        vec![(vec!["http.route".to_owned()], 3.0)]
    );
    let mut db = number_points(&out, "db.calls");
    db.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        db.len(),
        4,
        "three request series and one db series: {db:?}"
    );
    assert_eq!(db[0], (vec!["db".to_owned()], 12.0));
    assert_eq!(db.iter().map(|p| p.1).sum::<f64>(), 18.0);
}

#[test]
fn cardinality_overflow_keeps_totals_exact() {
    let mut r = rollup(MetricRollupConfig {
        cardinality_limit: 3,
        ..Default::default()
    });
    for i in 0..10 {
        let attrs = vec![kv_str("user.id", format!("u{i}"))];
        let m = sum_metric("logins", DELTA, vec![int_point(attrs, 0, 1, i + 1)]);
        r.add(None, None, &m, 0);
    }
    // An admitted series keeps its own series after the limit is reached.
    let m = sum_metric(
        "logins",
        DELTA,
        vec![int_point(vec![kv_str("user.id", "u0")], 0, 1, 100)],
    );
    r.add(None, None, &m, 0);
    let out = r.flush(0, 60);
    let points = number_points(&out, "logins");
    assert_eq!(points.len(), 4, "{points:?}");
    assert_eq!(points.iter().map(|p| p.1).sum::<f64>(), 55.0 + 100.0);
    let overflow: Vec<_> = all_metrics(&out)
        .into_iter()
        .flat_map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.clone(),
            _ => vec![],
        })
        .filter(|p| attr(&p.attributes, OVERFLOW_ATTRIBUTE).is_some())
        .collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(
        overflow[0].value,
        Some(number_data_point::Value::AsInt(4 + 5 + 6 + 7 + 8 + 9 + 10))
    );
    assert_eq!(r.stats().points_overflowed, 7);
    // The limit is per interval: the next interval admits new series again.
    let m = sum_metric(
        "logins",
        DELTA,
        vec![int_point(vec![kv_str("user.id", "u9")], 0, 1, 1)],
    );
    r.add(None, None, &m, 0);
    assert_eq!(
        number_points(&r.flush(60, 120), "logins"),
        vec![(vec!["user.id".to_owned()], 1.0)]
    );
}

fn hist_point(bounds: &[f64], counts: &[u64], sum: f64, min_max: (f64, f64)) -> HistogramDataPoint {
    HistogramDataPoint {
        count: counts.iter().sum(),
        sum: Some(sum),
        bucket_counts: counts.to_vec(),
        explicit_bounds: bounds.to_vec(),
        min: Some(min_max.0),
        max: Some(min_max.1),
        time_unix_nano: 1,
        ..Default::default()
    }
}

fn hist_metric(temporality: i32, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: "latency".to_owned(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: temporality,
        })),
        ..Default::default()
    }
}

fn hist_points(req: &ExportMetricsServiceRequest) -> Vec<HistogramDataPoint> {
    all_metrics(req)
        .into_iter()
        .flat_map(|m| match &m.data {
            Some(metric::Data::Histogram(h)) => h.data_points.clone(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn histograms_merge_rebucket_exactly_or_split_by_bounds() {
    let mut r = rollup(MetricRollupConfig::default());
    let primary = [10.0, 100.0];
    let points = vec![
        hist_point(&primary, &[1, 2, 3], 400.0, (1.0, 300.0)),
        hist_point(&primary, &[4, 0, 1], 120.0, (0.5, 150.0)),
        // Finer bounds containing every primary bound: re-bucketed exactly.
        hist_point(
            &[5.0, 10.0, 50.0, 100.0],
            &[1, 1, 1, 1, 1],
            200.0,
            (2.0, 120.0),
        ),
        // Bounds that cut across primary buckets: a series of their own.
        hist_point(&[20.0], &[2, 2], 80.0, (3.0, 40.0)),
    ];
    r.add(None, None, &hist_metric(DELTA, points), 0);
    let out = hist_points(&r.flush(0, 60));
    assert_eq!(out.len(), 2, "{out:?}");
    let main = out
        .iter()
        .find(|p| attr(&p.attributes, BOUNDS_HASH_ATTRIBUTE).is_none())
        .expect("primary series");
    assert_eq!(main.explicit_bounds, primary);
    assert_eq!(main.bucket_counts, [1 + 4 + 2, 2 + 2, 3 + 1 + 1]);
    assert_eq!(main.count, 16);
    assert_eq!(main.sum, Some(720.0));
    assert_eq!((main.min, main.max), (Some(0.5), Some(300.0)));
    let other = out
        .iter()
        .find(|p| attr(&p.attributes, BOUNDS_HASH_ATTRIBUTE).is_some())
        .expect("series of the other bounds");
    assert_eq!(other.explicit_bounds, [20.0]);
    assert_eq!(other.bucket_counts, [2, 2]);
    assert_eq!(out.iter().map(|p| p.count).sum::<u64>(), 20);
}

#[test]
fn cumulative_histograms_subtract_and_drop_unknown_min_max() {
    let mut r = rollup(MetricRollupConfig::default());
    let mut p1 = hist_point(&[1.0], &[2, 3], 10.0, (0.1, 4.0));
    p1.start_time_unix_nano = 5;
    let mut p2 = hist_point(&[1.0], &[4, 3], 11.0, (0.1, 4.0));
    p2.start_time_unix_nano = 5;
    p2.time_unix_nano = 2;
    r.add(None, None, &hist_metric(CUMULATIVE, vec![p1]), 0);
    let first = hist_points(&r.flush(0, 60));
    assert_eq!(first[0].bucket_counts, [2, 3]);
    assert_eq!(first[0].min, Some(0.1));
    r.add(None, None, &hist_metric(CUMULATIVE, vec![p2]), 0);
    let second = hist_points(&r.flush(60, 120));
    assert_eq!(second[0].bucket_counts, [2, 0]);
    assert_eq!(second[0].count, 2);
    assert_eq!(second[0].sum, Some(1.0));
    assert_eq!((second[0].min, second[0].max), (None, None));
}

#[test]
fn exponential_downscale_is_exact() {
    let mut b = ExpBuckets {
        offset: -3,
        counts: vec![1, 2, 3, 4, 5, 6, 7],
    };
    // Indices -3..=3; one step merges pairs (floor of i/2): -3 | -2,-1 | 0,1 | 2,3.
    b.downscale(1);
    assert_eq!(b.offset, -2);
    assert_eq!(b.counts, vec![1, 2 + 3, 4 + 5, 6 + 7]);
    b.downscale(2);
    assert_eq!((b.offset, b.counts.clone()), (-1, vec![1 + 5, 9 + 13]));
    assert_eq!(b.total(), 28);
}

#[test]
fn exponential_histograms_merge_at_the_coarser_scale() {
    let point = |scale: i32, offset: i32, counts: Vec<u64>, zero: u64| {
        let count = counts.iter().sum::<u64>() + zero;
        ExponentialHistogramDataPoint {
            scale,
            count,
            sum: Some(count as f64),
            zero_count: zero,
            positive: Some(Buckets {
                offset,
                bucket_counts: counts,
            }),
            min: Some(0.0),
            max: Some(100.0),
            time_unix_nano: 1,
            ..Default::default()
        }
    };
    let metric = Metric {
        name: "size".to_owned(),
        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![point(3, 8, vec![1, 1, 1, 1], 2), point(1, 2, vec![5], 1)],
            aggregation_temporality: DELTA,
        })),
        ..Default::default()
    };
    let mut r = rollup(MetricRollupConfig::default());
    r.add(None, None, &metric, 0);
    let out = r.flush(0, 60);
    let Some(metric::Data::ExponentialHistogram(h)) = &all_metrics(&out)[0].data else {
        panic!("exponential histogram expected")
    };
    let p = &h.data_points[0];
    assert_eq!(p.scale, 1);
    // Scale 3 indices 8..=11 become 2,2,2,2 at scale 1.
    let positive = p.positive.as_ref().expect("positive buckets");
    assert_eq!(
        (positive.offset, positive.bucket_counts.clone()),
        (2, vec![9])
    );
    assert_eq!((p.count, p.zero_count, p.sum), (12, 3, Some(12.0)));

    // A union wider than MAX_BUCKETS is downscaled until it fits.
    let mut a = ExpHist::from_point(&point(0, 0, vec![1], 0));
    a.merge(&ExpHist::from_point(&point(0, 1000, vec![1], 0)));
    assert!(a.positive.counts.len() <= exponential::MAX_BUCKETS);
    assert_eq!(a.positive.total(), 2);
    assert!(a.scale < 0);
}

#[test]
fn gauges_keep_last_value_and_optional_stats() {
    let mut r = rollup(MetricRollupConfig {
        gauge_stats: true,
        ..Default::default()
    });
    let gauge = |points: Vec<NumberDataPoint>| Metric {
        name: "queue.depth".to_owned(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    };
    r.add(None, None, &gauge(vec![int_point(vec![], 0, 30, 7)]), 0);
    r.add(None, None, &gauge(vec![int_point(vec![], 0, 10, 2)]), 0);
    r.add(None, None, &gauge(vec![int_point(vec![], 0, 20, 9)]), 0);
    let out = r.flush(0, 60);
    assert_eq!(number_points(&out, "queue.depth"), vec![(vec![], 7.0)]);
    assert_eq!(number_points(&out, "queue.depth.min"), vec![(vec![], 2.0)]);
    assert_eq!(number_points(&out, "queue.depth.max"), vec![(vec![], 9.0)]);
    assert_eq!(
        number_points(&out, "queue.depth.count"),
        vec![(vec![], 3.0)]
    );
}

#[test]
fn summaries_keep_count_and_sum() {
    let mut r = rollup(MetricRollupConfig::default());
    let summary = |count: u64, sum: f64, time: u64| Metric {
        name: "rpc".to_owned(),
        data: Some(metric::Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                count,
                sum,
                time_unix_nano: time,
                quantile_values: vec![Default::default()],
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    r.add(None, None, &summary(4, 10.0, 1), 0);
    r.add(None, None, &summary(6, 16.0, 2), 0);
    let out = r.flush(0, 60);
    let Some(metric::Data::Summary(s)) = &all_metrics(&out)[0].data else {
        panic!("summary expected")
    };
    assert_eq!((s.data_points[0].count, s.data_points[0].sum), (6, 16.0));
    assert!(s.data_points[0].quantile_values.is_empty());
}

#[test]
fn series_key_ignores_instance_attributes() {
    let rules = AttributeRules::new(&[MetricRuleConfig {
        metric: "m".to_owned(),
        keep_attributes: None,
        drop_attributes: vec!["user.id".to_owned()],
    }])
    .expect("rules");
    let a = rules.reduce("m", &[kv_str("user.id", "1"), kv_str("route", "/")]);
    let b = rules.reduce("m", &[kv_str("route", "/"), kv_str("user.id", "2")]);
    assert_eq!(
        series_key(Some(&resource("pod-1")), "m", &a),
        series_key(Some(&resource("pod-2")), "m", &b)
    );
    assert_ne!(
        series_key(Some(&resource("pod-1")), "m", &a),
        series_key(Some(&resource("pod-1")), "n", &a)
    );
}

/// One input event: stream index, increment, reset before it, flush after it.
type Event = (usize, u8, bool, bool);

/// Exact totals of rolled-up output per metric: integer and double sum values, counts,
/// sums, bucket totals.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    values: i64,
    doubles: f64,
    count: u64,
    sum: f64,
    buckets: BTreeMap<i64, u64>,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.values += other.values;
        self.doubles += other.doubles;
        self.count += other.count;
        self.sum += other.sum;
        for (k, v) in &other.buckets {
            *self.buckets.entry(*k).or_default() += v;
        }
    }
}

/// Totals of one output request (delta temporality: everything adds).
fn output_totals(req: &ExportMetricsServiceRequest) -> Totals {
    let mut t = Totals::default();
    for m in all_metrics(req) {
        t.add(&metric_totals(m));
    }
    t
}

/// Totals of one output request per metric name.
fn totals_by_metric(req: &ExportMetricsServiceRequest) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for m in all_metrics(req) {
        out.entry(m.name.clone())
            .or_default()
            .add(&metric_totals(m));
    }
    out
}

/// Totals of one output metric. Sums of integer input stay integers; `*.double` sums are
/// doubles.
fn metric_totals(m: &Metric) -> Totals {
    let mut t = Totals::default();
    match m.data.as_ref().expect("data") {
        metric::Data::Sum(s) => {
            for p in &s.data_points {
                match (p.value, m.name.ends_with(".double")) {
                    (Some(number_data_point::Value::AsInt(v)), false) => t.values += v,
                    (Some(number_data_point::Value::AsDouble(d)), true) => t.doubles += d,
                    (v, _) => panic!("{}: unexpected value {v:?}", m.name),
                }
            }
        }
        metric::Data::Histogram(h) => {
            for p in &h.data_points {
                t.count += p.count;
                t.sum += p.sum.expect("sum");
                for (i, c) in p.bucket_counts.iter().enumerate() {
                    *t.buckets.entry(i as i64).or_default() += c;
                }
            }
        }
        metric::Data::ExponentialHistogram(h) => {
            for p in &h.data_points {
                t.count += p.count;
                t.sum += p.sum.expect("sum");
                let positive = p
                    .positive
                    .as_ref()
                    .map_or(0, |b| b.bucket_counts.iter().sum());
                *t.buckets.entry(0).or_default() += p.zero_count + positive;
            }
        }
        metric::Data::Summary(s) => {
            for p in &s.data_points {
                t.count += p.count;
                t.sum += p.sum;
            }
        }
        metric::Data::Gauge(_) => panic!("no gauges in this test"),
    }
    t
}

/// A cumulative stream's model: start time, running value, running histogram buckets,
/// running exponential buckets by index, running zero count.
type StreamModel = (u64, i64, [u64; 3], BTreeMap<i32, u64>, u64);

/// Kinds under test: (name, temporality). `sum` is monotonic, `updown` is not; `*.double`
/// carry doubles (halves, so every total stays exact), the others integers.
const KINDS: [(&str, i32); 13] = [
    ("sum", DELTA),
    ("sum", CUMULATIVE),
    ("sum.double", DELTA),
    ("sum.double", CUMULATIVE),
    ("updown", DELTA),
    ("updown", CUMULATIVE),
    ("updown.double", DELTA),
    ("updown.double", CUMULATIVE),
    ("histogram", DELTA),
    ("histogram", CUMULATIVE),
    ("exponential", DELTA),
    ("exponential", CUMULATIVE),
    ("summary", CUMULATIVE),
];

/// What an increment of `inc` means for each kind: bucket counts of a histogram and the
/// (scale, offset, counts, zero count) of an exponential histogram. The exponential scale
/// of a cumulative stream stays fixed per stream, as SDKs keep it between exports.
fn hist_increment(inc: u8) -> [u64; 3] {
    [
        u64::from(inc % 3),
        u64::from(inc / 3 % 4),
        1 + u64::from(inc % 2),
    ]
}

fn exp_increment(stream: usize, inc: u8, cumulative: bool) -> (i32, i32, Vec<u64>, u64) {
    let scale = if cumulative {
        (stream % 3) as i32
    } else {
        i32::from(inc % 4) - 1
    };
    let offset = i32::from(inc % 7) - 3;
    (
        scale,
        offset,
        vec![u64::from(inc % 3), 1],
        u64::from(inc % 2),
    )
}

/// Feeds `events` of one kind, turning increments into points (cumulative streams carry
/// running totals and restart from zero with a new start time on `reset`), and returns the
/// input totals. `sink(stream, metric, time)` receives each point.
fn drive(
    kind: (&str, i32),
    events: &[Event],
    mut sink: impl FnMut(usize, Metric, u64),
    mut flush: impl FnMut(u64),
) -> Totals {
    let cumulative = kind.1 == CUMULATIVE;
    let mut expected = Totals::default();
    // Per stream: start time, running value, running hist buckets, running exp buckets.
    let mut state: BTreeMap<usize, StreamModel> = BTreeMap::new();
    for (step, &(stream, inc, reset, flush_after)) in events.iter().enumerate() {
        let time = (step as u64 + 1) * 10;
        let s = state
            .entry(stream)
            .or_insert((time, 0, [0; 3], BTreeMap::new(), 0));
        if reset && cumulative {
            *s = (time, 0, [0; 3], BTreeMap::new(), 0);
        }
        let attrs = vec![
            kv_str("user.id", format!("u{stream}")),
            kv_str("route", format!("r{}", stream % 2)),
        ];
        let data = match kind.0 {
            "sum" | "sum.double" | "updown" | "updown.double" => {
                let monotonic = kind.0.starts_with("sum");
                let inc = if monotonic {
                    i64::from(inc)
                } else {
                    i64::from(inc) - 10
                };
                s.1 += inc;
                let v = if cumulative { s.1 } else { inc };
                let mut point = int_point(attrs, s.0, time, v);
                if kind.0.ends_with(".double") {
                    expected.doubles += inc as f64 / 2.0;
                    point.value = Some(number_data_point::Value::AsDouble(v as f64 / 2.0));
                } else {
                    expected.values += inc;
                }
                metric::Data::Sum(Sum {
                    data_points: vec![point],
                    aggregation_temporality: kind.1,
                    is_monotonic: monotonic,
                })
            }
            "histogram" => {
                let counts = hist_increment(inc);
                for (i, c) in counts.iter().enumerate() {
                    *expected.buckets.entry(i as i64).or_default() += c;
                    s.2[i] += c;
                }
                let n: u64 = counts.iter().sum();
                expected.count += n;
                expected.sum += f64::from(inc);
                s.1 += i64::from(inc);
                let (counts, sum) = if cumulative {
                    (s.2, s.1)
                } else {
                    (counts, i64::from(inc))
                };
                let mut p = hist_point(&[1.0, 10.0], &counts, sum as f64, (0.0, 1.0));
                (p.start_time_unix_nano, p.time_unix_nano, p.attributes) = (s.0, time, attrs);
                metric::Data::Histogram(Histogram {
                    data_points: vec![p],
                    aggregation_temporality: kind.1,
                })
            }
            "exponential" => {
                let (scale, offset, counts, zero) = exp_increment(stream, inc, cumulative);
                let n = counts.iter().sum::<u64>() + zero;
                expected.count += n;
                *expected.buckets.entry(0).or_default() += n;
                expected.sum += f64::from(inc);
                s.1 += i64::from(inc);
                s.4 += zero;
                for (i, c) in counts.iter().enumerate() {
                    *s.3.entry(offset + i as i32).or_default() += c;
                }
                let (offset, counts, zero, sum) = if cumulative {
                    let lo = *s.3.keys().next().expect("buckets");
                    let hi = *s.3.keys().last().expect("buckets");
                    let dense = (lo..=hi)
                        .map(|i| s.3.get(&i).copied().unwrap_or(0))
                        .collect();
                    (lo, dense, s.4, s.1)
                } else {
                    (offset, counts, zero, i64::from(inc))
                };
                metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        attributes: attrs,
                        start_time_unix_nano: s.0,
                        time_unix_nano: time,
                        count: counts.iter().sum::<u64>() + zero,
                        sum: Some(sum as f64),
                        scale,
                        zero_count: zero,
                        positive: Some(Buckets {
                            offset,
                            bucket_counts: counts,
                        }),
                        ..Default::default()
                    }],
                    aggregation_temporality: kind.1,
                })
            }
            _ => {
                expected.count += u64::from(inc);
                expected.sum += f64::from(inc) * 2.0;
                s.1 += i64::from(inc);
                metric::Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        attributes: attrs,
                        start_time_unix_nano: s.0,
                        time_unix_nano: time,
                        count: s.1 as u64,
                        sum: s.1 as f64 * 2.0,
                        ..Default::default()
                    }],
                })
            }
        };
        let metric = Metric {
            name: kind.0.to_owned(),
            data: Some(data),
            ..Default::default()
        };
        sink(stream, metric, time);
        if flush_after {
            flush(time);
        }
    }
    expected
}

fn reducing_config() -> MetricRollupConfig {
    MetricRollupConfig {
        rules: vec![MetricRuleConfig {
            metric: "*".to_owned(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".to_owned()],
        }],
        ..Default::default()
    }
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (
            0usize..6,
            0u8..20,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Totals after rollup equal totals before, across flush intervals, for every kind and
    /// temporality, with resets; with and without a tiny cardinality limit.
    #[test]
    fn totals_survive_rollup_across_intervals(events in events(), kind in 0..KINDS.len(), limit in 1usize..4) {
        let kind = KINDS[kind];
        for config in [reducing_config(), MetricRollupConfig { cardinality_limit: limit, ..Default::default() }] {
            let r = std::cell::RefCell::new(rollup(config));
            let mut got = Totals::default();
            let last = std::cell::Cell::new(0u64);
            let mut flushed = Totals::default();
            let expected = drive(
                kind,
                &events,
                |stream, metric, time| {
                    let res = resource(&format!("pod-{}", stream % 3));
                    r.borrow_mut().add(Some(&res), Some(&scope()), &metric, time);
                },
                |time| {
                    flushed.add(&output_totals(&r.borrow_mut().flush(last.get(), time)));
                    last.set(time);
                },
            );
            got.add(&flushed);
            got.add(&output_totals(&r.borrow_mut().flush(last.get(), u64::MAX)));
            prop_assert_eq!(&got, &expected);
        }
    }

    /// A node restarted anywhere in the input, primed with the stored
    /// [`MetricRollup::cumulative_state`] of its predecessor, emits exactly what one node
    /// fed everything emits: the same flushes, so the same totals, for every cumulative
    /// kind at once (several resources, scopes and streams, with resets). Priming emits
    /// nothing and restores the state exactly.
    #[test]
    fn cumulative_state_carries_deltas_across_a_restart(events in events(), split in any::<prop::sample::Index>()) {
        let split = split.index(events.len() + 1);
        let kinds: Vec<(&str, i32)> = KINDS.into_iter().filter(|k| k.1 == CUMULATIVE).collect();
        let mut expected: BTreeMap<String, Totals> = BTreeMap::new();
        // Per kind, the point of every event.
        let mut fed: Vec<Vec<(usize, Metric, u64)>> = Vec::new();
        for kind in &kinds {
            let mut points = Vec::new();
            let totals = drive(*kind, &events, |stream, metric, time| points.push((stream, metric, time)), |_| {});
            expected.insert(kind.0.to_owned(), totals);
            fed.push(points);
        }
        let feed = |r: &mut MetricRollup, event: usize| {
            for (k, points) in fed.iter().enumerate() {
                let (stream, metric, time) = &points[event];
                let scope = InstrumentationScope { name: format!("lib-{}", k % 2), ..Default::default() };
                r.add(Some(&resource(&format!("pod-{}", stream % 3))), Some(&scope), metric, *time);
            }
        };
        let mut node = rollup(reducing_config());
        let mut single = rollup(reducing_config());
        let (mut restarted, mut one) = (Vec::new(), Vec::new());
        let mut last = 0;
        for i in 0..=events.len() {
            if i == split {
                let time = i as u64 * 10;
                restarted.push(node.flush(last, time));
                one.push(single.flush(last, time));
                last = time;
                let state = stored(&node.cumulative_state());
                let mut fresh = rollup(reducing_config());
                fresh.prime(&state, time);
                prop_assert_eq!(fresh.tracked_streams(), node.tracked_streams());
                prop_assert_eq!(fresh.stats(), RollupStats { streams_primed: node.tracked_streams() as u64, ..Default::default() });
                prop_assert_eq!(&fresh.cumulative_state(), &state);
                prop_assert!(fresh.flush(time, time).resource_metrics.is_empty(), "priming emits nothing");
                node = fresh;
            }
            let Some(event) = events.get(i) else { break };
            feed(&mut node, i);
            feed(&mut single, i);
            if event.3 {
                let time = (i as u64 + 1) * 10;
                restarted.push(node.flush(last, time));
                one.push(single.flush(last, time));
                last = time;
            }
        }
        restarted.push(node.flush(last, u64::MAX));
        one.push(single.flush(last, u64::MAX));
        let mut got: BTreeMap<String, Totals> = BTreeMap::new();
        for out in &restarted {
            for (name, t) in totals_by_metric(out) {
                got.entry(name).or_default().add(&t);
            }
        }
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(&restarted, &one);
    }

    /// Two nodes fed disjoint partitions (by output series, as the router routes) emit, together,
    /// the same totals as one node fed everything.
    #[test]
    fn totals_add_up_across_nodes(events in events(), kind in 0..KINDS.len()) {
        let kind = KINDS[kind];
        let nodes = std::cell::RefCell::new([rollup(reducing_config()), rollup(reducing_config())]);
        let single = std::cell::RefCell::new(rollup(reducing_config()));
        let mut flushes = Vec::new();
        let expected = drive(
            kind,
            &events,
            |stream, metric, time| {
                let res = resource(&format!("pod-{}", stream % 3));
                let attrs = match metric.data.as_ref().expect("data") {
                    metric::Data::Sum(s) => s.data_points[0].attributes.clone(),
                    metric::Data::Histogram(h) => h.data_points[0].attributes.clone(),
                    metric::Data::ExponentialHistogram(h) => h.data_points[0].attributes.clone(),
                    metric::Data::Summary(s) => s.data_points[0].attributes.clone(),
                    metric::Data::Gauge(g) => g.data_points[0].attributes.clone(),
                };
                let reduced = single.borrow().rules().reduce(&metric.name, &attrs);
                let owner = series_key(Some(&res), &metric.name, &reduced).iter().map(|b| usize::from(*b)).sum::<usize>() % 2;
                nodes.borrow_mut()[owner].add(Some(&res), Some(&scope()), &metric, time);
                single.borrow_mut().add(Some(&res), Some(&scope()), &metric, time);
            },
            |time| flushes.push(time),
        );
        let mut split = Totals::default();
        for node in nodes.borrow_mut().iter_mut() {
            split.add(&output_totals(&node.flush(0, u64::MAX)));
        }
        let one = output_totals(&single.borrow_mut().flush(0, u64::MAX));
        prop_assert_eq!(&split, &one);
        prop_assert_eq!(&one, &expected);
    }
}
