//! OTLP/HTTP exporter (`exporter.otlphttp`): protobuf bodies POSTed to
//! `<endpoint>/v1/traces`, `/v1/logs` and `/v1/metrics`.
//!
//! `http://` is plaintext; `https://` is TLS (rustls), configured by `exporter.otlphttp.tls`
//! ([`crate::tls`]). Failures are classified per
//! the OTLP/HTTP spec: 429, 502, 503 and 504 are retryable, honouring `Retry-After` (seconds
//! or an HTTP-date); connection errors and timeouts are retryable; any other non-2xx status
//! is permanent.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::{ExportError, ExportRequest, ExporterBuildError, record_partial_rejection};
use crate::config::{Compression, OtlpHttpExporterConfig};
use crate::otlp::Signal;

const ENDPOINT_KEY: &str = "exporter.otlphttp.endpoint";
const TLS_KEY: &str = "exporter.otlphttp.tls";
const HEADERS_KEY: &str = "exporter.otlphttp.headers";
const NAME: &str = "otlphttp";
/// Bytes of a response body read at most (for `partial_success` and error messages).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Sends export requests to an OTLP/HTTP receiver.
#[derive(Debug)]
pub struct HttpExporter {
    /// The configured base URL, for the banner.
    endpoint: String,
    /// Full URIs per signal.
    traces_uri: Uri,
    logs_uri: Uri,
    metrics_uri: Uri,
    /// Pooled HTTP/1.1 client (TLS for `https://` endpoints).
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Extra headers (`exporter.otlphttp.headers`).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether bodies are gzip-compressed.
    gzip: bool,
    /// Deadline for one request, response body included.
    timeout: Duration,
}

impl HttpExporter {
    /// Validates `config` and builds the (not yet connected) client.
    pub fn new(config: &OtlpHttpExporterConfig) -> Result<HttpExporter, ExporterBuildError> {
        let base = config.endpoint.trim_end_matches('/');
        let https = base.starts_with("https://");
        if !(https || base.starts_with("http://")) {
            return Err(ExporterBuildError::InvalidEndpoint {
                key: ENDPOINT_KEY,
                endpoint: config.endpoint.clone(),
                reason: "must be an http:// or https:// URL".to_owned(),
            });
        }
        // Plaintext endpoints never use the TLS settings, so they are not loaded for them.
        let tls = if https {
            crate::tls::client_config(&config.tls, TLS_KEY).map_err(|e| {
                ExporterBuildError::Tls {
                    key: e.key,
                    reason: e.reason,
                }
            })?
        } else {
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ExporterBuildError::Tls {
                key: TLS_KEY.to_owned(),
                reason: e.to_string(),
            })?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let uri = |signal: Signal| {
            format!("{base}{}", signal.http_path())
                .parse::<Uri>()
                .map_err(|e| ExporterBuildError::InvalidEndpoint {
                    key: ENDPOINT_KEY,
                    endpoint: config.endpoint.clone(),
                    reason: e.to_string(),
                })
        };
        let resolved = crate::config::resolve_headers(
            &config.headers,
            &config.headers_from_files,
            "exporter.otlphttp.headers_from_files",
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
                let header =
                    HeaderName::try_from(name.as_str()).map_err(|e| invalid(e.to_string()))?;
                let value =
                    HeaderValue::try_from(value.as_str()).map_err(|e| invalid(e.to_string()))?;
                Ok((header, value))
            })
            .collect::<Result<Vec<_>, ExporterBuildError>>()?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match config
            .tls
            .server_name
            .as_deref()
            .and_then(|name| rustls::pki_types::ServerName::try_from(name.to_owned()).ok())
        {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        Ok(HttpExporter {
            endpoint: base.to_owned(),
            traces_uri: uri(Signal::Traces)?,
            logs_uri: uri(Signal::Logs)?,
            metrics_uri: uri(Signal::Metrics)?,
            client: Client::builder(TokioExecutor::new()).build(connector),
            headers,
            gzip: config.compression == Compression::Gzip,
            timeout: config.timeout,
        })
    }

    /// The configured base URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one request; see the module docs for how failures are classified.
    pub async fn export(&self, request: &ExportRequest) -> Result<(), ExportError> {
        self.export_encoded(request.signal(), request.encode_to_bytes())
            .await
    }

    /// Sends `body`, an export request of `signal` already encoded as OTLP protobuf, as
    /// it is (what a sampler's export queue stores); otherwise as [`Self::export`].
    pub async fn export_encoded(&self, signal: Signal, body: Bytes) -> Result<(), ExportError> {
        let uri = match signal {
            Signal::Traces => &self.traces_uri,
            Signal::Logs => &self.logs_uri,
            Signal::Metrics => &self.metrics_uri,
        };
        let body = if self.gzip {
            Bytes::from(gzip(&body))
        } else {
            body
        };
        let mut builder = http::Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        if self.gzip {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        let http_request = builder
            .body(Full::new(body))
            .map_err(|e| ExportError::Permanent(format!("cannot build request: {e}")))?;
        let (status, headers, body) = tokio::time::timeout(self.timeout, self.send(http_request))
            .await
            .map_err(|_| ExportError::Retryable {
                retry_after: None,
                message: format!("no response from {uri} within {:?}", self.timeout),
            })??;
        if status.is_success() {
            let (rejected, message) = partial_success(signal, &body);
            record_partial_rejection(NAME, signal, rejected, &message);
            return Ok(());
        }
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        Err(classify_response(status, retry_after, &body))
    }

    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ExportError> {
        let network = |e: &dyn std::fmt::Display| ExportError::Retryable {
            retry_after: None,
            message: format!("cannot reach {}: {e}", self.endpoint),
        };
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| network(&error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            // An oversized or cut-off body does not change what the status says.
            .unwrap_or_default();
        Ok((parts.status, parts.headers, body))
    }
}

/// Classifies a non-2xx response per the OTLP/HTTP spec.
fn classify_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ExportError {
    let detail = response_message(body);
    let message = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    match status.as_u16() {
        429 | 502 | 503 | 504 => ExportError::Retryable {
            retry_after,
            message,
        },
        _ => ExportError::Permanent(message),
    }
}

/// The message of a `google.rpc.Status` protobuf body, or the body as text.
fn response_message(body: &[u8]) -> String {
    if let Ok(status) = tonic_types::pb::Status::decode(body)
        && !status.message.is_empty()
    {
        return status.message;
    }
    String::from_utf8_lossy(&body[..body.len().min(512)])
        .trim()
        .to_owned()
}

/// `rejected_<items>` and `error_message` of a successful response's `partial_success`.
fn partial_success(signal: Signal, body: &[u8]) -> (i64, String) {
    let partial = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_spans, p.error_message)),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_log_records, p.error_message)),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_data_points, p.error_message)),
    };
    partial.unwrap_or_default()
}

/// Parses a `Retry-After` value: delay seconds or an HTTP-date (relative to `now`; a date
/// in the past means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(data)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// An error with its causes, for messages (`hyper_util`'s own display says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
