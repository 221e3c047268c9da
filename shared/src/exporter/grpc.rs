//! OTLP/gRPC exporter (`exporter.otlp`).
//!
//! One tonic [`Channel`] per exporter, created on first use and connecting lazily, so start-up
//! does not wait for (or fail on) an unreachable downstream; tonic reconnects by itself.
//! Failures are classified per the OTLP spec: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable, RESOURCE_EXHAUSTED only when the
//! server attached a `RetryInfo` (it is then throttling, not refusing); everything else is
//! permanent. The server's `RetryInfo` delay is passed on to the caller's backoff.
//!
//! As in the Collector, `http://host:port` (or a bare `host:port` with `tls.insecure: true`)
//! means plaintext; `https://host:port` or a bare `host:port` means TLS (rustls, ALPN `h2`),
//! configured by `exporter.otlp.tls` ([`crate::tls`]).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{ExportError, ExportRequest, ExporterBuildError, record_partial_rejection};
use crate::config::{Compression, OtlpGrpcExporterConfig};
use crate::forward::export_unary;
use crate::otlp::Signal;

const ENDPOINT_KEY: &str = "exporter.otlp.endpoint";
const HEADERS_KEY: &str = "exporter.otlp.headers";
const TLS_KEY: &str = "exporter.otlp.tls";
const NAME: &str = "otlp";

/// Sends export requests to an OTLP/gRPC receiver.
#[derive(Debug)]
pub struct GrpcExporter {
    /// Validated endpoint the channel is built from.
    endpoint: Endpoint,
    /// TLS settings for an `https://` endpoint (`None`: plaintext).
    tls: Option<TlsConnect>,
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
        let uri = endpoint_uri(&config.endpoint, config.tls.insecure);
        let tls = if uri.starts_with("https://") {
            let client = crate::tls::client_config(&config.tls, TLS_KEY).map_err(|e| {
                ExporterBuildError::Tls {
                    key: e.key,
                    reason: e.reason,
                }
            })?;
            Some(TlsConnect {
                client: std::sync::Arc::new(client),
                server_name: config.tls.server_name.clone(),
            })
        } else {
            None
        };
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
        let resolved = crate::config::resolve_headers(
            &config.headers,
            &config.headers_from_files,
            "exporter.otlp.headers_from_files",
        )
        .map_err(|e| ExporterBuildError::InvalidHeader {
            key: HEADERS_KEY,
            name: String::new(),
            reason: e.to_string(),
        })?;
        let headers = resolved
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
            tls,
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
        self.export_encoded(request.signal(), request.encode_to_bytes())
            .await
    }

    /// Sends `body`, an export request of `signal` already encoded as OTLP protobuf, as
    /// it is: what a sampler's export queue stores, so kept data is not decoded, copied
    /// and encoded again on its way out. Failures are classified as [`Self::export`]'s.
    pub async fn export_encoded(&self, signal: Signal, body: Bytes) -> Result<(), ExportError> {
        let channel = self.channel.get_or_init(|| self.connect()).clone();
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| classify_status(Status::unknown(format!("service was not ready: {e}"))))?;
        let (rejected, message) = export_unary(&mut grpc, signal, self.request(body))
            .await
            .map_err(classify_status)?;
        record_partial_rejection(NAME, signal, rejected, &message);
        Ok(())
    }

    fn request(&self, message: Bytes) -> tonic::Request<Bytes> {
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
/// The URI to connect to: `http://` and `https://` as given; a bare `host:port` is
/// plaintext with `tls.insecure`, else TLS (the Collector's rule).
fn endpoint_uri(endpoint: &str, insecure: bool) -> String {
    if endpoint.contains("://") {
        return endpoint.to_owned();
    }
    if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// What a TLS channel is made with.
#[derive(Debug, Clone)]
struct TlsConnect {
    client: std::sync::Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl GrpcExporter {
    /// A lazily connecting channel: plaintext, or TLS through rustls.
    fn connect(&self) -> Channel {
        let Some(tls) = &self.tls else {
            return self.endpoint.connect_lazy();
        };
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls.client).clone())
            .https_only();
        let builder = match tls
            .server_name
            .as_deref()
            .and_then(|name| rustls::pki_types::ServerName::try_from(name.to_owned()).ok())
        {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http2().wrap_connector(http);
        self.endpoint.connect_with_connector_lazy(connector)
    }
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
