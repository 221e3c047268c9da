//! Tests of the workload generator and the accounting, without a sampler.

use std::collections::HashSet;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};

use super::*;
use crate::export::{ExportedData, hex};
use crate::generate::{kv_int, kv_str};
use otel_tail_shared::otlp::kv_bool;

const SECOND: u64 = 1_000_000_000;
const NOW: u64 = 1_700_000_000 * SECOND;

fn small() -> WorkloadConfig {
    WorkloadConfig {
        services: 10,
        pods_per_service: 2,
        agents: 3,
        traces_per_sec: 100.0,
        error_share: 0.1,
        background_logs_per_pod_per_sec: 5.0,
        ..WorkloadConfig::default()
    }
}

fn body(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

#[test]
fn the_estate_has_the_configured_shape_and_a_few_hundred_templates() {
    let w = Workload::new(WorkloadConfig::default());
    assert_eq!(w.service_count(), 50);
    assert_eq!(w.pod_count(), 200);
    assert_eq!(w.template_count(), 410);
    let names: HashSet<&str> = w.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 50);
    assert_eq!(w.gateways.len(), 10);
}

#[test]
fn same_seed_same_data_and_every_placeholder_is_filled() {
    let a = Workload::new(small()).tick(NOW, NOW + SECOND);
    let b = Workload::new(small()).tick(NOW, NOW + SECOND);
    assert_eq!(a.traces, b.traces);
    assert_eq!(a.logs, b.logs);
    assert_eq!(a.metrics, b.metrics);
    assert_eq!(a.trace_count, 100);
    let records: Vec<&LogRecord> = a
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .collect();
    assert!(records.iter().all(|r| !body(r).contains('{')));
    let with_trace = records.iter().filter(|r| !r.trace_id.is_empty()).count();
    assert!(with_trace > 0 && with_trace < records.len());
    assert!(a.traces.len() <= 3 && a.logs.len() <= 3 && a.metrics.len() == 3);
}

#[test]
fn spans_lie_in_the_tick_and_failing_traces_have_an_error_span_and_log() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    let spans: Vec<&Span> = tick
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    assert!(spans.iter().all(|s| s.start_time_unix_nano >= NOW
        && s.end_time_unix_nano <= NOW + SECOND
        && s.start_time_unix_nano < s.end_time_unix_nano));
    let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
    assert_eq!(roots, tick.trace_count);
    let error_traces: HashSet<&[u8]> = spans
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.code == status::StatusCode::Error as i32)
        })
        .map(|s| s.trace_id.as_slice())
        .collect();
    assert_eq!(error_traces.len(), tick.error_traces);
    assert!(tick.error_traces > 0);
    let error_logs = tick
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .filter(|r| r.severity_number == SeverityNumber::Error as i32)
        .count();
    assert_eq!(error_logs, tick.error_traces);
}

#[test]
fn request_counter_has_one_unit_point_per_server_span() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    let mut ledger = InputLedger::default();
    for r in &tick.metrics {
        ledger.metrics_sent(r);
    }
    for r in &tick.traces {
        ledger.traces_sent(r);
    }
    let servers = tick
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|s| s.kind == span::SpanKind::Server as i32)
        .count();
    assert_eq!(ledger.requests_sum, servers as f64);
    assert_eq!(ledger.points_by_metric[REQUESTS_METRIC], servers as u64);
    assert_eq!(ledger.points_by_metric[MEMORY_METRIC], 20);
    assert!(ledger.points_by_metric.contains_key(PAGE_VIEWS_METRIC));
    assert!(ledger.points_by_metric.contains_key(DB_METRIC));
    // Every duration point has an exemplar; some counter points do.
    assert!(ledger.exemplar_points.len() as u64 > ledger.points_by_metric[DURATION_METRIC]);
}

/// Marks every item of a request raw (or, with `rollup`, as a summary) the way the
/// sampler does, so the accounting can be checked without a sampler.
fn as_raw_logs(mut request: ExportLogsServiceRequest) -> ExportLogsServiceRequest {
    for record in request
        .resource_logs
        .iter_mut()
        .flat_map(|rl| &mut rl.scope_logs)
        .flat_map(|sl| &mut sl.log_records)
    {
        record
            .attributes
            .push(kv_str(CORRELATED_ATTRIBUTE, "window"));
    }
    request
}

fn as_raw_metrics(mut request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    for metric in request
        .resource_metrics
        .iter_mut()
        .flat_map(|rm| &mut rm.scope_metrics)
        .flat_map(|sm| &mut sm.metrics)
    {
        let mark = || kv_str(CORRELATED_ATTRIBUTE, "exemplar");
        match &mut metric.data {
            Some(metric::Data::Sum(s)) => s
                .data_points
                .iter_mut()
                .for_each(|p| p.attributes.push(mark())),
            Some(metric::Data::Gauge(g)) => g
                .data_points
                .iter_mut()
                .for_each(|p| p.attributes.push(mark())),
            Some(metric::Data::Histogram(h)) => h
                .data_points
                .iter_mut()
                .for_each(|p| p.attributes.push(mark())),
            _ => {}
        }
    }
    request
}

/// The span metrics the sampler's own span rollup makes of `traces`.
fn span_metrics_of(traces: &[ExportTraceServiceRequest]) -> ExportMetricsServiceRequest {
    use otel_tail_sampler::rollup::spans::{SpanMetricsBuilder, SpanRollup};
    let config = otel_tail_shared::config::rollup::SpanMetricsConfig::default();
    let builder = SpanMetricsBuilder::new(&config);
    let mut rollup = SpanRollup::new(&config).expect("default config");
    for request in traces {
        for rm in builder.aggregate(request, NOW).resources {
            rollup.add(&rm, NOW);
        }
    }
    rollup.flush(NOW, NOW + SECOND)
}

#[test]
fn everything_raw_adds_up_and_finds_every_correlated_item_but_misses_the_target() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    let mut ledger = InputLedger::default();
    tick.traces.iter().for_each(|r| ledger.traces_sent(r));
    tick.logs.iter().for_each(|r| ledger.logs_sent(r));
    tick.metrics.iter().for_each(|r| ledger.metrics_sent(r));
    let mut exported = ExportedData {
        traces: tick.traces.clone(),
        logs: tick.logs.iter().cloned().map(as_raw_logs).collect(),
        metrics: tick.metrics.iter().cloned().map(as_raw_metrics).collect(),
    };
    let uncounted = check(&ledger, &Output::of(&exported), 90.0);
    assert!(
        uncounted
            .iter()
            .any(|f| f.contains("span metrics count 0 spans")),
        "{uncounted:?}"
    );
    exported.metrics.push(span_metrics_of(&tick.traces));
    let output = Output::of(&exported);
    assert_eq!(output.span_metrics_calls, ledger.traces.items);
    assert_eq!(output.raw_log_count(), ledger.logs.items);
    assert_eq!(output.raw_point_count(), ledger.metrics.items);
    let (logs, points) = expected_raw(&ledger, &output);
    assert_eq!(
        logs as usize,
        ledger.trace_logs.values().map(Vec::len).sum::<usize>()
    );
    assert_eq!(points as usize, ledger.exemplar_points.len());
    let failures = check(&ledger, &output, 90.0);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("below 90%"), "{failures:?}");
    assert!(logs_and_metrics_reduction(&ledger, &output) < 0.0);
}

#[test]
fn the_report_shows_totals_that_add_up_as_ok_and_others_as_mismatch() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    let mut ledger = InputLedger::default();
    tick.logs.iter().for_each(|r| ledger.logs_sent(r));
    let exported = ExportedData {
        logs: tick.logs.iter().cloned().map(as_raw_logs).collect(),
        ..ExportedData::default()
    };
    let text = report::report(&ledger, &Output::of(&exported));
    assert!(text.starts_with("\n== reduction"), "{text}");
    assert!(text.ends_with('\n'), "{text}");
    let lines = format!(
        "log lines: in {}",
        report::with_thousands(ledger.logs.items)
    );
    let line = text
        .lines()
        .find(|l| l.contains(&lines))
        .expect("log line total");
    assert!(line.ends_with(" OK"), "{line}");

    ledger.logs.items += 1;
    let text = report::report(&ledger, &Output::of(&exported));
    let line = text
        .lines()
        .find(|l| l.contains("log lines: in"))
        .expect("log line total");
    assert!(line.ends_with(" MISMATCH"), "{line}");
    assert_eq!(report::with_thousands(1_234_567), "1,234,567");
    assert_eq!(report::with_thousands(999), "999");
}

#[test]
fn a_missing_correlated_log_and_a_short_total_are_reported() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    let mut ledger = InputLedger::default();
    tick.logs.iter().for_each(|r| ledger.logs_sent(r));
    let mut logs: Vec<ExportLogsServiceRequest> =
        tick.logs.iter().cloned().map(as_raw_logs).collect();
    // Drop one record of a trace that was exported.
    let (trace, record) = logs
        .iter_mut()
        .flat_map(|r| &mut r.resource_logs)
        .flat_map(|rl| &mut rl.scope_logs)
        .find_map(|sl| {
            let i = sl.log_records.iter().position(|r| !r.trace_id.is_empty())?;
            Some(sl.log_records.remove(i)).map(|r| (r.trace_id.clone(), r))
        })
        .expect("a record with a trace id");
    let exported = ExportedData {
        traces: tick.traces.clone(),
        logs,
        metrics: Vec::new(),
    };
    let output = Output::of(&exported);
    assert!(output.kept_traces.contains(&hex(&trace)));
    let failures = check(&ledger, &output, 0.0);
    assert!(
        failures.iter().any(|f| f.starts_with("log lines:")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.contains("not in the raw output") && f.contains(&hex(&trace))),
        "{failures:?} (dropped {:?})",
        body(&record)
    );
}

#[test]
fn summaries_count_their_lines() {
    let summary = LogRecord {
        attributes: vec![
            kv_bool(ROLLUP_ATTRIBUTE, true),
            kv_int(LOG_COUNT_ATTRIBUTE, 41),
        ],
        ..Default::default()
    };
    let exported = ExportedData {
        logs: vec![ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![summary],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }],
        ..ExportedData::default()
    };
    let output = Output::of(&exported);
    assert_eq!(output.summary_records, 1);
    assert_eq!(output.summarized_lines, 41);
    assert_eq!(output.raw_log_count(), 0);
}

#[test]
fn merging_equal_resources_removes_repeated_framing_only() {
    let mut w = Workload::new(small());
    let tick = w.tick(NOW, NOW + SECOND);
    // The same logs exported once per resource entry, twice over.
    let split: Vec<ExportLogsServiceRequest> = tick
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|rl| {
            let half = rl.scope_logs[0].log_records.len() / 2;
            let (a, b) = rl.scope_logs[0].log_records.split_at(half);
            [a.to_vec(), b.to_vec()].map(|log_records| ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: rl.resource.clone(),
                    scope_logs: vec![ScopeLogs {
                        scope: rl.scope_logs[0].scope.clone(),
                        log_records,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            })
        })
        .collect();
    let as_sent = Output::of(&ExportedData {
        logs: tick.logs.clone(),
        ..ExportedData::default()
    });
    let split = Output::of(&ExportedData {
        logs: split,
        ..ExportedData::default()
    });
    assert_eq!(split.logs.items, as_sent.logs.items);
    assert!(split.logs.bytes > as_sent.logs.bytes);
    assert_eq!(split.merged_bytes[1], as_sent.merged_bytes[1]);
    assert!(as_sent.merged_bytes[1] <= as_sent.logs.bytes);
}
