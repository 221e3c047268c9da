use std::sync::atomic::AtomicU64;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};
use otel_tail_shared::config::Config;

use super::*;

/// An engine over real RocksDB and a real file exporter, with a manual clock.
struct Rig {
    dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
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

fn rig_in(dir: tempfile::TempDir, yaml: &str) -> Rig {
    let mut config = Config::from_yaml(yaml, &|_| None).unwrap();
    config.sampler.storage_dir = dir.path().join("db");
    let storage = Arc::new(Storage::open(&config.sampler.storage_dir, false).unwrap());
    let exporters = otel_tail_shared::exporter::Exporter::from_config(
        &config.exporter,
        &dir.path().join("out.jsonl"),
    )
    .unwrap();
    let queues = ExportQueues::open(storage.clone(), exporters, &config.exporter).unwrap();
    let clock = Arc::new(AtomicU64::new(0));
    let engine = Engine::new(&config.sampler, storage, queues.clone())
        .unwrap()
        .with_manual_clock(clock.clone());
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
    fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
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

    /// Exported log bodies' trace id first bytes (0 for none).
    fn exported_logs(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(self.dir.path().join("out.jsonl")).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| l.contains("resourceLogs")) {
            let req: ExportLogsServiceRequest = serde_json::from_str(line).unwrap();
            for rl in req.resource_logs {
                for sl in rl.scope_logs {
                    out.extend(
                        sl.log_records
                            .iter()
                            .map(|r| r.trace_id.first().copied().unwrap_or(0)),
                    );
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
        // Dropped without deciding: what a crash leaves behind.
        let Rig {
            dir,
            engine,
            queues,
            ..
        } = first;
        drop(engine);
        drop(queues);
        let second = rig_in(dir, CONFIG);
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

#[tokio::test]
async fn logs_with_a_trace_id_follow_their_trace_and_others_pass_through() {
    let rig = rig(CONFIG);
    let log = |trace: Option<u8>| LogRecord {
        trace_id: trace.map(|t| vec![t; 16]).unwrap_or_default(),
        ..Default::default()
    };
    rig.engine
        .ingest_traces(request(vec![span(1, 1, true), span(2, 1, false)]))
        .unwrap();
    rig.engine
        .ingest_logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![log(Some(1)), log(Some(2)), log(None), log(None)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .unwrap();
    rig.advance(1000);
    rig.engine.decide_due().unwrap();
    rig.exported_spans().await;
    assert_eq!(rig.exported_logs(), vec![0, 0, 1]);
}

#[test]
fn split_traces_groups_by_trace_and_keeps_resource_and_scope() {
    let mut req = request(vec![
        span(1, 1, false),
        span(2, 1, false),
        span(1, 2, false),
    ]);
    req.resource_spans[0].scope_spans.push(ScopeSpans {
        spans: vec![span(2, 3, false)],
        ..Default::default()
    });
    let groups = split_traces(req);
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
