//! A running `otel-tail-sampler` process: start with a temp config and storage,
//! parse the banner, wait for `/readyz`, signal, crash, restart, inspect.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::export::ExportedData;
use crate::metrics_text::MetricsSnapshot;
use crate::wait::poll_until;
use crate::{HarnessError, binary, http_client};

/// How long a start may take from spawn to a ready `/readyz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The addresses a started sampler printed in its banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    /// OTLP/gRPC receiver.
    pub grpc: SocketAddr,
    /// OTLP/HTTP receiver.
    pub http: SocketAddr,
    /// Admin HTTP (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
}

/// A sampler process owned by a test. Killed (`kill -9`) when dropped; when the
/// test is panicking its output is printed first, so failures come with the
/// sampler's own account of what happened.
pub struct SamplerProcess {
    child: Option<Child>,
    workdir: TempDir,
    config_path: PathBuf,
    storage_dir: PathBuf,
    export_path: Option<PathBuf>,
    log_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    addrs: ListenAddrs,
    binary: PathBuf,
}

impl SamplerProcess {
    /// Starts a sampler with `config` (the YAML document as a JSON value; JSON is
    /// YAML). The harness fills in what a test should not choose: receivers and the
    /// admin endpoint on `127.0.0.1:0`, `sampler.storage_dir` in a fresh temp dir,
    /// `telemetry.log_level: info`. With no `exporter` key the sampler's default
    /// applies and output is read from `<storage_dir>/export.jsonl`.
    pub async fn start(config: Value) -> Result<Self, HarnessError> {
        let binary = binary::sampler_binary()?;
        let workdir = tempfile::Builder::new()
            .prefix("otel-tail-it-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the sampler temp dir", e))?;
        let storage_dir = workdir.path().join("storage");
        let config = complete_config(config, &storage_dir);
        let export_path = export_path_of(&config, &storage_dir);
        let config_path = workdir.path().join("config.yaml");
        let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
        std::fs::write(&config_path, text)
            .map_err(|e| HarnessError::io("writing the sampler config", e))?;
        let log_path = workdir.path().join("sampler.log");
        let mut process = Self {
            child: None,
            workdir,
            config_path,
            storage_dir,
            export_path,
            log_path,
            stdout_lines: Arc::default(),
            addrs: ListenAddrs {
                grpc: ([127, 0, 0, 1], 0).into(),
                http: ([127, 0, 0, 1], 0).into(),
                admin: ([127, 0, 0, 1], 0).into(),
            },
            binary,
        };
        process.spawn_and_wait_ready().await?;
        Ok(process)
    }

    /// Starts the sampler again with the same config and storage (after
    /// [`Self::kill9`] or [`Self::terminate`]). Ports are chosen afresh.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            self.kill9()?;
        }
        self.spawn_and_wait_ready().await
    }

    async fn spawn_and_wait_ready(&mut self) -> Result<(), HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io("opening the sampler log", e))?;
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning {}", self.binary.display()), e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        self.child = Some(child);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let lines = Arc::clone(&self.stdout_lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("stdout lines lock").push(line.clone());
                // The receiver is gone once the banner is parsed; keep draining.
                let _ = tx.send(line);
            }
        });

        let mut banner = BannerParser::default();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let addrs = loop {
            if let Some(addrs) = banner.addrs() {
                break addrs;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => banner.push(&line),
                Ok(None) => {
                    let status = self.wait_exit(Duration::from_secs(5)).await.ok();
                    return Err(self.startup_error(format!(
                        "stdout closed before the banner was complete (exit: {status:?})"
                    )));
                }
                Err(_) => {
                    return Err(
                        self.startup_error(format!("no complete banner within {START_TIMEOUT:?}"))
                    );
                }
            }
        };
        self.addrs = addrs;
        let url = format!("http://{}/readyz", addrs.admin);
        let ready = poll_until("/readyz to return 200", START_TIMEOUT, || async {
            match http_client::get(&url).await {
                Ok(r) if r.status.is_success() => Ok(Some(())),
                _ => Ok(None),
            }
        })
        .await;
        ready.map_err(|e| self.startup_error(e.to_string()))
    }

    fn startup_error(&mut self, reason: String) -> HarnessError {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        HarnessError::Startup {
            reason,
            log: self.log(),
        }
    }

    /// The addresses from the latest banner.
    pub fn addrs(&self) -> ListenAddrs {
        self.addrs
    }

    /// `http://host:port` of the OTLP/gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.addrs.grpc)
    }

    /// `http://host:port` of the OTLP/HTTP receiver (append `/v1/traces` etc.).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.addrs.http)
    }

    /// `http://host:port` of the admin endpoint.
    pub fn admin_endpoint(&self) -> String {
        format!("http://{}", self.addrs.admin)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .map_err(|e| HarnessError::io("killing the sampler", e))?;
            child
                .wait()
                .map_err(|e| HarnessError::io("reaping the sampler", e))?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let pid = self
            .pid()
            .ok_or_else(|| HarnessError::io("SIGTERM", std::io::Error::other("not running")))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map_err(|e| HarnessError::io("running kill -TERM", e))?;
        if !status.success() {
            return Err(HarnessError::io(
                "kill -TERM",
                std::io::Error::other(format!("exited with {status}")),
            ));
        }
        self.wait_exit(timeout).await
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| HarnessError::io("waiting", std::io::Error::other("not running")))?;
        let status = poll_until("the sampler to exit", timeout, || {
            let result = child.try_wait();
            async move { result.map_err(|e| HarnessError::io("waiting for the sampler", e)) }
        })
        .await?;
        self.child = None;
        Ok(status)
    }

    /// Everything the sampler printed (stdout lines, then stderr) so far.
    pub fn log(&self) -> String {
        let stdout = self
            .stdout_lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        format!("[stdout]\n{stdout}\n[stderr]\n{stderr}")
    }

    /// Lines printed on stdout so far (the banner among them).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> Result<MetricsSnapshot, HarnessError> {
        let response = http_client::get(&format!("{}/metrics", self.admin_endpoint())).await?;
        if !response.status.is_success() {
            return Err(HarnessError::Http {
                url: "/metrics".into(),
                message: format!("status {}", response.status),
            });
        }
        Ok(MetricsSnapshot::parse(&response.text()))
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
        if std::thread::panicking() {
            eprintln!(
                "--- sampler output ({}) ---\n{}\n--- end sampler output ---",
                self.workdir.path().display(),
                tail(&self.log(), 200)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
    section(root, "sampler").insert("storage_dir".into(), json!(storage_dir.to_string_lossy()));
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

/// Collects the `listening on ADDR` lines of the start-up banner.
#[derive(Debug, Default)]
pub struct BannerParser {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl BannerParser {
    /// Feeds one stdout line; lines that are not listener lines are ignored.
    pub fn push(&mut self, line: &str) {
        let Some((label, rest)) = line.split_once("listening on") else {
            return;
        };
        let Some(addr) = rest
            .split_whitespace()
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return;
        };
        let label = label.trim().to_ascii_lowercase();
        if label.contains("grpc") {
            self.grpc = Some(addr);
        } else if label.contains("http") {
            self.http = Some(addr);
        } else if label.contains("admin") {
            self.admin = Some(addr);
        }
    }

    /// All three addresses, once seen.
    pub fn addrs(&self) -> Option<ListenAddrs> {
        Some(ListenAddrs {
            grpc: self.grpc?,
            http: self.http?,
            admin: self.admin?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_parser_reads_the_three_listeners() {
        let mut p = BannerParser::default();
        for line in [
            "otel-tail-sampler 0.1.0 started",
            "  OTLP/gRPC  listening on 127.0.0.1:41001",
            "  OTLP/HTTP  listening on 127.0.0.1:41002",
        ] {
            p.push(line);
        }
        assert!(p.addrs().is_none());
        p.push("  admin      listening on 127.0.0.1:41003  (/metrics /healthz /readyz)");
        p.push("  buffer     /tmp/x");
        let addrs = p.addrs().expect("complete");
        assert_eq!(addrs.grpc.port(), 41001);
        assert_eq!(addrs.http.port(), 41002);
        assert_eq!(addrs.admin.port(), 41003);
    }

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
