//! The router's wire splitter (`otel_tail_shared::split`) and the sampler's decoded
//! partitioner (`otel_tail_sampler::cluster::partition`) must send every span, log record
//! and metric data point to the same owner: the router routes client traffic, a sampler
//! re-routes what it received but does not own, and if the two disagreed an item would
//! bounce or land on a node that does not own its trace or series.
//!
//! Random requests (trace ids valid, all-zero, empty and of wrong lengths; logs with and
//! without trace ids; resources with and without the identity attributes, with non-string
//! and duplicate values; metrics of every kind) are routed over random rings both ways.
//! The sampler partitions what its receiver accepted, so the decoded side gets the request
//! after `otlp::sanitize_*`; the splitter must leave out exactly the items sanitizing
//! removes.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_sampler::cluster::partition::{
    decoded_logs_by_owner, decoded_metrics_by_owner, decoded_traces_by_owner,
};
use otel_tail_sampler::cluster::plan::Topology;
use otel_tail_shared::otlp::{self, kv_int, kv_str};
use otel_tail_shared::ring::{NodeId, Ring};
use otel_tail_shared::split::{
    RouteKey, wire_logs_by_owner, wire_metrics_by_owner, wire_traces_by_owner,
};
use otel_tail_shared::testing::span_names;
use proptest::prelude::*;
use prost::Message;

/// A ring of 1 to 5 samplers with few virtual nodes, so owners differ between items.
fn topology() -> impl Strategy<Value = Topology> {
    (prop::collection::btree_set("[a-z]{1,6}", 1..=5), 1u32..=32).prop_map(|(names, vnodes)| {
        Topology {
            ring: Ring::with_members(vnodes, names.into_iter().map(NodeId::from)),
            forward: Default::default(),
        }
    })
}

/// Trace ids: valid ones from a small pool (so items share owners), all-zero, empty, and
/// of wrong lengths.
fn trace_id() -> impl Strategy<Value = Vec<u8>> + Clone {
    prop_oneof![
        4 => (1u8..=8).prop_map(|b| vec![b; 16]),
        3 => prop::collection::vec(any::<u8>(), 16),
        1 => Just(vec![0; 16]),
        2 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 1..=20),
    ]
}

/// A resource attribute: one of the identity keys (or another key), with a string value
/// from a small pool, an int, or no value.
fn attribute() -> impl Strategy<Value = KeyValue> {
    let key = prop_oneof![
        3 => Just("service.name"),
        1 => Just("service.namespace"),
        1 => Just("deployment.environment"),
        1 => Just("deployment.environment.name"),
        2 => Just("service.instance.id"),
        2 => Just("k8s.pod.name"),
        2 => Just("host.name"),
        1 => Just("cloud.region"),
    ];
    let value = prop_oneof![
        6 => prop::sample::select(vec!["", "a", "b", "checkout", "pod-1"]).prop_map(Some),
        1 => Just(None),
    ];
    (key, value, prop::bool::weighted(0.2)).prop_map(|(key, value, as_int)| match value {
        Some(v) if as_int => kv_int(key, v.len() as i64),
        Some(v) => kv_str(key, v),
        None => KeyValue {
            key: key.to_owned(),
            ..Default::default()
        },
    })
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop::option::weighted(
        0.9,
        prop::collection::vec(attribute(), 0..6).prop_map(|attributes| Resource {
            attributes,
            ..Default::default()
        }),
    )
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop::option::of("[a-z]{0,4}".prop_map(|name| InstrumentationScope {
        name,
        ..Default::default()
    }))
}

/// Groups of items under resources and scopes: `[(resource, [(scope, [item])])]`.
type Grouped<T> = Vec<(
    Option<Resource>,
    Vec<(Option<InstrumentationScope>, Vec<T>)>,
)>;

fn grouped<T: std::fmt::Debug>(
    item: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Grouped<T>> {
    prop::collection::vec(
        (
            resource(),
            prop::collection::vec((scope(), prop::collection::vec(item, 0..5)), 0..3),
        ),
        0..4,
    )
}

/// Replaces every item by `f(n, item)`, `n` counting items in request order from 0, so
/// each item can carry a label that tells it apart after routing.
fn numbered<T, U>(groups: Grouped<T>, mut f: impl FnMut(u64, T) -> U) -> Grouped<U> {
    let mut next = 0;
    let mut label = |item| {
        next += 1;
        f(next - 1, item)
    };
    groups
        .into_iter()
        .map(|(resource, scopes)| {
            let scopes = scopes
                .into_iter()
                .map(|(scope, items)| (scope, items.into_iter().map(&mut label).collect()))
                .collect();
            (resource, scopes)
        })
        .collect()
}

fn traces() -> impl Strategy<Value = ExportTraceServiceRequest> {
    grouped(trace_id()).prop_map(|ids| {
        let spans = numbered(ids, |n, trace_id| Span {
            trace_id,
            span_id: (n + 1).to_le_bytes().to_vec(),
            name: n.to_string(),
            ..Default::default()
        });
        let resource_spans = spans
            .into_iter()
            .map(|(resource, scopes)| ResourceSpans {
                resource,
                scope_spans: scopes
                    .into_iter()
                    .map(|(scope, spans)| ScopeSpans {
                        scope,
                        spans,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    })
}

fn logs() -> impl Strategy<Value = ExportLogsServiceRequest> {
    grouped(trace_id()).prop_map(|ids| {
        let records = numbered(ids, |n, trace_id| LogRecord {
            trace_id,
            time_unix_nano: n + 1,
            ..Default::default()
        });
        let resource_logs = records
            .into_iter()
            .map(|(resource, scopes)| ResourceLogs {
                resource,
                scope_logs: scopes
                    .into_iter()
                    .map(|(scope, log_records)| ScopeLogs {
                        scope,
                        log_records,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }
    })
}

/// Metric data of every kind with 0 to 3 points, or no data.
fn metric_data() -> impl Strategy<Value = Option<metric::Data>> + Clone {
    (0usize..6, 0usize..4).prop_map(|(kind, n)| match kind {
        0 => Some(metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint::default(); n],
        })),
        1 => Some(metric::Data::Sum(Sum {
            data_points: vec![NumberDataPoint::default(); n],
            aggregation_temporality: 1,
            is_monotonic: true,
        })),
        2 => Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint::default(); n],
            aggregation_temporality: 2,
        })),
        3 => Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint::default(); n],
            aggregation_temporality: 1,
        })),
        4 => Some(metric::Data::Summary(Summary {
            data_points: vec![SummaryDataPoint::default(); n],
        })),
        _ => None,
    })
}

fn metrics() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let metric = (
        prop::sample::select(vec!["", "cpu", "http.server.duration", "queue.depth"]),
        metric_data(),
    );
    grouped(metric).prop_map(|specs| {
        let metrics = numbered(specs, |n, (name, data)| Metric {
            name: name.to_owned(),
            description: n.to_string(),
            data,
            ..Default::default()
        });
        let resource_metrics = metrics
            .into_iter()
            .map(|(resource, scopes)| ResourceMetrics {
                resource,
                scope_metrics: scopes
                    .into_iter()
                    .map(|(scope, metrics)| ScopeMetrics {
                        scope,
                        metrics,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect();
        ExportMetricsServiceRequest { resource_metrics }
    })
}

/// The router's owner function over `topology`'s ring (see `router/src/routing.rs`).
fn router_owner(topology: &Topology) -> impl FnMut(RouteKey<'_>) -> usize + '_ {
    |key| {
        match key {
            RouteKey::Trace(trace_id) => topology.ring.owner_index_of_trace(&trace_id),
            RouteKey::Key(key) => topology.ring.owner_index_of_key(key),
        }
        .unwrap_or(0)
    }
}

/// The sampler's owner function (see `Cluster::route`); the ring is never empty here.
fn sampler_owner(topology: &Topology) -> impl FnMut(RouteKey<'_>) -> usize + '_ {
    |key| topology.owner_index(key).expect("a non-empty ring")
}

/// Owner of each item (by label) of each owner's part.
fn owners<R>(
    parts: Vec<(usize, R)>,
    labels: impl Fn(&R) -> Vec<String>,
) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for (owner, part) in parts {
        for label in labels(&part) {
            assert!(
                owners.insert(label.clone(), owner).is_none(),
                "item {label} sent twice"
            );
        }
    }
    owners
}

fn log_labels(request: &ExportLogsServiceRequest) -> Vec<String> {
    request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .map(|r| r.time_unix_nano.to_string())
        .collect()
}

/// A metric's label and its data points: every point is counted under its metric's label.
fn metric_labels(request: &ExportMetricsServiceRequest) -> Vec<String> {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.description.clone())
        .collect()
}

/// The split parts decoded, with their owner; empty parts left out.
fn decoded_parts<R: Message + Default>(parts: &[bytes::Bytes]) -> Vec<(usize, R)> {
    parts
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(o, p)| (o, R::decode(p.as_ref()).expect("a split part decodes")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn spans_go_to_the_same_owner_both_ways(topology in topology(), request in traces()) {
        let wire = request.encode_to_vec();
        let split = wire_traces_by_owner(&wire, topology.ring.len(), router_owner(&topology)).expect("splits");
        let mut accepted = request.clone();
        let refused = otlp::sanitize_traces(&mut accepted).rejected as usize;
        // The splitter leaves out spans whose trace id is invalid; the sampler's receiver
        // refuses those and also spans with an invalid span id (none here).
        prop_assert_eq!(split.invalid, refused);
        let by_router = owners(decoded_parts(&split.parts), span_names);
        let by_sampler = owners(
            decoded_traces_by_owner(accepted.clone(), usize::MAX, sampler_owner(&topology)),
            span_names,
        );
        prop_assert_eq!(by_router.len(), otlp::span_count(&accepted));
        prop_assert_eq!(by_router, by_sampler);
    }

    #[test]
    fn log_records_go_to_the_same_owner_both_ways(topology in topology(), request in logs()) {
        let wire = request.encode_to_vec();
        let split = wire_logs_by_owner(&wire, topology.ring.len(), router_owner(&topology)).expect("splits");
        let mut accepted = request.clone();
        let refused = otlp::sanitize_logs(&mut accepted).rejected as usize;
        prop_assert_eq!(split.invalid, refused);
        let by_router = owners(decoded_parts(&split.parts), log_labels);
        let by_sampler = owners(
            decoded_logs_by_owner(accepted.clone(), sampler_owner(&topology)),
            log_labels,
        );
        prop_assert_eq!(by_router.len(), otlp::log_count(&accepted));
        prop_assert_eq!(by_router, by_sampler);
    }

    #[test]
    fn data_points_go_to_the_same_owner_both_ways(topology in topology(), request in metrics()) {
        let wire = request.encode_to_vec();
        let split = wire_metrics_by_owner(&wire, topology.ring.len(), router_owner(&topology)).expect("splits");
        prop_assert_eq!(split.invalid, 0);
        let router_parts: Vec<(usize, ExportMetricsServiceRequest)> = decoded_parts(&split.parts);
        let sampler_parts = decoded_metrics_by_owner(request.clone(), sampler_owner(&topology));
        // Points per owner: the splitter's counts and the partitioner's parts.
        let mut points = vec![0; topology.ring.len()];
        for (owner, part) in &sampler_parts {
            points[*owner] += otlp::data_point_count(part);
        }
        prop_assert_eq!(&split.counts, &points);
        let by_router = owners(router_parts, metric_labels);
        let by_sampler = owners(sampler_parts, metric_labels);
        prop_assert_eq!(by_router.len(), metric_labels(&request).len());
        prop_assert_eq!(by_router, by_sampler);
    }
}
