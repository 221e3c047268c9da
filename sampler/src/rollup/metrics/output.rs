//! Building the OTLP output of a flush: points of each kind, the gauge statistics metrics,
//! and the request grouped by reduced resource and scope.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{Agg, GaugeAgg, Kind, NumberValue};

/// An output point: attributes, start time, time and aggregate.
pub(super) type OutPoint = (Vec<KeyValue>, u64, u64, Agg);

/// Name, description and unit of an output metric.
pub(super) struct Described<'a> {
    pub(super) name: &'a str,
    pub(super) description: &'a str,
    pub(super) unit: &'a str,
}

impl Described<'_> {
    /// The metric named `name` with this description and unit, holding `data`.
    fn metric(&self, name: String, data: metric::Data) -> Metric {
        Metric {
            name,
            description: self.description.to_owned(),
            unit: self.unit.to_owned(),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The output metric itself, made of `points`.
    pub(super) fn with_points(
        &self,
        kind: Kind,
        monotonic: bool,
        temporality: i32,
        points: Vec<OutPoint>,
    ) -> Metric {
        let data = output_data(kind, monotonic, temporality, points);
        self.metric(self.name.to_owned(), data)
    }

    /// The `<name>.min` and `<name>.max` gauges of a gauge's `points`, and its monotonic
    /// `<name>.count` sum (points seen) from `counts`.
    pub(super) fn gauge_stats(
        &self,
        points: &[OutPoint],
        counts: &[OutPoint],
        temporality: i32,
    ) -> [Metric; 3] {
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
        let count = metric::Data::Sum(Sum {
            data_points: counts
                .iter()
                .filter_map(|(attrs, start, time, agg)| match agg {
                    Agg::Sum(v) => Some(number_point(attrs, *start, *time, *v)),
                    _ => None,
                })
                .collect(),
            aggregation_temporality: temporality,
            is_monotonic: true,
        });
        [
            self.metric(format!("{}.min", self.name), stat(|g| g.min)),
            self.metric(format!("{}.max", self.name), stat(|g| g.max)),
            Metric {
                unit: "{point}".to_owned(),
                ..self.metric(format!("{}.count", self.name), count)
            },
        ]
    }
}

/// Output metrics of one reduced resource: its attributes and its metrics by scope
/// (name, version).
type ResourceGroup = (Vec<KeyValue>, BTreeMap<(String, String), Vec<Metric>>);

/// Output metrics grouped by reduced resource (by its key) and scope, in key order.
#[derive(Default)]
pub(super) struct OutputGroups(BTreeMap<Vec<u8>, ResourceGroup>);

impl OutputGroups {
    /// The metrics of scope `scope` under the resource keyed `resource_key`, created empty
    /// (with `resource` as its attributes) on first use.
    pub(super) fn scope_metrics(
        &mut self,
        resource_key: Vec<u8>,
        resource: Vec<KeyValue>,
        scope: (String, String),
    ) -> &mut Vec<Metric> {
        self.0
            .entry(resource_key)
            .or_insert_with(|| (resource, BTreeMap::new()))
            .1
            .entry(scope)
            .or_default()
    }

    /// The export request: one resource per reduced resource, one scope per scope.
    pub(super) fn into_request(self) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: self
                .0
                .into_values()
                .map(|(attributes, scopes)| {
                    let scopes = scopes
                        .into_iter()
                        .map(|((name, version), metrics)| scope_metrics(name, version, metrics))
                        .collect();
                    resource_metrics(attributes, scopes)
                })
                .collect(),
        }
    }
}

/// A resource (by its attributes) with its scopes' metrics.
pub(super) fn resource_metrics(
    attributes: Vec<KeyValue>,
    scope_metrics: Vec<ScopeMetrics>,
) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_metrics,
        ..Default::default()
    }
}

/// A scope (by name and version) with its metrics.
pub(super) fn scope_metrics(name: String, version: String, metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name,
            version,
            ..Default::default()
        }),
        metrics,
        ..Default::default()
    }
}

/// The data of an output metric made of `points`.
pub(super) fn output_data(
    kind: Kind,
    monotonic: bool,
    temporality: i32,
    points: Vec<OutPoint>,
) -> metric::Data {
    match kind {
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: number_points(points),
        }),
        Kind::Sum => metric::Data::Sum(Sum {
            data_points: number_points(points),
            aggregation_temporality: temporality,
            is_monotonic: monotonic,
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: points.into_iter().filter_map(histogram_point).collect(),
            aggregation_temporality: temporality,
        }),
        Kind::Exponential => metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: points.into_iter().filter_map(exponential_point).collect(),
            aggregation_temporality: temporality,
        }),
        Kind::Summary => metric::Data::Summary(Summary {
            data_points: points.into_iter().filter_map(summary_point).collect(),
        }),
    }
}

/// Number points of sum and gauge aggregates (a gauge reports its latest value).
fn number_points(points: Vec<OutPoint>) -> Vec<NumberDataPoint> {
    points
        .into_iter()
        .filter_map(|(attrs, start, time, agg)| match agg {
            Agg::Sum(v) => Some(number_point(&attrs, start, time, v)),
            Agg::Gauge(g) => Some(number_point(&attrs, start, time, g.last)),
            _ => None,
        })
        .collect()
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

fn histogram_point((attributes, start, time, agg): OutPoint) -> Option<HistogramDataPoint> {
    let Agg::Histogram(h) = agg else { return None };
    Some(HistogramDataPoint {
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
    })
}

fn exponential_point(
    (attributes, start, time, agg): OutPoint,
) -> Option<ExponentialHistogramDataPoint> {
    let Agg::Exponential(h) = agg else {
        return None;
    };
    let mut p = ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        ..Default::default()
    };
    h.fill_point(&mut p);
    Some(p)
}

fn summary_point((attributes, start, time, agg): OutPoint) -> Option<SummaryDataPoint> {
    let Agg::Summary { count, sum } = agg else {
        return None;
    };
    Some(SummaryDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        count,
        sum,
        ..Default::default()
    })
}
