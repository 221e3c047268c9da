//! A running `otel-tail-sampler` process: start with a temp config and storage,
//! parse the banner, wait for `/readyz`, signal, crash, restart, inspect.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::export::ExportedData;
use crate::metrics_text::MetricsSnapshot;
use crate::process::NodeProcess;
pub use crate::process::{BannerParser, ListenAddrs, START_TIMEOUT};
use crate::wait::poll_until;
use crate::{HarnessError, binary};

/// A sampler process owned by a test. Killed (`kill -9`) when dropped; when the
/// test is panicking its output is printed first, so failures come with the
/// sampler's own account of what happened.
pub struct SamplerProcess {
    process: NodeProcess,
    workdir: TempDir,
    config_path: PathBuf,
    storage_dir: PathBuf,
    export_path: Option<PathBuf>,
}

impl SamplerProcess {
    /// Starts a sampler with `config` (the YAML document as a JSON value; JSON is
    /// YAML). The harness fills in what a test should not choose: receivers and the
    /// admin endpoint on `127.0.0.1:0`, `sampler.storage_dir` in a fresh temp dir (unless
    /// the test names one, e.g. on a filesystem it made), `telemetry.log_level: info`. With no `exporter` key the sampler's default
    /// applies and output is read from `<storage_dir>/export.jsonl`.
    pub async fn start(config: Value) -> Result<Self, HarnessError> {
        let mut process = Self::prepare(config)?;
        process.process.spawn_and_wait_ready().await?;
        Ok(process)
    }

    /// Writes the config and storage layout of a sampler without starting it; see
    /// [`Self::start`].
    fn prepare(config: Value) -> Result<Self, HarnessError> {
        let binary = binary::sampler_binary()?;
        let workdir = tempfile::Builder::new()
            .prefix("otel-tail-it-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the sampler temp dir", e))?;
        let config = complete_config(config, &workdir.path().join("storage"));
        let storage_dir = PathBuf::from(
            config["sampler"]["storage_dir"]
                .as_str()
                .expect("complete_config sets storage_dir"),
        );
        let export_path = export_path_of(&config, &storage_dir);
        let config_path = workdir.path().join("config.yaml");
        let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
        std::fs::write(&config_path, text)
            .map_err(|e| HarnessError::io("writing the sampler config", e))?;
        let log_path = workdir.path().join("sampler.log");
        Ok(Self {
            process: NodeProcess::new("otel-tail-sampler", binary, config_path.clone(), log_path),
            workdir,
            config_path,
            storage_dir,
            export_path,
        })
    }

    /// Starts the sampler again with the same config and storage (after
    /// [`Self::kill9`] or [`Self::terminate`]). Ports are chosen afresh.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            self.kill9()?;
        }
        self.process.spawn_and_wait_ready().await
    }

    /// The addresses from the latest banner.
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

    /// The sampler's storage directory (survives restarts).
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The temp directory holding config, storage and log.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) -> Result<(), HarnessError> {
        self.process.kill9()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        self.process.terminate(timeout).await
    }

    /// Sends SIGTERM without waiting; follow with [`Self::wait_exit`].
    pub fn signal_term(&self) -> Result<(), HarnessError> {
        self.process.signal_term()
    }

    /// Sends SIGHUP: the sampler reloads its config file.
    pub fn signal_hup(&self) -> Result<(), HarnessError> {
        self.process.signal("HUP")
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        self.process.wait_exit(timeout).await
    }

    /// Everything the sampler printed (stdout lines, then stderr) so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Lines printed on stdout so far (the banner among them).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.stdout_lines()
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, HarnessError> {
        self.process.metrics().await
    }

    /// Where the file exporter writes, if this sampler exports to a file.
    pub fn export_path(&self) -> Option<&Path> {
        self.export_path.as_deref()
    }

    /// Reads what the file exporter has written so far.
    pub fn read_export(&self) -> Result<ExportedData, HarnessError> {
        match &self.export_path {
            Some(path) => ExportedData::read_jsonl(path),
            None => Ok(ExportedData::default()),
        }
    }

    /// Polls the export file until `done` holds, up to `timeout`; returns the data
    /// that satisfied it.
    pub async fn wait_for_export(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ExportedData) -> bool,
    ) -> Result<ExportedData, HarnessError> {
        poll_until(what, timeout, || {
            let data = self.read_export();
            let ok = data.as_ref().map(&done).unwrap_or(false);
            async move { data.map(|d| ok.then_some(d)) }
        })
        .await
    }

    /// Waits until nothing is pending: `otel_tail_traces_active` is 0 and the export
    /// file has not changed for one second. Call after `decision_wait` has passed
    /// since the last span was sent.
    pub async fn settle(&self, timeout: Duration) -> Result<ExportedData, HarnessError> {
        let mut last_len = None;
        let mut stable_since = tokio::time::Instant::now();
        poll_until(
            "the sampler to settle (no active traces, export idle)",
            timeout,
            || {
                let len = self
                    .export_path
                    .as_ref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len());
                if len != last_len {
                    last_len = len;
                    stable_since = tokio::time::Instant::now();
                }
                let quiet = stable_since.elapsed() >= Duration::from_secs(1);
                async move {
                    if !quiet {
                        return Ok(None);
                    }
                    let active = self.metrics().await?.sum("otel_tail_traces_active", &[]);
                    if active > 0.0 {
                        return Ok(None);
                    }
                    self.read_export().map(Some)
                }
            },
        )
        .await
    }

    /// Replaces the config used by the next [`Self::restart`] (the harness-owned
    /// keys are filled in again; storage stays the same).
    pub fn set_config(&mut self, config: Value) -> Result<(), HarnessError> {
        let config = complete_config(config, &self.storage_dir);
        self.export_path = export_path_of(&config, &self.storage_dir);
        let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
        std::fs::write(&self.config_path, text)
            .map_err(|e| HarnessError::io("writing the sampler config", e))
    }

    /// Runs `otel-tail-sampler` with the given arguments to completion (for
    /// `--check-config` / `--print-config`) and returns its status and output.
    pub fn run_cli(args: &[&std::ffi::OsStr]) -> Result<CliOutput, HarnessError> {
        let binary = binary::sampler_binary()?;
        let output = Command::new(&binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| HarnessError::io(format!("running {}", binary.display()), e))?;
        Ok(CliOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Output of a one-shot CLI run.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Drop for SamplerProcess {
    fn drop(&mut self) {
        let context = self.workdir.path().display().to_string();
        self.process.dispose(&context);
    }
}

/// Fills in the keys the harness owns; keeps everything the test set.
fn complete_config(mut config: Value, storage_dir: &Path) -> Value {
    if !config.is_object() {
        config = json!({});
    }
    let root = config.as_object_mut().expect("object");
    let receiver = section(root, "receiver");
    receiver
        .entry("grpc_endpoint")
        .or_insert_with(|| json!("127.0.0.1:0"));
    receiver
        .entry("http_endpoint")
        .or_insert_with(|| json!("127.0.0.1:0"));
    let telemetry = section(root, "telemetry");
    telemetry
        .entry("admin_endpoint")
        .or_insert_with(|| json!("127.0.0.1:0"));
    telemetry
        .entry("log_level")
        .or_insert_with(|| json!("info"));
    section(root, "sampler")
        .entry("storage_dir")
        .or_insert_with(|| json!(storage_dir.to_string_lossy()));
    config
}

fn section<'a>(
    root: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> &'a mut serde_json::Map<String, Value> {
    let entry = root.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("object")
}

/// Where the config sends file output: `exporter.file.path`, or the default
/// `<storage_dir>/export.jsonl` when no exporter is configured.
fn export_path_of(config: &Value, storage_dir: &Path) -> Option<PathBuf> {
    match config.get("exporter") {
        None => Some(storage_dir.join("export.jsonl")),
        Some(exporter) => exporter
            .get("file")
            .and_then(|f| f.get("path"))
            .and_then(Value::as_str)
            .map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gets_local_endpoints_and_storage_but_keeps_test_values() {
        let storage = Path::new("/tmp/s");
        let config = complete_config(
            json!({"sampler": {"decision_wait": "1s"}, "receiver": {"max_request_bytes": 10}}),
            storage,
        );
        assert_eq!(config["sampler"]["storage_dir"], "/tmp/s");
        assert_eq!(config["sampler"]["decision_wait"], "1s");
        assert_eq!(config["receiver"]["grpc_endpoint"], "127.0.0.1:0");
        assert_eq!(config["receiver"]["max_request_bytes"], 10);
        assert_eq!(config["telemetry"]["admin_endpoint"], "127.0.0.1:0");
        assert_eq!(
            export_path_of(&config, storage),
            Some(PathBuf::from("/tmp/s/export.jsonl"))
        );
        let with_sink = json!({"exporter": {"otlp": {"endpoint": "http://127.0.0.1:1"}}});
        assert_eq!(export_path_of(&with_sink, storage), None);
    }
}
