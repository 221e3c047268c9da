//! Durability end to end: `kill -9` with buffered traces, graceful SIGTERM, and a
//! downstream backend that goes away and comes back. Data is sent with the tonic
//! OTLP client so every acknowledged request is known exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use otel_tail_integration_tests::export::hex;
use otel_tail_integration_tests::generate::{Generator, TraceBatch, TraceShape};
use otel_tail_integration_tests::load::{connect, unix_nanos_now};
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{ExportedData, OtlpSink, SamplerProcess, SinkMode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(40);

fn errors_policy() -> Value {
    json!([{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}])
}

/// Sends `requests` batches of generated traces and asserts each is acknowledged
/// in full. Returns the batches.
async fn send_acknowledged(
    sampler: &SamplerProcess,
    seed: u64,
    requests: usize,
    traces_per_request: usize,
    shape: TraceShape,
) -> Vec<TraceBatch> {
    let channel = connect(&sampler.grpc_endpoint()).await.expect("connect");
    let mut client = TraceServiceClient::new(channel);
    let mut generator = Generator::new(seed, shape);
    let mut batches = Vec::new();
    for _ in 0..requests {
        let batch =
            generator.trace_batch(traces_per_request * shape.spans_per_trace, unix_nanos_now());
        let response = client
            .export(batch.traces.clone())
            .await
            .expect("request acknowledged")
            .into_inner();
        let rejected = response.partial_success.map_or(0, |p| p.rejected_spans);
        assert_eq!(rejected, 0, "no span rejected");
        batches.push(batch);
    }
    batches
}

/// (trace id, span id) of every span in the batches whose trace had an error.
fn error_span_keys(batches: &[TraceBatch]) -> BTreeSet<(String, String)> {
    let errors: BTreeSet<&Vec<u8>> = batches.iter().flat_map(|b| &b.error_trace_ids).collect();
    batches
        .iter()
        .flat_map(|b| &b.traces.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .filter(|s| errors.contains(&s.trace_id))
        .map(|s| (hex(&s.trace_id), hex(&s.span_id)))
        .collect()
}

/// Exported (trace id, span id) pairs with their multiplicity.
fn exported_span_counts(data: &ExportedData) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for span in data.spans() {
        *counts
            .entry((span.trace_id(), hex(&span.span.span_id)))
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_then_restart_decides_and_exports_every_acknowledged_span() {
    let mut sampler = SamplerProcess::start(json!({
        "sampler": {"decision_wait": "4s", "policies": errors_policy()},
    }))
    .await
    .expect("sampler starts");
    let shape = TraceShape {
        spans_per_trace: 5,
        error_share: 0.3,
        logs_per_trace: 0,
    };
    let started = Instant::now();
    let batches = send_acknowledged(&sampler, 11, 8, 25, shape).await;
    let traces: usize = batches.iter().map(|b| b.trace_ids.len()).sum();
    let expected = error_span_keys(&batches);
    assert!(!expected.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "sending took {:?}; the crash must come before decision_wait",
        started.elapsed()
    );
    assert_eq!(
        sampler.read_export().expect("export readable").span_count(),
        0,
        "nothing is decided before decision_wait"
    );
    sampler.kill9().expect("kill -9");

    sampler
        .restart()
        .await
        .expect("sampler restarts on the same storage");
    sampler
        .wait_for_export("every span of every acknowledged error trace", WAIT, |d| {
            let got = exported_span_counts(d);
            expected.iter().all(|k| got.contains_key(k))
        })
        .await
        .expect("all acknowledged error spans exported after restart");
    let data = sampler.settle(WAIT).await.expect("settles");
    let counts = exported_span_counts(&data);
    let exported: BTreeSet<_> = counts.keys().cloned().collect();
    assert_eq!(
        exported, expected,
        "exactly the error traces' spans are exported"
    );
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "spans exported more than once: {duplicated:?}"
    );
    let metrics = sampler.metrics().await.expect("metrics");
    assert_eq!(metrics.sum("otel_tail_traces_active", &[]), 0.0);
    assert!(
        metrics.sum("otel_tail_traces_decided_total", &[]) >= traces as f64,
        "all {traces} recovered traces decided after restart:\n{}",
        metrics.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_and_keeps_undecided_traces_on_disk() {
    let mut sampler = SamplerProcess::start(json!({
        "sampler": {"decision_wait": "10m", "policies": errors_policy()},
    }))
    .await
    .expect("sampler starts");
    let shape = TraceShape {
        spans_per_trace: 4,
        error_share: 0.5,
        logs_per_trace: 0,
    };
    let batches = send_acknowledged(&sampler, 21, 4, 20, shape).await;
    let expected = error_span_keys(&batches);

    let began = Instant::now();
    let status = sampler
        .terminate(Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "clean exit status, got {status}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "SIGTERM shutdown took {:?}",
        began.elapsed()
    );
    assert_eq!(
        sampler.read_export().expect("export readable").span_count(),
        0,
        "undecided traces are not exported on shutdown"
    );

    // Same storage, short decision wait: the buffered traces are decided now.
    sampler
        .set_config(json!({"sampler": {"decision_wait": "1s", "policies": errors_policy()}}))
        .expect("config rewritten");
    sampler.restart().await.expect("restarts");
    sampler
        .wait_for_export("the buffered error traces", WAIT, |d| {
            let got = exported_span_counts(d);
            expected.iter().all(|k| got.contains_key(k))
        })
        .await
        .expect("buffered traces survived SIGTERM");
    let data = sampler.settle(WAIT).await.expect("settles");
    let exported: BTreeSet<_> = exported_span_counts(&data).keys().cloned().collect();
    assert_eq!(exported, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_outage_loses_nothing_and_duplicates_nothing() {
    let mut sink = OtlpSink::start(SinkMode::Record)
        .await
        .expect("sink starts");
    let sampler = SamplerProcess::start(json!({
        "sampler": {"decision_wait": "1s", "policies": errors_policy()},
        "exporter": {
            "otlp": {"endpoint": sink.endpoint(), "tls": {"insecure": true}, "compression": "gzip"},
            "retry": {"initial_interval": "100ms", "max_interval": "1s"},
        },
    }))
    .await
    .expect("sampler starts");
    let shape = TraceShape {
        spans_per_trace: 4,
        error_share: 0.5,
        logs_per_trace: 0,
    };
    // Warm-up while the backend is up: the exporter connects and delivers.
    let warmup = send_acknowledged(&sampler, 31, 1, 10, shape).await;
    let warmup_keys = error_span_keys(&warmup);
    poll_until("the warm-up traces at the sink", WAIT, || {
        let got = exported_span_counts(&sink.snapshot());
        let done = warmup_keys.iter().all(|k| got.contains_key(k));
        async move { Ok(done.then_some(())) }
    })
    .await
    .expect("warm-up delivered");

    sink.stop().await;
    let during = send_acknowledged(&sampler, 32, 5, 20, shape).await;
    // Let the decisions happen and the exporter fail and retry for a while.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_restart = sink.counts().spans;
    sink.restart()
        .await
        .expect("sink restarts on the same port");

    let mut expected = warmup_keys.clone();
    expected.extend(error_span_keys(&during));
    poll_until("every kept span at the sink after the outage", WAIT, || {
        let got = exported_span_counts(&sink.snapshot());
        let done = expected.iter().all(|k| got.contains_key(k));
        async move { Ok(done.then_some(())) }
    })
    .await
    .expect("outage data delivered after the backend returned");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = exported_span_counts(&sink.snapshot());
    let exported: BTreeSet<_> = counts.keys().cloned().collect();
    assert_eq!(exported, expected, "exactly the kept spans arrive");
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {duplicated:?}"
    );
    assert_eq!(
        before_restart as usize,
        warmup_keys.len(),
        "nothing reached the sink while it was down"
    );
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(metrics.has_family("otel_tail_export_queue_bytes"));
}
