//! The settle shell over real RocksDB and a real file exporter: totals survive rollups
//! and crashes at every step, and each item leaves exactly once.

use std::path::Path;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::config::Config;
use otel_tail_shared::otlp::kv;
use proptest::prelude::*;

use super::*;
use crate::clock::ManualClock;

const SEC: u64 = 1_000_000_000;
/// The tests' wall time: fixed, so intervals and windows fall the same way on every run.
const T0: u64 = 1_767_225_600 * SEC + 123_456_789;

/// A settler, its queues and storage, opened on `dir`.
struct Node {
    settler: Settler,
    queues: Arc<ExportQueues>,
}

fn open(dir: &Path, yaml: &str) -> Node {
    let mut config = Config::from_yaml(yaml, &|_| None).unwrap();
    let (storage, queues) = crate::export_queue::open_for_tests(dir, &mut config);
    let settler = Settler::new(
        SettleConfig {
            sampler: &config.sampler,
            correlation: &config.correlation,
            rollup: &config.rollup,
        },
        storage,
        queues.clone(),
        Arc::new(ManualClock::starting_at(T0)),
        SettleLinks::default(),
    )
    .unwrap();
    Node { settler, queues }
}

impl Node {
    /// Sends what is queued to the file exporter.
    async fn drain(&self) {
        let run = tokio::spawn(
            self.queues
                .clone()
                .run(std::future::ready(()), Duration::from_secs(5)),
        );
        run.await.unwrap();
    }
}

fn resource(service: u8, pod: u8) -> Resource {
    Resource {
        attributes: vec![
            kv(
                "service.name",
                any_value::Value::StringValue(format!("svc-{service}")),
            ),
            kv(
                "k8s.pod.name",
                any_value::Value::StringValue(format!("pod-{pod}")),
            ),
        ],
        ..Default::default()
    }
}

/// One resource's logs: `lines` records with bodies from a few templates.
fn logs(service: u8, pod: u8, lines: &[u16]) -> ResourceLogs {
    ResourceLogs {
        resource: Some(resource(service, pod)),
        scope_logs: vec![ScopeLogs {
            log_records: lines
                .iter()
                .map(|n| LogRecord {
                    time_unix_nano: SEC,
                    severity_number: 9,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!(
                            "request {n} took {} ms on worker {}",
                            n % 97,
                            n % 5
                        ))),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One resource's delta counter points with the given values and a high-cardinality
/// attribute.
fn counter(service: u8, pod: u8, values: &[u16]) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(resource(service, pod)),
        scope_metrics: vec![ScopeMetrics {
            metrics: vec![Metric {
                name: "requests".into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| NumberDataPoint {
                            attributes: vec![kv(
                                "user.id",
                                any_value::Value::StringValue(format!("u{i}")),
                            )],
                            time_unix_nano: SEC,
                            value: Some(number_data_point::Value::AsInt(i64::from(*v))),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Totals read back from the exported file: (raw log records, summarised log lines,
/// `log.records` total, counter total over raw and rolled-up points).
fn exported_totals(dir: &Path) -> (u64, u64, u64, i64) {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    let (mut raw, mut summarised, mut log_records, mut counter) = (0, 0, 0, 0);
    let int_attr = |attrs: &[KeyValue], key: &str| {
        attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::IntValue(v) => Some(*v),
                _ => None,
            }
        })
    };
    for line in text.lines() {
        if line.contains("resourceLogs") {
            let req: ExportLogsServiceRequest = serde_json::from_str(line).unwrap();
            for record in req
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .flat_map(|sl| &sl.log_records)
            {
                match int_attr(&record.attributes, "log.count") {
                    Some(n) => summarised += n as u64,
                    None => raw += 1,
                }
            }
        } else if line.contains("resourceMetrics") {
            let req: ExportMetricsServiceRequest = serde_json::from_str(line).unwrap();
            for m in req
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
            {
                let Some(metric::Data::Sum(sum)) = &m.data else {
                    continue;
                };
                for p in &sum.data_points {
                    let Some(number_data_point::Value::AsInt(v)) = p.value else {
                        continue;
                    };
                    match m.name.as_str() {
                        "log.records" => log_records += v as u64,
                        "requests" => counter += v,
                        _ => {}
                    }
                }
            }
        }
    }
    (raw, summarised, log_records, counter)
}

/// Rollups on, nothing held (correlation off), intervals long enough that only explicit
/// flushes close them.
const ROLLUP_ONLY: &str = r#"
correlation: {enabled: false}
rollup:
  logs: {interval: 1h}
  metrics: {interval: 1h, cardinality_limit: 3}
"#;

type Group = (u8, u8, Vec<u16>);

fn groups() -> impl Strategy<Value = Vec<Group>> {
    prop::collection::vec(
        (0u8..3, 0u8..3, prop::collection::vec(0u16..1000, 1..20)),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Totals equal the input whichever step a crash interrupts: groups settled into the
    /// rollup's pending inputs (`before`), groups still held (`after`), then a restart.
    #[test]
    fn totals_survive_a_crash_between_hold_settle_and_flush(
        before in groups(),
        after in groups(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let now = T0;
        let lines: u64 = before.iter().chain(&after).map(|g| g.2.len() as u64).sum();
        let total: i64 = before.iter().chain(&after).flat_map(|g| &g.2).map(|v| i64::from(*v)).sum();
        {
            let node = open(dir.path(), ROLLUP_ONLY);
            let mut batch = WriteBatch::default();
            for (service, pod, values) in &before {
                node.settler.hold_logs(&mut batch, &logs(*service, *pod, values), now);
                node.settler.hold_metrics(&mut batch, &counter(*service, *pod, values), now);
            }
            node.settler.storage.write(batch).unwrap();
            let settled = node.settler.settle_due(now).unwrap();
            prop_assert_eq!(settled.groups, before.len() * 2);
            let mut batch = WriteBatch::default();
            for (service, pod, values) in &after {
                node.settler.hold_logs(&mut batch, &logs(*service, *pod, values), now);
                node.settler.hold_metrics(&mut batch, &counter(*service, *pod, values), now);
            }
            node.settler.storage.write(batch).unwrap();
            // Crash: nothing flushed, nothing exported.
        }
        let node = open(dir.path(), ROLLUP_ONLY);
        let (held, replayed) = node.settler.recover(now).unwrap();
        prop_assert_eq!(held, after.len() * 2);
        prop_assert_eq!(replayed, before.len() * 2);
        node.settler.settle_due(now).unwrap();
        node.settler.flush(now, true).unwrap();
        runtime.block_on(node.drain());
        let (raw, summarised, log_records, counter_total) = exported_totals(dir.path());
        prop_assert_eq!(raw, 0, "nothing correlates with correlation off");
        prop_assert_eq!(summarised, lines);
        prop_assert_eq!(log_records, lines);
        prop_assert_eq!(counter_total, total);
        // A second restart finds nothing left to replay: nothing is exported twice.
        drop(node);
        let node = open(dir.path(), ROLLUP_ONLY);
        prop_assert_eq!(node.settler.recover(now).unwrap(), (0, 0));
    }
}

#[tokio::test]
async fn pending_inputs_of_a_rollup_turned_off_pass_through_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = T0;
    {
        let node = open(dir.path(), ROLLUP_ONLY);
        let mut batch = WriteBatch::default();
        node.settler
            .hold_logs(&mut batch, &logs(1, 1, &[1, 2, 3]), now);
        node.settler
            .hold_metrics(&mut batch, &counter(1, 1, &[5, 6]), now);
        node.settler.storage.write(batch).unwrap();
        node.settler.settle_due(now).unwrap();
    }
    let off = "correlation: {enabled: false}\nrollup: {logs: {enabled: false}, metrics: {enabled: false}}\n";
    let node = open(dir.path(), off);
    assert_eq!(node.settler.recover(now).unwrap(), (0, 2));
    node.drain().await;
    assert_eq!(exported_totals(dir.path()), (3, 0, 0, 11));
}

#[tokio::test]
async fn an_interval_closes_on_time_and_over_its_pending_bound() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "correlation: {enabled: false}\nrollup: {logs: {interval: 10s}, metrics: {interval: 10s}, max_pending_bytes: 1}\n";
    let node = open(dir.path(), yaml);
    let now = T0;
    let mut batch = WriteBatch::default();
    node.settler
        .hold_logs(&mut batch, &logs(1, 1, &[1, 2]), now);
    node.settler.storage.write(batch).unwrap();
    // Over the 1-byte bound: the interval closes in the same pass.
    node.settler.settle_due(now).unwrap();
    node.drain().await;
    assert_eq!(exported_totals(dir.path()).1, 2);
}

#[tokio::test]
async fn settle_all_releases_everything_held_and_closes_the_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        "correlation: {window: 1h}\nrollup: {logs: {interval: 1h}, metrics: {interval: 1h}}\n";
    let node = open(dir.path(), yaml);
    let now = T0;
    let mut batch = WriteBatch::default();
    node.settler
        .hold_logs(&mut batch, &logs(1, 1, &[1, 2, 3]), now);
    node.settler
        .hold_metrics(&mut batch, &counter(1, 2, &[4, 5]), now);
    node.settler.storage.write(batch).unwrap();
    assert_eq!(
        node.settler.settle_due(now).unwrap().groups,
        0,
        "held for the hour"
    );
    let settled = node.settler.settle_all(now).unwrap();
    assert_eq!((settled.groups, settled.summary), (2, 5));
    assert_eq!(node.settler.held().held_items, 0);
    node.drain().await;
    assert_eq!(exported_totals(dir.path()), (0, 3, 3, 9));
}

/// One cumulative counter point of the stream `requests.total` (start time fixed).
fn cumulative(value: i64, time: u64) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(resource(1, 1)),
        scope_metrics: vec![ScopeMetrics {
            metrics: vec![Metric {
                name: "requests.total".into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        start_time_unix_nano: SEC,
                        time_unix_nano: time,
                        value: Some(number_data_point::Value::AsInt(value)),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Sum of the rolled-up deltas of `requests.total` in the exported file.
fn cumulative_total(dir: &Path) -> i64 {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("requests.total"))
        .map(|l| serde_json::from_str::<ExportMetricsServiceRequest>(l).unwrap())
        .flat_map(|r| r.resource_metrics)
        .flat_map(|rm| rm.scope_metrics)
        .flat_map(|sm| sm.metrics)
        .filter_map(|m| match m.data {
            Some(metric::Data::Sum(s)) => Some(s.data_points),
            _ => None,
        })
        .flatten()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsInt(v)) => v,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn cumulative_inputs_convert_to_exact_deltas_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = T0;
    let feed = |node: &Node, value: i64, time: u64| {
        let mut batch = WriteBatch::default();
        node.settler
            .hold_metrics(&mut batch, &cumulative(value, time), now);
        node.settler.storage.write(batch).unwrap();
        node.settler.settle_due(now).unwrap();
    };
    {
        let node = open(dir.path(), ROLLUP_ONLY);
        feed(&node, 10, 2 * SEC);
        node.settler.flush(now, true).unwrap();
        feed(&node, 15, 3 * SEC);
        node.drain().await;
        // Crash with 15 pending in the open interval.
    }
    let node = open(dir.path(), ROLLUP_ONLY);
    node.settler.recover(now).unwrap();
    feed(&node, 22, 4 * SEC);
    node.settler.flush(now, true).unwrap();
    node.drain().await;
    assert_eq!(
        cumulative_total(dir.path()),
        22,
        "10 + 5 + 7: the restart neither loses nor recounts the stream"
    );
}

#[tokio::test]
async fn a_held_group_that_does_not_decode_is_quarantined_and_the_rest_settles() {
    let dir = tempfile::tempdir().unwrap();
    let yaml =
        "correlation: {window: 1s}\nrollup: {logs: {enabled: false}, metrics: {enabled: false}}\n";
    let node = open(dir.path(), yaml);
    let mut batch = WriteBatch::default();
    node.settler.hold_logs(&mut batch, &logs(1, 1, &[1, 2]), T0);
    node.settler
        .hold_encoded_logs(&mut batch, &[0xff, 0xff], T0);
    node.settler.hold_logs(&mut batch, &logs(2, 1, &[3]), T0);
    node.settler.storage.write(batch).unwrap();
    let settled = node.settler.settle_due(T0 + 2 * SEC).unwrap();
    assert_eq!((settled.groups, settled.summary), (3, 3));
    let quarantined = node.settler.storage.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].store, Store::Hold as u8);
    assert_eq!(quarantined[0].value, vec![HeldKind::Logs as u8, 0xff, 0xff]);
    assert_eq!(
        node.settler.held().held_items,
        0,
        "nothing is left in the hold"
    );
}

/// Requests of `spans` spans each, one trace per request (`trace` = request number + 1),
/// every third span an error, durations 1..=spans ms.
fn span_requests(
    requests: u8,
    spans: u8,
) -> Vec<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest> {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    (0..requests)
        .map(
            |r| opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource(1, r % 2)),
                    scope_spans: vec![ScopeSpans {
                        spans: (0..spans)
                            .map(|i| Span {
                                trace_id: vec![r + 1; 16],
                                span_id: vec![i + 1; 8],
                                name: "GET /".into(),
                                kind: 2,
                                start_time_unix_nano: T0,
                                end_time_unix_nano: T0 + u64::from(i + 1) * 1_000_000,
                                status: Some(Status {
                                    code: if i % 3 == 0 { 2 } else { 0 },
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        )
        .collect()
}

/// Exported span metrics: (calls per status code, histogram count, trace ids of every
/// exemplar).
fn exported_span_metrics(dir: &Path) -> (BTreeMap<String, i64>, u64, Vec<Vec<u8>>) {
    use crate::rollup::spans::{CALLS, DURATION};
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    let mut calls = BTreeMap::new();
    let mut count = 0;
    let mut exemplars = Vec::new();
    for line in text.lines().filter(|l| l.contains("resourceMetrics")) {
        let req: ExportMetricsServiceRequest = serde_json::from_str(line).unwrap();
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
        {
            match (&m.data, m.name.as_str()) {
                (Some(metric::Data::Sum(s)), CALLS) => {
                    for p in &s.data_points {
                        let code = p
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "status.code")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                any_value::Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        let Some(number_data_point::Value::AsInt(v)) = p.value else {
                            panic!("int calls")
                        };
                        *calls.entry(code).or_insert(0) += v;
                    }
                }
                (Some(metric::Data::Histogram(h)), DURATION) => {
                    for p in &h.data_points {
                        count += p.count;
                        exemplars.extend(p.exemplars.iter().map(|e| e.trace_id.clone()));
                    }
                }
                _ => {}
            }
        }
    }
    (calls, count, exemplars)
}

use std::collections::BTreeMap;

#[tokio::test]
async fn span_metrics_count_every_span_once_across_a_crash_with_exemplars_of_kept_traces_only() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "correlation: {window: 10s}\nrollup: {traces: {interval: 1h}}\n";
    let now = T0;
    let requests = span_requests(6, 9);
    {
        let node = open(dir.path(), yaml);
        let mut batch = WriteBatch::default();
        for r in &requests[..3] {
            let points = node.settler.span_metrics(r, now).unwrap();
            assert_eq!(points.spans, 9);
            node.settler.hold_span_metrics(&mut batch, &points, now);
        }
        node.settler.storage.write(batch).unwrap();
        // Trace 2 is kept; the decision is known before the window passes.
        node.settler.publish(
            vec![crate::correlation::DecisionNotice {
                trace_id: [2; 16],
                resources: Vec::new(),
                start_unix_nano: T0,
                end_unix_nano: T0 + SEC,
                policy: "errors".into(),
                correlate: false,
            }],
            now,
        );
        let settled = node.settler.settle_due(now + 11 * SEC).unwrap();
        assert_eq!(settled.raw, 0, "span metrics are never kept raw");
        let mut batch = WriteBatch::default();
        for r in &requests[3..] {
            let points = node.settler.span_metrics(r, now).unwrap();
            node.settler.hold_span_metrics(&mut batch, &points, now);
        }
        node.settler.storage.write(batch).unwrap();
        // Crash: three requests folded (pending in the rollup), three still held.
    }
    let node = open(dir.path(), yaml);
    assert_eq!(
        node.settler.recover(now).unwrap(),
        (3, 1),
        "three requests held; the three folded were stored as one combined input"
    );
    node.settler.settle_all(now + 11 * SEC).unwrap();
    node.drain().await;
    let (calls, count, exemplars) = exported_span_metrics(dir.path());
    // 9 spans per request: spans 0, 3 and 6 are errors.
    assert_eq!(
        calls,
        BTreeMap::from([
            ("STATUS_CODE_ERROR".to_owned(), 6 * 3),
            ("STATUS_CODE_UNSET".to_owned(), 6 * 6),
        ])
    );
    assert_eq!(count, 6 * 9, "histogram counts equal calls");
    assert!(
        !exemplars.is_empty(),
        "the kept trace's spans are exemplars"
    );
    assert!(
        exemplars.iter().all(|t| t == &vec![2u8; 16]),
        "only kept traces: {exemplars:?}"
    );
    drop(node);
    let node = open(dir.path(), yaml);
    assert_eq!(
        node.settler.recover(now).unwrap(),
        (0, 0),
        "nothing left twice"
    );
}

#[tokio::test]
async fn a_requests_span_metrics_are_one_held_item_and_per_resource_items_still_settle() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "correlation: {window: 10s}\nrollup: {traces: {interval: 1h}}\n";
    let node = open(dir.path(), yaml);
    // One request whose spans come under three resources.
    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: span_requests(3, 6)
            .into_iter()
            .flat_map(|r| r.resource_spans)
            .collect(),
    };
    let points = node.settler.span_metrics(&request, T0).unwrap();
    assert!(points.resources.len() > 1, "points under several resources");
    let mut batch = WriteBatch::default();
    node.settler.hold_span_metrics(&mut batch, &points, T0);
    // A value of the earlier layout: one resource's points per held item.
    let earlier = node
        .settler
        .span_metrics(&span_requests(1, 4)[0], T0)
        .unwrap();
    for rm in &earlier.resources {
        node.settler
            .store
            .hold(&mut batch, HeldKind::SpanMetrics, &rm.encode_to_vec(), T0);
    }
    node.settler.storage.write(batch).unwrap();
    assert_eq!(
        node.settler.held().held_items,
        1 + earlier.resources.len(),
        "the three resources' points are one item"
    );
    let settled = node.settler.settle_all(T0 + 11 * SEC).unwrap();
    assert_eq!(settled.groups, 1 + earlier.resources.len());
    node.drain().await;
    let (calls, count, _) = exported_span_metrics(dir.path());
    assert_eq!(count, 3 * 6 + 4, "every span of both layouts counted once");
    assert_eq!(calls.values().sum::<i64>(), 3 * 6 + 4);
}
