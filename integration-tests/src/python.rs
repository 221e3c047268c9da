//! The OpenTelemetry Python SDK as a sender: `integration-tests/python/send_traces.py`, run
//! on the blocking pool. Tests add what their set-up needs to the command (TLS and header
//! variables the SDK reads) before running it.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::HarnessError;
use crate::binary::workspace_root;

/// The trace ids the script sent, by whether the trace holds an ERROR span.
#[derive(Debug, Clone, Default)]
pub struct SentTraces {
    /// Traces with an ERROR span (the even-numbered ones).
    pub error: BTreeSet<String>,
    /// The others.
    pub ok: BTreeSet<String>,
}

impl SentTraces {
    /// Every trace id sent.
    pub fn all(&self) -> BTreeSet<String> {
        self.error.union(&self.ok).cloned().collect()
    }
}

/// The sender sending `traces` traces over `transport` (`http` or `grpc`) to `endpoint`
/// (`http://…`, or `https://…` for TLS).
pub fn sender(transport: &str, endpoint: &str, traces: usize) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(workspace_root().join("integration-tests/python/send_traces.py"))
        .args([transport, endpoint, &traces.to_string()]);
    command
}

/// Runs `command` (see [`sender`]) and returns what it sent; an error when it failed.
pub async fn send(mut command: Command) -> Result<SentTraces, HarnessError> {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| HarnessError::Sdk(format!("python sender task: {e}")))?
        .map_err(|e| HarnessError::Sdk(format!("running python3: {e}")))?;
    if !output.status.success() {
        return Err(HarnessError::Sdk(format!(
            "python sender failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let sent: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| HarnessError::Sdk(format!("python sender printed no JSON: {e}")))?;
    let ids = |key: &str| -> Result<BTreeSet<String>, HarnessError> {
        sent[key]
            .as_array()
            .ok_or_else(|| HarnessError::Sdk(format!("no `{key}` list in {sent}")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| HarnessError::Sdk(format!("not a trace id: {v}")))
            })
            .collect()
    };
    Ok(SentTraces {
        error: ids("error")?,
        ok: ids("ok")?,
    })
}
