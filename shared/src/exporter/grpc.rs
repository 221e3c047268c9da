//! OTLP/gRPC exporter (`exporter.otlp`).
//!
//! One tonic [`Channel`] per exporter, created on first use and connecting lazily, so start-up
//! does not wait for (or fail on) an unreachable downstream; tonic reconnects by itself.
//! Failures are classified per the OTLP spec: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable, RESOURCE_EXHAUSTED only when the
//! server attached a `RetryInfo` (it is then throttling, not refusing); everything else is
//! permanent. The server's `RetryInfo` delay is passed on to the caller's backoff.
//!
//! TLS is not built in (it would add a TLS stack to every binary): an `https://` endpoint,
//! or a bare `host:port` without `tls.insecure: true`, is refused at construction with an
//! error saying so. `http://host:port` means plaintext, as in the Collector.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{ExportError, ExportRequest, ExporterBuildError, record_partial_rejection};
use crate::config::{Compression, OtlpGrpcExporterConfig};

const ENDPOINT_KEY: &str = "exporter.otlp.endpoint";
const HEADERS_KEY: &str = "exporter.otlp.headers";
const NAME: &str = "otlp";

/// Sends export requests to an OTLP/gRPC receiver.
#[derive(Debug)]
pub struct GrpcExporter {
    /// Validated endpoint the channel is built from.
    endpoint: Endpoint,
    /// The channel, created on the first export (building one needs a running runtime).
    channel: OnceLock<Channel>,
    /// Metadata added to every request (`exporter.otlp.headers`).
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Whether requests are gzip-compressed.
    gzip: bool,
    /// Per-request deadline, also sent to the server as `grpc-timeout`.
    timeout: Duration,
}

impl GrpcExporter {
    /// Validates `config` and prepares a lazily connecting channel.
    pub fn new(config: &OtlpGrpcExporterConfig) -> Result<GrpcExporter, ExporterBuildError> {
        let uri = endpoint_uri(&config.endpoint, config.tls.insecure)?;
        let endpoint =
            Endpoint::from_shared(uri).map_err(|e| ExporterBuildError::InvalidEndpoint {
                key: ENDPOINT_KEY,
                endpoint: config.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let endpoint = endpoint
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let invalid = |reason: String| ExporterBuildError::InvalidHeader {
                    key: HEADERS_KEY,
                    name: name.clone(),
                    reason,
                };
                let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| invalid(e.to_string()))?;
                let value = AsciiMetadataValue::try_from(value.as_str())
                    .map_err(|e| invalid(e.to_string()))?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, ExporterBuildError>>()?;
        Ok(GrpcExporter {
            endpoint,
            channel: OnceLock::new(),
            headers,
            gzip: config.compression == Compression::Gzip,
            timeout: config.timeout,
        })
    }

    /// The URI requests go to (`http://host:port`).
    pub fn endpoint(&self) -> String {
        self.endpoint
            .uri()
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    }

    /// Sends one request; see the module docs for how failures are classified.
    pub async fn export(&self, request: &ExportRequest) -> Result<(), ExportError> {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        let signal = request.signal();
        let (rejected, message) = match request {
            ExportRequest::Traces(r) => {
                let mut client = self.compressed(
                    TraceServiceClient::new(channel),
                    TraceServiceClient::send_compressed,
                );
                let response = client
                    .export(self.request(r.clone()))
                    .await
                    .map_err(classify_status)?;
                let partial = response.into_inner().partial_success.unwrap_or_default();
                (partial.rejected_spans, partial.error_message)
            }
            ExportRequest::Logs(r) => {
                let mut client = self.compressed(
                    LogsServiceClient::new(channel),
                    LogsServiceClient::send_compressed,
                );
                let response = client
                    .export(self.request(r.clone()))
                    .await
                    .map_err(classify_status)?;
                let partial = response.into_inner().partial_success.unwrap_or_default();
                (partial.rejected_log_records, partial.error_message)
            }
            ExportRequest::Metrics(r) => {
                let mut client = self.compressed(
                    MetricsServiceClient::new(channel),
                    MetricsServiceClient::send_compressed,
                );
                let response = client
                    .export(self.request(r.clone()))
                    .await
                    .map_err(classify_status)?;
                let partial = response.into_inner().partial_success.unwrap_or_default();
                (partial.rejected_data_points, partial.error_message)
            }
        };
        record_partial_rejection(NAME, signal, rejected, &message);
        Ok(())
    }

    fn compressed<C>(&self, client: C, send_compressed: fn(C, CompressionEncoding) -> C) -> C {
        if self.gzip {
            send_compressed(client, CompressionEncoding::Gzip)
        } else {
            client
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let metadata = request.metadata_mut();
        for (key, value) in &self.headers {
            metadata.insert(key.clone(), value.clone());
        }
        request
    }
}

/// Turns the configured endpoint into an `http://` URI, refusing what needs TLS.
fn endpoint_uri(endpoint: &str, insecure: bool) -> Result<String, ExporterBuildError> {
    let tls_unsupported = || ExporterBuildError::TlsUnsupported {
        key: ENDPOINT_KEY,
        endpoint: endpoint.to_owned(),
    };
    if endpoint.starts_with("https://") {
        return Err(tls_unsupported());
    }
    if endpoint.starts_with("http://") {
        return Ok(endpoint.to_owned());
    }
    if endpoint.contains("://") {
        return Err(ExporterBuildError::InvalidEndpoint {
            key: ENDPOINT_KEY,
            endpoint: endpoint.to_owned(),
            reason: "expected host:port or an http:// URL".to_owned(),
        });
    }
    if !insecure {
        return Err(tls_unsupported());
    }
    Ok(format!("http://{endpoint}"))
}

/// Classifies a failed call per the OTLP/gRPC spec.
pub fn classify_status(status: Status) -> ExportError {
    let retry_info = status.get_details_retry_info();
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_info.is_some(),
        _ => false,
    };
    let message = format!("{}: {}", status.code(), status.message());
    if retryable {
        ExportError::Retryable {
            retry_after: retry_info.and_then(|info| info.retry_delay),
            message,
        }
    } else {
        ExportError::Permanent(message)
    }
}
