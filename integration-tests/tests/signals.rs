//! Logs and metrics through the sampler, sent by the real OpenTelemetry Rust SDK:
//! logs with a trace id follow their trace's decision; logs without one and all
//! metrics pass through without loss.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Span as _, SpanContext, Status, Tracer, TracerProvider as _};
use opentelemetry_proto::tonic::common::v1::any_value;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::export::hex;
use otel_tail_integration_tests::sdk::{self, Transport};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn start() -> SamplerProcess {
    SamplerProcess::start(json!({
        "sampler": {"decision_wait": "1s", "policies": [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
        ]},
    }))
    .await
    .expect("sampler starts")
}

fn body_text(body: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match body?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_with_a_trace_id_follow_their_trace() {
    let sampler = start().await;
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
        .wait_for_export("logs of the kept traces", WAIT, |d| {
            d.log_records().len() >= kept.len() * 3
        })
        .await
        .expect("kept traces' logs exported");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = sampler.settle(WAIT).await.expect("settles");
    assert_eq!(data.trace_ids(), kept, "only the error traces are kept");
    let records = data.log_records();
    assert_eq!(
        records.len(),
        kept.len() * 3,
        "every log of a kept trace, once"
    );
    let log_traces: BTreeSet<String> = records.iter().map(|r| hex(&r.trace_id)).collect();
    assert_eq!(log_traces, kept);
    assert!(log_traces.is_disjoint(&dropped));
    for record in records {
        let body = body_text(record.body.as_ref()).expect("string body");
        assert!(
            body.starts_with(&format!("trace {}", hex(&record.trace_id))),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceless_logs_and_metrics_pass_through_without_loss() {
    const LOGS: usize = 250;
    let sampler = start().await;
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
