//! A closed interval of the log rollup as OTLP, ready for the exporter.
//!
//! Per resource, in resource key order:
//! - **Logs**: one `ResourceLogs` whose resource carries the resource's identity attributes,
//!   one scope named [`ROLLUP_SCOPE`], and one log record per (severity, template) group:
//!   the template as body, the group's severity, its first timestamp as time and the
//!   interval end as observed time, and the attributes [`COUNT_ATTRIBUTE`],
//!   [`TEMPLATE_ID_ATTRIBUTE`], [`FIRST_TIMESTAMP_ATTRIBUTE`], [`LAST_TIMESTAMP_ATTRIBUTE`],
//!   [`SAMPLES_ATTRIBUTE`] (when samples were kept), [`OVERFLOW_ATTRIBUTE`] (only on the
//!   overflow template) and [`ROLLUP_ATTRIBUTE`]. No trace context: a summary stands for
//!   many records.
//! - **Metrics**: the same resource and scope with one monotonic delta sum
//!   [`LOG_RECORDS_METRIC`] over `[interval start, interval end]`, one point per
//!   (`service.name`, severity, template id), so dashboards and alerts can count lines by
//!   template without a log backend.
//!
//! The metric's severity is the group's severity text, or else the name of its severity
//! number's range ([`severity_name`]). Two groups of a template whose severities give the
//! same label (`INFO` and `INFO2` without text, say) are one series, so they add into one
//! point: the metric's series are exactly its attribute sets, while the log records keep
//! the groups apart by severity number.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use otel_tail_shared::otlp::{kv, kv_bool, kv_int, kv_str};

use super::record::{RESOURCE_IDENTITY_ATTRIBUTES, SERVICE_NAME};
use super::{LogRollup, LogSummary, TemplateId};
use crate::rollup::metrics::ROLLUP_ATTRIBUTE;

/// Name of the instrumentation scope of every rolled-up log record and metric.
pub const ROLLUP_SCOPE: &str = "otel_tail.rollup";
/// The metric counting rolled-up log records.
pub const LOG_RECORDS_METRIC: &str = "log.records";
/// Log records in a summary (int).
pub const COUNT_ATTRIBUTE: &str = "log.count";
/// Template id, 16 lowercase hex digits (string), on summaries and metric points.
pub const TEMPLATE_ID_ATTRIBUTE: &str = "log.template.id";
/// Earliest record time of a summary, unix nanoseconds (int).
pub const FIRST_TIMESTAMP_ATTRIBUTE: &str = "log.first_timestamp";
/// Latest record time of a summary, unix nanoseconds (int).
pub const LAST_TIMESTAMP_ATTRIBUTE: &str = "log.last_timestamp";
/// Example bodies of a summary (array of strings).
pub const SAMPLES_ATTRIBUTE: &str = "log.samples";
/// Marks the summary of the lines that overflowed the template bound (bool).
pub const OVERFLOW_ATTRIBUTE: &str = "log.overflow";
/// Severity label of a metric point (string).
pub const SEVERITY_ATTRIBUTE: &str = "severity";

const METRIC_UNIT: &str = "{record}";
const METRIC_DESCRIPTION: &str = "Log records rolled up, by service, severity and template";

/// What [`LogRollup::flush`] produced for one interval; see the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogRollupOutput {
    /// One summary log record per (resource, severity, template) group.
    pub logs: ExportLogsServiceRequest,
    /// The `log.records` counts of the same groups.
    pub metrics: ExportMetricsServiceRequest,
    /// Log records counted in the interval: the sum of the summaries' counts.
    pub lines: u64,
    /// Summary log records in `logs`.
    pub summaries: usize,
}

impl LogRollup {
    /// Closes the interval `[interval_start_unix_nano, interval_end_unix_nano]` and returns
    /// it as OTLP logs and metrics (empty requests if nothing was added); see the module
    /// docs. Like [`LogRollup::drain`], starts a new interval and keeps the templates.
    pub fn flush(
        &mut self,
        interval_start_unix_nano: u64,
        interval_end_unix_nano: u64,
    ) -> LogRollupOutput {
        let mut output = LogRollupOutput::default();
        for resource in self.drain_resources() {
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == RESOURCE_IDENTITY_ATTRIBUTES[SERVICE_NAME])
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let mut counts: BTreeMap<(String, TemplateId), u64> = BTreeMap::new();
            let mut records = Vec::with_capacity(resource.summaries.len());
            for summary in resource.summaries {
                output.lines += summary.count;
                let severity = if summary.severity_text.is_empty() {
                    severity_name(summary.severity).to_owned()
                } else {
                    summary.severity_text.clone()
                };
                *counts.entry((severity, summary.template_id)).or_default() += summary.count;
                records.push(summary_record(summary, interval_end_unix_nano));
            }
            output.summaries += records.len();
            let data_points = counts
                .into_iter()
                .map(|((severity, template_id), count)| NumberDataPoint {
                    attributes: vec![
                        kv_str(RESOURCE_IDENTITY_ATTRIBUTES[SERVICE_NAME], service.clone()),
                        kv_str(SEVERITY_ATTRIBUTE, severity),
                        kv_str(TEMPLATE_ID_ATTRIBUTE, template_id_hex(template_id)),
                        kv_bool(ROLLUP_ATTRIBUTE, true),
                    ],
                    start_time_unix_nano: interval_start_unix_nano,
                    time_unix_nano: interval_end_unix_nano,
                    value: Some(number_data_point::Value::AsInt(int(count))),
                    ..Default::default()
                })
                .collect();
            let resource_attributes = Resource {
                attributes: resource.attributes,
                ..Default::default()
            };
            output.logs.resource_logs.push(ResourceLogs {
                resource: Some(resource_attributes.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            });
            output.metrics.resource_metrics.push(ResourceMetrics {
                resource: Some(resource_attributes),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: vec![Metric {
                        name: LOG_RECORDS_METRIC.to_owned(),
                        description: METRIC_DESCRIPTION.to_owned(),
                        unit: METRIC_UNIT.to_owned(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        output
    }
}

/// Name of the range of OTLP severity number `number` (`TRACE` for 1–4, `DEBUG` for 5–8,
/// `INFO` 9–12, `WARN` 13–16, `ERROR` 17–20, `FATAL` 21–24), `UNSPECIFIED` for 0 and for
/// numbers outside the defined ranges.
pub fn severity_name(number: i32) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "UNSPECIFIED",
    }
}

/// The summary log record of one group.
fn summary_record(summary: LogSummary, interval_end: u64) -> LogRecord {
    let mut attributes = vec![
        kv_int(COUNT_ATTRIBUTE, int(summary.count)),
        kv_str(TEMPLATE_ID_ATTRIBUTE, template_id_hex(summary.template_id)),
        kv_int(FIRST_TIMESTAMP_ATTRIBUTE, int(summary.first_time_unix_nano)),
        kv_int(LAST_TIMESTAMP_ATTRIBUTE, int(summary.last_time_unix_nano)),
    ];
    if !summary.samples.is_empty() {
        let values = summary
            .samples
            .into_iter()
            .map(|s| AnyValue {
                value: Some(Value::StringValue(s)),
            })
            .collect();
        attributes.push(kv(
            SAMPLES_ATTRIBUTE,
            Value::ArrayValue(ArrayValue { values }),
        ));
    }
    if summary.overflow {
        attributes.push(kv_bool(OVERFLOW_ATTRIBUTE, true));
    }
    attributes.push(kv_bool(ROLLUP_ATTRIBUTE, true));
    LogRecord {
        time_unix_nano: summary.first_time_unix_nano,
        observed_time_unix_nano: interval_end,
        severity_number: summary.severity,
        severity_text: summary.severity_text,
        body: Some(AnyValue {
            value: Some(Value::StringValue(summary.template)),
        }),
        attributes,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: ROLLUP_SCOPE.to_owned(),
        ..Default::default()
    }
}

/// A template id as 16 lowercase hex digits.
fn template_id_hex(id: TemplateId) -> String {
    format!("{:016x}", id.0)
}

/// OTLP ints are signed; counts and timestamps past `i64::MAX` saturate.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
