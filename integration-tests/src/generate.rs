//! Realistic synthetic OTLP data: traces across several services with HTTP, RPC and
//! database spans, an adjustable share of error traces, correlated logs, and metric
//! points. Deterministic for a seed; the current time is a parameter.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};

/// The services a generated trace passes through, in call order.
const SERVICES: &[&str] = &[
    "frontend",
    "checkout",
    "cart",
    "payment",
    "inventory",
    "shipping",
];

/// HTTP routes of the root spans.
const ROUTES: &[&str] = &[
    "/api/checkout",
    "/api/cart",
    "/api/products/{id}",
    "/api/orders/{id}",
    "/api/shipping/quote",
];

/// Shape of the generated traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceShape {
    /// Spans in every trace (at least 1).
    pub spans_per_trace: usize,
    /// Fraction of traces (0..=1) that contain one span with status ERROR.
    pub error_share: f64,
    /// Log records per trace, each carrying the trace and span id.
    pub logs_per_trace: usize,
}

impl Default for TraceShape {
    fn default() -> Self {
        Self {
            spans_per_trace: 5,
            error_share: 0.01,
            logs_per_trace: 0,
        }
    }
}

/// SplitMix64: small, fast, good enough for synthetic ids and choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A random non-zero 16-byte trace id.
    pub fn trace_id(&mut self) -> Vec<u8> {
        let mut id = [self.next_u64().to_be_bytes(), self.next_u64().to_be_bytes()].concat();
        id[15] |= 1;
        id
    }

    /// A random non-zero 8-byte span id.
    pub fn span_id(&mut self) -> Vec<u8> {
        (self.next_u64() | 1).to_be_bytes().to_vec()
    }
}

/// One generated batch: a trace request, its correlated logs, and counts.
#[derive(Debug, Clone, Default)]
pub struct TraceBatch {
    /// Spans grouped per service resource.
    pub traces: ExportTraceServiceRequest,
    /// Logs with trace ids (empty when `logs_per_trace` is 0).
    pub logs: ExportLogsServiceRequest,
    /// Trace ids in the batch.
    pub trace_ids: Vec<Vec<u8>>,
    /// Trace ids of the traces that contain an ERROR span.
    pub error_trace_ids: Vec<Vec<u8>>,
    /// Number of spans.
    pub span_count: usize,
    /// Number of log records.
    pub log_count: usize,
}

/// Generates traces, logs and metrics.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    shape: TraceShape,
    instance: String,
}

impl Generator {
    /// A generator for `seed` and `shape`. The seed is mixed first: SplitMix64
    /// streams of nearby raw seeds are shifted copies of each other, which would
    /// repeat trace ids across generators.
    pub fn new(seed: u64, shape: TraceShape) -> Self {
        let mut rng = Rng::new(Rng::new(seed).next_u64());
        let instance = format!("{:08x}", rng.next_u64() as u32);
        Self {
            rng,
            shape,
            instance,
        }
    }

    /// Whole traces totalling at least `min_spans` spans (at least one trace),
    /// ending around `now_unix_nanos`.
    pub fn trace_batch(&mut self, min_spans: usize, now_unix_nanos: u64) -> TraceBatch {
        let per_trace = self.shape.spans_per_trace.max(1);
        let traces = min_spans.div_ceil(per_trace).max(1);
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
        let mut logs_by_service: Vec<Vec<LogRecord>> = vec![Vec::new(); SERVICES.len()];
        let mut batch = TraceBatch::default();
        for _ in 0..traces {
            let trace_id = self.rng.trace_id();
            let is_error = self.rng.next_f64() < self.shape.error_share;
            let error_at = is_error.then(|| self.rng.below(per_trace));
            let spans = self.trace_spans(&trace_id, per_trace, error_at, now_unix_nanos);
            for l in 0..self.shape.logs_per_trace {
                let (service, span) = &spans[l % spans.len()];
                let record = self.log_record(&trace_id, span, is_error, l);
                logs_by_service[*service].push(record);
            }
            for (service, span) in spans {
                by_service[service].push(span);
            }
            batch.span_count += per_trace;
            batch.log_count += self.shape.logs_per_trace;
            if is_error {
                batch.error_trace_ids.push(trace_id.clone());
            }
            batch.trace_ids.push(trace_id);
        }
        batch.traces = ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .enumerate()
                .filter(|(_, spans)| !spans.is_empty())
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(self.resource(service)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        };
        batch.logs = ExportLogsServiceRequest {
            resource_logs: logs_by_service
                .into_iter()
                .enumerate()
                .filter(|(_, logs)| !logs.is_empty())
                .map(|(service, log_records)| ResourceLogs {
                    resource: Some(self.resource(service)),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope()),
                        log_records,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        };
        batch
    }

    /// Spans of one trace as `(service index, span)`: a server root in `frontend`,
    /// then a chain of client/server hops and database calls.
    fn trace_spans(
        &mut self,
        trace_id: &[u8],
        count: usize,
        error_at: Option<usize>,
        now: u64,
    ) -> Vec<(usize, Span)> {
        let total_ns = 5_000_000 + (self.rng.below(200) as u64) * 1_000_000;
        let start = now.saturating_sub(total_ns);
        let route = ROUTES[self.rng.below(ROUTES.len())];
        let mut spans: Vec<(usize, Span)> = Vec::with_capacity(count);
        for i in 0..count {
            let span_id = self.rng.span_id();
            let (service, parent) = if i == 0 {
                (0, Vec::new())
            } else {
                let parent = self.rng.below(i);
                let service = ((spans[parent].0 + 1 + self.rng.below(2)) % SERVICES.len()).max(1);
                (service, spans[parent].1.span_id.clone())
            };
            let offset = (i as u64) * total_ns / (count as u64 * 2);
            let duration = (total_ns - offset) / 2 + 1;
            let is_db = i > 0 && i % 3 == 0;
            let (name, kind, attributes) = if i == 0 {
                (
                    format!("GET {route}"),
                    span::SpanKind::Server,
                    vec![
                        kv_str("http.request.method", "GET"),
                        kv_str("http.route", route),
                        kv_str("url.scheme", "https"),
                        kv_int(
                            "http.response.status_code",
                            if error_at.is_some() { 500 } else { 200 },
                        ),
                        kv_str("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
                    ],
                )
            } else if is_db {
                (
                    "SELECT orders".to_string(),
                    span::SpanKind::Client,
                    vec![
                        kv_str("db.system.name", "postgresql"),
                        kv_str("db.namespace", "shop"),
                        kv_str(
                            "db.query.text",
                            "SELECT id, total FROM orders WHERE customer_id = $1",
                        ),
                        kv_str("server.address", "db.internal"),
                    ],
                )
            } else {
                (
                    format!("{}/Handle", SERVICES[service]),
                    span::SpanKind::Server,
                    vec![
                        kv_str("rpc.system", "grpc"),
                        kv_str("rpc.service", SERVICES[service]),
                        kv_str("rpc.method", "Handle"),
                        kv_int("rpc.grpc.status_code", 0),
                    ],
                )
            };
            let status = if error_at == Some(i) {
                Some(Status {
                    message: "upstream failed: connection reset".into(),
                    code: status::StatusCode::Error as i32,
                })
            } else {
                None
            };
            spans.push((
                service,
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id,
                    parent_span_id: parent,
                    name,
                    kind: kind as i32,
                    start_time_unix_nano: start + offset,
                    end_time_unix_nano: start + offset + duration,
                    attributes,
                    status,
                    ..Default::default()
                },
            ));
        }
        spans
    }

    fn log_record(&mut self, trace_id: &[u8], span: &Span, error: bool, nth: usize) -> LogRecord {
        let (severity, text) = if error && nth == 0 {
            (
                SeverityNumber::Error,
                "request failed: upstream connection reset",
            )
        } else {
            (SeverityNumber::Info, "handled request")
        };
        LogRecord {
            time_unix_nano: span.start_time_unix_nano,
            observed_time_unix_nano: span.end_time_unix_nano,
            severity_number: severity as i32,
            severity_text: severity
                .as_str_name()
                .trim_start_matches("SEVERITY_NUMBER_")
                .into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "{text} order_id={}",
                    self.rng.below(1_000_000)
                ))),
            }),
            attributes: vec![kv_str("code.function.name", "handle_request")],
            trace_id: trace_id.to_vec(),
            span_id: span.span_id.clone(),
            ..Default::default()
        }
    }

    /// `points` metric data points (a request counter and a queue-depth gauge per
    /// service, one point per attribute set) at `now_unix_nanos`.
    pub fn metrics(&mut self, points: usize, now_unix_nanos: u64) -> ExportMetricsServiceRequest {
        let mut per_service: Vec<Vec<Metric>> = vec![Vec::new(); SERVICES.len()];
        for p in 0..points {
            let service = p % SERVICES.len();
            let route = ROUTES[self.rng.below(ROUTES.len())];
            let attributes = vec![
                kv_str("http.route", route),
                kv_int("http.response.status_code", 200),
            ];
            let metric = if p % 2 == 0 {
                Metric {
                    name: "http.server.request.count".into(),
                    unit: "{request}".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            attributes,
                            start_time_unix_nano: now_unix_nanos.saturating_sub(10_000_000_000),
                            time_unix_nano: now_unix_nanos,
                            value: Some(number_data_point::Value::AsInt(
                                1 + self.rng.below(100) as i64,
                            )),
                            ..Default::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }
            } else {
                Metric {
                    name: "queue.depth".into(),
                    unit: "{item}".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes,
                            time_unix_nano: now_unix_nanos,
                            value: Some(number_data_point::Value::AsDouble(
                                self.rng.below(1000) as f64
                            )),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }
            };
            per_service[service].push(metric);
        }
        ExportMetricsServiceRequest {
            resource_metrics: per_service
                .into_iter()
                .enumerate()
                .filter(|(_, m)| !m.is_empty())
                .map(|(service, metrics)| ResourceMetrics {
                    resource: Some(self.resource(service)),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope()),
                        metrics,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    /// Log records without a trace id (`count` of them, one resource).
    pub fn traceless_logs(
        &mut self,
        count: usize,
        now_unix_nanos: u64,
    ) -> ExportLogsServiceRequest {
        let log_records = (0..count)
            .map(|i| LogRecord {
                time_unix_nano: now_unix_nanos,
                severity_number: SeverityNumber::Warn as i32,
                severity_text: "WARN".into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!(
                        "cache miss ratio high: shard={i}"
                    ))),
                }),
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource(2)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn resource(&self, service: usize) -> Resource {
        Resource {
            attributes: vec![
                kv_str("service.name", SERVICES[service]),
                kv_str("service.namespace", "shop"),
                kv_str(
                    "service.instance.id",
                    format!("{}-{}", SERVICES[service], self.instance),
                ),
                kv_str("host.name", format!("node-{}", service % 3)),
                kv_str("deployment.environment.name", "bench"),
                kv_str("telemetry.sdk.language", "rust"),
            ],
            ..Default::default()
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "otel-tail-loadgen".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// Attribute builders, re-exported where the generators' users have always found them.
pub use otel_tail_shared::otlp::{kv_int, kv_str};

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    const NOW: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn batches_hold_whole_traces_with_valid_parents() {
        let shape = TraceShape {
            spans_per_trace: 7,
            error_share: 0.0,
            logs_per_trace: 2,
        };
        let batch = Generator::new(1, shape).trace_batch(20, NOW);
        assert_eq!(batch.trace_ids.len(), 3);
        assert_eq!(batch.span_count, 21);
        let spans: Vec<&Span> = batch
            .traces
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        assert_eq!(spans.len(), 21);
        let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
        let mut per_trace: HashMap<&[u8], usize> = HashMap::new();
        for s in &spans {
            assert_eq!(s.trace_id.len(), 16);
            assert!(s.trace_id.iter().any(|b| *b != 0));
            assert!(s.end_time_unix_nano > s.start_time_unix_nano);
            assert!(s.end_time_unix_nano <= NOW + 1);
            assert!(s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()));
            *per_trace.entry(&s.trace_id).or_default() += 1;
        }
        assert!(per_trace.values().all(|n| *n == 7));
        assert_eq!(
            spans.iter().filter(|s| s.parent_span_id.is_empty()).count(),
            3
        );
        let logs: Vec<&LogRecord> = batch
            .logs
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
            .collect();
        assert_eq!(logs.len(), 6);
        assert_eq!(batch.log_count, 6);
        for log in logs {
            assert!(per_trace.contains_key(log.trace_id.as_slice()));
            assert!(ids.contains(log.span_id.as_slice()));
        }
    }

    #[test]
    fn error_share_is_respected_and_marks_one_span_per_error_trace() {
        let shape = TraceShape {
            spans_per_trace: 3,
            error_share: 0.2,
            logs_per_trace: 0,
        };
        let batch = Generator::new(7, shape).trace_batch(3 * 5000, NOW);
        let share = batch.error_trace_ids.len() as f64 / 5000.0;
        assert!((0.17..0.23).contains(&share), "share {share}");
        let error_spans = batch
            .traces
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == status::StatusCode::Error as i32)
            })
            .count();
        assert_eq!(error_spans, batch.error_trace_ids.len());
    }

    #[test]
    fn nearby_seeds_share_no_trace_ids() {
        let ids = |seed| -> HashSet<Vec<u8>> {
            Generator::new(seed, TraceShape::default())
                .trace_batch(5 * 2000, NOW)
                .trace_ids
                .into_iter()
                .collect()
        };
        assert!(ids(7).is_disjoint(&ids(8)));
        assert_eq!(ids(7).len(), 2000);
    }

    #[test]
    fn same_seed_same_data_and_metrics_count_points() {
        let shape = TraceShape::default();
        let a = Generator::new(3, shape).trace_batch(50, NOW);
        let b = Generator::new(3, shape).trace_batch(50, NOW);
        assert_eq!(a.traces, b.traces);
        let metrics = Generator::new(3, shape).metrics(13, NOW);
        let points: usize = metrics
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(crate::export::data_points)
            .sum();
        assert_eq!(points, 13);
        let logs = Generator::new(3, shape).traceless_logs(4, NOW);
        let records = &logs.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|r| r.trace_id.is_empty()));
    }
}
