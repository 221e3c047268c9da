//! Metric rollup: folds OTLP metric points into one point per output series per interval,
//! following the OTLP metrics data model, with totals kept exact.
//!
//! Decisions (what an operator sees downstream):
//! - **Sums** are added as deltas. Cumulative input is converted per input stream (resource +
//!   scope + metric + all point attributes): the increase since the stream's previous point,
//!   or the whole value on a reset (start time changed, or a monotonic value decreased) and
//!   on the first point of a stream (its value counts since its own start time). Points
//!   older than the stream's last point are ignored. The stream state survives a restart
//!   when the caller persists [`MetricRollup::cumulative_state`] at each flush and
//!   [`MetricRollup::prime`]s the new aggregator with it before replaying the open
//!   interval's input; without that, a stream's first point after a restart counts in full.
//! - **Gauges** keep the latest value by point time. With `gauge_stats` each gauge series also
//!   yields `<name>.min` and `<name>.max` gauges and a monotonic `<name>.count` sum (points
//!   seen) — separate metrics rather than attributes, so the gauge series keeps its identity
//!   and the count adds across intervals and nodes like any sum.
//! - **Explicit-bucket histograms** merge bucket by bucket. The first bound set seen for an
//!   output metric is its primary one and stays for the aggregator's life; points with finer
//!   bounds that contain every primary bound are re-bucketed exactly onto it; any other bound
//!   set gets its own series, marked `otel.histogram.bounds_hash=<16 hex digits>`. Nothing is
//!   ever split across buckets, so every bucket count is exact.
//! - **Exponential histograms** merge at the coarser scale (downscaled exactly; further if a
//!   side would exceed [`exponential::MAX_BUCKETS`] buckets); zero counts add, the widest
//!   zero threshold is kept.
//! - **Summaries** keep count and sum only (quantiles cannot be merged); input summaries are
//!   cumulative by definition and are converted to deltas like cumulative sums.
//! - Min/max and histogram sums are reported only when every non-empty contribution had them
//!   (a difference of two cumulative points has no min/max).
//! - Exemplars are not carried into rollups: correlated retention keeps the raw points that
//!   reference kept traces.
//! - **Attributes**: per-metric rules reduce point attributes (first matching rule); then at
//!   most `cardinality_limit` series per output metric per interval, the rest folded into one
//!   series with the single attribute `otel.metric.overflow=true`.
//! - **Resource** is reduced to [`IDENTITY_ATTRIBUTES`] — per-pod ids (`service.instance.id`,
//!   `k8s.pod.name`, `host.name`) are dropped so pods of a service roll up together. The
//!   scope keeps its name and version.
//! - **Output**: delta (default) or cumulative temporality; a delta point covers
//!   `[interval_start, interval_end]`, a cumulative one starts when its output series first
//!   appeared. Every point carries `otel_tail.rollup=true`.
//! - **Single writer**: the router and samplers route each metric by (service-level identity,
//!   metric name) — [`IDENTITY_ATTRIBUTES`], the resource attributes kept on output — so one
//!   node folds every input of every output series of that metric and no partial aggregates
//!   travel between nodes. The overflow series is therefore single-writer too.

mod aggregate;
mod config;
pub mod exponential;
#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, DataPointFlags, ExponentialHistogram, ExponentialHistogramDataPoint,
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, Summary, SummaryDataPoint, metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

pub use aggregate::{Agg, GaugeAgg, HistAgg, NumberValue};
pub use config::{AttributeRules, MetricRollupConfig, MetricRollupError, Rule, Temporality};
use exponential::ExpHist;

/// Resource attributes kept on rolled-up metrics: the service's identity, not the instance's.
/// The same list metrics route by, so one node receives every input of an output series.
pub use otel_tail_shared::split::SERVICE_IDENTITY_ATTRIBUTES as IDENTITY_ATTRIBUTES;
/// Attribute marking every rolled-up data point.
pub const ROLLUP_ATTRIBUTE: &str = "otel_tail.rollup";
/// Attribute of the series that takes the points beyond the cardinality limit.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";
/// Attribute distinguishing histogram series whose bounds differ from the primary ones.
pub const BOUNDS_HASH_ATTRIBUTE: &str = "otel.histogram.bounds_hash";
/// Input streams and cumulative output series unseen for this many intervals are forgotten.
const STALE_INTERVALS: u32 = 10;

/// Counters of what the rollup did, for self-metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupStats {
    /// Data points folded in.
    pub points_in: u64,
    /// Data points emitted by flushes.
    pub points_out: u64,
    /// Points that went to an overflow series.
    pub points_overflowed: u64,
    /// Cumulative points treated as a reset (or a stream's first point).
    pub resets: u64,
    /// Points ignored: no recorded value, unspecified temporality, malformed buckets, or
    /// older than their stream's last point.
    pub points_ignored: u64,
    /// Input stream states restored by [`MetricRollup::prime`].
    pub streams_primed: u64,
}

/// The kind of an output metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sum,
    Gauge,
    Histogram,
    Exponential,
    Summary,
}

impl Kind {
    /// The kind a key byte (`kind as u8`) stands for.
    fn from_byte(byte: u8) -> Option<Kind> {
        [
            Kind::Sum,
            Kind::Gauge,
            Kind::Histogram,
            Kind::Exponential,
            Kind::Summary,
        ]
        .into_iter()
        .find(|k| *k as u8 == byte)
    }
}

/// An output point: attributes, start time, time and aggregate.
type OutPoint = (Vec<KeyValue>, u64, u64, Agg);

/// Tracked streams grouped for [`MetricRollup::cumulative_state`], by the parts of their
/// keys: resource, scope, metric identity, point attributes.
type StateGroups<'a> =
    BTreeMap<&'a [u8], BTreeMap<&'a [u8], BTreeMap<&'a [u8], BTreeMap<&'a [u8], OutPoint>>>>;

/// An output series during an interval.
#[derive(Debug)]
struct Series {
    attributes: Vec<KeyValue>,
    agg: Agg,
}

/// An output metric (reduced resource, scope, name, kind) during an interval.
#[derive(Debug)]
struct MetricAgg {
    resource: Vec<KeyValue>,
    resource_key: Vec<u8>,
    scope: (String, String),
    name: String,
    description: String,
    unit: String,
    kind: Kind,
    monotonic: bool,
    series: HashMap<Vec<u8>, Series>,
    /// Series admitted under the cardinality limit this interval.
    admitted: usize,
}

/// Output metrics of one reduced resource: its attributes and its metrics by scope
/// (name, version).
type ResourceGroup = (Vec<KeyValue>, BTreeMap<(String, String), Vec<Metric>>);

/// The last cumulative point of an input stream.
#[derive(Debug)]
struct Stream {
    start: u64,
    time: u64,
    last_seen: u64,
    value: Agg,
}

/// The running total of a cumulative output series.
#[derive(Debug)]
struct Running {
    start: u64,
    last_flush: u64,
    agg: Agg,
}

/// The metric rollup aggregator of one node. Pure logic: time is passed in.
#[derive(Debug)]
pub struct MetricRollup {
    config: MetricRollupConfig,
    rules: AttributeRules,
    streams: HashMap<Vec<u8>, Stream>,
    metrics: HashMap<Vec<u8>, MetricAgg>,
    primary_bounds: HashMap<Vec<u8>, Vec<f64>>,
    running: HashMap<Vec<u8>, Running>,
    stats: RollupStats,
}

impl MetricRollup {
    /// Builds an aggregator; fails on an invalid rule pattern or a zero interval or limit.
    pub fn new(config: MetricRollupConfig) -> Result<MetricRollup, MetricRollupError> {
        if config.interval.is_zero() {
            return Err(MetricRollupError::ZeroInterval);
        }
        if config.cardinality_limit == 0 {
            return Err(MetricRollupError::ZeroCardinalityLimit);
        }
        Ok(MetricRollup {
            rules: AttributeRules::new(&config.rules)?,
            config,
            streams: HashMap::new(),
            metrics: HashMap::new(),
            primary_bounds: HashMap::new(),
            running: HashMap::new(),
            stats: RollupStats::default(),
        })
    }

    /// The compiled attribute rules (the router computes [`series_key`] with them).
    pub fn rules(&self) -> &AttributeRules {
        &self.rules
    }

    /// What the rollup has done so far.
    pub fn stats(&self) -> RollupStats {
        self.stats
    }

    /// Input streams whose last cumulative point is remembered.
    pub fn tracked_streams(&self) -> usize {
        self.streams.len()
    }

    /// Folds every data point of `metric` into the current interval.
    pub fn add(
        &mut self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        metric: &Metric,
        now_unix_nano: u64,
    ) {
        let Some((data, kind, monotonic, temporality)) = shape(metric) else {
            return;
        };
        let cumulative = temporality == AggregationTemporality::Cumulative as i32;
        let scope_id = scope_id(scope);
        let reduced_resource = reduce_resource(resource);
        let resource_key = encode_attributes(&reduced_resource);
        let identity = metric_identity(&scope_id, metric, kind, monotonic);
        let mut metric_key = resource_key.clone();
        metric_key.extend_from_slice(&identity);
        let stream_prefix = cumulative.then(|| stream_prefix(resource, &identity));

        let MetricRollup {
            config,
            rules,
            streams,
            metrics,
            primary_bounds,
            stats,
            ..
        } = self;
        let out = metrics
            .entry(metric_key.clone())
            .or_insert_with(|| MetricAgg {
                resource: reduced_resource,
                resource_key,
                scope: scope_id,
                name: metric.name.clone(),
                description: metric.description.clone(),
                unit: metric.unit.clone(),
                kind,
                monotonic,
                series: HashMap::new(),
                admitted: 0,
            });
        for_each_point(data, |attributes, start, time, value| {
            stats.points_in += 1;
            let Some(mut value) = value else {
                stats.points_ignored += 1;
                return;
            };
            if let Some(prefix) = &stream_prefix {
                let key = stream_key(prefix, attributes);
                match to_delta(streams, key, start, time, now_unix_nano, value, monotonic) {
                    Delta::Increase(d) => value = d,
                    Delta::Reset(d) => {
                        stats.resets += 1;
                        value = d;
                    }
                    Delta::OutOfOrder => {
                        stats.points_ignored += 1;
                        return;
                    }
                }
            } else if temporality != AggregationTemporality::Delta as i32 {
                stats.points_ignored += 1;
                return;
            }
            let reduced = rules.reduce(&out.name, attributes);
            fold_point(
                out,
                &metric_key,
                primary_bounds,
                config.cardinality_limit,
                reduced,
                value,
                stats,
            );
        });
    }

    /// The last point of every tracked cumulative input stream, as ordinary OTLP: its full
    /// resource attributes, scope name and version, metric name, unit, kind, monotonic flag
    /// and cumulative temporality, and the point with its attributes, start time, time and
    /// value. Taken right after a [`flush`](Self::flush) and handed to [`prime`](Self::prime)
    /// of a fresh aggregator with the same configuration, it restores the conversion of
    /// cumulative input to deltas exactly, so totals stay exact across a restart. Points are
    /// ordered deterministically (by resource, scope, metric and attributes).
    pub fn cumulative_state(&self) -> ExportMetricsServiceRequest {
        let mut groups: StateGroups = BTreeMap::new();
        for (key, stream) in &self.streams {
            let Some(parts) = decoded(split_stream_key(key)) else {
                continue;
            };
            groups
                .entry(parts.resource)
                .or_default()
                .entry(parts.scope)
                .or_default()
                .entry(parts.metric)
                .or_default()
                .insert(
                    parts.attributes,
                    (
                        parts.decoded_attributes,
                        stream.start,
                        stream.time,
                        stream.value.clone(),
                    ),
                );
        }
        let cumulative = AggregationTemporality::Cumulative as i32;
        let resource_metrics = groups
            .into_iter()
            .filter_map(|(resource, scopes)| {
                let attributes = decoded(KeyReader(resource).attributes())?;
                let scope_metrics = scopes
                    .into_iter()
                    .filter_map(|(scope, metrics)| {
                        let mut reader = KeyReader(scope);
                        let name = decoded(reader.string())?;
                        let version = decoded(reader.string())?;
                        let metrics = metrics
                            .into_iter()
                            .filter_map(|(metric, points)| {
                                let (name, unit, kind, monotonic) =
                                    decoded(decode_metric_identity(metric))?;
                                let points = points.into_values().collect();
                                Some(Metric {
                                    name,
                                    unit,
                                    data: Some(output_data(kind, monotonic, cumulative, points)),
                                    ..Default::default()
                                })
                            })
                            .collect();
                        Some(ScopeMetrics {
                            scope: Some(InstrumentationScope {
                                name,
                                version,
                                ..Default::default()
                            }),
                            metrics,
                            ..Default::default()
                        })
                    })
                    .collect();
                Some(ResourceMetrics {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_metrics,
                    ..Default::default()
                })
            })
            .collect();
        ExportMetricsServiceRequest { resource_metrics }
    }

    /// Restores input stream state from a [`cumulative_state`](Self::cumulative_state)
    /// (typically persisted at the last flush before a restart): each cumulative point
    /// becomes its stream's last point, seen at `now_unix_nano`, so the stream's next point
    /// counts only its increase. Nothing is added to the current interval and only
    /// [`RollupStats::streams_primed`] counts. A stream already tracked keeps whichever point
    /// is newer; call it before folding the replayed input of the open interval.
    /// Non-cumulative metrics and points without a recorded value are skipped.
    pub fn prime(&mut self, state: &ExportMetricsServiceRequest, now_unix_nano: u64) {
        for rm in &state.resource_metrics {
            for sm in &rm.scope_metrics {
                for metric in &sm.metrics {
                    let Some((data, kind, monotonic, temporality)) = shape(metric) else {
                        continue;
                    };
                    if temporality != AggregationTemporality::Cumulative as i32 {
                        continue;
                    }
                    let identity =
                        metric_identity(&scope_id(sm.scope.as_ref()), metric, kind, monotonic);
                    let prefix = stream_prefix(rm.resource.as_ref(), &identity);
                    for_each_point(data, |attributes, start, time, value| {
                        let Some(value) = value else { return };
                        let stream = Stream {
                            start,
                            time,
                            last_seen: now_unix_nano,
                            value,
                        };
                        match self.streams.entry(stream_key(&prefix, attributes)) {
                            Entry::Occupied(mut e) if time > e.get().time => {
                                e.insert(stream);
                            }
                            Entry::Occupied(_) => return,
                            Entry::Vacant(e) => {
                                e.insert(stream);
                            }
                        }
                        self.stats.streams_primed += 1;
                    });
                }
            }
        }
    }

    /// Emits one point per output series for the interval `[interval_start, interval_end]`
    /// and starts the next interval. Also forgets input streams and cumulative output series
    /// unseen for ten intervals.
    pub fn flush(&mut self, interval_start: u64, interval_end: u64) -> ExportMetricsServiceRequest {
        let cumulative = self.config.temporality == Temporality::Cumulative;
        let temporality = if cumulative {
            AggregationTemporality::Cumulative
        } else {
            AggregationTemporality::Delta
        } as i32;
        let mut metrics: Vec<(Vec<u8>, MetricAgg)> = self.metrics.drain().collect();
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        // resource key -> (resource attributes, scope -> metrics)
        let mut out: BTreeMap<Vec<u8>, ResourceGroup> = BTreeMap::new();
        for (metric_key, m) in metrics {
            let mut series: Vec<(Vec<u8>, Series)> = m.series.into_iter().collect();
            if series.is_empty() {
                continue;
            }
            series.sort_by(|a, b| a.0.cmp(&b.0));
            let mut points: Vec<OutPoint> = Vec::with_capacity(series.len());
            let mut counts: Vec<OutPoint> = Vec::new();
            for (series_key, s) in series {
                let mut attributes = s.attributes;
                attributes.push(bool_attribute(ROLLUP_ATTRIBUTE, true));
                if let (Agg::Gauge(g), true) = (&s.agg, self.config.gauge_stats) {
                    let count = Agg::Sum(NumberValue::Int(g.count as i64));
                    let (start, count) = if cumulative {
                        let mut key = running_key(&metric_key, &series_key);
                        key.push(b'c');
                        running_total(&mut self.running, key, interval_start, interval_end, count)
                    } else {
                        (interval_start, count)
                    };
                    counts.push((attributes.clone(), start, interval_end, count));
                }
                let (start, agg) = if cumulative && m.kind != Kind::Gauge {
                    let key = running_key(&metric_key, &series_key);
                    running_total(&mut self.running, key, interval_start, interval_end, s.agg)
                } else {
                    (interval_start, s.agg)
                };
                points.push((attributes, start, interval_end, agg));
            }
            self.stats.points_out += (points.len() + 3 * counts.len()) as u64;
            let scope_metrics = &mut out
                .entry(m.resource_key)
                .or_insert_with(|| (m.resource, BTreeMap::new()))
                .1
                .entry(m.scope)
                .or_default();
            let named = |name: String, data| Metric {
                name,
                description: m.description.clone(),
                unit: m.unit.clone(),
                data: Some(data),
                ..Default::default()
            };
            if !counts.is_empty() {
                let stat = |pick: fn(&GaugeAgg) -> NumberValue| {
                    metric::Data::Gauge(Gauge {
                        data_points: points
                            .iter()
                            .filter_map(|(attrs, start, time, agg)| match agg {
                                Agg::Gauge(g) => Some(number_point(attrs, *start, *time, pick(g))),
                                _ => None,
                            })
                            .collect(),
                    })
                };
                scope_metrics.push(named(format!("{}.min", m.name), stat(|g| g.min)));
                scope_metrics.push(named(format!("{}.max", m.name), stat(|g| g.max)));
                scope_metrics.push(Metric {
                    unit: "{point}".to_owned(),
                    ..named(
                        format!("{}.count", m.name),
                        metric::Data::Sum(Sum {
                            data_points: counts
                                .iter()
                                .filter_map(|(attrs, start, time, agg)| match agg {
                                    Agg::Sum(v) => Some(number_point(attrs, *start, *time, *v)),
                                    _ => None,
                                })
                                .collect(),
                            aggregation_temporality: temporality,
                            is_monotonic: true,
                        }),
                    )
                });
            }
            let data = output_data(m.kind, m.monotonic, temporality, points);
            scope_metrics.push(named(m.name.clone(), data));
        }
        self.evict(interval_end);
        ExportMetricsServiceRequest {
            resource_metrics: out
                .into_values()
                .map(|(attributes, scopes)| ResourceMetrics {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_metrics: scopes
                        .into_iter()
                        .map(|((name, version), metrics)| ScopeMetrics {
                            scope: Some(InstrumentationScope {
                                name,
                                version,
                                ..Default::default()
                            }),
                            metrics,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn evict(&mut self, now: u64) {
        let horizon = self
            .config
            .interval
            .saturating_mul(STALE_INTERVALS)
            .as_nanos()
            .min(u64::MAX as u128) as u64;
        let cutoff = now.saturating_sub(horizon);
        self.streams.retain(|_, s| s.last_seen >= cutoff);
        self.running.retain(|_, r| r.last_flush >= cutoff);
    }
}

/// Identity of a rolled-up output series, for single-writer routing: the reduced resource
/// ([`IDENTITY_ATTRIBUTES`]), the metric name and the reduced point attributes as returned by
/// [`AttributeRules::reduce`] (sorted by key). Equal inputs give equal keys on every node.
pub fn series_key(
    resource: Option<&Resource>,
    metric_name: &str,
    reduced_attributes: &[KeyValue],
) -> Vec<u8> {
    let mut key = encode_attributes(&reduce_resource(resource));
    push_str(&mut key, metric_name);
    key.extend_from_slice(&encode_attributes(reduced_attributes));
    key
}

/// The resource attributes kept on rolled-up output, in canonical order.
pub fn reduce_resource(resource: Option<&Resource>) -> Vec<KeyValue> {
    let mut kept: Vec<KeyValue> = resource
        .map(|r| {
            r.attributes
                .iter()
                .filter(|kv| IDENTITY_ATTRIBUTES.contains(&kv.key.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    config::canonicalize(&mut kept);
    kept
}

/// A metric's data, kind, monotonic flag and temporality (summaries are cumulative by
/// definition, gauges count as delta); `None` without data.
fn shape(metric: &Metric) -> Option<(&metric::Data, Kind, bool, i32)> {
    let data = metric.data.as_ref()?;
    let (kind, monotonic, temporality) = match data {
        metric::Data::Gauge(_) => (Kind::Gauge, false, AggregationTemporality::Delta as i32),
        metric::Data::Sum(s) => (Kind::Sum, s.is_monotonic, s.aggregation_temporality),
        metric::Data::Histogram(h) => (Kind::Histogram, false, h.aggregation_temporality),
        metric::Data::ExponentialHistogram(h) => {
            (Kind::Exponential, false, h.aggregation_temporality)
        }
        metric::Data::Summary(_) => (
            Kind::Summary,
            false,
            AggregationTemporality::Cumulative as i32,
        ),
    };
    Some((data, kind, monotonic, temporality))
}

/// The scope's name and version (empty without a scope).
fn scope_id(scope: Option<&InstrumentationScope>) -> (String, String) {
    scope.map_or((String::new(), String::new()), |s| {
        (s.name.clone(), s.version.clone())
    })
}

/// A metric's identity within its resource: scope name and version, metric name and unit,
/// kind and monotonic flag.
fn metric_identity(
    scope: &(String, String),
    metric: &Metric,
    kind: Kind,
    monotonic: bool,
) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [&scope.0, &scope.1, &metric.name, &metric.unit] {
        push_str(&mut key, part);
    }
    key.extend_from_slice(&[kind as u8, monotonic as u8]);
    key
}

/// The key prefix of a metric's input streams: every resource attribute (in canonical
/// order), then the metric identity.
fn stream_prefix(resource: Option<&Resource>, identity: &[u8]) -> Vec<u8> {
    let mut attrs = resource.map(|r| r.attributes.clone()).unwrap_or_default();
    config::canonicalize(&mut attrs);
    let mut key = encode_attributes(&attrs);
    key.extend_from_slice(identity);
    key
}

/// The key of an input stream: its metric's prefix and every point attribute (canonical).
fn stream_key(prefix: &[u8], attributes: &[KeyValue]) -> Vec<u8> {
    let mut attrs = attributes.to_vec();
    config::canonicalize(&mut attrs);
    let mut key = prefix.to_vec();
    key.extend_from_slice(&encode_attributes(&attrs));
    key
}

/// Calls `f(attributes, start, time, value)` for every data point; the value is `None` for
/// a point without a recorded value or with bucket counts that do not fit its bounds.
fn for_each_point(data: &metric::Data, mut f: impl FnMut(&[KeyValue], u64, u64, Option<Agg>)) {
    let no_value = |flags: u32| flags & DataPointFlags::NoRecordedValueMask as u32 != 0;
    let number = |p: &NumberDataPoint| {
        p.value
            .as_ref()
            .filter(|_| !no_value(p.flags))
            .map(NumberValue::from_proto)
    };
    match data {
        metric::Data::Gauge(g) => {
            for p in &g.data_points {
                let value = number(p).map(|v| Agg::Gauge(GaugeAgg::new(p.time_unix_nano, v)));
                f(
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        metric::Data::Sum(s) => {
            for p in &s.data_points {
                let value = number(p).map(Agg::Sum);
                f(
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        metric::Data::Histogram(h) => {
            for p in &h.data_points {
                let value = (!no_value(p.flags)).then(|| histogram(p)).flatten();
                f(
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        metric::Data::ExponentialHistogram(h) => {
            for p in &h.data_points {
                let value = (!no_value(p.flags)).then(|| Agg::Exponential(ExpHist::from_point(p)));
                f(
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
        metric::Data::Summary(s) => {
            for p in &s.data_points {
                let value = (!no_value(p.flags)).then_some(Agg::Summary {
                    count: p.count,
                    sum: p.sum,
                });
                f(
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                    value,
                );
            }
        }
    }
}

/// A stream key cut into its parts (each as encoded), with the point attributes decoded.
struct StreamKeyParts<'a> {
    resource: &'a [u8],
    scope: &'a [u8],
    metric: &'a [u8],
    attributes: &'a [u8],
    decoded_attributes: Vec<KeyValue>,
}

/// Cuts a key made by [`stream_key`] into its parts; `None` if it is not one.
fn split_stream_key(key: &[u8]) -> Option<StreamKeyParts<'_>> {
    let mut reader = KeyReader(key);
    let consumed = |reader: &KeyReader| key.len() - reader.0.len();
    reader.skip_attributes()?;
    let resource_end = consumed(&reader);
    reader.bytes()?;
    reader.bytes()?;
    let scope_end = consumed(&reader);
    reader.bytes()?;
    reader.bytes()?;
    reader.take(2)?;
    let metric_end = consumed(&reader);
    let decoded_attributes = reader.attributes()?;
    reader.0.is_empty().then_some(StreamKeyParts {
        resource: &key[..resource_end],
        scope: &key[resource_end..scope_end],
        metric: &key[scope_end..metric_end],
        attributes: &key[metric_end..],
        decoded_attributes,
    })
}

/// Decodes a metric identity made by [`metric_identity`] (without the scope): name, unit,
/// kind and monotonic flag.
fn decode_metric_identity(part: &[u8]) -> Option<(String, String, Kind, bool)> {
    let mut reader = KeyReader(part);
    let name = reader.string()?;
    let unit = reader.string()?;
    let &[kind, monotonic] = reader.take(2)? else {
        return None;
    };
    if !reader.0.is_empty() || monotonic > 1 {
        return None;
    }
    Some((name, unit, Kind::from_byte(kind)?, monotonic == 1))
}

/// Stream keys are only ever made by [`stream_key`], so decoding one cannot fail; a failure
/// is a bug, caught in debug builds and skipped otherwise.
fn decoded<T>(value: Option<T>) -> Option<T> {
    debug_assert!(value.is_some(), "undecodable stream key");
    value
}

/// Reads the encodings of [`push_bytes`], [`push_str`] and [`encode_attributes`] back.
struct KeyReader<'a>(&'a [u8]);

impl<'a> KeyReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn length(&mut self) -> Option<usize> {
        let bytes = self.take(4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.length()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn skip_attributes(&mut self) -> Option<()> {
        for _ in 0..self.length()? {
            self.bytes()?;
            self.bytes()?;
        }
        Some(())
    }

    /// Attributes as [`encode_attributes`] wrote them (an empty value is no value).
    fn attributes(&mut self) -> Option<Vec<KeyValue>> {
        (0..self.length()?)
            .map(|_| {
                let key = self.string()?;
                let value = self.bytes()?;
                let value = if value.is_empty() {
                    None
                } else {
                    Some(AnyValue::decode(value).ok()?)
                };
                Some(KeyValue {
                    key,
                    value,
                    ..Default::default()
                })
            })
            .collect()
    }
}

enum Delta {
    Increase(Agg),
    Reset(Agg),
    OutOfOrder,
}

/// Converts a cumulative point of a stream to its increase since the stream's last point.
fn to_delta(
    streams: &mut HashMap<Vec<u8>, Stream>,
    key: Vec<u8>,
    start: u64,
    time: u64,
    now: u64,
    value: Agg,
    monotonic: bool,
) -> Delta {
    let Some(stream) = streams.get_mut(&key) else {
        streams.insert(
            key,
            Stream {
                start,
                time,
                last_seen: now,
                value: value.clone(),
            },
        );
        return Delta::Reset(value);
    };
    if time < stream.time {
        return Delta::OutOfOrder;
    }
    let increase = if start != stream.start {
        None
    } else {
        match (&value, &stream.value) {
            (Agg::Sum(now), Agg::Sum(before)) => {
                let d = *now - *before;
                (!monotonic || d.as_f64() >= 0.0).then_some(Agg::Sum(d))
            }
            (Agg::Histogram(now), Agg::Histogram(before)) => {
                now.checked_sub(before).map(Agg::Histogram)
            }
            (Agg::Exponential(now), Agg::Exponential(before)) => {
                now.checked_sub(before).map(Agg::Exponential)
            }
            (Agg::Summary { count, sum }, Agg::Summary { count: c, sum: s }) => {
                count.checked_sub(*c).map(|count| Agg::Summary {
                    count,
                    sum: sum - s,
                })
            }
            _ => None,
        }
    };
    stream.start = start;
    stream.time = time;
    stream.last_seen = now;
    stream.value = value.clone();
    match increase {
        Some(d) => Delta::Increase(d),
        None => Delta::Reset(value),
    }
}

/// Folds one (delta) contribution into its output series, applying the histogram bounds
/// policy and the cardinality limit.
fn fold_point(
    out: &mut MetricAgg,
    metric_key: &[u8],
    primary_bounds: &mut HashMap<Vec<u8>, Vec<f64>>,
    limit: usize,
    mut attributes: Vec<KeyValue>,
    mut value: Agg,
    stats: &mut RollupStats,
) {
    let mut bounds_marker = None;
    if let Agg::Histogram(h) = &value {
        let primary = primary_bounds
            .entry(metric_key.to_vec())
            .or_insert_with(|| h.bounds.clone());
        match h.rebucket(primary) {
            Some(h) => value = Agg::Histogram(h),
            None => {
                let marker = string_attribute(
                    BOUNDS_HASH_ATTRIBUTE,
                    format!("{:016x}", bounds_hash(&h.bounds)),
                );
                attributes.push(marker.clone());
                config::canonicalize(&mut attributes);
                bounds_marker = Some(marker);
            }
        }
    }
    let mut key = encode_attributes(&attributes);
    if !out.series.contains_key(&key) {
        if out.admitted >= limit {
            stats.points_overflowed += 1;
            attributes = vec![bool_attribute(OVERFLOW_ATTRIBUTE, true)];
            attributes.extend(bounds_marker);
            config::canonicalize(&mut attributes);
            key = encode_attributes(&attributes);
        } else {
            out.admitted += 1;
        }
    }
    match out.series.entry(key) {
        Entry::Occupied(mut e) => e.get_mut().agg.merge(&value),
        Entry::Vacant(e) => {
            e.insert(Series {
                attributes,
                agg: value,
            });
        }
    }
}

/// A histogram point as an aggregate; `None` if its bucket counts do not fit its bounds.
/// A point without buckets becomes one unbounded bucket holding its count.
fn histogram(p: &HistogramDataPoint) -> Option<Agg> {
    let (bounds, counts) = if p.bucket_counts.is_empty() {
        (Vec::new(), vec![p.count])
    } else if p.bucket_counts.len() == p.explicit_bounds.len() + 1 {
        (p.explicit_bounds.clone(), p.bucket_counts.clone())
    } else {
        return None;
    };
    Some(Agg::Histogram(HistAgg {
        bounds,
        counts,
        count: p.count,
        sum: p.sum,
        min_max: p.min.zip(p.max),
    }))
}

fn running_key(metric_key: &[u8], series_key: &[u8]) -> Vec<u8> {
    let mut key = metric_key.to_vec();
    push_bytes(&mut key, series_key);
    key
}

/// Adds an interval's aggregate to a cumulative output series; returns its start time and
/// running total.
fn running_total(
    running: &mut HashMap<Vec<u8>, Running>,
    key: Vec<u8>,
    interval_start: u64,
    interval_end: u64,
    agg: Agg,
) -> (u64, Agg) {
    let r = running
        .entry(key)
        .and_modify(|r| r.agg.merge(&agg))
        .or_insert_with(|| Running {
            start: interval_start,
            last_flush: interval_end,
            agg,
        });
    r.last_flush = interval_end;
    (r.start, r.agg.clone())
}

/// The data of an output metric made of `points`.
fn output_data(
    kind: Kind,
    monotonic: bool,
    temporality: i32,
    points: Vec<OutPoint>,
) -> metric::Data {
    let numbers = |points: Vec<OutPoint>| {
        points
            .into_iter()
            .filter_map(|(attrs, start, time, agg)| match agg {
                Agg::Sum(v) => Some(number_point(&attrs, start, time, v)),
                Agg::Gauge(g) => Some(number_point(&attrs, start, time, g.last)),
                _ => None,
            })
            .collect()
    };
    match kind {
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: numbers(points),
        }),
        Kind::Sum => metric::Data::Sum(Sum {
            data_points: numbers(points),
            aggregation_temporality: temporality,
            is_monotonic: monotonic,
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: points
                .into_iter()
                .filter_map(|(attributes, start, time, agg)| match agg {
                    Agg::Histogram(h) => Some(HistogramDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        count: h.count,
                        sum: h.sum,
                        bucket_counts: h.counts,
                        explicit_bounds: h.bounds,
                        min: h.min_max.map(|m| m.0),
                        max: h.min_max.map(|m| m.1),
                        ..Default::default()
                    }),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
        Kind::Exponential => metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: points
                .into_iter()
                .filter_map(|(attributes, start, time, agg)| match agg {
                    Agg::Exponential(h) => {
                        let mut p = ExponentialHistogramDataPoint {
                            attributes,
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            ..Default::default()
                        };
                        h.fill_point(&mut p);
                        Some(p)
                    }
                    _ => None,
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
        Kind::Summary => metric::Data::Summary(Summary {
            data_points: points
                .into_iter()
                .filter_map(|(attributes, start, time, agg)| match agg {
                    Agg::Summary { count, sum } => Some(SummaryDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        count,
                        sum,
                        ..Default::default()
                    }),
                    _ => None,
                })
                .collect(),
        }),
    }
}

fn number_point(attributes: &[KeyValue], start: u64, time: u64, v: NumberValue) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes.to_vec(),
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(v.to_proto()),
        ..Default::default()
    }
}

fn bool_attribute(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// FNV-1a over the bounds' bit patterns: stable across builds and platforms.
fn bounds_hash(bounds: &[f64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bounds {
        for byte in b.to_bits().to_le_bytes() {
            h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_bytes(out, s.as_bytes());
}

/// An unambiguous byte encoding of attributes in the given order.
fn encode_attributes(attributes: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(attributes.len() * 24 + 4);
    out.extend_from_slice(&(attributes.len() as u32).to_le_bytes());
    for kv in attributes {
        push_str(&mut out, &kv.key);
        match &kv.value {
            Some(v) => push_bytes(&mut out, &v.encode_to_vec()),
            None => push_bytes(&mut out, &[]),
        }
    }
    out
}
