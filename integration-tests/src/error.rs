//! The one error type of the harness, so tests get a message saying what failed
//! and, for sampler and router failures, what the process logged.

use std::path::PathBuf;

/// Something the harness could not do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `cargo build` of the sampler or router binary failed or could not be run.
    #[error("building a product binary failed: {0}")]
    Build(String),
    /// A sampler or router did not start (exited, or printed no banner in time).
    #[error("{binary} did not start: {reason}\n--- {binary} output ---\n{log}")]
    Startup {
        /// Which binary (`otel-tail-sampler`, `otel-tail-router`).
        binary: String,
        /// Why the start is considered failed.
        reason: String,
        /// What the process printed (stdout and stderr).
        log: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        waited: std::time::Duration,
    },
    /// An HTTP request to the sampler or sink failed at the transport level.
    #[error("HTTP request to {url} failed: {message}")]
    Http {
        /// The request URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A gRPC channel could not be established.
    #[error("gRPC connection to {endpoint} failed: {source}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A line of an OTLP JSON export file did not decode.
    #[error("{path}:{line}: not an OTLP JSON export request: {message}")]
    ExportLine {
        /// The file read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The decoding error.
        message: String,
    },
    /// An OpenTelemetry SDK pipeline could not be built or flushed.
    #[error("OpenTelemetry SDK: {0}")]
    Sdk(String),
    /// A `/proc` file did not have the expected shape.
    #[error("reading /proc for pid {pid}: {message}")]
    Proc {
        /// The process inspected.
        pid: u32,
        /// What was missing or malformed.
        message: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
