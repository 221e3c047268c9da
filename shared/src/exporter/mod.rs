//! Clients that deliver one OTLP export request downstream: OTLP/gRPC ([`grpc`]),
//! OTLP/HTTP ([`http`]) and an OTLP JSON lines file ([`file`]).
//!
//! An exporter only sends; it classifies failures as retryable (with the server's
//! RetryInfo / `Retry-After` when given) or permanent. Queueing, batching and backoff are the
//! caller's (the sampler's disk-backed queue), so the same clients serve the router later.

pub mod file;
pub mod grpc;
pub mod http;

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::otlp::Signal;

/// One export request of any signal.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportRequest {
    /// Spans.
    Traces(ExportTraceServiceRequest),
    /// Log records.
    Logs(ExportLogsServiceRequest),
    /// Metric data points.
    Metrics(ExportMetricsServiceRequest),
}

impl ExportRequest {
    /// The request's signal.
    pub fn signal(&self) -> Signal {
        match self {
            ExportRequest::Traces(_) => Signal::Traces,
            ExportRequest::Logs(_) => Signal::Logs,
            ExportRequest::Metrics(_) => Signal::Metrics,
        }
    }

    /// The request encoded as OTLP protobuf, what the OTLP exporters send.
    pub fn encode_to_bytes(&self) -> Bytes {
        use prost::Message;
        Bytes::from(match self {
            ExportRequest::Traces(r) => r.encode_to_vec(),
            ExportRequest::Logs(r) => r.encode_to_vec(),
            ExportRequest::Metrics(r) => r.encode_to_vec(),
        })
    }

    /// Whether the request holds no resource group (nothing worth sending).
    pub fn is_empty(&self) -> bool {
        match self {
            ExportRequest::Traces(r) => r.resource_spans.is_empty(),
            ExportRequest::Logs(r) => r.resource_logs.is_empty(),
            ExportRequest::Metrics(r) => r.resource_metrics.is_empty(),
        }
    }

    /// Spans, log records or data points in the request.
    pub fn item_count(&self) -> usize {
        match self {
            ExportRequest::Traces(r) => crate::otlp::span_count(r),
            ExportRequest::Logs(r) => crate::otlp::log_count(r),
            ExportRequest::Metrics(r) => crate::otlp::data_point_count(r),
        }
    }
}

/// Why an export failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExportError {
    /// Worth trying again (network error, throttling, 5xx, UNAVAILABLE...).
    #[error("retryable export failure: {message}")]
    Retryable {
        /// Delay the server asked for, if any.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// The receiver refused the data for good (4xx, INVALID_ARGUMENT...).
    #[error("permanent export failure: {0}")]
    Permanent(String),
}

/// Why an exporter could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ExporterBuildError {
    /// The endpoint is not a usable address.
    #[error("invalid `{key}` {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// Config key of the endpoint.
        key: &'static str,
        /// The configured value.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings cannot be used (unreadable certificate, no roots...).
    #[error("invalid `{key}`: {reason}")]
    Tls {
        /// Config key at fault.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A configured header name or value cannot be sent.
    #[error("invalid header {name:?} in `{key}`: {reason}")]
    InvalidHeader {
        /// Config key of the header map.
        key: &'static str,
        /// The header name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The output file (or its directory) cannot be created.
    #[error("cannot open export file {path}: {source}")]
    File {
        /// The configured path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One configured downstream: what the export queue sends each request to.
#[derive(Debug)]
pub enum Exporter {
    /// `exporter.otlp`.
    Grpc(grpc::GrpcExporter),
    /// `exporter.otlphttp`.
    Http(http::HttpExporter),
    /// `exporter.file`.
    File(file::FileExporter),
}

impl Exporter {
    /// Builds every configured exporter, in the order otlp, otlphttp, file. With none
    /// configured, a single file exporter writing to `default_file`, so a bare start works.
    pub fn from_config(
        config: &crate::config::ExporterConfig,
        default_file: &std::path::Path,
    ) -> Result<Vec<Exporter>, ExporterBuildError> {
        let mut exporters = Vec::new();
        if let Some(otlp) = &config.otlp {
            exporters.push(Exporter::Grpc(grpc::GrpcExporter::new(otlp)?));
        }
        if let Some(otlphttp) = &config.otlphttp {
            exporters.push(Exporter::Http(http::HttpExporter::new(otlphttp)?));
        }
        if let Some(file) = &config.file {
            exporters.push(Exporter::File(file::FileExporter::open(&file.path)?));
        }
        if exporters.is_empty() {
            exporters.push(Exporter::File(file::FileExporter::open(default_file)?));
        }
        Ok(exporters)
    }

    /// Label value in metrics and logs: the config key (`otlp`, `otlphttp`, `file`).
    pub fn name(&self) -> &'static str {
        match self {
            Exporter::Grpc(_) => "otlp",
            Exporter::Http(_) => "otlphttp",
            Exporter::File(_) => "file",
        }
    }

    /// One line for the start-up banner, e.g. `otlp grpc http://host:4317` or `file /path`.
    pub fn describe(&self) -> String {
        match self {
            Exporter::Grpc(e) => format!("otlp grpc {}", e.endpoint()),
            Exporter::Http(e) => format!("otlphttp {}", e.endpoint()),
            Exporter::File(e) => format!("file {}", e.path().display()),
        }
    }

    /// Sends one request downstream.
    pub async fn export(&self, request: &ExportRequest) -> Result<(), ExportError> {
        match self {
            Exporter::Grpc(e) => e.export(request).await,
            Exporter::Http(e) => e.export(request).await,
            Exporter::File(e) => e.export(request).await,
        }
    }

    /// Whether this exporter sends requests as encoded protobuf bytes
    /// ([`Exporter::export_encoded`]), so a caller holding them need not decode them.
    pub fn takes_encoded(&self) -> bool {
        matches!(self, Exporter::Grpc(_) | Exporter::Http(_))
    }

    /// Sends `body`, an OTLP protobuf export request of `signal`, as it is; only for an
    /// exporter that [`Exporter::takes_encoded`] (the others write a decoded request).
    pub async fn export_encoded(&self, signal: Signal, body: Bytes) -> Result<(), ExportError> {
        match self {
            Exporter::Grpc(e) => e.export_encoded(signal, body).await,
            Exporter::Http(e) => e.export_encoded(signal, body).await,
            Exporter::File(_) => Err(ExportError::Permanent(format!(
                "the {} exporter does not send encoded requests",
                self.name()
            ))),
        }
    }
}

/// Counts items a downstream refused through `partial_success` and logs its message.
/// The request as a whole succeeded, so nothing is retried.
fn record_partial_rejection(exporter: &'static str, signal: Signal, rejected: i64, message: &str) {
    if rejected <= 0 {
        if !message.is_empty() {
            tracing::warn!(
                exporter,
                signal = signal.as_str(),
                message,
                "downstream warning on export"
            );
        }
        return;
    }
    tracing::warn!(
        exporter,
        signal = signal.as_str(),
        rejected,
        message,
        "downstream rejected part of an export request"
    );
    metrics::counter!(
        crate::telemetry::names::EXPORTED_ITEMS,
        "signal" => signal.as_str(),
        "exporter" => exporter,
        "outcome" => "rejected"
    )
    .increment(rejected as u64);
}

#[cfg(test)]
mod tests;
