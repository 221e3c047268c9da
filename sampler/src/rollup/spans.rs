//! Span metrics: request counts and duration histograms of every span received, kept or
//! dropped, shaped like the Collector `spanmetrics` connector's output
//! (`traces.span.metrics.calls`, `traces.span.metrics.duration`; dimensions `service.name`,
//! `span.name`, `span.kind`, `status.code` plus configured ones).
//!
//! Two halves, both pure (time passed in):
//! - [`SpanMetricsBuilder`] runs at ingest: it aggregates one request's spans into one
//!   delta duration-histogram point per series (per input resource), written in the same
//!   RocksDB batch that buffers the spans, so a span is counted exactly when it is
//!   acknowledged. The calls are the histogram's count, so the held points carry no calls
//!   sum. Each point carries one exemplar candidate, the series' first span in the request
//!   (trace id, span id, duration) — whether its trace is kept is not known yet.
//! - [`SpanRollup`] folds those points, once settled (after the correlation window, when
//!   decisions are known and candidates not pointing at a kept trace were removed), into
//!   one point per series per interval with the metric rollup's aggregation, cardinality
//!   limit and overflow series, puts up to `max_per_data_point` surviving exemplars on each
//!   output histogram point, and derives `traces.span.metrics.calls` from the counts.
//!
//! The points travel as OTLP metrics under the instrumentation scope [`SCOPE_NAME`], which
//! is how a sampler that receives them from a peer (single writer per series) tells them
//! from user metrics.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    exemplar, exponential_histogram_data_point, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use otel_tail_shared::config::rollup::{
    DurationUnit, MetricRollupConfig, SpanDimensionConfig, SpanMetricsConfig, Temporality,
};
use otel_tail_shared::otlp::{kv, kv_str};
use prost::Message;

use super::hash::{FastMap, fast_map};
use super::metrics::{
    MetricRollup, MetricRollupError, ROLLUP_ATTRIBUTE, encode_attributes, reduce_resource,
};

/// Instrumentation scope of span-metric points, ours alone.
pub const SCOPE_NAME: &str = "otel_tail.spanmetrics";
/// The calls metric: a monotonic delta sum of spans.
pub const CALLS: &str = "traces.span.metrics.calls";
/// The duration metric: a delta histogram of span durations.
pub const DURATION: &str = "traces.span.metrics.duration";
/// Finest scale of an exponential duration histogram before it is narrowed to fit.
const MAX_SCALE: i32 = 20;

/// Whether `scope` marks span-metric points.
pub fn is_span_metrics_scope(scope: Option<&InstrumentationScope>) -> bool {
    scope.is_some_and(|s| s.name == SCOPE_NAME)
}

/// The duration histogram's shape.
#[derive(Debug, Clone)]
enum Buckets {
    /// Upper bounds in the configured unit.
    Explicit(Vec<f64>),
    /// Most buckets of an exponential histogram.
    Exponential(usize),
}

/// Aggregates the spans of one request into span-metric points. Built once from
/// `rollup.traces`.
#[derive(Debug, Clone)]
pub struct SpanMetricsBuilder {
    dimensions: Vec<SpanDimensionConfig>,
    unit: DurationUnit,
    buckets: Buckets,
    /// Whether points carry an exemplar candidate.
    exemplars: bool,
}

/// What [`SpanMetricsBuilder::aggregate`] made of a request.
#[derive(Debug, Default)]
pub struct SpanPoints {
    /// One group of points per input resource.
    pub resources: Vec<ResourceMetrics>,
    /// Spans counted.
    pub spans: u64,
}

/// A series of one request's resource while it is aggregated.
struct Series<'a> {
    name: &'a str,
    kind: i32,
    code: i32,
    /// Encoded values of the extra dimensions (empty without any).
    dims_key: Vec<u8>,
    acc: Acc,
}

/// Hash of a series' identity within one resource (the map hashes it again with its seed).
fn series_hash(name: &str, kind: i32, code: i32, dims: &[u8]) -> u64 {
    let mut h =
        xxhash_rust::xxh3::xxh3_64(name.as_bytes()) ^ ((kind as u64) << 32 | code as u32 as u64);
    if !dims.is_empty() {
        h ^= xxhash_rust::xxh3::xxh3_64(dims).rotate_left(17);
    }
    h
}

/// One series' aggregate within one request.
struct Acc {
    dims: Vec<Option<AnyValue>>,
    calls: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Explicit bucket counts, or the durations themselves for an exponential histogram.
    counts: Vec<u64>,
    values: Vec<f64>,
    /// The request's exemplar candidate for this series: its first span.
    exemplar: Option<Exemplar>,
}

impl SpanMetricsBuilder {
    /// A builder for `config`.
    pub fn new(config: &SpanMetricsConfig) -> SpanMetricsBuilder {
        let unit = config.histogram.unit;
        let buckets = match &config.histogram.exponential {
            Some(e) => Buckets::Exponential(e.max_size),
            None => Buckets::Explicit(
                config
                    .histogram
                    .explicit
                    .buckets
                    .iter()
                    .map(|d| d.as_nanos() as f64 / unit.nanos())
                    .collect(),
            ),
        };
        SpanMetricsBuilder {
            dimensions: config.dimensions.clone(),
            unit,
            buckets,
            exemplars: config.exemplars.enabled && config.exemplars.max_per_data_point > 0,
        }
    }

    /// Whether aggregating reads span attributes (for extra dimensions).
    pub fn reads_attributes(&self) -> bool {
        !self.dimensions.is_empty()
    }

    /// One delta point per series of the request's spans, all stamped `now` (unix nanos).
    pub fn aggregate(&self, request: &ExportTraceServiceRequest, now: u64) -> SpanPoints {
        let mut out = SpanPoints::default();
        let mut dims_key = Vec::new();
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref();
            // Series by a 64-bit hash of their identity (collisions probe onward), so that
            // looking a span's series up allocates nothing.
            let mut index: FastMap<u64, usize> = fast_map();
            let mut series: Vec<Series<'_>> = Vec::new();
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                out.spans += 1;
                let code = span.status.as_ref().map_or(0, |s| s.code);
                dims_key.clear();
                self.encode_dimensions(span, resource, &mut dims_key);
                let mut hash = series_hash(&span.name, span.kind, code, &dims_key);
                let at = loop {
                    match index.entry(hash) {
                        Entry::Occupied(e) => {
                            let s = &series[*e.get()];
                            // Every configured dimension writes at least a byte, so an
                            // empty key (no dimensions) needs no comparison.
                            if s.name == span.name
                                && s.kind == span.kind
                                && s.code == code
                                && (dims_key.is_empty() || s.dims_key == dims_key)
                            {
                                break *e.get();
                            }
                            hash = hash.wrapping_add(1);
                        }
                        Entry::Vacant(e) => {
                            series.push(Series {
                                name: &span.name,
                                kind: span.kind,
                                code,
                                dims_key: dims_key.clone(),
                                acc: self.new_acc(self.dimension_values(span, resource)),
                            });
                            break *e.insert(series.len() - 1);
                        }
                    }
                };
                self.record(&mut series[at].acc, span);
            }
            if series.is_empty() {
                continue;
            }
            let service = service_name(resource);
            let durations = series
                .into_iter()
                .map(|s| {
                    let attributes = self.attributes(&service, s.name, s.kind, s.code, &s.acc.dims);
                    (attributes, s.acc)
                })
                .collect();
            out.resources.push(ResourceMetrics {
                resource: Some(Resource {
                    attributes: reduce_resource(resource),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: vec![self.duration_metric(durations, now)],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        out
    }

    /// Writes the values of the extra dimensions of `span` into `out` (one byte per absent
    /// value), without copying them.
    fn encode_dimensions(&self, span: &Span, resource: Option<&Resource>, out: &mut Vec<u8>) {
        for d in &self.dimensions {
            let found = find(&span.attributes, &d.name)
                .or_else(|| resource.and_then(|r| find(&r.attributes, &d.name)));
            match (found, &d.default) {
                (Some(v), _) => {
                    out.push(1);
                    v.encode_length_delimited(out)
                        .expect("a Vec grows as needed");
                }
                (None, Some(default)) => {
                    out.push(2);
                    out.extend_from_slice(default.as_bytes());
                    out.push(0);
                }
                (None, None) => out.push(0),
            }
        }
    }

    fn dimension_values(&self, span: &Span, resource: Option<&Resource>) -> Vec<Option<AnyValue>> {
        self.dimensions
            .iter()
            .map(|d| {
                find(&span.attributes, &d.name)
                    .or_else(|| resource.and_then(|r| find(&r.attributes, &d.name)))
                    .cloned()
                    .or_else(|| d.default.as_ref().map(|v| string_value(v)))
            })
            .collect()
    }

    fn new_acc(&self, dims: Vec<Option<AnyValue>>) -> Acc {
        Acc {
            dims,
            calls: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            counts: match &self.buckets {
                Buckets::Explicit(bounds) => vec![0; bounds.len() + 1],
                Buckets::Exponential(_) => Vec::new(),
            },
            values: Vec::new(),
            exemplar: None,
        }
    }

    fn record(&self, acc: &mut Acc, span: &Span) {
        let nanos = span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano);
        let value = nanos as f64 / self.unit.nanos();
        acc.calls += 1;
        acc.sum += value;
        acc.min = acc.min.min(value);
        acc.max = acc.max.max(value);
        match &self.buckets {
            Buckets::Explicit(bounds) => acc.counts[bounds.partition_point(|b| *b < value)] += 1,
            Buckets::Exponential(_) => acc.values.push(value),
        }
        if self.exemplars && acc.exemplar.is_none() {
            acc.exemplar = Some(Exemplar {
                filtered_attributes: Vec::new(),
                time_unix_nano: span.end_time_unix_nano,
                span_id: span.span_id.clone(),
                trace_id: span.trace_id.clone(),
                value: Some(exemplar::Value::AsDouble(value)),
            });
        }
    }

    fn attributes(
        &self,
        service: &str,
        name: &str,
        kind: i32,
        code: i32,
        dims: &[Option<AnyValue>],
    ) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(4 + dims.len());
        attributes.push(kv_str("service.name", service));
        attributes.push(kv_str("span.name", name));
        attributes.push(kv_str("span.kind", kind_name(kind)));
        attributes.push(kv_str("status.code", code_name(code)));
        for (d, value) in self.dimensions.iter().zip(dims) {
            if let Some(value) = value.as_ref().and_then(|v| v.value.clone()) {
                attributes.push(kv(&d.name, value));
            }
        }
        attributes
    }

    fn duration_metric(&self, points: Vec<(Vec<KeyValue>, Acc)>, now: u64) -> Metric {
        let temporality = AggregationTemporality::Delta as i32;
        let data = match &self.buckets {
            Buckets::Explicit(bounds) => metric::Data::Histogram(Histogram {
                data_points: points
                    .into_iter()
                    .map(|(attributes, acc)| HistogramDataPoint {
                        attributes,
                        start_time_unix_nano: now,
                        time_unix_nano: now,
                        count: acc.calls,
                        sum: Some(acc.sum),
                        bucket_counts: acc.counts,
                        explicit_bounds: bounds.clone(),
                        exemplars: acc.exemplar.into_iter().collect(),
                        min: Some(acc.min),
                        max: Some(acc.max),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: temporality,
            }),
            Buckets::Exponential(max_size) => {
                metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: points
                        .into_iter()
                        .map(|(attributes, acc)| {
                            let mut p = exponential_point(&acc.values, *max_size);
                            p.attributes = attributes;
                            p.start_time_unix_nano = now;
                            p.time_unix_nano = now;
                            p.sum = Some(acc.sum);
                            p.min = Some(acc.min);
                            p.max = Some(acc.max);
                            p.exemplars = acc.exemplar.into_iter().collect();
                            p
                        })
                        .collect(),
                    aggregation_temporality: temporality,
                })
            }
        };
        Metric {
            name: DURATION.to_owned(),
            description: "Duration of every span received, kept or not.".to_owned(),
            unit: self.unit.as_str().to_owned(),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// Exemplars the span rollup keeps per output point under `config` (0 when off).
pub fn exemplars_per_point(config: &SpanMetricsConfig) -> usize {
    if config.exemplars.enabled {
        config.exemplars.max_per_data_point
    } else {
        0
    }
}

/// Sums the span-metric points of many held groups series by series (same resource, scope,
/// metric and attributes) into one point each, keeping up to `max_exemplars` exemplars per
/// point, so a settle pass stores, sends to owners and folds a point per series instead of
/// a point per series per request. Explicit-bucket histograms with the same bounds are
/// summed as the rollup sums delta points; any other point is carried unchanged. Folding
/// the result gives the rollup that folding `parts` gives.
pub fn combine(parts: Vec<ResourceMetrics>, max_exemplars: usize) -> Vec<ResourceMetrics> {
    let mut out: Vec<ResourceMetrics> = Vec::new();
    let mut resources: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut scopes: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
    let mut histograms: HashMap<(usize, usize, MetricIdentity), usize> = HashMap::new();
    let mut points: HashMap<(usize, usize, usize, Vec<u8>), usize> = HashMap::new();
    for rm in parts {
        let mut key = option_key(rm.resource.as_ref());
        key.extend_from_slice(rm.schema_url.as_bytes());
        let r = *resources.entry(key).or_insert_with(|| {
            out.push(ResourceMetrics {
                resource: rm.resource.clone(),
                scope_metrics: Vec::new(),
                schema_url: rm.schema_url.clone(),
            });
            out.len() - 1
        });
        for sm in rm.scope_metrics {
            let mut key = option_key(sm.scope.as_ref());
            key.extend_from_slice(sm.schema_url.as_bytes());
            let s = *scopes.entry((r, key)).or_insert_with(|| {
                out[r].scope_metrics.push(ScopeMetrics {
                    scope: sm.scope.clone(),
                    metrics: Vec::new(),
                    schema_url: sm.schema_url.clone(),
                });
                out[r].scope_metrics.len() - 1
            });
            for m in sm.metrics {
                let Some(metric::Data::Histogram(h)) = &m.data else {
                    out[r].scope_metrics[s].metrics.push(m);
                    continue;
                };
                let key = (
                    m.name.clone(),
                    m.unit.clone(),
                    m.description.clone(),
                    h.aggregation_temporality,
                );
                let metrics = &mut out[r].scope_metrics[s].metrics;
                let at = *histograms.entry((r, s, key)).or_insert_with(|| {
                    metrics.push(Metric {
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: Vec::new(),
                            aggregation_temporality: h.aggregation_temporality,
                        })),
                        ..m.clone()
                    });
                    metrics.len() - 1
                });
                let Some(metric::Data::Histogram(into)) = &mut metrics[at].data else {
                    unreachable!("the entry was made for a histogram");
                };
                let Some(metric::Data::Histogram(h)) = m.data else {
                    unreachable!("matched as a histogram above");
                };
                for p in h.data_points {
                    match points.entry((r, s, at, encode_attributes(&p.attributes))) {
                        Entry::Occupied(e) if same_buckets(&into.data_points[*e.get()], &p) => {
                            add_point(&mut into.data_points[*e.get()], p, max_exemplars);
                        }
                        Entry::Occupied(_) => into.data_points.push(p),
                        Entry::Vacant(e) => {
                            e.insert(into.data_points.len());
                            let mut p = p;
                            p.exemplars.truncate(max_exemplars);
                            into.data_points.push(p);
                        }
                    }
                }
            }
        }
    }
    out
}

/// An optional message's encoding, prefixed so that absent and empty differ.
fn option_key(message: Option<&impl Message>) -> Vec<u8> {
    let mut key = vec![u8::from(message.is_some())];
    if let Some(message) = message {
        message
            .encode_length_delimited(&mut key)
            .expect("a Vec grows to fit");
    }
    key
}

/// What makes two histograms the same metric for [`combine`]: name, unit, description
/// and temporality.
type MetricIdentity = (String, String, String, i32);

fn same_buckets(a: &HistogramDataPoint, b: &HistogramDataPoint) -> bool {
    a.explicit_bounds == b.explicit_bounds && a.bucket_counts.len() == b.bucket_counts.len()
}

/// Adds delta point `p` into `into` (same series, same buckets).
fn add_point(into: &mut HistogramDataPoint, p: HistogramDataPoint, max_exemplars: usize) {
    into.count += p.count;
    into.sum = into.sum.zip(p.sum).map(|(a, b)| a + b);
    into.min = into.min.zip(p.min).map(|(a, b)| a.min(b));
    into.max = into.max.zip(p.max).map(|(a, b)| a.max(b));
    for (count, more) in into.bucket_counts.iter_mut().zip(&p.bucket_counts) {
        *count += more;
    }
    into.start_time_unix_nano = into.start_time_unix_nano.min(p.start_time_unix_nano);
    into.time_unix_nano = into.time_unix_nano.max(p.time_unix_nano);
    into.flags |= p.flags;
    let room = max_exemplars.saturating_sub(into.exemplars.len());
    into.exemplars.extend(p.exemplars.into_iter().take(room));
}

fn calls_metric(points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: CALLS.to_owned(),
        description: "Spans received, kept or not.".to_owned(),
        unit: "{call}".to_owned(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn string_value(v: &str) -> AnyValue {
    kv_str("", v).value.unwrap_or_default()
}

fn service_name(resource: Option<&Resource>) -> String {
    match resource.and_then(|r| find(&r.attributes, "service.name")) {
        Some(AnyValue {
            value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)),
        }) => s.clone(),
        _ => "unknown_service".to_owned(),
    }
}

/// The Collector's `span.kind` value, e.g. `SPAN_KIND_SERVER`.
fn kind_name(kind: i32) -> &'static str {
    span::SpanKind::try_from(kind)
        .unwrap_or(span::SpanKind::Unspecified)
        .as_str_name()
}

/// The Collector's `status.code` value, e.g. `STATUS_CODE_ERROR`.
fn code_name(code: i32) -> &'static str {
    status::StatusCode::try_from(code)
        .unwrap_or(status::StatusCode::Unset)
        .as_str_name()
}

/// Bucket index of a positive `value` at `scale`: bucket `i` holds `(base^i, base^(i+1)]`,
/// `base = 2^(2^-scale)`.
fn exponential_index(value: f64, scale: i32) -> i64 {
    (value.log2() * 2f64.powi(scale)).ceil() as i64 - 1
}

/// An exponential histogram point of `values` at the finest scale (≤ [`MAX_SCALE`]) whose
/// buckets span at most `max_size`; zero durations go to the zero bucket.
fn exponential_point(values: &[f64], max_size: usize) -> ExponentialHistogramDataPoint {
    let positive: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    let zero_count = (values.len() - positive.len()) as u64;
    let (lo, hi) = positive.iter().fold((f64::INFINITY, 0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    let mut scale = MAX_SCALE;
    if !positive.is_empty() {
        while scale > -10
            && (exponential_index(hi, scale) - exponential_index(lo, scale)) as usize >= max_size
        {
            scale -= 1;
        }
    }
    let offset = if positive.is_empty() {
        0
    } else {
        exponential_index(lo, scale)
    };
    let mut counts = Vec::new();
    for v in &positive {
        let i = (exponential_index(*v, scale) - offset) as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }
    ExponentialHistogramDataPoint {
        count: values.len() as u64,
        scale,
        zero_count,
        positive: Some(exponential_histogram_data_point::Buckets {
            offset: i32::try_from(offset).unwrap_or(0),
            bucket_counts: counts,
        }),
        ..Default::default()
    }
}

/// The span-metric rollup of one node: the metric rollup's aggregation (delta output,
/// cardinality limit and overflow per metric and service) plus up to
/// `max_per_data_point` exemplars per output histogram point.
#[derive(Debug)]
pub struct SpanRollup {
    metrics: MetricRollup,
    /// Exemplars per output series (reduced resource, metric, attributes).
    exemplars: HashMap<Vec<u8>, Vec<Exemplar>>,
    max_exemplars: usize,
    /// Most series with exemplars per interval (bounds the table whatever the input).
    max_exemplar_series: usize,
    spans_in: u64,
}

impl SpanRollup {
    /// The rollup for `config` (`rollup.traces`).
    pub fn new(config: &SpanMetricsConfig) -> Result<SpanRollup, MetricRollupError> {
        Ok(SpanRollup {
            metrics: MetricRollup::new(MetricRollupConfig {
                enabled: true,
                interval: config.interval,
                rules: Vec::new(),
                cardinality_limit: config.cardinality_limit,
                temporality: Temporality::Delta,
                gauge_stats: false,
            })?,
            exemplars: HashMap::new(),
            max_exemplars: exemplars_per_point(config),
            max_exemplar_series: config.cardinality_limit.saturating_mul(16),
            spans_in: 0,
        })
    }

    /// Spans counted by the points folded in so far (their histogram counts).
    pub fn spans_in(&self) -> u64 {
        self.spans_in
    }

    /// Folds one resource's span-metric points; returns the spans they count.
    pub fn add(&mut self, rm: &ResourceMetrics, now: u64) -> u64 {
        let resource = reduce_resource(rm.resource.as_ref());
        let mut spans = 0;
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                self.metrics
                    .add(rm.resource.as_ref(), sm.scope.as_ref(), m, now);
                match &m.data {
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            spans += p.count;
                            self.keep_exemplars(&resource, &m.name, &p.attributes, &p.exemplars);
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            spans += p.count;
                            self.keep_exemplars(&resource, &m.name, &p.attributes, &p.exemplars);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.spans_in += spans;
        spans
    }

    fn keep_exemplars(
        &mut self,
        resource: &[KeyValue],
        name: &str,
        attributes: &[KeyValue],
        exemplars: &[Exemplar],
    ) {
        if exemplars.is_empty() || self.max_exemplars == 0 {
            return;
        }
        let key = series_key(resource, name, attributes);
        let room = self.exemplars.len() < self.max_exemplar_series;
        let kept = match self.exemplars.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if room => e.insert(Vec::new()),
            Entry::Vacant(_) => return,
        };
        for e in exemplars {
            if kept.len() >= self.max_exemplars {
                break;
            }
            kept.push(e.clone());
        }
    }

    /// One point per series for `[interval_start, interval_end]`: the duration histograms
    /// with their exemplars, and the calls sums derived from their counts.
    pub fn flush(&mut self, interval_start: u64, interval_end: u64) -> ExportMetricsServiceRequest {
        let mut request = self.metrics.flush(interval_start, interval_end);
        let mut exemplars = std::mem::take(&mut self.exemplars);
        for rm in &mut request.resource_metrics {
            let resource = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            for sm in &mut rm.scope_metrics {
                let mut calls = Vec::new();
                for m in &mut sm.metrics {
                    let mut attach = |attributes: &[KeyValue], out: &mut Vec<Exemplar>| {
                        if let Some(found) =
                            exemplars.remove(&series_key(&resource, &m.name, attributes))
                        {
                            *out = found;
                        }
                    };
                    let mut points = Vec::new();
                    let mut count = |attributes: &[KeyValue], start: u64, time: u64, n: u64| {
                        points.push(NumberDataPoint {
                            attributes: attributes.to_vec(),
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            value: Some(number_data_point::Value::AsInt(
                                i64::try_from(n).unwrap_or(i64::MAX),
                            )),
                            ..Default::default()
                        });
                    };
                    match &mut m.data {
                        Some(metric::Data::Histogram(h)) => {
                            for p in &mut h.data_points {
                                attach(&p.attributes, &mut p.exemplars);
                                count(
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    p.count,
                                );
                            }
                        }
                        Some(metric::Data::ExponentialHistogram(h)) => {
                            for p in &mut h.data_points {
                                attach(&p.attributes, &mut p.exemplars);
                                count(
                                    &p.attributes,
                                    p.start_time_unix_nano,
                                    p.time_unix_nano,
                                    p.count,
                                );
                            }
                        }
                        _ => {}
                    }
                    if m.name == DURATION && !points.is_empty() {
                        calls.push(calls_metric(points));
                    }
                }
                sm.metrics.splice(0..0, calls);
            }
        }
        request
    }
}

/// Key of an output series for exemplars: resource attributes, metric name and point
/// attributes, each sorted by key, without the rollup marker.
fn series_key(resource: &[KeyValue], name: &str, attributes: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for list in [resource, attributes] {
        let mut sorted: Vec<&KeyValue> = list
            .iter()
            .filter(|kv| kv.key != ROLLUP_ATTRIBUTE)
            .collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        for kv in sorted {
            kv.encode_length_delimited(&mut out)
                .expect("a Vec grows as needed");
        }
        out.push(0xff);
    }
    out.extend_from_slice(name.as_bytes());
    out
}

#[cfg(test)]
mod tests;
