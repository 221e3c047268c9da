//! A product process (`otel-tail-sampler` or `otel-tail-router`) started from a
//! config file: spawn, read the start-up banner for the bound addresses, wait for
//! `/readyz`, signal, crash, restart, scrape `/metrics`. [`crate::SamplerProcess`] and
//! [`crate::RouterProcess`] add what is particular to each binary.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics_text::MetricsSnapshot;
use crate::wait::poll_until;
use crate::{HarnessError, http_client};

/// How long a start may take from spawn to a ready `/readyz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The addresses a started process printed in its banner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    /// OTLP/gRPC receiver.
    pub grpc: SocketAddr,
    /// OTLP/HTTP receiver.
    pub http: SocketAddr,
    /// Admin HTTP (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// Gossip (UDP) socket, in cluster mode.
    pub gossip: Option<SocketAddr>,
    /// Forward endpoint of a sampler in cluster mode (advertised address).
    pub forward: Option<SocketAddr>,
}

/// A child process owned by a test. Killed (`kill -9`) when dropped; when the test is
/// panicking its output is printed first, so failures come with the process's own
/// account of what happened.
pub(crate) struct NodeProcess {
    /// Executable name, for messages.
    name: &'static str,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    addrs: ListenAddrs,
}

impl NodeProcess {
    /// A process of `binary` (called `name` in messages) run with `--config
    /// config_path`, stderr appended to `log_path`. Not started yet.
    pub(crate) fn new(
        name: &'static str,
        binary: PathBuf,
        config_path: PathBuf,
        log_path: PathBuf,
    ) -> Self {
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            name,
            binary,
            config_path,
            log_path,
            child: None,
            stdout_lines: Arc::default(),
            addrs: ListenAddrs {
                grpc: unbound,
                http: unbound,
                admin: unbound,
                gossip: None,
                forward: None,
            },
        }
    }

    /// Spawns the process, parses its banner and waits until `/readyz` answers 200.
    pub(crate) async fn spawn_and_wait_ready(&mut self) -> Result<(), HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("opening the {} log", self.name), e))?;
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
        let first_line = self.stdout_lines().len();
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
        while banner.addrs().is_none() {
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
        }
        let admin = banner.addrs().expect("complete banner").admin;
        let url = format!("http://{admin}/readyz");
        let ready = poll_until("/readyz to return 200", START_TIMEOUT, || async {
            match http_client::get(&url).await {
                Ok(r) if r.status.is_success() => Ok(Some(())),
                _ => Ok(None),
            }
        })
        .await;
        ready.map_err(|e| self.startup_error(e.to_string()))?;
        // The banner is printed at once; by now every line of it has been read, the
        // cluster lines that may follow the admin line included.
        let mut banner = BannerParser::default();
        for line in &self.stdout_lines()[first_line..] {
            banner.push(line);
        }
        self.addrs = banner.addrs().expect("complete banner");
        Ok(())
    }

    fn startup_error(&mut self, reason: String) -> HarnessError {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        HarnessError::Startup {
            binary: self.name.to_string(),
            reason,
            log: self.log(),
        }
    }

    /// The addresses from the latest banner.
    pub(crate) fn addrs(&self) -> ListenAddrs {
        self.addrs
    }

    /// The process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: no chance to flush anything.
    pub(crate) fn kill9(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .map_err(|e| HarnessError::io(format!("killing {}", self.name), e))?;
            child
                .wait()
                .map_err(|e| HarnessError::io(format!("reaping {}", self.name), e))?;
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting for the exit.
    pub(crate) fn signal_term(&self) -> Result<(), HarnessError> {
        self.signal("TERM")
    }

    /// Sends the signal named `name` (as `kill -<name>` spells it, e.g. `HUP`).
    pub(crate) fn signal(&self, name: &str) -> Result<(), HarnessError> {
        let what = format!("kill -{name}");
        let pid = self
            .pid()
            .ok_or_else(|| HarnessError::io(&what, std::io::Error::other("not running")))?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .map_err(|e| HarnessError::io(&what, e))?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::io(
                &what,
                std::io::Error::other(format!("exited with {status}")),
            ))
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub(crate) async fn terminate(
        &mut self,
        timeout: Duration,
    ) -> Result<ExitStatus, HarnessError> {
        self.signal_term()?;
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<ExitStatus, HarnessError> {
        let name = self.name;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| HarnessError::io("waiting", std::io::Error::other("not running")))?;
        let status = poll_until(&format!("{name} to exit"), timeout, || {
            let result = child.try_wait();
            async move { result.map_err(|e| HarnessError::io(format!("waiting for {name}"), e)) }
        })
        .await?;
        self.child = None;
        Ok(status)
    }

    /// Everything the process printed (stdout lines, then stderr) so far.
    pub(crate) fn log(&self) -> String {
        let stdout = self
            .stdout_lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        format!("[stdout]\n{stdout}\n[stderr]\n{stderr}")
    }

    /// Lines printed on stdout so far (the banners among them).
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout_lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Scrapes `/metrics`.
    pub(crate) async fn metrics(&self) -> Result<MetricsSnapshot, HarnessError> {
        let url = format!("http://{}/metrics", self.addrs.admin);
        let response = http_client::get(&url).await?;
        if !response.status.is_success() {
            return Err(HarnessError::Http {
                url,
                message: format!("status {}", response.status),
            });
        }
        Ok(MetricsSnapshot::parse(&response.text()))
    }

    /// On drop: prints the last lines of output if the test is failing, then kills.
    pub(crate) fn dispose(&mut self, context: &str) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} output ({context}) ---\n{}\n--- end {} output ---",
                self.name,
                tail(&self.log(), 200),
                self.name
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

/// Collects the `listening on ADDR` lines of a start-up banner.
#[derive(Debug, Default)]
pub struct BannerParser {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    gossip: Option<SocketAddr>,
    forward: Option<SocketAddr>,
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
        let slot = if label.contains("grpc") {
            &mut self.grpc
        } else if label.contains("http") {
            &mut self.http
        } else if label.contains("admin") {
            &mut self.admin
        } else if label.contains("gossip") {
            &mut self.gossip
        } else if label.contains("forward") {
            &mut self.forward
        } else {
            return;
        };
        *slot = Some(addr);
    }

    /// The addresses, once the three every binary prints (receivers and admin) were seen.
    pub fn addrs(&self) -> Option<ListenAddrs> {
        Some(ListenAddrs {
            grpc: self.grpc?,
            http: self.http?,
            admin: self.admin?,
            gossip: self.gossip,
            forward: self.forward,
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
        assert_eq!((addrs.gossip, addrs.forward), (None, None));
    }

    #[test]
    fn banner_parser_reads_cluster_listeners() {
        let mut p = BannerParser::default();
        for line in [
            "  OTLP/gRPC  listening on 127.0.0.1:41001",
            "  OTLP/HTTP  listening on 127.0.0.1:41002",
            "  admin      listening on 127.0.0.1:41003  (/metrics /healthz /readyz)",
            "  forward    listening on 127.0.0.1:41004",
            "  gossip     listening on 127.0.0.1:41005  (node s-0)",
        ] {
            p.push(line);
        }
        let addrs = p.addrs().expect("complete");
        assert_eq!(addrs.forward.map(|a| a.port()), Some(41004));
        assert_eq!(addrs.gossip.map(|a| a.port()), Some(41005));
    }
}
