//! Divides a decoded OTLP request among ring members, keeping the resource and scope
//! structure: what the router's wire-level splitter does, for requests the sampler has
//! decoded already. Items route exactly as the router routes them (same [`RouteKey`]s):
//! spans and log records with a valid trace id by trace id, other log records by resource
//! identity, metrics whole by series key.
//!
//! The common case — every item owned by one member — returns the request untouched.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use otel_tail_shared::otlp::{self, TraceId};
use otel_tail_shared::split::{RouteKey, metric_series_key, resource_identity_key};

/// Partitions spans by trace id. `owner` maps a route key to a member index; spans with
/// an invalid trace id (receivers remove those first) go to `fallback`. Returns one
/// request per owner, in owner order.
pub fn decoded_traces_by_owner(
    request: ExportTraceServiceRequest,
    fallback: usize,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<(usize, ExportTraceServiceRequest)> {
    let owners = owners_of_traces(&request, fallback, owner);
    if let Some(single) = single_owner(&owners) {
        return vec![(single, request)];
    }
    let mut next = owners.into_iter();
    let mut out: BTreeMap<usize, ExportTraceServiceRequest> = BTreeMap::new();
    for rs in request.resource_spans {
        let mut per_owner: BTreeMap<usize, Vec<ScopeSpans>> = BTreeMap::new();
        for ss in rs.scope_spans {
            let mut scoped: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for span in ss.spans {
                scoped
                    .entry(next.next().unwrap_or(fallback))
                    .or_default()
                    .push(span);
            }
            for (o, spans) in scoped {
                per_owner.entry(o).or_default().push(ScopeSpans {
                    scope: ss.scope.clone(),
                    spans,
                    schema_url: ss.schema_url.clone(),
                });
            }
        }
        for (o, scope_spans) in per_owner {
            out.entry(o)
                .or_default()
                .resource_spans
                .push(ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans,
                    schema_url: rs.schema_url.clone(),
                });
        }
    }
    out.into_iter().collect()
}

/// Partitions log records: by trace id when they carry a valid one, else by the identity
/// of their resource.
pub fn decoded_logs_by_owner(
    request: ExportLogsServiceRequest,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<(usize, ExportLogsServiceRequest)> {
    let owners = owners_of_logs(&request, owner);
    if let Some(single) = single_owner(&owners) {
        return vec![(single, request)];
    }
    let mut next = owners.into_iter();
    let mut out: BTreeMap<usize, ExportLogsServiceRequest> = BTreeMap::new();
    for rl in request.resource_logs {
        let mut per_owner: BTreeMap<usize, Vec<ScopeLogs>> = BTreeMap::new();
        for sl in rl.scope_logs {
            let mut scoped: BTreeMap<usize, Vec<LogRecord>> = BTreeMap::new();
            for record in sl.log_records {
                scoped
                    .entry(next.next().unwrap_or_default())
                    .or_default()
                    .push(record);
            }
            for (o, log_records) in scoped {
                per_owner.entry(o).or_default().push(ScopeLogs {
                    scope: sl.scope.clone(),
                    log_records,
                    schema_url: sl.schema_url.clone(),
                });
            }
        }
        for (o, scope_logs) in per_owner {
            out.entry(o).or_default().resource_logs.push(ResourceLogs {
                resource: rl.resource.clone(),
                scope_logs,
                schema_url: rl.schema_url.clone(),
            });
        }
    }
    out.into_iter().collect()
}

/// Partitions metrics: each metric (with all its data points) by its series key.
pub fn decoded_metrics_by_owner(
    request: ExportMetricsServiceRequest,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<(usize, ExportMetricsServiceRequest)> {
    let owners = owners_of_metrics(&request, owner);
    if let Some(single) = single_owner(&owners) {
        return vec![(single, request)];
    }
    let mut next = owners.into_iter();
    let mut out: BTreeMap<usize, ExportMetricsServiceRequest> = BTreeMap::new();
    for rm in request.resource_metrics {
        let mut per_owner: BTreeMap<usize, Vec<ScopeMetrics>> = BTreeMap::new();
        for sm in rm.scope_metrics {
            let mut scoped: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for metric in sm.metrics {
                scoped
                    .entry(next.next().unwrap_or_default())
                    .or_default()
                    .push(metric);
            }
            for (o, metrics) in scoped {
                per_owner.entry(o).or_default().push(ScopeMetrics {
                    scope: sm.scope.clone(),
                    metrics,
                    schema_url: sm.schema_url.clone(),
                });
            }
        }
        for (o, scope_metrics) in per_owner {
            out.entry(o)
                .or_default()
                .resource_metrics
                .push(ResourceMetrics {
                    resource: rm.resource.clone(),
                    scope_metrics,
                    schema_url: rm.schema_url.clone(),
                });
        }
    }
    out.into_iter().collect()
}

/// The owner of each span, in order; spans without a valid trace id get `fallback`.
pub fn owners_of_traces(
    request: &ExportTraceServiceRequest,
    fallback: usize,
    mut owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<usize> {
    let mut owners = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            owners.extend(ss.spans.iter().map(|span| {
                otlp::trace_id(&span.trace_id).map_or(fallback, |t| owner(RouteKey::Trace(t)))
            }));
        }
    }
    owners
}

/// The owner of each log record, in order.
pub fn owners_of_logs(
    request: &ExportLogsServiceRequest,
    mut owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<usize> {
    let mut owners = Vec::new();
    let mut key = Vec::new();
    for rl in &request.resource_logs {
        let mut resource_owner = None;
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                owners.push(match otlp::trace_id(&record.trace_id) {
                    Some(t) => owner(RouteKey::Trace(t)),
                    None => *resource_owner.get_or_insert_with(|| {
                        resource_identity_key(rl.resource.as_ref(), &mut key);
                        owner(RouteKey::Key(&key))
                    }),
                });
            }
        }
    }
    owners
}

/// The owner of each metric, in order.
pub fn owners_of_metrics(
    request: &ExportMetricsServiceRequest,
    mut owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Vec<usize> {
    let mut owners = Vec::new();
    let mut key = Vec::new();
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                metric_series_key(rm.resource.as_ref(), &metric.name, &mut key);
                owners.push(owner(RouteKey::Key(&key)));
            }
        }
    }
    owners
}

/// Distinct valid trace ids of spans in `request`, sorted.
pub fn trace_ids_of_spans(request: &ExportTraceServiceRequest) -> Vec<TraceId> {
    let mut ids: Vec<TraceId> = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter_map(|span| otlp::trace_id(&span.trace_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Distinct valid trace ids of log records in `request`, sorted.
pub fn trace_ids_of_logs(request: &ExportLogsServiceRequest) -> Vec<TraceId> {
    let mut ids: Vec<TraceId> = request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .filter_map(|record| otlp::trace_id(&record.trace_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The owner when every item has the same one (or there are no items: owner 0 is then
/// irrelevant, the caller sends nothing anywhere meaningful). `None` when owners differ.
fn single_owner(owners: &[usize]) -> Option<usize> {
    let first = owners.first().copied().unwrap_or_default();
    owners.iter().all(|&o| o == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, metric};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(service.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("s{id}"),
            ..Default::default()
        }
    }

    /// Owner = first byte of the trace id modulo 2; keys go to owner 1.
    fn by_parity(key: RouteKey<'_>) -> usize {
        match key {
            RouteKey::Trace(t) => usize::from(t[0] % 2),
            RouteKey::Key(_) => 1,
        }
    }

    #[test]
    fn spans_split_by_trace_keeping_resource_and_scope() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource("svc"),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(1, 1), span(2, 2), span(1, 3), span(4, 4)],
                    schema_url: "scope-schema".into(),
                    ..Default::default()
                }],
                schema_url: "res-schema".into(),
            }],
        };
        let parts = decoded_traces_by_owner(request, 0, by_parity);
        assert_eq!(parts.len(), 2);
        let (o0, even) = &parts[0];
        let (o1, odd) = &parts[1];
        assert_eq!((*o0, *o1), (0, 1));
        let names = |r: &ExportTraceServiceRequest| -> Vec<String> {
            r.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names(even), vec!["s2", "s4"]);
        assert_eq!(names(odd), vec!["s1", "s3"]);
        for (_, r) in &parts {
            assert_eq!(r.resource_spans[0].resource, resource("svc"));
            assert_eq!(r.resource_spans[0].schema_url, "res-schema");
            assert_eq!(
                r.resource_spans[0].scope_spans[0].schema_url,
                "scope-schema"
            );
        }
    }

    #[test]
    fn a_request_with_one_owner_is_returned_whole() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(3, 1), span(5, 2)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = decoded_traces_by_owner(request.clone(), 0, by_parity);
        assert_eq!(parts, vec![(1, request)]);
    }

    #[test]
    fn logs_route_by_trace_or_by_resource_identity() {
        let with_trace = |t: u8| LogRecord {
            trace_id: vec![t; 16],
            ..Default::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("svc"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![with_trace(2), LogRecord::default(), with_trace(3)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut keys = Vec::new();
        let parts = decoded_logs_by_owner(request, |k| {
            if let RouteKey::Key(k) = k {
                keys.push(k.to_vec());
            }
            by_parity(k)
        });
        assert_eq!(
            keys,
            vec![b"svc\0".to_vec()],
            "resource key computed once, router's format"
        );
        assert_eq!(parts.len(), 2);
        assert_eq!(otlp::log_count(&parts[0].1), 1);
        assert_eq!(otlp::log_count(&parts[1].1), 2);
    }

    #[test]
    fn metrics_route_whole_by_series_key() {
        let gauge = |name: &str, points: usize| Metric {
            name: name.into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); points],
            })),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource("svc"),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![gauge("a", 2), gauge("b", 3), gauge("c", 1)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = decoded_metrics_by_owner(request, |k| match k {
            RouteKey::Key(k) => usize::from(k.ends_with(b"b")),
            RouteKey::Trace(_) => unreachable!("metrics route by key"),
        });
        assert_eq!(parts.len(), 2);
        assert_eq!(otlp::data_point_count(&parts[0].1), 3);
        assert_eq!(otlp::data_point_count(&parts[1].1), 3);
        assert_eq!(
            parts[1].1.resource_metrics[0].scope_metrics[0].metrics[0].name,
            "b"
        );
    }

    #[test]
    fn trace_ids_are_distinct_and_valid_only() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(2, 1), span(1, 2), span(2, 3), span(0, 4)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(trace_ids_of_spans(&request), vec![[1; 16], [2; 16]]);
    }
}
