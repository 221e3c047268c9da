//! The `otel-tail-router` binary as an operator runs it: config checks, and a start,
//! readiness probe and SIGTERM on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

fn router() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otel-tail-router"))
}

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("router.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

const CLUSTER_CONFIG: &str = "\
receiver:
  grpc_endpoint: 127.0.0.1:0
  http_endpoint: 127.0.0.1:0
cluster:
  node_id: router-0
  gossip_endpoint: 127.0.0.1:0
  advertise_address: 127.0.0.1
  seeds: [127.0.0.1:9]
  insecure: true
telemetry:
  admin_endpoint: 127.0.0.1:0
";

#[test]
fn check_config_accepts_a_cluster_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, CLUSTER_CONFIG);
    let output = router()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "config OK");
}

#[test]
fn a_standalone_config_is_refused() {
    let output = router().arg("--check-config").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster.seeds"), "{stderr}");
    assert!(stderr.contains("needs samplers"), "{stderr}");

    // Starting without --check-config refuses the same way, before binding anything.
    let output = router().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn invalid_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "cluster:\n  seeds: [nowhere]\n");
    let output = router()
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster.seeds[0]"), "{stderr}");
}

#[test]
fn print_config_says_which_sections_are_ignored() {
    let output = router().arg("--print-config").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("# otel-tail-router reads"), "{stdout}");
    assert!(stdout.contains("are ignored"), "{stdout}");
    assert!(stdout.contains("receiver:"), "{stdout}");
}

/// `GET path` on the admin endpoint; returns the status code.
fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn starts_reports_not_ready_without_samplers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, CLUSTER_CONFIG);
    let mut child = router()
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    for _ in 0..5 {
        banner.push(lines.next().unwrap().unwrap());
    }
    assert!(
        banner[0].starts_with("otel-tail-router 0.1.0 started"),
        "{banner:?}"
    );
    for (line, label) in banner[1..]
        .iter()
        .zip(["OTLP/gRPC", "OTLP/HTTP", "admin", "gossip"])
    {
        assert!(line.trim_start().starts_with(label), "{banner:?}");
        assert!(line.contains("listening on 127.0.0.1:"), "{banner:?}");
    }
    let admin: SocketAddr = banner[3]
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(get(admin, "/healthz"), 200);
    assert_eq!(
        get(admin, "/readyz"),
        503,
        "no sampler in the ring: not ready"
    );

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "router did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
