//! Export queue tests: real RocksDB in a tempdir, the real file exporter and a real tonic
//! OTLP server on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::NumberDataPoint;
use opentelemetry_proto::tonic::trace::v1::Span;
use otel_tail_shared::config::{OtlpGrpcExporterConfig, QueueConfig, TlsConfig};
use otel_tail_shared::exporter::file::FileExporter;
use otel_tail_shared::exporter::grpc::GrpcExporter;
use otel_tail_shared::testing::{self, span_names};
use tokio::sync::oneshot;

use super::*;

/// Spans named `{prefix}-{i}`, `n` of them, in one request.
fn traces(prefix: &str, n: usize) -> ExportRequest {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![9; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("{prefix}-{i}"),
            ..Default::default()
        })
        .collect();
    ExportRequest::Traces(testing::traces_of(None, spans))
}

fn logs(text: &str) -> ExportRequest {
    let record = LogRecord {
        severity_text: text.into(),
        ..Default::default()
    };
    ExportRequest::Logs(testing::logs_of(None, vec![record]))
}

fn metrics(name: &str) -> ExportRequest {
    let gauge = testing::gauge(name, vec![NumberDataPoint::default()]);
    ExportRequest::Metrics(testing::metrics_of(None, vec![gauge]))
}

fn fast_retry_config(max_bytes: u64) -> ExporterConfig {
    ExporterConfig {
        queue: QueueConfig { max_bytes },
        retry: RetryConfig {
            initial_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(80),
        },
        ..Default::default()
    }
}

fn file_exporter(path: &Path) -> Exporter {
    Exporter::File(FileExporter::open(path).unwrap())
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs the queues until they are empty (shutdown at once, generous drain).
/// A database in `dir/db` and queues with one file exporter writing `dir/out.jsonl`.
fn file_queues(dir: &Path) -> (Arc<Storage>, Arc<ExportQueues>, PathBuf) {
    let storage = Arc::new(Storage::open(&dir.join("db"), false).unwrap());
    let out = dir.join("out.jsonl");
    let queues = ExportQueues::open(
        storage.clone(),
        vec![file_exporter(&out)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    (storage, queues, out)
}

async fn drain_all(queues: &Arc<ExportQueues>) {
    tokio::time::timeout(
        Duration::from_secs(20),
        queues
            .clone()
            .run(std::future::ready(()), Duration::from_secs(15)),
    )
    .await
    .expect("run returns once the queue is drained");
}

// ---------------------------------------------------------------- backoff

#[test]
fn backoff_doubles_from_initial_and_caps_at_max() {
    let retry = RetryConfig {
        initial_interval: Duration::from_millis(500),
        max_interval: Duration::from_secs(30),
    };
    // jitter 0.5 is the neutral factor 1.0.
    let delays: Vec<_> = (0..9)
        .map(|attempt| backoff_delay(&retry, attempt, 0.5, None))
        .collect();
    assert_eq!(
        delays,
        [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(Duration::from_millis)
    );
    assert_eq!(
        backoff_delay(&retry, u32::MAX, 0.5, None),
        Duration::from_secs(30)
    );
}

#[test]
fn backoff_jitter_spreads_between_half_and_one_and_a_half() {
    let retry = RetryConfig {
        initial_interval: Duration::from_secs(1),
        max_interval: Duration::from_secs(60),
    };
    assert_eq!(backoff_delay(&retry, 2, 0.0, None), Duration::from_secs(2));
    assert_eq!(backoff_delay(&retry, 2, 0.75, None), Duration::from_secs(5));
    assert!(backoff_delay(&retry, 2, 0.999_999, None) < Duration::from_secs(6));
    // Out-of-range jitter is clamped; jitter never pushes past the maximum.
    assert_eq!(backoff_delay(&retry, 2, 7.0, None), Duration::from_secs(6));
    assert_eq!(
        backoff_delay(&retry, 10, 0.99, None),
        Duration::from_secs(60)
    );
}

#[test]
fn backoff_honours_the_servers_delay() {
    let retry = RetryConfig::default();
    assert_eq!(
        backoff_delay(&retry, 0, 0.3, Some(Duration::from_secs(90))),
        Duration::from_secs(90)
    );
    // A zero delay would be a busy loop: the computed backoff applies.
    assert_eq!(
        backoff_delay(&retry, 0, 0.5, Some(Duration::ZERO)),
        retry.initial_interval
    );
}

#[test]
fn random_unit_stays_in_range_and_varies() {
    let samples: Vec<f64> = (0..64).map(|_| random_unit()).collect();
    assert!(samples.iter().all(|u| (0.0..1.0).contains(u)));
    assert!(samples.iter().any(|u| *u != samples[0]));
}

#[test]
fn stored_values_round_trip_and_concatenate_into_a_merge() {
    let a = traces("a", 2);
    let b = traces("b", 3);
    let (signal, items, payload_a) = decode_value(&encode_value(&a))
        .map(|(s, i, p)| (s, i, p.to_vec()))
        .unwrap();
    assert_eq!((signal, items), (Signal::Traces, 2));
    let value_b = encode_value(&b);
    let (_, _, payload_b) = decode_value(&value_b).unwrap();
    let merged = [payload_a, payload_b.to_vec()].concat();
    let ExportRequest::Traces(merged) = decode_request(Signal::Traces, &merged).unwrap() else {
        panic!("traces decode as traces")
    };
    assert_eq!(span_names(&merged), ["a-0", "a-1", "b-0", "b-1", "b-2"]);
    assert_eq!(decode_value(&[9, 0, 0, 0, 1]), None);
    assert_eq!(decode_value(&[1, 0]), None);
}

// ---------------------------------------------------------------- file exporter

#[tokio::test]
async fn delivers_in_fifo_order_merging_consecutive_same_signal_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, queues, out) = file_queues(dir.path());

    // Staged data is not accounted (nor sent) until the caller's batch is committed.
    let mut batch = WriteBatch::default();
    let staged = queues.stage(&mut batch, &traces("t1", 1));
    assert_eq!(queues.queued_bytes(), 0);
    storage.write(batch).unwrap();
    queues.committed(staged);
    assert!(queues.queued_bytes() > 0);

    for request in [
        traces("t2", 2),
        logs("l1"),
        traces("t3", 1),
        metrics("m1"),
        metrics("m2"),
    ] {
        queues.enqueue(&request).unwrap();
    }
    drain_all(&queues).await;

    let lines = file_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let first: ExportTraceServiceRequest = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(span_names(&first), ["t1-0", "t2-0", "t2-1"]);
    let second: ExportLogsServiceRequest = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        second.resource_logs[0].scope_logs[0].log_records[0].severity_text,
        "l1"
    );
    let third: ExportTraceServiceRequest = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(span_names(&third), ["t3-0"]);
    let fourth: ExportMetricsServiceRequest = serde_json::from_str(&lines[3]).unwrap();
    let names: Vec<_> = fourth
        .resource_metrics
        .iter()
        .map(|rm| rm.scope_metrics[0].metrics[0].name.as_str())
        .collect();
    assert_eq!(names, ["m1", "m2"]);

    assert_eq!(queues.queued_bytes(), 0);
    let stats = &queues.stats()[0];
    assert_eq!(
        (stats.exporter, stats.exported_items, stats.rejected_items),
        ("file", 7, 0)
    );
    assert_eq!(
        storage
            .db()
            .iterator_cf(storage.cf(CF_QUEUE), IteratorMode::Start)
            .count(),
        0,
        "delivered entries are deleted"
    );
}

#[tokio::test]
async fn an_entry_written_after_a_later_one_was_sent_is_still_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, queues, out) = file_queues(dir.path());
    // Staged first, written last: its sequence is below entries sent before it lands.
    let mut slow = WriteBatch::default();
    let slow_staged = queues.stage(&mut slow, &logs("slow"));
    for round in 0..3 {
        queues.enqueue(&traces(&format!("t{round}"), 1)).unwrap();
        drain_all(&queues).await;
    }
    assert_eq!(file_lines(&out).len(), 3);
    storage.write(slow).unwrap();
    queues.committed(slow_staged);
    queues.enqueue(&traces("after", 1)).unwrap();
    drain_all(&queues).await;
    let lines = file_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[3].contains("slow"), "{lines:#?}");
    assert!(lines[4].contains("after-0"), "{lines:#?}");
}

#[tokio::test]
async fn merging_stops_at_the_item_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_, queues, out) = file_queues(dir.path());
    for i in 0..5 {
        queues.enqueue(&traces(&format!("r{i}"), 3000)).unwrap();
    }
    drain_all(&queues).await;
    let counts: Vec<usize> = file_lines(&out)
        .iter()
        .map(|line| span_names(&serde_json::from_str(line).unwrap()).len())
        .collect();
    assert_eq!(counts, [6000, 6000, 3000]);
    assert!(counts.iter().all(|c| *c as u64 <= MAX_MERGE_ITEMS));
}

#[tokio::test]
async fn survives_reopen_with_entries_and_byte_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let out = dir.path().join("out.jsonl");
    let queued = {
        let storage = Arc::new(Storage::open(&db, true).unwrap());
        let queues = ExportQueues::open(
            storage,
            vec![file_exporter(&out)],
            &fast_retry_config(1 << 30),
        )
        .unwrap();
        queues.enqueue(&traces("before", 2)).unwrap();
        queues.enqueue(&logs("before")).unwrap();
        queues.queued_bytes()
    };
    assert!(queued > 0);
    assert!(file_lines(&out).is_empty(), "nothing sent without run");

    let storage = Arc::new(Storage::open(&db, true).unwrap());
    let queues = ExportQueues::open(
        storage,
        vec![file_exporter(&out)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    assert_eq!(queues.queued_bytes(), queued);
    queues.enqueue(&traces("after", 1)).unwrap();
    drain_all(&queues).await;
    let lines = file_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(
        span_names(&serde_json::from_str(&lines[0]).unwrap()),
        ["before-0", "before-1"]
    );
    assert_eq!(
        span_names(&serde_json::from_str(&lines[2]).unwrap()),
        ["after-0"]
    );
    assert_eq!(queues.queued_bytes(), 0);
}

#[tokio::test]
async fn is_full_at_the_bound_per_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("db"), false).unwrap());
    let max_bytes = 2_000;
    let exporters = vec![
        file_exporter(&dir.path().join("a.jsonl")),
        Exporter::Grpc(
            GrpcExporter::new(&OtlpGrpcExporterConfig {
                endpoint: "127.0.0.1:9".into(),
                tls: TlsConfig {
                    insecure: true,
                    ..TlsConfig::default()
                },
                ..Default::default()
            })
            .unwrap(),
        ),
    ];
    let queues = ExportQueues::open(storage, exporters, &fast_retry_config(max_bytes)).unwrap();
    assert_eq!(
        queues.describe(),
        [
            format!("file {}", dir.path().join("a.jsonl").display()),
            "otlp grpc http://127.0.0.1:9".to_owned(),
        ]
    );
    let mut entries = 0;
    let mut before = 0;
    while !queues.is_full() {
        before = queues.queued_bytes();
        queues.enqueue(&traces("fill", 5)).unwrap();
        entries += 1;
        assert!(entries < 1_000, "the queue never reported full");
    }
    // Both lanes hold every entry; the one that crossed the bound made it full.
    let per_lane = queues.queued_bytes() / 2;
    assert!(per_lane >= max_bytes, "{per_lane}");
    assert!(before / 2 < max_bytes, "{before}");
    assert!(entries > 1);
}

// ---------------------------------------------------------------- gRPC downstream

/// A minimal OTLP/gRPC trace receiver that records span names.
#[derive(Clone, Default)]
struct Downstream {
    spans: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl TraceService for Downstream {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            return Err(tonic::Status::invalid_argument("not today"));
        }
        self.spans
            .lock()
            .unwrap()
            .extend(span_names(request.get_ref()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves `downstream` on `addr` until the returned sender fires (or is dropped).
async fn serve(addr: SocketAddr, downstream: Downstream) -> oneshot::Sender<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(64).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(downstream)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    stop_tx
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn grpc_exporter(addr: SocketAddr) -> Exporter {
    Exporter::Grpc(
        GrpcExporter::new(&OtlpGrpcExporterConfig {
            endpoint: format!("http://{addr}"),
            timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap(),
    )
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_data_queued_and_delivers_it_exactly_once_when_downstream_returns() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("db"), false).unwrap());
    let addr = free_port();
    let queues = ExportQueues::open(
        storage,
        vec![grpc_exporter(addr)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let runner = tokio::spawn(queues.clone().run(
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(5),
    ));

    let mut expected = Vec::new();
    for i in 0..20 {
        let name = format!("outage{i}");
        queues.enqueue(&traces(&name, 2)).unwrap();
        expected.extend([format!("{name}-0"), format!("{name}-1")]);
    }
    wait_until("retries pile up", || queues.stats()[0].retries >= 3).await;
    assert!(queues.queued_bytes() > 0);
    assert_eq!(queues.stats()[0].exported_items, 0);

    // The downstream comes up on the same port.
    let downstream = Downstream::default();
    let server = serve(addr, downstream.clone()).await;
    wait_until("the queue empties", || queues.queued_bytes() == 0).await;
    let mut received = downstream.spans.lock().unwrap().clone();
    received.sort();
    expected.sort();
    assert_eq!(received, expected, "every span delivered exactly once");
    assert_eq!(queues.stats()[0].exported_items, 40);

    // Data enqueued after recovery flows straight through.
    queues.enqueue(&traces("later", 1)).unwrap();
    wait_until("the later request arrives", || {
        downstream
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "later-0")
    })
    .await;

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .unwrap()
        .unwrap();
    drop(server);
}

#[tokio::test]
async fn permanent_failure_drops_the_batch_and_counts_it_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("db"), false).unwrap());
    let addr = free_port();
    let downstream = Downstream::default();
    downstream.refuse.store(true, Ordering::SeqCst);
    let _server = serve(addr, downstream.clone()).await;
    let queues = ExportQueues::open(
        storage,
        vec![grpc_exporter(addr)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    queues.enqueue(&traces("bad", 3)).unwrap();
    queues.enqueue(&traces("bad2", 1)).unwrap();
    drain_all(&queues).await;
    let stats = &queues.stats()[0];
    assert_eq!(
        (stats.rejected_items, stats.exported_items, stats.retries),
        (4, 0, 0)
    );
    assert_eq!(
        downstream.calls.load(Ordering::SeqCst),
        1,
        "merged into one refused request"
    );
    assert_eq!(queues.queued_bytes(), 0);
}

#[tokio::test]
async fn run_returns_within_drain_after_shutdown_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let storage = Arc::new(Storage::open(&db, false).unwrap());
    let queues = ExportQueues::open(
        storage,
        vec![grpc_exporter(free_port())],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    queues.enqueue(&traces("stuck", 1)).unwrap();
    let queued = queues.queued_bytes();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let drain = Duration::from_millis(300);
    let runner = tokio::spawn(queues.clone().run(
        async {
            let _ = stop_rx.await;
        },
        drain,
    ));
    wait_until("a retry happened", || queues.stats()[0].retries >= 1).await;
    let stopped_at = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .unwrap()
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(took >= drain, "kept trying during the drain: {took:?}");
    assert!(took < drain + Duration::from_secs(1), "took {took:?}");
    assert_eq!(
        queues.queued_bytes(),
        queued,
        "undelivered data stays queued"
    );
}

#[tokio::test]
async fn run_without_data_returns_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("db"), false).unwrap());
    let queues = ExportQueues::open(
        storage,
        vec![file_exporter(&dir.path().join("x.jsonl"))],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        queues.run(
            tokio::time::sleep(Duration::from_millis(50)),
            Duration::from_secs(30),
        ),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an empty queue needs no drain"
    );
}

#[tokio::test]
async fn unreadable_entries_are_dropped_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, queues, out) = file_queues(dir.path());
    queues.enqueue(&traces("good1", 1)).unwrap();
    let file_lane = queues.lanes[0].id;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        storage.cf(CF_QUEUE),
        lane_key(file_lane, storage.next_seq()),
        [42u8, 0, 0, 0, 1, 7],
    );
    batch.put_cf(
        storage.cf(CF_QUEUE),
        lane_key(file_lane, storage.next_seq()),
        [1u8, 0, 0, 0, 2, 0xff, 0xff],
    );
    storage.write(batch).unwrap();
    queues.enqueue(&traces("good2", 1)).unwrap();
    drop(queues);

    // Reopen so the garbage is counted like anything else found on disk.
    let queues = ExportQueues::open(
        storage,
        vec![file_exporter(&out)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    drain_all(&queues).await;
    let names: Vec<Vec<String>> = file_lines(&out)
        .iter()
        .map(|line| span_names(&serde_json::from_str(line).unwrap()))
        .collect();
    assert_eq!(
        names,
        [vec!["good1-0".to_owned()], vec!["good2-0".to_owned()]]
    );
    let stats = &queues.stats()[0];
    assert_eq!(
        (
            stats.exported_items,
            stats.rejected_items,
            stats.queued_bytes
        ),
        (2, 2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_sent_undecoded_that_do_not_decode_go_to_quarantine_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("db"), false).unwrap());
    let addr = free_port();
    let downstream = Downstream::default();
    let _server = serve(addr, downstream.clone()).await;
    let queues = ExportQueues::open(
        storage.clone(),
        vec![grpc_exporter(addr)],
        &fast_retry_config(1 << 30),
    )
    .unwrap();
    queues.enqueue(&traces("good1", 1)).unwrap();
    // A traces entry whose payload is not protobuf, merged with its neighbours on reading.
    let mut batch = WriteBatch::default();
    batch.put_cf(
        storage.cf(CF_QUEUE),
        lane_key(queues.lanes[0].id, storage.next_seq()),
        [1u8, 0, 0, 0, 2, 0xff, 0xff],
    );
    storage.write(batch).unwrap();
    queues.enqueue(&traces("good2", 2)).unwrap();
    drain_all(&queues).await;
    assert_eq!(
        *downstream.spans.lock().unwrap(),
        ["good1-0", "good2-0", "good2-1"],
        "the neighbours of the bad entry are delivered"
    );
    let stats = &queues.stats()[0];
    assert_eq!(
        (
            stats.exported_items,
            stats.rejected_items,
            stats.queued_bytes
        ),
        (3, 2, 0)
    );
    let quarantined = storage.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
}
