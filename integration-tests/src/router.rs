//! A running `otel-tail-router` process: start with a temp config, parse the banner,
//! wait for `/readyz` (receivers up and at least one sampler in its ring), signal,
//! crash, inspect.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::metrics_text::MetricsSnapshot;
use crate::process::{ListenAddrs, NodeProcess};
use crate::{HarnessError, binary};

/// A router process owned by a test; killed when dropped (its output printed first
/// when the test is failing).
pub struct RouterProcess {
    process: NodeProcess,
    workdir: TempDir,
}

impl RouterProcess {
    /// Starts a router with `config` (the YAML document as a JSON value). The harness
    /// fills in receivers and the admin endpoint on `127.0.0.1:0` and
    /// `telemetry.log_level: info`; the test sets the `cluster` section (a router needs
    /// seeds). Returns once `/readyz` answers 200, i.e. the router knows a sampler.
    pub async fn start(config: Value) -> Result<Self, HarnessError> {
        let binary = binary::router_binary()?;
        let workdir = tempfile::Builder::new()
            .prefix("otel-tail-it-router-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the router temp dir", e))?;
        let config_path = workdir.path().join("config.yaml");
        let text = serde_json::to_string_pretty(&complete_config(config))
            .expect("JSON values always serialise");
        std::fs::write(&config_path, text)
            .map_err(|e| HarnessError::io("writing the router config", e))?;
        let log_path = workdir.path().join("router.log");
        let mut router = Self {
            process: NodeProcess::new("otel-tail-router", binary, config_path, log_path),
            workdir,
        };
        router.process.spawn_and_wait_ready().await?;
        Ok(router)
    }

    /// The addresses from the banner (`gossip` is always set for a router).
    pub fn addrs(&self) -> ListenAddrs {
        self.process.addrs()
    }

    /// `http://host:port` of the OTLP/gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.addrs().grpc)
    }

    /// `http://host:port` of the OTLP/HTTP receiver (append `/v1/traces` etc.).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.addrs().http)
    }

    /// `http://host:port` of the admin endpoint.
    pub fn admin_endpoint(&self) -> String {
        format!("http://{}", self.addrs().admin)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The temp directory holding config and log.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) -> Result<(), HarnessError> {
        self.process.kill9()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        self.process.terminate(timeout).await
    }

    /// Everything the router printed so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, HarnessError> {
        self.process.metrics().await
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let context = self.workdir.path().display().to_string();
        self.process.dispose(&context);
    }
}

/// Fills in the keys the harness owns; keeps everything the test set.
fn complete_config(mut config: Value) -> Value {
    if !config.is_object() {
        config = json!({});
    }
    let root = config.as_object_mut().expect("object");
    for (section, key, value) in [
        ("receiver", "grpc_endpoint", "127.0.0.1:0"),
        ("receiver", "http_endpoint", "127.0.0.1:0"),
        ("telemetry", "admin_endpoint", "127.0.0.1:0"),
        ("telemetry", "log_level", "info"),
    ] {
        let entry = root.entry(section).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        entry
            .as_object_mut()
            .expect("object")
            .entry(key)
            .or_insert_with(|| json!(value));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gets_local_endpoints_and_keeps_the_cluster_section() {
        let config = complete_config(json!({"cluster": {"seeds": ["127.0.0.1:7000"]}}));
        assert_eq!(config["cluster"]["seeds"][0], "127.0.0.1:7000");
        assert_eq!(config["receiver"]["grpc_endpoint"], "127.0.0.1:0");
        assert_eq!(config["receiver"]["http_endpoint"], "127.0.0.1:0");
        assert_eq!(config["telemetry"]["admin_endpoint"], "127.0.0.1:0");
        assert_eq!(config["telemetry"]["log_level"], "info");
    }
}
