//! A full disk throttles clients instead of breaking the sampler: on a 64 MiB tmpfs made
//! for the test, once free space falls below `sampler.min_free_disk_bytes` OTLP requests
//! get a retryable 503 with `Retry-After` (counted, nothing written), everything
//! acknowledged before is still exported, and as soon as space returns the same requests
//! are accepted again, without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::http_client;
use otel_tail_integration_tests::wait::poll_until;
use prost::Message;
use serde_json::json;

const MIB: u64 = 1024 * 1024;
const RESERVE: u64 = 24 * MIB;

/// A tmpfs mounted for the test; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).expect("statvfs of the tmpfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn request(trace: u8, spans: u8) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (1..=spans)
                    .map(|s| Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![s; 8],
                        name: "disk".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

async fn post(url: &str, body: Vec<u8>) -> http_client::HttpResponse {
    http_client::post(url, &[("content-type", "application/x-protobuf")], body)
        .await
        .expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(tmpfs_mount),
    ignore = "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)"
)]
async fn a_full_disk_throttles_clients_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "64m");
    let export = dir.path().join("export.jsonl");
    let sampler = SamplerProcess::start(json!({
        "sampler": {
            "storage_dir": fs.path.join("storage"),
            "min_free_disk_bytes": RESERVE,
            "decision_wait": "1s",
            "policies": [{"name": "all", "type": "always_sample"}],
        },
        "exporter": {"file": {"path": export}},
    }))
    .await
    .expect("sampler starts on the small filesystem");
    let url = format!("{}/v1/traces", sampler.http_endpoint());

    let before = post(&url, request(0xb1, 5)).await;
    assert_eq!(before.status.as_u16(), 200, "{}", before.text());

    // Something else fills the disk up to just under the reserve.
    let filler = fs.path.join("filler");
    let fill = fs.free_bytes().saturating_sub(RESERVE - 4 * MIB);
    std::fs::write(&filler, vec![0u8; fill as usize]).expect("filling the tmpfs");
    let throttled = poll_until("requests to be throttled", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let response = post(&url, request(0xb2, 5)).await;
            Ok((response.status.as_u16() == 503).then_some(response))
        }
    })
    .await
    .expect("a nearly full disk throttles");
    assert!(
        throttled.header("retry-after").is_some(),
        "throttling tells the client when to retry"
    );
    assert!(throttled.text().contains("disk"), "{}", throttled.text());

    // Space returns: the same request is accepted, without a restart.
    std::fs::remove_file(&filler).unwrap();
    poll_until(
        "requests to be accepted again",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                let response = post(&url, request(0xb2, 5)).await;
                Ok((response.status.as_u16() == 200).then_some(()))
            }
        },
    )
    .await
    .expect("accepted again once space returned");

    let data = sampler
        .wait_for_export("both traces", Duration::from_secs(20), |d| {
            let ids = d.trace_ids();
            ids.contains(&"b1".repeat(16)) && ids.contains(&"b2".repeat(16))
        })
        .await
        .expect("everything acknowledged is exported");
    assert_eq!(data.span_count(), 10, "each span once");
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum(
            "otel_tail_requests_refused_total",
            &[("reason", "overloaded")]
        ) >= 1.0
    );
    assert!(metrics.sum("otel_tail_storage_disk_free_bytes", &[]) > 0.0);
}
