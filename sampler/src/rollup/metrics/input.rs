//! Reading OTLP input: what kind of metric a [`Metric`] is, and its data points as
//! aggregates ready to fold.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, DataPointFlags, HistogramDataPoint, Metric, NumberDataPoint, metric,
};

use super::exponential::ExpHist;
use super::{Agg, GaugeAgg, HistAgg, Kind, NumberValue};

/// A metric's data, kind, monotonic flag and temporality (summaries are cumulative by
/// definition, gauges count as delta); `None` without data.
pub(super) fn shape(metric: &Metric) -> Option<(&metric::Data, Kind, bool, i32)> {
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

/// Calls `f(attributes, start, time, value)` for every data point; the value is `None` for
/// a point without a recorded value or with bucket counts that do not fit its bounds.
pub(super) fn for_each_point(
    data: &metric::Data,
    mut f: impl FnMut(&[KeyValue], u64, u64, Option<Agg>),
) {
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
