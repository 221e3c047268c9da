//! Throughput of the metric rollup on one thread (no network): delta and cumulative sums and
//! histograms from 50 pods with a high-cardinality `user.id` attribute dropped by a rule.
//! Prints data points/s per core. Figures only; nothing is asserted.
//!
//! `cargo bench -p otel-tail-sampler --bench rollup_metrics`

use std::time::Instant;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_sampler::rollup::metrics::{MetricRollup, MetricRollupConfig, MetricRuleConfig};
use otel_tail_shared::otlp::kv_str;

const POINTS_PER_METRIC: u64 = 100;
const ROUNDS: u64 = 2_000;

fn attrs(i: u64) -> Vec<KeyValue> {
    vec![
        kv_str("http.route", format!("/api/{}", i % 20)),
        kv_str("http.status_code", format!("{}", 200 + (i % 5) * 100)),
        kv_str(
            "user.id",
            format!("user-{}", i.wrapping_mul(2_654_435_761) % 100_000),
        ),
    ]
}

fn metrics(round: u64) -> Vec<Metric> {
    let sum = |temporality: AggregationTemporality, name: &str| Metric {
        name: name.to_owned(),
        data: Some(metric::Data::Sum(Sum {
            data_points: (0..POINTS_PER_METRIC)
                .map(|i| NumberDataPoint {
                    attributes: attrs(i),
                    start_time_unix_nano: 1,
                    time_unix_nano: round + 2,
                    value: Some(number_data_point::Value::AsInt((round * (i + 1)) as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let histogram = Metric {
        name: "http.server.duration".to_owned(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: (0..POINTS_PER_METRIC)
                .map(|i| HistogramDataPoint {
                    attributes: attrs(i + round),
                    time_unix_nano: round + 2,
                    count: 10,
                    sum: Some(123.0),
                    bucket_counts: vec![1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    explicit_bounds: vec![
                        0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0,
                        2500.0, 5000.0, 7500.0,
                    ],
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    };
    vec![
        sum(AggregationTemporality::Delta, "http.requests"),
        sum(AggregationTemporality::Cumulative, "http.bytes"),
        histogram,
    ]
}

fn main() {
    let config = MetricRollupConfig {
        rules: vec![MetricRuleConfig {
            metric: "http.*".to_owned(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".to_owned()],
        }],
        ..Default::default()
    };
    let mut rollup = MetricRollup::new(config).expect("valid config");
    let resources: Vec<Resource> = (0..50)
        .map(|pod| Resource {
            attributes: vec![
                kv_str("service.name", format!("svc-{}", pod % 5)),
                kv_str("k8s.pod.name", format!("pod-{pod}")),
            ],
            ..Default::default()
        })
        .collect();
    let batches: Vec<Vec<Metric>> = (0..8).map(metrics).collect();
    let started = Instant::now();
    let mut points = 0u64;
    let mut out_points = 0usize;
    for round in 0..ROUNDS {
        let resource = &resources[(round % 50) as usize];
        for metric in &batches[(round / 50 % 8) as usize] {
            rollup.add(Some(resource), None, metric, round);
            points += POINTS_PER_METRIC;
        }
        if round % 500 == 499 {
            let out = rollup.flush(0, round);
            out_points += out.resource_metrics.len();
        }
    }
    let elapsed = started.elapsed();
    let stats = rollup.stats();
    println!(
        "metric rollup: {points} data points in {:.2?} = {:.0} points/s on one core \
         ({} points out, {} resource groups flushed, {} input streams tracked)",
        elapsed,
        points as f64 / elapsed.as_secs_f64(),
        stats.points_out,
        out_points,
        rollup.tracked_streams()
    );
}
