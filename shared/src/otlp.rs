//! Small helpers over the OTLP data model: ids, attribute builders, signals, validation,
//! counting and merging.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

use crate::receiver::Accepted;

/// A 16-byte trace id. All-zero ids are invalid per the OTLP spec.
pub type TraceId = [u8; 16];

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Log records.
    Logs,
    /// Metric data points.
    Metrics,
}

impl Signal {
    /// Label value used in metrics and paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    /// OTLP/HTTP path of the signal.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// The current time in OTLP's unit, unix nanoseconds (0 before 1970, saturated after 2554).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An attribute with any value: `key = value`.
pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string attribute.
pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// A boolean attribute.
pub fn kv_bool(key: &str, value: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(value))
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// Parses a trace id: exactly 16 bytes, not all zero.
pub fn trace_id(bytes: &[u8]) -> Option<TraceId> {
    let id: TraceId = bytes.try_into().ok()?;
    (id != [0; 16]).then_some(id)
}

fn valid_span_id(bytes: &[u8]) -> bool {
    bytes.len() == 8 && bytes != [0; 8]
}

/// Removes spans whose trace id or span id is malformed (wrong length or all zero) and
/// empty containers left behind; returns what was refused for `partial_success`.
pub fn sanitize_traces(request: &mut ExportTraceServiceRequest) -> Accepted {
    let mut bad_trace = 0i64;
    let mut bad_span = 0i64;
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|span| {
                if trace_id(&span.trace_id).is_none() {
                    bad_trace += 1;
                    false
                } else if !valid_span_id(&span.span_id) {
                    bad_span += 1;
                    false
                } else {
                    true
                }
            });
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    request
        .resource_spans
        .retain(|rs| !rs.scope_spans.is_empty());
    let mut accepted = Accepted::default();
    if bad_trace > 0 {
        accepted.merge(Accepted {
            rejected: bad_trace,
            message: format!("{bad_trace} span(s) with an all-zero or non-16-byte trace_id"),
        });
    }
    if bad_span > 0 {
        accepted.merge(Accepted {
            rejected: bad_span,
            message: format!("{bad_span} span(s) with an all-zero or non-8-byte span_id"),
        });
    }
    accepted
}

/// Removes log records whose trace id is present but malformed (not 16 bytes). An empty or
/// all-zero trace id means "no trace" and is kept.
pub fn sanitize_logs(request: &mut ExportLogsServiceRequest) -> Accepted {
    let mut bad = 0i64;
    for rl in &mut request.resource_logs {
        for sl in &mut rl.scope_logs {
            sl.log_records.retain(|log| {
                let ok = log.trace_id.is_empty() || log.trace_id.len() == 16;
                if !ok {
                    bad += 1;
                }
                ok
            });
        }
        rl.scope_logs.retain(|sl| !sl.log_records.is_empty());
    }
    request.resource_logs.retain(|rl| !rl.scope_logs.is_empty());
    if bad == 0 {
        return Accepted::default();
    }
    Accepted {
        rejected: bad,
        message: format!("{bad} log record(s) with a trace_id that is not 16 bytes"),
    }
}

/// Number of spans in a request.
pub fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Number of log records in a request.
pub fn log_count(request: &ExportLogsServiceRequest) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum()
}

/// Number of data points in a request (summaries, histograms and gauges count one per point).
pub fn data_point_count(request: &ExportMetricsServiceRequest) -> usize {
    request
        .resource_metrics
        .iter()
        .map(resource_data_points)
        .sum()
}

/// Data points of one resource's metrics.
pub fn resource_data_points(
    rm: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
) -> usize {
    rm.scope_metrics
        .iter()
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        })
        .sum()
}

// Held and kept data leaves the sampler in many small groups of the same few resources;
// merged, an export request carries each resource and scope once, which for typical SDK
// resources (a dozen attributes) is a large share of the output bytes.
macro_rules! merge_groups {
    ($name:ident, $group:ty, $scopes:ident, $items:ident) => {
        #[doc = concat!(
            "Merges `", stringify!($group), "` groups that share a resource (and schema URL), ",
            "and inside each the scope groups that share a scope, in first-seen order, so an ",
            "export request carries each resource and scope once."
        )]
        pub fn $name(groups: Vec<$group>) -> Vec<$group> {
            use prost::Message as _;
            let mut out: Vec<$group> = Vec::new();
            let mut by_resource: std::collections::HashMap<(Vec<u8>, String), usize> =
                std::collections::HashMap::new();
            let mut by_scope: std::collections::HashMap<(usize, Vec<u8>, String), usize> =
                std::collections::HashMap::new();
            for mut group in groups {
                let key = (
                    group.resource.as_ref().map(|r| r.encode_to_vec()).unwrap_or_default(),
                    std::mem::take(&mut group.schema_url),
                );
                let scopes = std::mem::take(&mut group.$scopes);
                let at = *by_resource.entry(key).or_insert_with_key(|key| {
                    group.schema_url = key.1.clone();
                    out.push(group);
                    out.len() - 1
                });
                for scope in scopes {
                    let scope_key = (
                        at,
                        scope.scope.as_ref().map(|s| s.encode_to_vec()).unwrap_or_default(),
                        scope.schema_url.clone(),
                    );
                    match by_scope.get(&scope_key) {
                        Some(&j) => out[at].$scopes[j].$items.extend(scope.$items),
                        None => {
                            by_scope.insert(scope_key, out[at].$scopes.len());
                            out[at].$scopes.push(scope);
                        }
                    }
                }
            }
            out
        }
    };
}

merge_groups!(
    merge_spans,
    opentelemetry_proto::tonic::trace::v1::ResourceSpans,
    scope_spans,
    spans
);
merge_groups!(
    merge_logs,
    opentelemetry_proto::tonic::logs::v1::ResourceLogs,
    scope_logs,
    log_records
);
merge_groups!(
    merge_metrics,
    opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    scope_metrics,
    metrics
);

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(trace: Vec<u8>, span_id: Vec<u8>) -> Span {
        Span {
            trace_id: trace,
            span_id,
            ..Default::default()
        }
    }

    #[test]
    fn sanitize_rejects_bad_ids_and_keeps_the_rest() {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(vec![1; 16], vec![1; 8]),
                        span(vec![0; 16], vec![1; 8]),
                        span(vec![1; 15], vec![1; 8]),
                        span(vec![1; 16], vec![0; 8]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let accepted = sanitize_traces(&mut req);
        assert_eq!(accepted.rejected, 3);
        assert!(
            accepted.message.contains("trace_id"),
            "{}",
            accepted.message
        );
        assert!(accepted.message.contains("span_id"), "{}", accepted.message);
        assert_eq!(span_count(&req), 1);
    }

    #[test]
    fn sanitize_drops_empty_containers() {
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(vec![0; 16], vec![1; 8])],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        sanitize_traces(&mut req);
        assert!(req.resource_spans.is_empty());
    }

    #[test]
    fn trace_id_parsing() {
        assert!(trace_id(&[0; 16]).is_none());
        assert!(trace_id(&[1; 8]).is_none());
        assert_eq!(trace_id(&[7; 16]), Some([7; 16]));
    }

    #[test]
    fn merge_joins_equal_resources_and_scopes_in_first_seen_order() {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let resource = |name: &str| crate::testing::resource(vec![kv_str("service.name", name)]);
        let group = |service: &str, scope: &str, n: u64| ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: scope.into(),
                    ..Default::default()
                }),
                log_records: vec![LogRecord {
                    time_unix_nano: n,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let merged = merge_logs(vec![
            group("a", "x", 1),
            group("b", "x", 2),
            group("a", "y", 3),
            group("a", "x", 4),
        ]);
        type Scopes = Vec<(String, Vec<u64>)>;
        let shape: Vec<(String, Scopes)> = merged
            .iter()
            .map(|rl| {
                (
                    format!("{:?}", rl.resource.as_ref().unwrap().attributes[0].value),
                    rl.scope_logs
                        .iter()
                        .map(|sl| {
                            (
                                sl.scope.as_ref().unwrap().name.clone(),
                                sl.log_records.iter().map(|r| r.time_unix_nano).collect(),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(shape.len(), 2);
        assert_eq!(
            shape[0].1,
            vec![("x".into(), vec![1, 4]), ("y".into(), vec![3])]
        );
        assert_eq!(shape[1].1, vec![("x".into(), vec![2])]);
    }
}
