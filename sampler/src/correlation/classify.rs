//! Settling one held group: each log record or data point of a resource's group is matched
//! against the [`KeptIndex`] and goes to exactly one side, raw (marked with
//! [`super::CORRELATED_ATTRIBUTE`]) or summary. Pure: the caller holds the index.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, SummaryDataPoint, metric,
};
use otel_tail_shared::otlp;

use super::{KeptIndex, Reason, ResourceIdentity};

/// A group split into its raw and summary parts; a side with no item is `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split<T> {
    /// Items kept raw, each marked with its reason.
    pub raw: Option<T>,
    /// Items for the summary path, unchanged.
    pub summary: Option<T>,
    /// Raw items by reason, indexed like [`REASONS`].
    pub raw_items: [u64; 3],
    /// Items on the summary side.
    pub summary_items: u64,
}

/// The reasons in the order of [`Split::raw_items`].
pub const REASONS: [Reason; 3] = [Reason::TraceId, Reason::Exemplar, Reason::Window];

fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::TraceId => 0,
        Reason::Exemplar => 1,
        Reason::Window => 2,
    }
}

/// Marks an item's attributes with `reason`, replacing an earlier mark (an item forwarded
/// from another node, or settled before a crash and replayed, carries one mark only).
fn mark(attributes: &mut Vec<KeyValue>, reason: Reason) {
    attributes.retain(|kv| kv.key != super::CORRELATED_ATTRIBUTE);
    attributes.push(reason.attribute());
}

/// Marks every record of a kept trace's logs with [`Reason::TraceId`]; returns how many.
pub fn mark_trace_logs(rl: &mut ResourceLogs) -> u64 {
    let mut n = 0;
    for sl in &mut rl.scope_logs {
        for record in &mut sl.log_records {
            mark(&mut record.attributes, Reason::TraceId);
            n += 1;
        }
    }
    n
}

/// Splits one resource's log records. A record is raw when its trace id is kept, or when
/// it lies (by its time, else its observed time) in the window of a correlating kept
/// trace of the same resource.
pub fn classify_logs(rl: ResourceLogs, kept: &KeptIndex) -> Split<ResourceLogs> {
    let identity = ResourceIdentity::from_resource(rl.resource.as_ref());
    let mut split = Split::default();
    let mut raw_scopes = Vec::new();
    let mut summary_scopes = Vec::new();
    for sl in rl.scope_logs {
        let (mut raw, mut summary) = (Vec::new(), Vec::new());
        for mut record in sl.log_records {
            let time = if record.time_unix_nano != 0 {
                record.time_unix_nano
            } else {
                record.observed_time_unix_nano
            };
            match kept.match_log(otlp::trace_id(&record.trace_id), &identity, time) {
                Some(reason) => {
                    mark(&mut record.attributes, reason);
                    split.raw_items[reason_index(reason)] += 1;
                    raw.push(record);
                }
                None => {
                    split.summary_items += 1;
                    summary.push(record);
                }
            }
        }
        push_part(&mut raw_scopes, raw, |log_records| ScopeLogs {
            scope: sl.scope.clone(),
            log_records,
            schema_url: sl.schema_url.clone(),
        });
        push_part(&mut summary_scopes, summary, |log_records| ScopeLogs {
            scope: sl.scope,
            log_records,
            schema_url: sl.schema_url,
        });
    }
    let rebuild = |scope_logs: Vec<ScopeLogs>| {
        (!scope_logs.is_empty()).then(|| ResourceLogs {
            resource: rl.resource.clone(),
            scope_logs,
            schema_url: rl.schema_url.clone(),
        })
    };
    split.raw = rebuild(raw_scopes);
    split.summary = rebuild(summary_scopes);
    split
}

/// Everything to summary, unchanged (correlation off): the same shape as [`classify_logs`].
pub fn all_summary_logs(rl: ResourceLogs) -> Split<ResourceLogs> {
    let items = rl
        .scope_logs
        .iter()
        .map(|sl| sl.log_records.len() as u64)
        .sum();
    Split {
        raw: None,
        summary: Some(rl),
        raw_items: [0; 3],
        summary_items: items,
    }
}

fn push_part<I, C>(out: &mut Vec<C>, items: Vec<I>, build: impl FnOnce(Vec<I>) -> C) {
    if !items.is_empty() {
        out.push(build(items));
    }
}

/// A data point as correlation sees it.
trait Point {
    fn attributes(&mut self) -> &mut Vec<KeyValue>;
    fn exemplars(&mut self) -> Option<&mut Vec<Exemplar>>;
    fn time(&self) -> u64;
}

macro_rules! point_with_exemplars {
    ($t:ty) => {
        impl Point for $t {
            fn attributes(&mut self) -> &mut Vec<KeyValue> {
                &mut self.attributes
            }
            fn exemplars(&mut self) -> Option<&mut Vec<Exemplar>> {
                Some(&mut self.exemplars)
            }
            fn time(&self) -> u64 {
                self.time_unix_nano
            }
        }
    };
}
point_with_exemplars!(NumberDataPoint);
point_with_exemplars!(HistogramDataPoint);
point_with_exemplars!(ExponentialHistogramDataPoint);

impl Point for SummaryDataPoint {
    fn attributes(&mut self) -> &mut Vec<KeyValue> {
        &mut self.attributes
    }
    fn exemplars(&mut self) -> Option<&mut Vec<Exemplar>> {
        None
    }
    fn time(&self) -> u64 {
        self.time_unix_nano
    }
}

/// Splits points into (raw, summary); a point kept for an exemplar keeps only the
/// exemplars that reference kept traces.
fn split_points<P: Point>(
    points: Vec<P>,
    identity: &ResourceIdentity,
    kept: &KeptIndex,
    split: &mut [u64; 4],
) -> (Vec<P>, Vec<P>) {
    let (mut raw, mut summary) = (Vec::new(), Vec::new());
    for mut point in points {
        let time = point.time();
        let reason = match point.exemplars() {
            Some(exemplars) => kept.match_exemplars(exemplars, identity, time),
            None => kept.match_point(&[], identity, time),
        };
        match reason {
            Some(reason) => {
                if reason == Reason::Exemplar
                    && let Some(exemplars) = point.exemplars()
                {
                    kept.retain_kept_exemplars(exemplars);
                }
                mark(point.attributes(), reason);
                split[reason_index(reason)] += 1;
                raw.push(point);
            }
            None => {
                split[3] += 1;
                summary.push(point);
            }
        }
    }
    (raw, summary)
}

/// Splits one metric into its raw and summary halves (same name, unit, type and
/// temporality on both); a half with no point is `None`.
fn split_metric(
    metric: Metric,
    identity: &ResourceIdentity,
    kept: &KeptIndex,
    counts: &mut [u64; 4],
) -> (Option<Metric>, Option<Metric>) {
    let Some(data) = metric.data else {
        return (None, None);
    };
    let shell = |data: Option<metric::Data>| {
        data.map(|data| Metric {
            name: metric.name.clone(),
            description: metric.description.clone(),
            unit: metric.unit.clone(),
            metadata: metric.metadata.clone(),
            data: Some(data),
        })
    };
    macro_rules! halves {
        ($v:ident, $inner:expr) => {{
            let mut inner = $inner;
            let points = std::mem::take(&mut inner.data_points);
            let (raw, summary) = split_points(points, identity, kept, counts);
            let make = |points: Vec<_>| {
                (!points.is_empty()).then(|| {
                    let mut copy = inner.clone();
                    copy.data_points = points;
                    metric::Data::$v(copy)
                })
            };
            (shell(make(raw)), shell(make(summary)))
        }};
    }
    match data {
        metric::Data::Gauge(g) => halves!(Gauge, g),
        metric::Data::Sum(s) => halves!(Sum, s),
        metric::Data::Histogram(h) => halves!(Histogram, h),
        metric::Data::ExponentialHistogram(h) => halves!(ExponentialHistogram, h),
        metric::Data::Summary(s) => halves!(Summary, s),
    }
}

/// Splits one resource's metric points. A point is raw when one of its exemplars
/// references a kept trace, or when its time lies in the window of a correlating kept
/// trace of the same resource.
pub fn classify_metrics(rm: ResourceMetrics, kept: &KeptIndex) -> Split<ResourceMetrics> {
    let identity = ResourceIdentity::from_resource(rm.resource.as_ref());
    let mut counts = [0u64; 4];
    let mut raw_scopes = Vec::new();
    let mut summary_scopes = Vec::new();
    for sm in rm.scope_metrics {
        let (mut raw, mut summary) = (Vec::new(), Vec::new());
        for metric in sm.metrics {
            let (r, s) = split_metric(metric, &identity, kept, &mut counts);
            raw.extend(r);
            summary.extend(s);
        }
        push_part(&mut raw_scopes, raw, |metrics| ScopeMetrics {
            scope: sm.scope.clone(),
            metrics,
            schema_url: sm.schema_url.clone(),
        });
        push_part(&mut summary_scopes, summary, |metrics| ScopeMetrics {
            scope: sm.scope,
            metrics,
            schema_url: sm.schema_url,
        });
    }
    let rebuild = |scope_metrics: Vec<ScopeMetrics>| {
        (!scope_metrics.is_empty()).then(|| ResourceMetrics {
            resource: rm.resource.clone(),
            scope_metrics,
            schema_url: rm.schema_url.clone(),
        })
    };
    Split {
        raw: rebuild(raw_scopes),
        summary: rebuild(summary_scopes),
        raw_items: [counts[0], counts[1], counts[2]],
        summary_items: counts[3],
    }
}

/// Everything to summary, unchanged (correlation off): the same shape as
/// [`classify_metrics`].
pub fn all_summary_metrics(rm: ResourceMetrics) -> Split<ResourceMetrics> {
    let items = otlp::resource_data_points(&rm) as u64;
    Split {
        raw: None,
        summary: Some(rm),
        raw_items: [0; 3],
        summary_items: items,
    }
}
