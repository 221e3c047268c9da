//! Logs and metrics through the sampler, sent by the real OpenTelemetry Rust SDK:
//! logs with a trace id follow their trace's decision (kept traces' logs leave raw,
//! marked `otel_tail.correlated=trace_id`; dropped traces' logs go down the summary
//! path); with correlation and rollups off, logs without a trace id and all metrics
//! pass through without loss.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, SpanContext, Status, Tracer, TracerProvider as _};
use opentelemetry_proto::tonic::common::v1::any_value;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::export::{attribute_str, hex};
use otel_tail_integration_tests::sdk::{self, Transport};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The attribute marking an item kept raw because it correlates with a kept trace.
const CORRELATED: &str = "otel_tail.correlated";

/// Starts a sampler keeping error traces (1 s decision wait) with `extra` merged in as
/// further top-level sections. `correlate` sets the policy's `correlate` flag (`None`:
/// the default, on for `status_code`).
async fn start(correlate: Option<bool>, extra: Value) -> SamplerProcess {
    let mut policy = json!(
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
    );
    if let Some(correlate) = correlate {
        policy["correlate"] = json!(correlate);
    }
    let mut config = json!({"sampler": {"decision_wait": "1s", "policies": [policy]}});
    if let (Some(root), Value::Object(extra)) = (config.as_object_mut(), extra) {
        root.extend(extra);
    }
    SamplerProcess::start(config).await.expect("sampler starts")
}

fn body_text(body: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match body?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// Logs of a kept trace leave raw with their trace, marked `otel_tail.correlated=trace_id`;
/// logs of a dropped trace are held and then go down the summary path, here pass-through
/// (log rollup off, short hold) so each of them can be seen to leave once, unmarked.
/// All traces share one resource and one moment, so the policy does not correlate by
/// window: that would keep the dropped traces' logs raw too (marked `window`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_with_a_trace_id_follow_their_trace() {
    let sampler = start(
        Some(false),
        json!({
            "correlation": {"window": "2s"},
            "rollup": {"logs": {"enabled": false}},
        }),
    )
    .await;
    let tracer_provider = sdk::tracer_provider(
        Transport::Grpc,
        &sampler.grpc_endpoint(),
        &sampler.http_endpoint(),
        "payment",
    )
    .expect("tracer pipeline");
    let logger_provider =
        sdk::logger_provider(&sampler.grpc_endpoint(), "payment").expect("logger pipeline");
    let tracer = tracer_provider.tracer("signals-test");
    let logger = logger_provider.logger("signals-test");

    let mut contexts: Vec<(SpanContext, bool)> = Vec::new();
    for i in 0..10 {
        let error = i % 2 == 0;
        let mut span = tracer.start("charge card");
        if error {
            span.set_status(Status::error("card declined"));
        }
        let sc = span.span_context().clone();
        span.end();
        for n in 0..3 {
            let mut record = logger.create_log_record();
            record.set_severity_number(if error {
                Severity::Error
            } else {
                Severity::Info
            });
            record.set_body(AnyValue::from(format!("trace {} log {n}", sc.trace_id())));
            record.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
            logger.emit(record);
        }
        contexts.push((sc, error));
    }
    // Logs first: they arrive before (or with) their trace's spans and must wait.
    sdk::shutdown_logs(logger_provider)
        .await
        .expect("log export succeeds");
    sdk::shutdown_traces(tracer_provider)
        .await
        .expect("span export succeeds");

    let kept: BTreeSet<String> = contexts
        .iter()
        .filter(|(_, e)| *e)
        .map(|(sc, _)| sc.trace_id().to_string())
        .collect();
    let dropped: BTreeSet<String> = contexts
        .iter()
        .filter(|(_, e)| !*e)
        .map(|(sc, _)| sc.trace_id().to_string())
        .collect();
    sampler
        .wait_for_export("logs of the kept and the dropped traces", WAIT, |d| {
            d.log_records().len() >= contexts.len() * 3
        })
        .await
        .expect("every log exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    assert_eq!(data.trace_ids(), kept, "only the error traces are kept");
    let records = data.log_records();
    assert_eq!(
        records.len(),
        contexts.len() * 3,
        "every log of every trace, once"
    );
    let mut per_trace: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        let trace_id = hex(&record.trace_id);
        let body = body_text(record.body.as_ref()).expect("string body");
        assert!(body.starts_with(&format!("trace {trace_id}")), "{body}");
        let mark = attribute_str(&record.attributes, CORRELATED);
        if kept.contains(&trace_id) {
            assert_eq!(
                mark.as_deref(),
                Some("trace_id"),
                "a kept trace's log is marked: {body}"
            );
        } else {
            assert!(
                dropped.contains(&trace_id),
                "log of an unknown trace: {body}"
            );
            assert_eq!(mark, None, "a dropped trace's log is not marked: {body}");
        }
        *per_trace.entry(trace_id).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = kept
        .iter()
        .chain(&dropped)
        .map(|t| (t.clone(), 3))
        .collect();
    assert_eq!(per_trace, expected, "three logs per trace, none duplicated");
}

/// With correlation and both rollups off nothing is held or rolled up: logs without a
/// trace id and metric points reach the exporter unchanged, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceless_logs_and_metrics_pass_through_without_loss() {
    const LOGS: usize = 250;
    let sampler = start(
        None,
        json!({
            "correlation": {"enabled": false},
            "rollup": {"logs": {"enabled": false}, "metrics": {"enabled": false}},
        }),
    )
    .await;
    let logger_provider =
        sdk::logger_provider(&sampler.grpc_endpoint(), "inventory").expect("logger pipeline");
    let meter_provider =
        sdk::meter_provider(&sampler.grpc_endpoint(), "inventory").expect("meter pipeline");
    let logger = logger_provider.logger("signals-test");
    let mut bodies = BTreeSet::new();
    for i in 0..LOGS {
        let text = format!("stock level low sku={i}");
        let mut record = logger.create_log_record();
        record.set_severity_number(Severity::Warn);
        record.set_body(AnyValue::from(text.clone()));
        record.add_attribute("sku", i as i64);
        logger.emit(record);
        bodies.insert(text);
    }
    let meter = meter_provider.meter("signals-test");
    let counter = meter.u64_counter("inventory.reservations").build();
    let histogram = meter
        .f64_histogram("inventory.lookup.duration")
        .with_unit("s")
        .build();
    for i in 0..40 {
        counter.add(i + 1, &[KeyValue::new("warehouse", format!("wh-{i}"))]);
    }
    for i in 0..10 {
        histogram.record(0.01 * (i + 1) as f64, &[KeyValue::new("shard", i)]);
    }
    sdk::shutdown_logs(logger_provider)
        .await
        .expect("log export succeeds");
    sdk::shutdown_meters(meter_provider)
        .await
        .expect("metric export succeeds");

    sampler
        .wait_for_export("all logs and metric points", WAIT, |d| {
            d.log_records().len() >= LOGS && d.data_point_count() >= 50
        })
        .await
        .expect("pass-through exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    let records = data.log_records();
    assert_eq!(
        records.len(),
        LOGS,
        "every trace-less log exported exactly once"
    );
    let exported: BTreeSet<String> = records
        .iter()
        .filter_map(|r| body_text(r.body.as_ref()))
        .collect();
    assert_eq!(exported, bodies, "bodies unchanged");
    assert!(
        records
            .iter()
            .all(|r| attribute_str(&r.attributes, CORRELATED).is_none()),
        "pass-through logs carry no correlation mark"
    );
    assert_eq!(
        data.data_point_count(),
        50,
        "every metric point exported exactly once"
    );
    let names: BTreeSet<&str> = data
        .metrics_list()
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["inventory.reservations", "inventory.lookup.duration"])
    );
    let total: i64 = data
        .metrics_list()
        .iter()
        .filter_map(|m| match &m.data {
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => Some(s),
            _ => None,
        })
        .flat_map(|s| &s.data_points)
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => v,
            _ => 0,
        })
        .sum();
    assert_eq!(total, (1..=40).sum::<i64>(), "counter values unchanged");
    assert!(data.spans().is_empty());
}

#[test]
fn body_text_reads_string_bodies_only() {
    use opentelemetry_proto::tonic::common::v1::AnyValue as Pb;
    let s = Pb {
        value: Some(any_value::Value::StringValue("x".into())),
    };
    assert_eq!(body_text(Some(&s)).as_deref(), Some("x"));
    let i = Pb {
        value: Some(any_value::Value::IntValue(1)),
    };
    assert_eq!(body_text(Some(&i)), None);
    assert_eq!(body_text(None), None);
}
