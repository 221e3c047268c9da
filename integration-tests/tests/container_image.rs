//! The container image builds from the repository's Dockerfile and runs: podman builds it
//! on the local runtime base (`.ci/base-image.sh`, since no registry is reachable) with this
//! build's binaries (`BINARIES=prebuilt`), runs it as its non-root user with a config and
//! a data volume, and the OpenTelemetry Python SDK's traces sent to it come out of its
//! file exporter.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use otel_tail_integration_tests::binary::{router_binary, sampler_binary, workspace_root};
use otel_tail_integration_tests::cluster::free_tcp_addrs;
use otel_tail_integration_tests::export::ExportedData;
use otel_tail_integration_tests::prerequisites::{self, BASE_IMAGE_ENV};
use otel_tail_integration_tests::{http_client, python, wait::poll_until};
use serde_json::json;

const IMAGE: &str = "localhost/otel-tail-sampler:test";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs")
}

fn check(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the container when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.0]);
    }
}

fn build_image(context: &Path) {
    let out = context.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for binary in [sampler_binary().unwrap(), router_binary().unwrap()] {
        std::fs::copy(&binary, out.join(binary.file_name().unwrap())).unwrap();
    }
    let base = std::env::var(BASE_IMAGE_ENV).expect("the base image is named");
    let dockerfile = workspace_root().join("Dockerfile");
    check(
        podman(&[
            "build",
            "--quiet",
            "-f",
            dockerfile.to_str().unwrap(),
            "--build-arg",
            "BINARIES=prebuilt",
            "--build-arg",
            &format!("RUNTIME_IMAGE={base}"),
            "-t",
            IMAGE,
            context.to_str().unwrap(),
        ]),
        "podman build",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(container_base, python_sdk)),
    ignore = "needs podman with a local base image (.ci/base-image.sh) and the Python SDK"
)]
async fn the_image_runs_and_exports_what_the_python_sdk_sends() {
    if let Some(missing) =
        prerequisites::container_base_missing().or_else(prerequisites::python_sdk_missing)
    {
        panic!("{missing}");
    }
    let dir = tempfile::tempdir().unwrap();
    build_image(&dir.path().join("context"));
    let user = check(
        podman(&["image", "inspect", IMAGE, "--format", "{{.Config.User}}"]),
        "inspect",
    );
    assert_eq!(user, "65532:65532", "the image runs as its non-root user");

    let config_dir = dir.path().join("config");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    // The container's user must be able to write its volume.
    check(
        Command::new("chmod")
            .arg("0777")
            .arg(&data_dir)
            .output()
            .unwrap(),
        "chmod",
    );
    let ports = free_tcp_addrs(3).unwrap();
    let config = json!({
        "receiver": {"grpc_endpoint": ports[0].to_string(), "http_endpoint": ports[1].to_string()},
        "cluster": {"gossip_endpoint": "127.0.0.1:0"},
        "telemetry": {"admin_endpoint": ports[2].to_string()},
        "sampler": {
            "storage_dir": "/data/storage",
            "decision_wait": "1s",
            "policies": [{"name": "all", "type": "always_sample"}],
        },
        "exporter": {"file": {"path": "/data/export.jsonl"}},
    });
    std::fs::write(
        config_dir.join("config.yaml"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let name = format!("otel-tail-it-{}", std::process::id());
    let _ = podman(&["rm", "-f", &name]);
    check(
        podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "-v",
            &format!("{}:/etc/otel-tail:ro", config_dir.display()),
            "-v",
            &format!("{}:/data", data_dir.display()),
            IMAGE,
            "--config",
            "/etc/otel-tail/config.yaml",
        ]),
        "podman run",
    );
    let container = Container(name);
    let ready = format!("http://{}/readyz", ports[2]);
    poll_until("the container to be ready", Duration::from_secs(30), || {
        let ready = ready.clone();
        async move {
            Ok(http_client::get(&ready)
                .await
                .ok()
                .filter(|r| r.status.is_success()))
        }
    })
    .await
    .unwrap_or_else(|e| {
        let logs = podman(&["logs", &container.0]);
        panic!("{e}: {}", String::from_utf8_lossy(&logs.stderr))
    });

    let endpoint = format!("http://{}", ports[1]);
    let sent = python::send(python::sender("http", &endpoint, 5))
        .await
        .expect("the Python SDK sent")
        .all();
    assert_eq!(sent.len(), 5);

    let export = data_dir.join("export.jsonl");
    poll_until("the container to export", Duration::from_secs(30), || {
        let export = export.clone();
        let sent = sent.clone();
        async move {
            let Ok(data) = ExportedData::read_jsonl(&export) else {
                return Ok(None);
            };
            let ids = data.trace_ids();
            Ok(sent.iter().all(|id| ids.contains(id)).then_some(()))
        }
    })
    .await
    .expect("every trace sent to the container is exported");
    drop(container);
}
