//! Temporality: cumulative input becomes deltas, and delta output becomes cumulative.
//!
//! - **Input.** Each cumulative input stream (resource + scope + metric + all point
//!   attributes, see [`stream_key`](super::stream_key::stream_key)) remembers its last
//!   point; a new point contributes its increase since then ([`to_delta`]), or its whole
//!   value on a reset or as the stream's first point. The remembered points are handed over
//!   as OTLP ([`MetricRollup::cumulative_state`]) and restored ([`MetricRollup::prime`]) so
//!   the conversion survives a restart.
//! - **Output.** With cumulative output temporality each output series keeps a running
//!   total from the interval it first appeared in ([`running_total`]).
//!
//! Streams and running totals unseen for [`STALE_INTERVALS`] intervals are forgotten
//! ([`MetricRollup::evict`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::input::{for_each_point, shape};
use super::output::{OutPoint, output_data, resource_metrics, scope_metrics};
use super::stream_key::{
    decode_metric_identity, decode_resource, decode_scope, decoded, metric_identity, scope_id,
    split_stream_key, stream_key, stream_prefix,
};
use super::{Agg, MetricRollup};

/// Input streams and cumulative output series unseen for this many intervals are forgotten.
const STALE_INTERVALS: u32 = 10;

/// The last cumulative point of an input stream.
#[derive(Debug)]
pub(super) struct Stream {
    start: u64,
    time: u64,
    last_seen: u64,
    value: Agg,
}

/// The running total of a cumulative output series.
#[derive(Debug)]
pub(super) struct Running {
    start: u64,
    last_flush: u64,
    agg: Agg,
}

/// What a cumulative point contributes to the current interval.
pub(super) enum Delta {
    /// Its increase since the stream's last point.
    Increase(Agg),
    /// Its whole value: the stream's first point, or a reset (start time changed, or a
    /// monotonic value decreased).
    Reset(Agg),
    /// Nothing: it is older than the stream's last point.
    OutOfOrder,
}

/// Converts a cumulative point of a stream to its increase since the stream's last point,
/// and makes it the stream's last point.
pub(super) fn to_delta(
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
        increase(&value, &stream.value, monotonic)
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

/// `now - before` for two cumulative values of one stream; `None` when that is not an
/// increase (a monotonic sum or a count went down, or the kinds differ): a reset.
fn increase(now: &Agg, before: &Agg, monotonic: bool) -> Option<Agg> {
    match (now, before) {
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
}

/// Adds an interval's aggregate to a cumulative output series; returns its start time and
/// running total.
pub(super) fn running_total(
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

/// Tracked streams grouped for [`MetricRollup::cumulative_state`], by the parts of their
/// keys: resource, scope, metric identity, point attributes.
type StateGroups<'a> =
    BTreeMap<&'a [u8], BTreeMap<&'a [u8], BTreeMap<&'a [u8], BTreeMap<&'a [u8], OutPoint>>>>;

impl MetricRollup {
    /// The last point of every tracked cumulative input stream, as ordinary OTLP: its full
    /// resource attributes, scope name and version, metric name, unit, kind, monotonic flag
    /// and cumulative temporality, and the point with its attributes, start time, time and
    /// value. Taken right after a [`flush`](Self::flush) and handed to [`prime`](Self::prime)
    /// of a fresh aggregator with the same configuration, it restores the conversion of
    /// cumulative input to deltas exactly, so totals stay exact across a restart. Points are
    /// ordered deterministically (by resource, scope, metric and attributes).
    pub fn cumulative_state(&self) -> ExportMetricsServiceRequest {
        let resource_metrics = group_streams(&self.streams)
            .into_iter()
            .filter_map(|(resource, scopes)| {
                let attributes = decoded(decode_resource(resource))?;
                let scopes = scopes
                    .into_iter()
                    .filter_map(|(scope, metrics)| state_scope(scope, metrics))
                    .collect();
                Some(resource_metrics(attributes, scopes))
            })
            .collect();
        ExportMetricsServiceRequest { resource_metrics }
    }

    /// Restores input stream state from a [`cumulative_state`](Self::cumulative_state)
    /// (typically persisted at the last flush before a restart): each cumulative point
    /// becomes its stream's last point, seen at `now_unix_nano`, so the stream's next point
    /// counts only its increase. Nothing is added to the current interval and only
    /// [`RollupStats::streams_primed`](super::RollupStats::streams_primed) counts. A stream
    /// already tracked keeps whichever point is newer; call it before folding the replayed
    /// input of the open interval. Non-cumulative metrics and points without a recorded
    /// value are skipped.
    pub fn prime(&mut self, state: &ExportMetricsServiceRequest, now_unix_nano: u64) {
        for rm in &state.resource_metrics {
            for sm in &rm.scope_metrics {
                for metric in &sm.metrics {
                    self.prime_metric(
                        rm.resource.as_ref(),
                        sm.scope.as_ref(),
                        metric,
                        now_unix_nano,
                    );
                }
            }
        }
    }

    /// [`prime`](Self::prime) for one metric.
    fn prime_metric(
        &mut self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        metric: &Metric,
        now_unix_nano: u64,
    ) {
        let Some((data, kind, monotonic, temporality)) = shape(metric) else {
            return;
        };
        if temporality != AggregationTemporality::Cumulative as i32 {
            return;
        }
        let identity = metric_identity(&scope_id(scope), metric, kind, monotonic);
        let prefix = stream_prefix(resource, &identity);
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

    /// Forgets input streams and cumulative output series unseen for [`STALE_INTERVALS`]
    /// intervals before `now`.
    pub(super) fn evict(&mut self, now: u64) {
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

/// The tracked streams' last points grouped by resource, scope, metric and attributes.
fn group_streams(streams: &HashMap<Vec<u8>, Stream>) -> StateGroups<'_> {
    let mut groups: StateGroups = BTreeMap::new();
    for (key, stream) in streams {
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
    groups
}

/// One scope of [`MetricRollup::cumulative_state`]: its encoded identity and its metrics'
/// points by encoded metric identity.
fn state_scope(
    scope: &[u8],
    metrics: BTreeMap<&[u8], BTreeMap<&[u8], OutPoint>>,
) -> Option<ScopeMetrics> {
    let (name, version) = decoded(decode_scope(scope))?;
    let cumulative = AggregationTemporality::Cumulative as i32;
    let metrics = metrics
        .into_iter()
        .filter_map(|(metric, points)| {
            let (name, unit, kind, monotonic) = decoded(decode_metric_identity(metric))?;
            let points = points.into_values().collect();
            Some(Metric {
                name,
                unit,
                data: Some(output_data(kind, monotonic, cumulative, points)),
                ..Default::default()
            })
        })
        .collect();
    Some(scope_metrics(name, version, metrics))
}
