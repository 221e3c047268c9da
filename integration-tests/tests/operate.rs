//! The operator's surface: CLI config checks (bad keys, bad values, a pasted
//! Collector `tail_sampling` block), `--print-config`, the start-up banner, the
//! admin endpoints and the self-metrics.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use otel_tail_integration_tests::binary::{sampler_binary, workspace_root};
use otel_tail_integration_tests::generate::{Generator, TraceShape};
use otel_tail_integration_tests::http_client;
use otel_tail_integration_tests::load::{connect, unix_nanos_now};
use otel_tail_integration_tests::sampler::CliOutput;
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{OtlpSink, SamplerProcess, SinkMode};
use serde_json::json;

fn check_config_text(yaml: &str) -> CliOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    check_config_file(&path)
}

fn check_config_file(path: &Path) -> CliOutput {
    SamplerProcess::run_cli(&[
        OsStr::new("--config"),
        path.as_os_str(),
        OsStr::new("--check-config"),
    ])
    .expect("sampler runs")
}

#[test]
fn check_config_rejects_unknown_keys_naming_them() {
    let out = check_config_text("sampler:\n  decision_wiat: 1s\n");
    assert!(!out.status.success(), "unknown key must fail: {out:?}");
    assert!(
        out.stderr.contains("decision_wiat"),
        "stderr names the key: {}",
        out.stderr
    );

    let out = check_config_text(
        "sampler:\n  policies:\n    - name: p\n      type: probabilistic\n      probabilistic: {sampling_percentage: 10, hash_seed: 3}\n",
    );
    assert!(
        !out.status.success(),
        "unknown nested key must fail: {out:?}"
    );
    assert!(out.stderr.contains("hash_seed"), "{}", out.stderr);
}

#[test]
fn check_config_rejects_bad_values_naming_the_key() {
    let out = check_config_text(
        "sampler:\n  policies:\n    - name: base\n      type: probabilistic\n      probabilistic: {sampling_percentage: lots}\n",
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("sampling_percentage"), "{}", out.stderr);

    let out = check_config_text("sampler:\n  decision_wait: soon\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("decision_wait"), "{}", out.stderr);

    let out =
        check_config_text("sampler:\n  policies:\n    - name: x\n      type: no_such_policy\n");
    assert!(!out.status.success(), "{out:?}");
    assert!(
        out.stderr.contains("no_such_policy") || out.stderr.contains("type"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_config_accepts_a_valid_config() {
    let out = check_config_text(
        "receiver: {grpc_endpoint: \"127.0.0.1:0\"}\nsampler:\n  decision_wait: 2s\n  policies:\n    - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n",
    );
    assert!(out.status.success(), "valid config accepted: {out:?}");
}

#[test]
fn collector_tail_sampling_block_with_every_policy_type_loads_unchanged() {
    let path = workspace_root().join("integration-tests/testdata/collector-tail-sampling.yaml");
    assert!(path.is_file(), "{} must exist", path.display());
    let text = std::fs::read_to_string(&path).expect("readable");
    for policy_type in [
        "always_sample",
        "latency",
        "numeric_attribute",
        "probabilistic",
        "status_code",
        "string_attribute",
        "boolean_attribute",
        "span_count",
        "trace_state",
        "trace_flags",
        "rate_limiting",
        "bytes_limiting",
        "and",
        "not",
        "drop",
        "composite",
    ] {
        assert!(
            text.contains(&format!("type: {policy_type}")),
            "the compatibility file uses `{policy_type}`"
        );
    }
    let out = check_config_file(&path);
    assert!(out.status.success(), "collector block accepted: {out:?}");
}

#[test]
fn print_config_shows_effective_values_with_env_expansion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "sampler:\n  decision_wait: ${env:IT_DECISION_WAIT}\n",
    )
    .expect("write");
    let binary = sampler_binary().expect("binary");
    let out = std::process::Command::new(binary)
        .arg("--config")
        .arg(&path)
        .arg("--print-config")
        .env("IT_DECISION_WAIT", "7s")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [
        "receiver",
        "sampler",
        "exporter",
        "telemetry",
        "decision_wait",
        "num_traces",
    ] {
        assert!(
            stdout.contains(key),
            "effective config shows `{key}`:\n{stdout}"
        );
    }
    assert!(stdout.contains("7s"), "${{env:...}} expanded:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_admin_endpoints_and_self_metrics() {
    let sink = OtlpSink::start(SinkMode::Count).await.expect("sink");
    let sampler = SamplerProcess::start(json!({
        "sampler": {"decision_wait": "1s", "policies": [
            {"name": "everything", "type": "always_sample"}
        ]},
        "exporter": {"otlp": {"endpoint": sink.endpoint(), "tls": {"insecure": true}}},
    }))
    .await
    .expect("sampler starts");
    // Ready once the admin endpoint answers, which can be before the banner's last lines
    // (buffer, export) are written.
    let banner = poll_until("the whole banner", Duration::from_secs(10), || {
        let lines = sampler.stdout_lines();
        async move { Ok(lines.iter().any(|l| l.contains("export")).then_some(lines)) }
    })
    .await
    .expect("banner");
    assert!(
        banner
            .first()
            .is_some_and(|l| l.starts_with("otel-tail-sampler ")),
        "{banner:?}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.contains("buffer") && l.contains(&*sampler.storage_dir().to_string_lossy())),
        "banner shows the buffer dir: {banner:?}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.contains("export") && l.contains(&sink.addr().to_string())),
        "banner shows where it exports: {banner:?}"
    );
    let health = http_client::get(&format!("{}/healthz", sampler.admin_endpoint()))
        .await
        .expect("healthz");
    assert_eq!(health.status, 200);

    // Some traffic so that labelled counters have series.
    let channel = connect(&sampler.grpc_endpoint()).await.expect("connect");
    let mut client = TraceServiceClient::new(channel);
    let shape = TraceShape {
        spans_per_trace: 2,
        error_share: 1.0,
        logs_per_trace: 0,
    };
    let batch = Generator::new(9, shape).trace_batch(4, unix_nanos_now());
    client.export(batch.traces).await.expect("accepted");
    poll_until("the traces at the sink", Duration::from_secs(30), || {
        let n = sink.counts().spans;
        async move { Ok((n >= 4).then_some(())) }
    })
    .await
    .expect("exported");
    // The sink may see the spans a moment before the sampler records the outcome.
    let names = [
        "otel_tail_spans_received_total",
        "otel_tail_spans_rejected_total",
        "otel_tail_traces_active",
        "otel_tail_traces_decided_total",
        "otel_tail_late_spans_total",
        "otel_tail_exported_items_total",
        "otel_tail_decision_latency_seconds",
        "otel_tail_storage_bytes",
        "otel_tail_export_queue_bytes",
    ];
    let metrics = poll_until(
        "exported items counted",
        Duration::from_secs(10),
        || async {
            let m = sampler.metrics().await?;
            Ok((m.sum("otel_tail_exported_items_total", &[]) >= 4.0).then_some(m))
        },
    )
    .await
    .expect("export outcome counted");
    for name in names {
        assert!(
            metrics.has_family(name),
            "/metrics lacks {name}:\n{}",
            metrics.text
        );
    }
    assert_eq!(metrics.sum("otel_tail_spans_received_total", &[]), 4.0);
    assert_eq!(
        metrics.sum("otel_tail_traces_decided_total", &[("decision", "sampled")]),
        2.0,
        "{}",
        metrics.text
    );
}
