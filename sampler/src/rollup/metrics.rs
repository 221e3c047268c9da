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
//!
//! Layout: this module holds the aggregator ([`MetricRollup`]): folding points into output
//! series under the attribute rules, histogram bounds policy and cardinality limit, and the
//! flush. `input` reads OTLP points as aggregates ([`Agg`], in `aggregate`), `temporality`
//! converts cumulative input to deltas (and keeps cumulative output totals), `stream_key`
//! encodes the keys state is filed under, `output` builds the OTLP of a flush, `config`
//! holds the settings and attribute rules, [`exponential`] the exponential histograms.

mod aggregate;
mod config;
pub mod exponential;
mod input;
mod output;
mod stream_key;
mod temporality;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::otlp::{kv_bool, kv_str};

pub use aggregate::{Agg, GaugeAgg, HistAgg, NumberValue};
pub use config::{
    AttributeRules, MetricRollupConfig, MetricRollupError, MetricRuleConfig, Temporality,
};
pub(super) use stream_key::encode_attributes;
pub use stream_key::series_key;

use input::{for_each_point, shape};
use output::{Described, OutPoint, OutputGroups};
use stream_key::{metric_identity, running_key, scope_id, stream_key, stream_prefix};
use temporality::{Delta, Running, Stream, running_total, to_delta};

/// Resource attributes kept on rolled-up metrics: the service's identity, not the instance's.
/// The same list metrics route by, so one node receives every input of an output series.
pub use otel_tail_shared::split::SERVICE_IDENTITY_ATTRIBUTES as IDENTITY_ATTRIBUTES;
/// Attribute marking every rolled-up data point.
pub const ROLLUP_ATTRIBUTE: &str = "otel_tail.rollup";
/// Attribute of the series that takes the points beyond the cardinality limit.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";
/// Attribute distinguishing histogram series whose bounds differ from the primary ones.
pub const BOUNDS_HASH_ATTRIBUTE: &str = "otel.histogram.bounds_hash";

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
        let delta = temporality == AggregationTemporality::Delta as i32;
        let scope_id = scope_id(scope);
        let identity = metric_identity(&scope_id, metric, kind, monotonic);
        let stream_prefix = cumulative.then(|| stream_prefix(resource, &identity));
        let reduced_resource = reduce_resource(resource);
        let resource_key = encode_attributes(&reduced_resource);
        let mut metric_key = resource_key.clone();
        metric_key.extend_from_slice(&identity);

        let MetricRollup {
            config,
            rules,
            streams,
            metrics,
            primary_bounds,
            stats,
            ..
        } = self;
        let out = metrics.entry(metric_key.clone()).or_insert_with(|| {
            MetricAgg::new(
                reduced_resource,
                resource_key,
                scope_id,
                metric,
                kind,
                monotonic,
            )
        });
        for_each_point(data, |attributes, start, time, value| {
            stats.points_in += 1;
            let Some(value) = value else {
                stats.points_ignored += 1;
                return;
            };
            let value = match &stream_prefix {
                Some(prefix) => {
                    let key = stream_key(prefix, attributes);
                    match to_delta(streams, key, start, time, now_unix_nano, value, monotonic) {
                        Delta::Increase(d) => d,
                        Delta::Reset(d) => {
                            stats.resets += 1;
                            d
                        }
                        Delta::OutOfOrder => {
                            stats.points_ignored += 1;
                            return;
                        }
                    }
                }
                None if delta => value,
                None => {
                    stats.points_ignored += 1;
                    return;
                }
            };
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

    /// Emits one point per output series for the interval `[interval_start, interval_end]`
    /// and starts the next interval. Also forgets input streams and cumulative output series
    /// unseen for ten intervals.
    pub fn flush(&mut self, interval_start: u64, interval_end: u64) -> ExportMetricsServiceRequest {
        let temporality = if self.config.temporality == Temporality::Cumulative {
            AggregationTemporality::Cumulative
        } else {
            AggregationTemporality::Delta
        } as i32;
        let mut metrics: Vec<(Vec<u8>, MetricAgg)> = self.metrics.drain().collect();
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = OutputGroups::default();
        for (metric_key, m) in metrics {
            if m.series.is_empty() {
                continue;
            }
            let (points, counts) =
                self.interval_points(&metric_key, m.kind, m.series, interval_start, interval_end);
            self.stats.points_out += (points.len() + 3 * counts.len()) as u64;
            let described = Described {
                name: &m.name,
                description: &m.description,
                unit: &m.unit,
            };
            let scope_metrics = out.scope_metrics(m.resource_key, m.resource, m.scope);
            if !counts.is_empty() {
                scope_metrics.extend(described.gauge_stats(&points, &counts, temporality));
            }
            scope_metrics.push(described.with_points(m.kind, m.monotonic, temporality, points));
        }
        self.evict(interval_end);
        out.into_request()
    }

    /// The interval's points of one output metric's series, in series key order, each
    /// marked as rolled up; with cumulative output, running totals since the series first
    /// appeared. Second, with `gauge_stats`, each gauge series' count of points seen.
    fn interval_points(
        &mut self,
        metric_key: &[u8],
        kind: Kind,
        series: HashMap<Vec<u8>, Series>,
        interval_start: u64,
        interval_end: u64,
    ) -> (Vec<OutPoint>, Vec<OutPoint>) {
        let cumulative = self.config.temporality == Temporality::Cumulative;
        let mut series: Vec<(Vec<u8>, Series)> = series.into_iter().collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut points: Vec<OutPoint> = Vec::with_capacity(series.len());
        let mut counts: Vec<OutPoint> = Vec::new();
        for (series_key, s) in series {
            let mut attributes = s.attributes;
            attributes.push(kv_bool(ROLLUP_ATTRIBUTE, true));
            if let (Agg::Gauge(g), true) = (&s.agg, self.config.gauge_stats) {
                let count = Agg::Sum(NumberValue::Int(g.count as i64));
                let (start, count) = if cumulative {
                    let mut key = running_key(metric_key, &series_key);
                    key.push(b'c');
                    running_total(&mut self.running, key, interval_start, interval_end, count)
                } else {
                    (interval_start, count)
                };
                counts.push((attributes.clone(), start, interval_end, count));
            }
            let (start, agg) = if cumulative && kind != Kind::Gauge {
                let key = running_key(metric_key, &series_key);
                running_total(&mut self.running, key, interval_start, interval_end, s.agg)
            } else {
                (interval_start, s.agg)
            };
            points.push((attributes, start, interval_end, agg));
        }
        (points, counts)
    }
}

impl MetricAgg {
    /// An output metric with no series yet.
    fn new(
        resource: Vec<KeyValue>,
        resource_key: Vec<u8>,
        scope: (String, String),
        metric: &Metric,
        kind: Kind,
        monotonic: bool,
    ) -> MetricAgg {
        MetricAgg {
            resource,
            resource_key,
            scope,
            name: metric.name.clone(),
            description: metric.description.clone(),
            unit: metric.unit.clone(),
            kind,
            monotonic,
            series: HashMap::new(),
            admitted: 0,
        }
    }
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
                let marker = kv_str(
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
            attributes = vec![kv_bool(OVERFLOW_ATTRIBUTE, true)];
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
