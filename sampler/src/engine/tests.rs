use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};
use otel_tail_shared::config::Config;

use std::path::Path;

use super::*;
use crate::clock::ManualClock;
use crate::storage::Store;

/// An engine over real RocksDB and a real file exporter, with a manual clock.
struct Rig {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    engine: Engine,
    queues: Arc<ExportQueues>,
}

const CONFIG: &str = r#"
sampler:
  decision_wait: 1s
  num_traces: 100
  policies:
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
"#;

/// An engine over real RocksDB in `dir` (`db/`), exporting to `dir/out.jsonl`, with a
/// manual clock; shared by the engine's test modules.
pub(super) fn engine_in(dir: &Path, yaml: &str) -> (Engine, Arc<ManualClock>, Arc<ExportQueues>) {
    let mut config = Config::from_yaml(yaml, &|_| None).unwrap();
    let (storage, queues) = crate::export_queue::open_for_tests(dir, &mut config);
    let clock = Arc::new(ManualClock::now());
    let wiring = Wiring {
        clock: clock.clone(),
        links: SettleLinks::default(),
    };
    let engine = Engine::new(&config, storage, queues.clone(), wiring).unwrap();
    (engine, clock, queues)
}

fn rig_in(dir: tempfile::TempDir, yaml: &str) -> Rig {
    let (engine, clock, queues) = engine_in(dir.path(), yaml);
    Rig {
        dir,
        clock,
        engine,
        queues,
    }
}

fn rig(yaml: &str) -> Rig {
    rig_in(tempfile::tempdir().unwrap(), yaml)
}

impl Rig {
    /// Drops the engine without deciding anything (what a crash leaves behind) and hands
    /// back the directory, for a rig reopened on it.
    fn crash(self) -> tempfile::TempDir {
        let Rig {
            dir,
            engine,
            queues,
            ..
        } = self;
        drop((engine, queues));
        dir
    }

    fn advance(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    /// The rig's wall time, unix nanoseconds.
    fn now(&self) -> u64 {
        self.clock.unix_nanos()
    }

    /// Flushes the export queue into the file and returns every exported span's
    /// (trace id byte, span id byte, policy attribute).
    async fn exported_spans(&self) -> Vec<(u8, u8, String)> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(self.queues.clone().run(
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        let _ = tx.send(());
        run.await.unwrap();
        let text = std::fs::read_to_string(self.dir.path().join("out.jsonl")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(req) = serde_json::from_str::<ExportTraceServiceRequest>(line) else {
                continue;
            };
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        let policy = span
                            .attributes
                            .iter()
                            .find(|kv| kv.key == POLICY_ATTRIBUTE)
                            .and_then(|kv| kv.value.clone())
                            .and_then(|v| v.value)
                            .map(|v| match v {
                                any_value::Value::StringValue(s) => s,
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        out.push((span.trace_id[0], span.span_id[0], policy));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Exported log records: trace id first byte (0 for none) and `otel_tail.correlated`.
    fn exported_logs(&self) -> Vec<(u8, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("out.jsonl")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| l.contains("resourceLogs")) {
            let req: ExportLogsServiceRequest = serde_json::from_str(line).unwrap();
            for rl in req.resource_logs {
                for sl in rl.scope_logs {
                    out.extend(sl.log_records.iter().map(|r| {
                        (
                            r.trace_id.first().copied().unwrap_or(0),
                            correlated(&r.attributes),
                        )
                    }));
                }
            }
        }
        out.sort();
        out
    }
}

fn span(trace: u8, id: u8, error: bool) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if id == 1 { vec![] } else { vec![1; 8] },
        name: format!("span-{id}"),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        status: error.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn error_traces_are_kept_whole_and_others_dropped() {
    let rig = rig(CONFIG);
    rig.engine
        .ingest_traces(request(vec![span(1, 1, false), span(2, 1, false)]))
        .unwrap();
    rig.advance(500);
    rig.engine
        .ingest_traces(request(vec![span(1, 2, true), span(1, 3, false)]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 2);
    rig.advance(600);
    assert_eq!(
        rig.engine.decide_due().unwrap(),
        1,
        "trace 2 is due, trace 1 was extended"
    );
    rig.advance(500);
    assert_eq!(rig.engine.decide_due().unwrap(), 1);
    assert_eq!(rig.engine.active_traces(), 0);
    let errors = "errors".to_string();
    assert_eq!(
        rig.exported_spans().await,
        vec![
            (1, 1, errors.clone()),
            (1, 2, errors.clone()),
            (1, 3, errors)
        ]
    );
}

#[tokio::test]
async fn late_spans_follow_the_cached_decision() {
    let rig = rig(CONFIG);
    rig.engine
        .ingest_traces(request(vec![span(1, 1, true), span(2, 1, false)]))
        .unwrap();
    rig.advance(1000);
    assert_eq!(rig.engine.decide_due().unwrap(), 2);
    rig.engine
        .ingest_traces(request(vec![span(1, 9, false), span(2, 9, false)]))
        .unwrap();
    assert_eq!(
        rig.engine.active_traces(),
        0,
        "late spans are not buffered again"
    );
    let exported = rig.exported_spans().await;
    assert_eq!(
        exported.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        vec![(1, 1), (1, 9)]
    );
}

#[tokio::test]
async fn a_restart_resumes_buffered_traces() {
    let dir = tempfile::tempdir().unwrap();
    {
        let first = rig_in(dir, CONFIG);
        first
            .engine
            .ingest_traces(request(vec![
                span(3, 1, true),
                span(3, 2, false),
                span(4, 1, false),
            ]))
            .unwrap();
        let second = rig_in(first.crash(), CONFIG);
        assert_eq!(second.engine.recover().unwrap(), 2);
        assert_eq!(second.engine.active_traces(), 2);
        second.advance(1000);
        assert_eq!(second.engine.decide_due().unwrap(), 2);
        let exported = second.exported_spans().await;
        assert_eq!(
            exported.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
            vec![(3, 1), (3, 2)]
        );
    }
}

#[tokio::test]
async fn a_full_index_decides_the_oldest_trace_early() {
    let rig = rig(&CONFIG.replace("num_traces: 100", "num_traces: 2"));
    rig.engine
        .ingest_traces(request(vec![span(1, 1, true)]))
        .unwrap();
    rig.advance(10);
    rig.engine
        .ingest_traces(request(vec![span(2, 1, false)]))
        .unwrap();
    rig.advance(10);
    rig.engine
        .ingest_traces(request(vec![span(3, 1, false)]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 2);
    let exported = rig.exported_spans().await;
    assert_eq!(
        exported.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1],
        "trace 1 decided early and kept"
    );
}

const PASS_THROUGH: &str = r#"
sampler:
  decision_wait: 1s
  num_traces: 100
  policies:
    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
correlation: {enabled: false}
rollup: {logs: {enabled: false}, metrics: {enabled: false}, traces: {enabled: false}}
"#;

fn logs_request(resource: Option<Resource>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource,
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn log(trace: Option<u8>, time: u64) -> LogRecord {
    LogRecord {
        trace_id: trace.map(|t| vec![t; 16]).unwrap_or_default(),
        time_unix_nano: time,
        ..Default::default()
    }
}

#[tokio::test]
async fn logs_of_kept_traces_are_marked_and_the_rest_pass_through_when_rollups_are_off() {
    let rig = rig(PASS_THROUGH);
    rig.engine
        .ingest_traces(request(vec![span(1, 1, true), span(2, 1, false)]))
        .unwrap();
    rig.engine
        .ingest_logs(logs_request(
            None,
            vec![log(Some(1), 0), log(Some(2), 0), log(None, 0), log(None, 0)],
        ))
        .unwrap();
    rig.advance(1000);
    rig.engine.decide_due().unwrap();
    rig.engine.settler().settle_due(rig.now()).unwrap();
    rig.exported_spans().await;
    assert_eq!(
        rig.exported_logs(),
        vec![
            (0, String::new()),
            (0, String::new()),
            (1, "trace_id".to_string()),
            (2, String::new()),
        ],
        "trace 1 kept and marked; the dropped trace's log and trace-less logs pass through"
    );
}

fn resource(service: &str, instance: &str) -> Resource {
    Resource {
        attributes: vec![
            otlp::kv_str("service.name", service),
            otlp::kv_str("service.instance.id", instance),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn held_logs_in_a_kept_error_traces_window_are_kept_raw_and_others_are_not() {
    use opentelemetry_proto::tonic::metrics::v1::{
        Exemplar, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    };
    let rig = rig(&PASS_THROUGH.replace(
        "correlation: {enabled: false}",
        "correlation: {before: 1s, after: 1s}",
    ));
    let t0 = 1_700_000_000_000_000_000u64;
    let second = 1_000_000_000u64;
    let mut error_span = span(1, 1, true);
    error_span.start_time_unix_nano = t0;
    error_span.end_time_unix_nano = t0 + second;
    let mut trace_request = request(vec![error_span]);
    trace_request.resource_spans[0].resource = Some(resource("checkout", "pod-1"));
    rig.engine.ingest_traces(trace_request).unwrap();
    // Same resource: inside [t0 - 1s, t0 + 2s] and outside it; another pod inside.
    rig.engine
        .ingest_logs(logs_request(
            Some(resource("checkout", "pod-1")),
            vec![log(None, t0 + second / 2), log(None, t0 + 5 * second)],
        ))
        .unwrap();
    rig.engine
        .ingest_logs(logs_request(
            Some(resource("checkout", "pod-2")),
            vec![log(None, t0 + second / 2)],
        ))
        .unwrap();
    let point = |time: u64, exemplar: Option<u8>| NumberDataPoint {
        time_unix_nano: time,
        exemplars: exemplar
            .into_iter()
            .map(|t| Exemplar {
                trace_id: vec![t; 16],
                ..Default::default()
            })
            .chain(std::iter::once(Exemplar {
                trace_id: vec![9; 16],
                ..Default::default()
            }))
            .collect(),
        ..Default::default()
    };
    rig.engine
        .ingest_metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource("payments", "pod-9")),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "queue.depth".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![point(t0, Some(1)), point(t0, None)],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .unwrap();
    rig.advance(1000);
    rig.engine.decide_due().unwrap();
    let settler = rig.engine.settler();
    let now = rig.now();
    assert_eq!(
        settler.settle_due(now).unwrap().groups,
        0,
        "held for the window"
    );
    let settled = settler.settle_due(now + 7 * second).unwrap();
    assert_eq!((settled.groups, settled.raw, settled.summary), (3, 2, 3));
    rig.exported_spans().await;
    let logs = rig.exported_logs();
    assert_eq!(
        logs,
        vec![
            (0, String::new()),
            (0, String::new()),
            (0, "window".to_string())
        ]
    );
    let text = std::fs::read_to_string(rig.dir.path().join("out.jsonl")).unwrap();
    let mut points = Vec::new();
    for line in text.lines().filter(|l| l.contains("resourceMetrics")) {
        let req: ExportMetricsServiceRequest = serde_json::from_str(line).unwrap();
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
        {
            if let Some(metric::Data::Gauge(g)) = &m.data {
                for p in &g.data_points {
                    points.push((correlated(&p.attributes), p.exemplars.len()));
                }
            }
        }
    }
    points.sort();
    assert_eq!(
        points,
        vec![(String::new(), 1), ("exemplar".to_string(), 1)],
        "the exemplar point is raw with only the kept trace's exemplar"
    );
}

fn correlated(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == crate::correlation::CORRELATED_ATTRIBUTE)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[test]
fn grouping_spans_by_trace_groups_by_trace_and_keeps_resource_and_scope() {
    let mut req = request(vec![
        span(1, 1, false),
        span(2, 1, false),
        span(1, 2, false),
    ]);
    req.resource_spans[0].scope_spans.push(ScopeSpans {
        spans: vec![span(2, 3, false)],
        ..Default::default()
    });
    let groups = group_spans_by_trace(req);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0, [1; 16]);
    assert_eq!(groups[0].1.scope_spans.len(), 1);
    assert_eq!(groups[0].1.scope_spans[0].spans.len(), 2);
    assert_eq!(groups[1].0, [2; 16]);
    assert_eq!(
        groups[1].1.scope_spans.len(),
        2,
        "trace 2 appears under both scopes"
    );
    assert!(groups.iter().all(|(_, rs)| rs.resource.is_some()));
}

/// Buffers `payload` as one request's span group of `trace`, bypassing the engine's
/// encoding (to plant bytes that do not decode).
fn stage_raw(engine: &Engine, trace: TraceId, payload: &[u8]) {
    let mut value = crate::storage::RequestValue::default();
    value.push_encoded(trace, BufferedKind::Spans, payload);
    let mut batch = WriteBatch::default();
    let staged = engine.storage.stage_request(&mut batch, value);
    engine.storage.write(batch).unwrap();
    let location = staged.location(0);
    let now = engine.now_ms();
    engine
        .shard(&trace)
        .index
        .observe(trace, &Arrival::default(), &[location], now);
}

/// What is buffered for `trace` while it waits in the index, in arrival order.
pub(super) fn buffered(engine: &Engine, trace: &TraceId) -> Vec<(BufferedKind, Vec<u8>)> {
    let items = engine.shard(trace).index.items(trace);
    engine.storage.read_items(&items).unwrap()
}

#[tokio::test]
async fn a_corrupt_buffered_record_is_quarantined_and_strands_nothing() {
    let rig = rig(
        "sampler:\n  decision_wait: 1s\n  policies:\n    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n",
    );
    rig.engine
        .ingest_traces(request(vec![span(1, 1, true), span(2, 1, true)]))
        .unwrap();
    // A value with the spans tag but bytes that are not a ResourceSpans, between the
    // first and the second group of trace 1.
    stage_raw(&rig.engine, [1; 16], &[0xff, 0xff]);
    rig.engine
        .ingest_traces(request(vec![span(1, 2, false), span(3, 1, true)]))
        .unwrap();
    rig.advance(1000);
    assert_eq!(rig.engine.decide_due().unwrap(), 3);
    let exported = rig.exported_spans().await;
    let errors = "errors".to_string();
    assert_eq!(
        exported,
        vec![
            (1, 1, errors.clone()),
            (1, 2, errors.clone()),
            (2, 1, errors.clone()),
            (3, 1, errors)
        ],
        "every readable span of every trace in the chunk is exported"
    );
    let quarantined = rig.engine.storage.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].store, Store::Buffer as u8);
    assert_eq!(
        quarantined[0].value,
        vec![BufferedKind::Spans as u8, 0xff, 0xff]
    );
    assert_eq!(buffered(&rig.engine, &[1; 16]), vec![]);
}

#[tokio::test]
async fn a_corrupt_buffered_record_is_quarantined_on_recovery() {
    let rig = rig(CONFIG);
    rig.engine
        .ingest_traces(request(vec![span(4, 1, false)]))
        .unwrap();
    stage_raw(&rig.engine, [5; 16], &[0xff]);
    let reopened = rig_in(rig.crash(), CONFIG);
    assert_eq!(
        reopened.engine.recover().unwrap(),
        1,
        "the readable trace is back"
    );
    assert_eq!(reopened.engine.active_traces(), 1);
    let quarantined = reopened.engine.storage.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(&quarantined[0].key[..16], &[5; 16]);
}

#[tokio::test]
async fn a_replaced_policy_set_decides_traces_buffered_before_the_reload() {
    let rig = rig(CONFIG);
    let tagged = |trace: u8, id: u8| {
        let mut s = span(trace, id, false);
        s.attributes.push(otlp::kv_str("http.route", "/b"));
        s
    };
    // Trace 1 arrives wholly before the reload, trace 2 on both sides of it, trace 3
    // (an error) before it: the new set keeps /b and errors; the old one only errors.
    rig.engine
        .ingest_traces(request(vec![tagged(1, 1), tagged(2, 1), span(3, 1, true)]))
        .unwrap();
    let new_set: Vec<PolicyConfig> = serde_json::from_value(serde_json::json!([
        {"name": "route", "type": "string_attribute",
         "string_attribute": {"key": "http.route", "values": ["/b"]}},
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
    ]))
    .unwrap();
    rig.engine.replace_policies(&new_set, false).unwrap();
    rig.engine
        .ingest_traces(request(vec![tagged(2, 2), span(4, 1, false)]))
        .unwrap();
    let bad: Vec<PolicyConfig> =
        serde_json::from_value(serde_json::json!([{"name": "x", "type": "string_attribute",
            "string_attribute": {"key": "k", "values": ["("], "enabled_regex_matching": true}}]))
        .unwrap();
    assert!(
        rig.engine.replace_policies(&bad, false).is_err(),
        "an invalid set is refused"
    );
    rig.advance(1000);
    rig.engine.decide_due().unwrap();
    let exported = rig.exported_spans().await;
    let kept: Vec<(u8, u8)> = exported.iter().map(|(t, s, _)| (*t, *s)).collect();
    assert_eq!(kept, vec![(1, 1), (2, 1), (2, 2), (3, 1)]);
    assert_eq!(
        exported[3].2, "errors",
        "bits observed under the old set are not reused"
    );
}

#[tokio::test]
async fn dynamically_kept_spans_and_their_late_spans_carry_the_sample_rate() {
    // Before its first adjustment an ema_dynamic policy samples every key at goal_sample_rate.
    let rig = rig(r#"
sampler:
  decision_wait: 1s
  num_traces: 100
  policies:
    - {name: dynamic, type: ema_dynamic, ema_dynamic: {key_fields: [name], goal_sample_rate: 2}}
"#);
    let traces: Vec<u8> = (1..=16).collect();
    rig.engine
        .ingest_traces(request(traces.iter().map(|&t| span(t, 1, false)).collect()))
        .unwrap();
    rig.advance(1000);
    assert_eq!(rig.engine.decide_due().unwrap(), 16);
    rig.engine
        .ingest_traces(request(traces.iter().map(|&t| span(t, 9, false)).collect()))
        .unwrap();
    let exported = rig.exported_spans().await;
    let kept: std::collections::BTreeSet<u8> = exported.iter().map(|e| e.0).collect();
    assert!(
        (1..16).contains(&kept.len()),
        "about half of 16 traces kept at rate 2: {kept:?}"
    );
    for trace in &kept {
        let ids: Vec<u8> = exported
            .iter()
            .filter(|e| e.0 == *trace)
            .map(|e| e.1)
            .collect();
        assert_eq!(ids, vec![1, 9], "trace {trace}: its span and its late span");
    }
    let text = std::fs::read_to_string(rig.dir.path().join("out.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let request: ExportTraceServiceRequest = serde_json::from_str(line).unwrap();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let rate = span
                .attributes
                .iter()
                .find(|kv| kv.key == "SampleRate")
                .and_then(|kv| kv.value.clone()?.value);
            assert_eq!(rate, Some(any_value::Value::IntValue(2)));
            assert_eq!(span.trace_state, "ot=th:8", "probability 1/2");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * kept.len());
}

#[tokio::test]
async fn a_kept_trace_leaves_with_each_span_once_despite_retries() {
    let rig = rig(CONFIG);
    // A client retries a request that was accepted already: the same spans twice.
    let first = request(vec![span(1, 1, true), span(1, 2, false)]);
    rig.engine.ingest_traces(first.clone()).unwrap();
    rig.engine.ingest_traces(first.clone()).unwrap();
    rig.advance(1000);
    rig.engine.decide_due().unwrap();
    // After the decision: a retry again (dropped) and one new span (kept, late).
    rig.engine.ingest_traces(first).unwrap();
    rig.engine
        .ingest_traces(request(vec![span(1, 3, false), span(1, 3, false)]))
        .unwrap();
    let exported = rig.exported_spans().await;
    let ids: Vec<(u8, u8)> = exported.iter().map(|(t, s, _)| (*t, *s)).collect();
    assert_eq!(ids, vec![(1, 1), (1, 2), (1, 3)]);
}

const KEEP_ALL: &str = r#"
sampler:
  decision_wait: 1s
  num_traces: 100
  policies:
    - {name: all, type: always_sample}
"#;

#[tokio::test]
async fn a_trace_over_maximum_trace_size_bytes_is_dropped_at_once_with_its_late_spans() {
    let rig = rig(&KEEP_ALL.replace(
        "num_traces: 100",
        "num_traces: 100\n  maximum_trace_size_bytes: 400",
    ));
    let big: Vec<Span> = (1..=20).map(|id| span(1, id, false)).collect();
    rig.engine
        .ingest_traces(request(vec![span(2, 1, false)]))
        .unwrap();
    rig.engine.ingest_traces(request(big)).unwrap();
    assert_eq!(
        rig.engine.active_traces(),
        1,
        "trace 1 left the buffer at once"
    );
    // A late span of the dropped trace follows the cached decision.
    rig.engine
        .ingest_traces(request(vec![span(1, 30, false)]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 1);
    rig.advance(1_100);
    assert_eq!(rig.engine.decide_due().unwrap(), 1);
    let exported = rig.exported_spans().await;
    assert_eq!(
        exported,
        vec![(2, 1, "all".to_string())],
        "only the small trace is kept"
    );
}

#[tokio::test]
async fn block_on_overflow_throttles_instead_of_deciding_early() {
    let rig = rig(&KEEP_ALL.replace(
        "num_traces: 100",
        "num_traces: 2\n  block_on_overflow: true",
    ));
    rig.engine
        .ingest_traces(request(vec![span(1, 1, false)]))
        .unwrap();
    rig.engine
        .ingest_traces(request(vec![span(2, 1, false)]))
        .unwrap();
    let refused = rig
        .engine
        .ingest_traces(request(vec![span(3, 1, false)]))
        .unwrap_err();
    assert!(
        matches!(refused, IngestError::Overloaded { .. }),
        "{refused:?}"
    );
    assert_eq!(rig.engine.active_traces(), 2, "nothing decided early");
    assert!(rig.exported_spans().await.is_empty());
    // Once decisions free room, data is accepted again.
    rig.advance(1_100);
    assert_eq!(rig.engine.decide_due().unwrap(), 2);
    rig.engine
        .ingest_traces(request(vec![span(3, 1, false)]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 1);
}

#[tokio::test]
async fn drop_pending_forgets_undecided_traces_and_their_late_spans() {
    let rig = rig(KEEP_ALL);
    rig.engine
        .ingest_traces(request(vec![span(1, 1, false), span(2, 1, false)]))
        .unwrap();
    assert_eq!(rig.engine.drop_pending().unwrap(), 2);
    assert_eq!(rig.engine.active_traces(), 0);
    rig.engine
        .ingest_traces(request(vec![span(1, 2, false)]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 0, "late span follows the drop");
    rig.advance(1_100);
    rig.engine.decide_due().unwrap();
    assert!(rig.exported_spans().await.is_empty());
    // Nothing of them is left in the buffer for a restart to pick up.
    assert_eq!(rig.engine.recover().unwrap(), 0);
}

/// Calls per `span.name` and the exemplar trace ids in the exported span metrics.
fn exported_span_calls(dir: &Path) -> (std::collections::BTreeMap<String, i64>, Vec<u8>) {
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    let mut calls = std::collections::BTreeMap::new();
    let mut exemplars = Vec::new();
    for line in text.lines().filter(|l| l.contains("resourceMetrics")) {
        let req: ExportMetricsServiceRequest = serde_json::from_str(line).unwrap();
        for m in req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
        {
            match &m.data {
                Some(metric::Data::Sum(s)) if m.name == crate::rollup::spans::CALLS => {
                    for p in &s.data_points {
                        let name = p
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "span.name")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                any_value::Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        let Some(number_data_point::Value::AsInt(v)) = p.value else {
                            panic!("int calls")
                        };
                        *calls.entry(name).or_insert(0) += v;
                    }
                }
                Some(metric::Data::Histogram(h)) => {
                    for p in &h.data_points {
                        exemplars.extend(p.exemplars.iter().map(|e| e.trace_id[0]));
                    }
                }
                _ => {}
            }
        }
    }
    exemplars.sort();
    exemplars.dedup();
    (calls, exemplars)
}

#[tokio::test]
async fn every_span_received_counts_once_in_span_metrics_buffered_late_or_handed_off() {
    let yaml =
        format!("{CONFIG}correlation: {{window: 3s}}\nrollup: {{traces: {{interval: 1h}}}}\n");
    let rig = rig(&yaml);
    // Trace 1 (kept: an error) and trace 2 (dropped), buffered.
    rig.engine
        .ingest_traces(request(vec![
            span(1, 1, false),
            span(1, 2, true),
            span(2, 1, false),
        ]))
        .unwrap();
    // Handed off from another sampler, which counted it: buffered here, not counted again.
    rig.engine
        .ingest_handed_off_traces(request(vec![span(2, 2, false)]))
        .unwrap();
    rig.advance(1100);
    assert_eq!(rig.engine.decide_due().unwrap(), 2);
    // Late spans of the kept and of the dropped trace, and a client's retry of a kept span.
    rig.engine
        .ingest_traces(request(vec![
            span(1, 3, false),
            span(2, 3, false),
            span(1, 2, true),
        ]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 0);
    let exported = rig.exported_spans().await;
    assert_eq!(
        exported.len(),
        3,
        "trace 1's spans, each once: {exported:?}"
    );
    let settler = rig.engine.settler();
    settler.settle_all(rig.now() + 5_000_000_000).unwrap();
    rig.exported_spans().await;
    let (calls, exemplars) = exported_span_calls(rig.dir.path());
    assert_eq!(
        calls,
        std::collections::BTreeMap::from([
            ("span-1".to_owned(), 2),
            // The retry was received, so it counts (span metrics count what arrives).
            ("span-2".to_owned(), 2),
            ("span-3".to_owned(), 2),
        ])
    );
    assert_eq!(exemplars, vec![1], "exemplars point at the kept trace only");
}

#[tokio::test]
async fn a_trace_is_decided_at_its_span_limit_or_maximum_age_and_later_spans_follow() {
    let yaml = format!("{CONFIG}  max_spans_per_trace: 3\n  max_trace_age: 2s\n");
    let rig = rig(&yaml);
    // Trace 1 reaches 3 spans in one request: decided at once (an error: kept).
    rig.engine
        .ingest_traces(request(vec![
            span(1, 1, true),
            span(1, 2, false),
            span(1, 3, false),
        ]))
        .unwrap();
    assert_eq!(rig.engine.active_traces(), 0, "decided with what it had");
    rig.engine
        .ingest_traces(request(vec![span(1, 4, false)]))
        .unwrap();
    // Trace 2 keeps receiving a span every 600 ms: never quiet for decision_wait (1s),
    // decided at its maximum age.
    for (id, step) in (1..=4u8).zip(0..) {
        if step > 0 {
            rig.advance(600);
        }
        rig.engine
            .ingest_traces(request(vec![span(2, id, id == 1)]))
            .unwrap();
        rig.engine.decide_due().unwrap();
    }
    assert_eq!(
        rig.engine.active_traces(),
        0,
        "decided at 2s although still active"
    );
    rig.engine
        .ingest_traces(request(vec![span(2, 5, false)]))
        .unwrap();
    let exported = rig.exported_spans().await;
    let of = |t: u8| exported.iter().filter(|(trace, _, _)| *trace == t).count();
    assert_eq!(
        of(1),
        4,
        "trace 1 whole, its late span following the decision"
    );
    assert_eq!(
        of(2),
        5,
        "trace 2 whole, its late span following the decision"
    );
}

#[test]
fn bad_span_times_cannot_widen_a_correlation_window_without_limit() {
    let hour = 3_600_000_000_000u64;
    let t0 = 1_700_000_000_000_000_000u64;
    let kept = Kept {
        policy: "errors".into(),
        probability: None,
        correlate: true,
    };
    let mut bogus = span(1, 1, true);
    bogus.start_time_unix_nano = t0;
    bogus.end_time_unix_nano = u64::MAX;
    let mut unset = span(1, 2, false);
    unset.start_time_unix_nano = 0;
    unset.end_time_unix_nano = t0 + 1_000;
    let mut notice = NoticeBuilder::new([1; 16], &kept);
    let rs = request(vec![bogus, unset]).resource_spans.remove(0);
    assert_eq!(notice.add(&rs), 1, "the endless span");
    let built = notice.build().expect("a window");
    assert_eq!(
        (built.start_unix_nano, built.end_unix_nano),
        (t0, t0 + hour)
    );
    // Spans years apart: the window keeps its latest six hours.
    let mut old = span(2, 1, false);
    old.start_time_unix_nano = 1;
    old.end_time_unix_nano = 2;
    let mut new = span(2, 2, false);
    new.start_time_unix_nano = t0;
    new.end_time_unix_nano = t0 + 10;
    let mut notice = NoticeBuilder::new([2; 16], &kept);
    let rs = request(vec![old, new]).resource_spans.remove(0);
    assert_eq!(notice.add(&rs), 1);
    let built = notice.build().expect("a window");
    assert_eq!(built.end_unix_nano - built.start_unix_nano, 6 * hour);
}

/// Every exported span, whole, in id order.
fn exported_span_protos(rig: &Rig) -> Vec<Span> {
    let text = std::fs::read_to_string(rig.dir.path().join("out.jsonl")).unwrap_or_default();
    let mut spans: Vec<Span> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<ExportTraceServiceRequest>(line).ok())
        .flat_map(|r| r.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    spans.sort_by(|a, b| (&a.trace_id, &a.span_id).cmp(&(&b.trace_id, &b.span_id)));
    spans
}

/// Requests of 60 traces: every seventh with an error, every fifth slow, attributes on
/// some, a span with an invalid id in each request; in every other request each trace's
/// spans come under two resources.
fn mixed_requests() -> Vec<ExportTraceServiceRequest> {
    let mut requests = Vec::new();
    for batch in 0..6u8 {
        let mut spans = Vec::new();
        for t in 0..10u8 {
            let trace = batch * 10 + t + 1;
            for id in 1..=3u8 {
                let mut s = span(trace, id, trace.is_multiple_of(7) && id == 2);
                if trace.is_multiple_of(5) {
                    s.end_time_unix_nano = s.start_time_unix_nano + 900_000_000;
                }
                if trace.is_multiple_of(3) {
                    s.attributes.push(otlp::kv_str("tier", "gold"));
                }
                spans.push(s);
            }
        }
        let mut bad = span(200, 1, true);
        bad.span_id = vec![0; 8];
        spans.push(bad);
        requests.push(if batch.is_multiple_of(2) {
            // Every trace's third span under a second resource.
            let (third, rest) = spans.into_iter().partition(|s| s.span_id[0] == 3);
            two_resources(rest, third)
        } else {
            request(spans)
        });
    }
    requests
}

#[tokio::test]
async fn reading_spans_from_the_wire_keeps_exactly_what_decoding_them_keeps() {
    let configs = [
        // Fixed fields only.
        "sampler:\n  decision_wait: 1s\n  policies:\n    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n    - {name: slow, type: latency, latency: {threshold_ms: 500}}\n    - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 20}}\n",
        // Attributes.
        "sampler:\n  decision_wait: 1s\n  policies:\n    - {name: gold, type: string_attribute, string_attribute: {key: tier, values: [gold]}}\n",
        // Everything (OTTL).
        "sampler:\n  decision_wait: 1s\n  policies:\n    - {name: ottl, type: ottl_condition, ottl_condition: {span: ['attributes[\"tier\"] == \"gold\" and status.code == STATUS_CODE_ERROR']}}\n    - {name: slow, type: latency, latency: {threshold_ms: 500}}\n",
    ];
    for config in configs {
        let decoded = rig(config);
        let encoded = rig(config);
        let mut refused = Vec::new();
        for r in mixed_requests() {
            let mut sanitized = r.clone();
            refused.push(otlp::sanitize_traces(&mut sanitized));
            decoded.engine.ingest_traces(sanitized).unwrap();
            let took = encoded
                .engine
                .ingest_encoded_traces(r.encode_to_vec().into())
                .unwrap();
            assert_eq!(took.refused, *refused.last().unwrap());
            assert_eq!(took.spans, 30);
            assert_eq!(took.traces.len(), 10);
        }
        for rig in [&decoded, &encoded] {
            rig.advance(1000);
            rig.engine.decide_due().unwrap();
        }
        // A late span of a kept trace, and one of a dropped trace.
        let late = request(vec![span(7, 9, false), span(1, 9, false)]);
        decoded.engine.ingest_traces(late.clone()).unwrap();
        encoded
            .engine
            .ingest_encoded_traces(late.encode_to_vec().into())
            .unwrap();
        let kept = decoded.exported_spans().await;
        assert_eq!(encoded.exported_spans().await, kept, "{config}");
        assert!(
            !kept.is_empty() && kept.len() < 180,
            "{config}: {}",
            kept.len()
        );
        assert_eq!(
            exported_span_protos(&encoded),
            exported_span_protos(&decoded),
            "the same spans leave, byte for byte"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_written_while_their_trace_is_decided_follow_the_decision_and_leave_nothing_behind() {
    let rig = Arc::new(rig(
        "sampler:\n  decision_wait: 1s\n  policies: [{name: all, type: always_sample}]\n",
    ));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let decider = {
        let (rig, stop) = (rig.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rig.advance(300);
                rig.engine.decide_due().unwrap();
            }
        })
    };
    let senders: Vec<_> = (0..2u8)
        .map(|k| {
            let rig = rig.clone();
            std::thread::spawn(move || {
                for round in 0..60u8 {
                    let spans = (1..=20u8)
                        .map(|trace| span(trace, 1 + k * 60 + round, false))
                        .collect();
                    let body = request(spans).encode_to_vec();
                    rig.engine.ingest_encoded_traces(body.into()).unwrap();
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    decider.join().unwrap();
    rig.advance(10_000);
    rig.engine.decide_due().unwrap();
    let exported: Vec<(u8, u8)> = rig
        .exported_spans()
        .await
        .into_iter()
        .map(|(t, s, _)| (t, s))
        .collect();
    let mut sent: Vec<(u8, u8)> = (1..=20u8)
        .flat_map(|t| (1..=120u8).map(move |s| (t, s)))
        .collect();
    sent.sort();
    assert_eq!(exported, sent, "every span leaves exactly once");
    assert!(rig.engine.held_trace_ids().unwrap().is_empty());
    let left = rig
        .engine
        .storage
        .db()
        .iterator_cf(
            rig.engine.storage.cf(crate::storage::CF_BUFFER),
            rocksdb::IteratorMode::Start,
        )
        .count();
    assert_eq!(
        left, 0,
        "no request value or forgotten-offset record is left"
    );
}

/// A request whose spans come under two resources (`service.name` `a` and `b`).
fn two_resources(a: Vec<Span>, b: Vec<Span>) -> ExportTraceServiceRequest {
    let resource = |name: &str| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![otlp::kv_str("service.name", name)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans::default()],
        ..Default::default()
    };
    let (mut first, mut second) = (resource("a"), resource("b"));
    first.scope_spans[0].spans = a;
    second.scope_spans[0].spans = b;
    ExportTraceServiceRequest {
        resource_spans: vec![first, second],
    }
}

/// Exported spans as (trace id byte, span id byte, service name).
fn exported_with_service(rig: &Rig) -> Vec<(u8, u8, String)> {
    let text = std::fs::read_to_string(rig.dir.path().join("out.jsonl")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(req) = serde_json::from_str::<ExportTraceServiceRequest>(line) else {
            continue;
        };
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
                .map(|v| match v {
                    any_value::Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                out.push((span.trace_id[0], span.span_id[0], service.clone()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_trace_under_several_resources_is_one_item_through_restart_and_handoff() {
    let config = "sampler:\n  decision_wait: 1s\n  policies: [{name: all, type: always_sample}]\n";
    let dir = tempfile::tempdir().unwrap();
    let request = two_resources(
        vec![span(3, 1, false), span(4, 1, false)],
        vec![span(3, 2, false), span(5, 1, false)],
    );
    let kinds = |rig: &Rig, trace: u8| -> Vec<BufferedKind> {
        let items = buffered(&rig.engine, &[trace; 16]);
        items.into_iter().map(|(kind, _)| kind).collect()
    };
    let dir = {
        let first = rig_in(dir, config);
        let took = first
            .engine
            .ingest_encoded_traces(request.encode_to_vec().into())
            .unwrap();
        assert_eq!(took.spans, 4);
        assert_eq!(
            kinds(&first, 3),
            vec![BufferedKind::TraceSpans],
            "the trace's two groups are one item"
        );
        assert_eq!(
            kinds(&first, 4),
            vec![BufferedKind::TraceSpans],
            "a trace under one resource is read back the same way"
        );
        first.crash()
    };
    let second = rig_in(dir, config);
    assert_eq!(second.engine.recover().unwrap(), 3);
    let entry = second
        .engine
        .shard(&[3; 16])
        .index
        .get(&[3; 16])
        .cloned()
        .unwrap();
    assert_eq!(
        entry.stats.span_count, 2,
        "recovery counts both groups' spans"
    );
    // A handoff sends one `ResourceSpans` per group; the peer refuses, the trace stays.
    let taken = second.engine.take_for_handoff(&[[3; 16]]).unwrap();
    let sent: Vec<ResourceSpans> = taken[0]
        .spans
        .iter()
        .map(|item| ResourceSpans::decode(item.payload.as_slice()).unwrap())
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].scope_spans[0].spans[0].span_id, vec![1; 8]);
    assert_eq!(sent[1].scope_spans[0].spans[0].span_id, vec![2; 8]);
    second
        .engine
        .release_handed_off(
            taken,
            transfer::Acknowledged {
                spans: false,
                logs: false,
            },
        )
        .unwrap();
    second.advance(1000);
    assert_eq!(second.engine.decide_due().unwrap(), 3);
    second.exported_spans().await;
    assert_eq!(
        exported_with_service(&second),
        vec![
            (3, 1, "a".to_string()),
            (3, 2, "b".to_string()),
            (4, 1, "a".to_string()),
            (5, 1, "b".to_string())
        ],
        "every span leaves once, under the resource it came with"
    );
}

#[tokio::test]
async fn a_sharded_engine_keeps_exactly_what_one_shard_keeps() {
    let policies = "  policies:\n    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n    - {name: slow, type: latency, latency: {threshold_ms: 500}}\n    - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 20}}\n";
    let one = rig(&format!(
        "sampler:\n  decision_wait: 1s\n  num_traces: 100\n{policies}"
    ));
    let sharded = rig(&format!("sampler:\n  decision_wait: 1s\n{policies}"));
    assert_eq!(one.engine.shards.count(), 1);
    assert!(sharded.engine.shards.count() > 1);
    for r in mixed_requests() {
        for rig in [&one, &sharded] {
            rig.engine
                .ingest_encoded_traces(r.encode_to_vec().into())
                .unwrap();
        }
    }
    assert_eq!(sharded.engine.active_traces(), 60);
    let late = request(vec![span(7, 9, false), span(1, 9, false)]);
    for rig in [&one, &sharded] {
        rig.advance(1000);
        assert_eq!(rig.engine.decide_due().unwrap(), 60);
        rig.engine
            .ingest_encoded_traces(late.encode_to_vec().into())
            .unwrap();
    }
    assert_eq!(sharded.engine.active_traces(), 0);
    let kept = one.exported_spans().await;
    assert!(!kept.is_empty() && kept.len() < 180, "{}", kept.len());
    assert_eq!(sharded.exported_spans().await, kept);
    assert_eq!(exported_span_protos(&sharded), exported_span_protos(&one));
}
