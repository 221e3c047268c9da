//! Accounting of what went in and what came out: the [`InputLedger`] of acknowledged
//! requests, the classified [`Output`] of the sampler, and the [`Volume`] (items and bytes)
//! of each. Items are identified without adding anything to them: a log record by its
//! trace id, span id, time and body ([`log_key`]); a data point by its metric, pod, time and
//! attributes ([`point_key`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::otlp;
use prost::Message;

use super::{
    CORRELATED_ATTRIBUTE, LOG_COUNT_ATTRIBUTE, LOG_RECORDS_METRIC, OVERFLOW_ATTRIBUTE,
    REQUESTS_METRIC, ROLLUP_ATTRIBUTE, SPAN_CALLS_METRIC, SPAN_METRICS_PREFIX,
    TEMPLATE_ID_ATTRIBUTE,
};
use crate::export::{ExportedData, attribute_str, hex};

/// Identity of a log record: trace id, span id, time and body.
pub fn log_key(record: &LogRecord) -> u64 {
    let mut h = DefaultHasher::new();
    record.trace_id.hash(&mut h);
    record.span_id.hash(&mut h);
    record.time_unix_nano.hash(&mut h);
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.hash(&mut h),
        other => format!("{other:?}").hash(&mut h),
    }
    h.finish()
}

/// Identity of a data point: metric name, the pod's `service.instance.id`, time and its
/// attributes other than the correlation mark.
pub fn point_key(
    metric: &str,
    resource: Option<&Resource>,
    time: u64,
    attributes: &[KeyValue],
) -> u64 {
    let mut h = DefaultHasher::new();
    metric.hash(&mut h);
    resource
        .and_then(|r| attribute_str(&r.attributes, "service.instance.id"))
        .hash(&mut h);
    time.hash(&mut h);
    let mut encoded: Vec<Vec<u8>> = attributes
        .iter()
        .filter(|kv| kv.key != CORRELATED_ATTRIBUTE)
        .map(Message::encode_to_vec)
        .collect();
    encoded.sort();
    encoded.hash(&mut h);
    h.finish()
}

/// One data point of any kind, as the accounting needs it.
struct PointView<'a> {
    attributes: &'a [KeyValue],
    time: u64,
    exemplar_traces: Vec<&'a [u8]>,
    /// The value of a number point, as a float (None for other kinds).
    number: Option<f64>,
    /// Encoded size of the point alone.
    bytes: usize,
}

fn points(metric: &Metric) -> Vec<PointView<'_>> {
    fn traces(exemplars: &[Exemplar]) -> Vec<&[u8]> {
        exemplars.iter().map(|e| e.trace_id.as_slice()).collect()
    }
    fn number(p: &NumberDataPoint) -> Option<f64> {
        match p.value? {
            number_data_point::Value::AsInt(i) => Some(i as f64),
            number_data_point::Value::AsDouble(d) => Some(d),
        }
    }
    match &metric.data {
        Some(metric::Data::Sum(Sum { data_points, .. }))
        | Some(metric::Data::Gauge(Gauge { data_points })) => data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: number(p),
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: Vec::new(),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        None => Vec::new(),
    }
}

/// Items and protobuf bytes of one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volume {
    /// Spans, log records or data points.
    pub items: u64,
    /// Encoded size of the export requests.
    pub bytes: u64,
}

impl Volume {
    /// Adds another volume.
    pub fn add(&mut self, other: Volume) {
        self.items += other.items;
        self.bytes += other.bytes;
    }

    /// `1 - self/input` in percent of bytes (0 when the input is empty).
    pub fn reduction_of(&self, input: &Volume) -> f64 {
        if input.bytes == 0 {
            0.0
        } else {
            100.0 * (1.0 - self.bytes as f64 / input.bytes as f64)
        }
    }
}

/// What the sender had acknowledged, and what of it the checks need.
#[derive(Debug, Clone, Default)]
pub struct InputLedger {
    /// Spans sent.
    pub traces: Volume,
    /// Log records sent.
    pub logs: Volume,
    /// Data points sent.
    pub metrics: Volume,
    /// Traces sent.
    pub trace_count: u64,
    /// Traces with a failing span.
    pub error_traces: u64,
    /// Log records with a trace id, by hex trace id: their [`log_key`]s.
    pub trace_logs: HashMap<String, Vec<u64>>,
    /// Points with exemplars: their [`point_key`] and the hex trace ids of the exemplars.
    pub exemplar_points: Vec<(u64, Vec<String>)>,
    /// Sum of the values of [`REQUESTS_METRIC`] points.
    pub requests_sum: f64,
    /// Points sent per metric name.
    pub points_by_metric: BTreeMap<String, u64>,
}

impl InputLedger {
    /// Records an acknowledged trace request.
    pub fn traces_sent(&mut self, request: &ExportTraceServiceRequest) {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.traces.add(Volume {
            items: spans as u64,
            bytes: request.encoded_len() as u64,
        });
    }

    /// Records an acknowledged log request.
    pub fn logs_sent(&mut self, request: &ExportLogsServiceRequest) {
        let mut items = 0;
        for record in request
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
        {
            items += 1;
            if !record.trace_id.is_empty() {
                self.trace_logs
                    .entry(hex(&record.trace_id))
                    .or_default()
                    .push(log_key(record));
            }
        }
        self.logs.add(Volume {
            items,
            bytes: request.encoded_len() as u64,
        });
    }

    /// Records an acknowledged metric request.
    pub fn metrics_sent(&mut self, request: &ExportMetricsServiceRequest) {
        let mut items = 0;
        for rm in &request.resource_metrics {
            for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                let points = points(metric);
                *self
                    .points_by_metric
                    .entry(metric.name.clone())
                    .or_default() += points.len() as u64;
                for p in points {
                    items += 1;
                    if metric.name == REQUESTS_METRIC {
                        self.requests_sum += p.number.unwrap_or(0.0);
                    }
                    if !p.exemplar_traces.is_empty() {
                        let key =
                            point_key(&metric.name, rm.resource.as_ref(), p.time, p.attributes);
                        let traces = p.exemplar_traces.iter().map(|t| hex(t)).collect();
                        self.exemplar_points.push((key, traces));
                    }
                }
            }
        }
        self.metrics.add(Volume {
            items,
            bytes: request.encoded_len() as u64,
        });
    }
}

/// Raw items by correlation reason (`trace_id`, `exemplar`, `window`).
pub type ByReason = BTreeMap<String, u64>;

/// What the sampler exported, classified.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exported spans.
    pub traces: Volume,
    /// Exported log records (raw and summaries).
    pub logs: Volume,
    /// The log rollup's `log.records` metric (exported as metrics, produced from logs).
    pub log_metrics: Volume,
    /// Bytes of traces, logs and metrics (with `log.records`, without span metrics) had each
    /// signal been exported
    /// as one request with its entries of equal resource and scope merged: the output
    /// without the resource and scope framing repeated across and within export requests.
    pub merged_bytes: [u64; 3],
    /// Exported data points other than `log.records` and span metrics (raw and rolled up).
    pub metrics: Volume,
    /// Span metrics (`traces.span.metrics.*`) exported: points and bytes.
    pub span_metrics: Volume,
    /// Sum of `traces.span.metrics.calls`: the spans the span metrics count.
    pub span_metrics_calls: u64,
    /// What the log and metric output consists of, by kind of item: items and the
    /// encoded size of the items alone (without resource and scope framing).
    pub parts: BTreeMap<&'static str, Volume>,
    /// Hex ids of the exported (kept) traces.
    pub kept_traces: HashSet<String>,
    /// Kept traces by the `tailsampling.policy` of their spans.
    pub kept_by_policy: BTreeMap<String, u64>,
    /// Raw log records by reason.
    pub raw_logs: ByReason,
    /// [`log_key`]s of the raw log records.
    pub raw_log_keys: HashSet<u64>,
    /// Hex trace ids of raw log records marked `trace_id`.
    pub trace_id_marked: Vec<String>,
    /// Summary log records.
    pub summary_records: u64,
    /// Distinct `log.template.id`s of the summaries.
    pub template_ids: HashSet<String>,
    /// Sum of the summaries' `log.count`.
    pub summarized_lines: u64,
    /// Sum of the `log.records` metric's values.
    pub log_records_metric_sum: f64,
    /// Log records with neither mark (pass-through).
    pub unmarked_logs: u64,
    /// Raw data points by reason.
    pub raw_points: ByReason,
    /// [`point_key`]s of the raw data points.
    pub raw_point_keys: HashSet<u64>,
    /// Rolled-up data points (other than `log.records`).
    pub rollup_points: u64,
    /// Rolled-up points per metric name.
    pub rollup_points_by_metric: BTreeMap<String, u64>,
    /// Points of overflow series (cardinality limit reached), per metric name.
    pub overflow_points: BTreeMap<String, u64>,
    /// Data points with neither mark (pass-through).
    pub unmarked_points: u64,
    /// [`REQUESTS_METRIC`]: sum of raw values.
    pub requests_raw_sum: f64,
    /// [`REQUESTS_METRIC`]: sum of rolled-up values.
    pub requests_rollup_sum: f64,
    /// [`REQUESTS_METRIC`]: sum of unmarked values.
    pub requests_unmarked_sum: f64,
}

impl Output {
    /// Classifies everything in `data`.
    pub fn of(data: &ExportedData) -> Output {
        let mut out = Output::default();
        for request in &data.traces {
            let mut spans = 0;
            for rs in &request.resource_spans {
                for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    spans += 1;
                    let trace = hex(&span.trace_id);
                    if span.parent_span_id.is_empty() {
                        let policy =
                            attribute_str(&span.attributes, crate::export::POLICY_ATTRIBUTE)
                                .unwrap_or_else(|| "(none)".into());
                        *out.kept_by_policy.entry(policy).or_default() += 1;
                    }
                    out.kept_traces.insert(trace);
                }
            }
            out.traces.add(Volume {
                items: spans,
                bytes: request.encoded_len() as u64,
            });
        }
        for request in &data.logs {
            let mut items = 0;
            for record in request
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .flat_map(|sl| &sl.log_records)
            {
                items += 1;
                let part = if is_true(&record.attributes, ROLLUP_ATTRIBUTE) {
                    PART_SUMMARIES
                } else if record
                    .attributes
                    .iter()
                    .any(|kv| kv.key == CORRELATED_ATTRIBUTE)
                {
                    PART_RAW_LOGS
                } else {
                    PART_UNMARKED_LOGS
                };
                out.parts.entry(part).or_default().add(Volume {
                    items: 1,
                    bytes: record.encoded_len() as u64,
                });
                if is_true(&record.attributes, ROLLUP_ATTRIBUTE) {
                    out.summary_records += 1;
                    out.template_ids
                        .extend(attribute_str(&record.attributes, TEMPLATE_ID_ATTRIBUTE));
                    out.summarized_lines += int_attribute(&record.attributes, LOG_COUNT_ATTRIBUTE);
                } else if let Some(reason) = attribute_str(&record.attributes, CORRELATED_ATTRIBUTE)
                {
                    *out.raw_logs.entry(reason.clone()).or_default() += 1;
                    if reason == "trace_id" {
                        out.trace_id_marked.push(hex(&record.trace_id));
                    }
                    out.raw_log_keys.insert(log_key(record));
                } else {
                    out.unmarked_logs += 1;
                }
            }
            out.logs.add(Volume {
                items,
                bytes: request.encoded_len() as u64,
            });
        }
        for request in &data.metrics {
            let from_logs = select_metrics(request, |name| name == LOG_RECORDS_METRIC);
            let from_spans = select_metrics(request, |name| name.starts_with(SPAN_METRICS_PREFIX));
            let rest = select_metrics(request, |name| {
                name != LOG_RECORDS_METRIC && !name.starts_with(SPAN_METRICS_PREFIX)
            });
            out.log_metrics.add(Volume {
                items: count_points(&from_logs),
                bytes: from_logs.encoded_len() as u64,
            });
            out.span_metrics.add(Volume {
                items: count_points(&from_spans),
                bytes: from_spans.encoded_len() as u64,
            });
            out.metrics.add(Volume {
                items: count_points(&rest),
                bytes: rest.encoded_len() as u64,
            });
            for rm in &request.resource_metrics {
                for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                    if metric.name.starts_with(SPAN_METRICS_PREFIX) {
                        if metric.name == SPAN_CALLS_METRIC {
                            out.span_metrics_calls += points(metric)
                                .iter()
                                .map(|p| p.number.unwrap_or(0.0) as u64)
                                .sum::<u64>();
                        }
                        continue;
                    }
                    for p in points(metric) {
                        let rolled = is_true(p.attributes, ROLLUP_ATTRIBUTE);
                        let reason = attribute_str(p.attributes, CORRELATED_ATTRIBUTE);
                        let part = if metric.name == LOG_RECORDS_METRIC {
                            PART_LOG_RECORDS
                        } else if rolled {
                            PART_ROLLED_POINTS
                        } else if reason.is_some() {
                            PART_RAW_POINTS
                        } else {
                            PART_UNMARKED_POINTS
                        };
                        out.parts.entry(part).or_default().add(Volume {
                            items: 1,
                            bytes: p.bytes as u64,
                        });
                        if metric.name == LOG_RECORDS_METRIC {
                            out.log_records_metric_sum += p.number.unwrap_or(0.0);
                            continue;
                        }
                        let requests = metric.name == REQUESTS_METRIC;
                        let value = p.number.unwrap_or(0.0);
                        if rolled {
                            out.rollup_points += 1;
                            *out.rollup_points_by_metric
                                .entry(metric.name.clone())
                                .or_default() += 1;
                            if is_true(p.attributes, OVERFLOW_ATTRIBUTE) {
                                *out.overflow_points.entry(metric.name.clone()).or_default() += 1;
                            }
                            if requests {
                                out.requests_rollup_sum += value;
                            }
                        } else if let Some(reason) = reason {
                            *out.raw_points.entry(reason).or_default() += 1;
                            out.raw_point_keys.insert(point_key(
                                &metric.name,
                                rm.resource.as_ref(),
                                p.time,
                                p.attributes,
                            ));
                            if requests {
                                out.requests_raw_sum += value;
                            }
                        } else {
                            out.unmarked_points += 1;
                            if requests {
                                out.requests_unmarked_sum += value;
                            }
                        }
                    }
                }
            }
        }
        out.merged_bytes = merged_bytes(data);
        out
    }

    /// Log records kept raw.
    pub fn raw_log_count(&self) -> u64 {
        self.raw_logs.values().sum()
    }

    /// Data points kept raw.
    pub fn raw_point_count(&self) -> u64 {
        self.raw_points.values().sum()
    }
}

/// [`Output::parts`]: raw log records.
pub const PART_RAW_LOGS: &str = "raw log records";
/// [`Output::parts`]: log summaries.
pub const PART_SUMMARIES: &str = "log summaries";
/// [`Output::parts`]: log records with neither mark.
pub const PART_UNMARKED_LOGS: &str = "unmarked log records";
/// [`Output::parts`]: points of the log rollup's `log.records` metric.
pub const PART_LOG_RECORDS: &str = "log.records points";
/// [`Output::parts`]: raw data points.
pub const PART_RAW_POINTS: &str = "raw data points";
/// [`Output::parts`]: rolled-up data points.
pub const PART_ROLLED_POINTS: &str = "rolled-up data points";
/// [`Output::parts`]: data points with neither mark.
pub const PART_UNMARKED_POINTS: &str = "unmarked data points";

/// The metrics of an export request whose name `keep` accepts, with the resources and
/// scopes they need, so each kind's bytes can be told apart.
fn select_metrics(
    request: &ExportMetricsServiceRequest,
    keep: impl Fn(&str) -> bool,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: request
            .resource_metrics
            .iter()
            .filter_map(|rm| {
                let scope_metrics: Vec<ScopeMetrics> = rm
                    .scope_metrics
                    .iter()
                    .filter_map(|sm| {
                        let metrics: Vec<Metric> = sm
                            .metrics
                            .iter()
                            .filter(|m| keep(&m.name))
                            .cloned()
                            .collect();
                        (!metrics.is_empty()).then(|| ScopeMetrics {
                            scope: sm.scope.clone(),
                            metrics,
                            schema_url: sm.schema_url.clone(),
                        })
                    })
                    .collect();
                (!scope_metrics.is_empty()).then(|| ResourceMetrics {
                    resource: rm.resource.clone(),
                    scope_metrics,
                    schema_url: rm.schema_url.clone(),
                })
            })
            .collect(),
    }
}

/// See [`Output::merged_bytes`]: each signal as one request, equal resources and scopes
/// merged with the sampler's own [`otlp::merge_spans`] and friends.
fn merged_bytes(data: &ExportedData) -> [u64; 3] {
    let traces = ExportTraceServiceRequest {
        resource_spans: otlp::merge_spans(
            data.traces
                .iter()
                .flat_map(|r| r.resource_spans.clone())
                .collect(),
        ),
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: otlp::merge_logs(
            data.logs
                .iter()
                .flat_map(|r| r.resource_logs.clone())
                .collect(),
        ),
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: otlp::merge_metrics(
            data.metrics
                .iter()
                .flat_map(|r| {
                    select_metrics(r, |name| !name.starts_with(SPAN_METRICS_PREFIX))
                        .resource_metrics
                })
                .collect(),
        ),
    };
    [
        traces.encoded_len() as u64,
        logs.encoded_len() as u64,
        metrics.encoded_len() as u64,
    ]
}

fn count_points(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| crate::export::data_points(m) as u64)
        .sum()
}

fn is_true(attributes: &[KeyValue], key: &str) -> bool {
    attributes.iter().any(|kv| {
        kv.key == key
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::BoolValue(true))
            )
    })
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> u64 {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => u64::try_from(*i).ok(),
            _ => None,
        })
        .unwrap_or(0)
}
