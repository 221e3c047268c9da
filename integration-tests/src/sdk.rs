//! Real OpenTelemetry SDK pipelines (`opentelemetry_sdk` + `opentelemetry-otlp`)
//! pointed at a sampler, the way an instrumented application would be configured.
//!
//! gRPC pipelines use the SDK's default batch processors (tonic needs only that the
//! exporter is built inside a Tokio runtime). The HTTP trace pipeline uses the Hyper
//! client, which must run on Tokio, so it uses the SDK's async-runtime batch
//! processor. Flush and shutdown block, so they run on Tokio's blocking pool.

use std::time::Duration;

use opentelemetry_otlp::{
    LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

use crate::HarnessError;

/// Which OTLP transport an SDK pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC (tonic), gzip-compressed.
    Grpc,
    /// OTLP/HTTP with binary protobuf (Hyper).
    Http,
}

/// Spans the SDK may hold before export; large so tests that create thousands of
/// spans quickly lose none in the client.
const QUEUE_SIZE: usize = 1 << 17;
/// Export timeout of every SDK exporter.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new("service.namespace", "it"))
        .build()
}

fn sdk_err(context: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Sdk(format!("{context}: {e}"))
}

/// A tracer provider exporting to the sampler whose receivers are at
/// `grpc_endpoint` / `http_endpoint` (`http://host:port`). Call inside a Tokio
/// multi-thread runtime.
pub fn tracer_provider(
    transport: Transport,
    grpc_endpoint: &str,
    http_endpoint: &str,
    service_name: &str,
) -> Result<SdkTracerProvider, HarnessError> {
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE_SIZE)
        .with_max_export_batch_size(512)
        .with_scheduled_delay(Duration::from_millis(100))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource(service_name));
    let provider = match transport {
        Transport::Grpc => {
            let exporter = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(grpc_endpoint)
                .with_compression(opentelemetry_otlp::Compression::Gzip)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| sdk_err("building the gRPC span exporter", e))?;
            builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
        }
        Transport::Http => {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{http_endpoint}/v1/traces"))
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| sdk_err("building the HTTP span exporter", e))?;
            builder.with_span_processor(
                opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .with_batch_config(batch)
                .build(),
            )
        }
    };
    Ok(provider.build())
}

/// A logger provider exporting over OTLP/gRPC to `grpc_endpoint`.
pub fn logger_provider(
    grpc_endpoint: &str,
    service_name: &str,
) -> Result<SdkLoggerProvider, HarnessError> {
    let exporter = LogExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| sdk_err("building the gRPC log exporter", e))?;
    let processor = opentelemetry_sdk::logs::BatchLogProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::logs::BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_SIZE)
                .with_scheduled_delay(Duration::from_millis(100))
                .build(),
        )
        .build();
    Ok(SdkLoggerProvider::builder()
        .with_resource(resource(service_name))
        .with_log_processor(processor)
        .build())
}

/// A meter provider exporting delta temporality over OTLP/gRPC to `grpc_endpoint`.
/// Its periodic reader runs every 60 s, so in a test the data is exported exactly
/// once, by [`shutdown_meters`].
pub fn meter_provider(
    grpc_endpoint: &str,
    service_name: &str,
) -> Result<SdkMeterProvider, HarnessError> {
    let exporter = MetricExporter::builder()
        .with_tonic()
        .with_endpoint(grpc_endpoint)
        .with_temporality(Temporality::Delta)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| sdk_err("building the gRPC metric exporter", e))?;
    Ok(SdkMeterProvider::builder()
        .with_resource(resource(service_name))
        .with_periodic_exporter(exporter)
        .build())
}

/// Exports everything the tracer provider holds; fails if the export failed.
pub async fn flush_traces(provider: &SdkTracerProvider) -> Result<(), HarnessError> {
    let provider = provider.clone();
    blocking(move || provider.force_flush(), "flushing spans").await
}

/// Flushes and shuts down a tracer provider.
pub async fn shutdown_traces(provider: SdkTracerProvider) -> Result<(), HarnessError> {
    blocking(
        move || provider.shutdown(),
        "shutting down the tracer provider",
    )
    .await
}

/// Flushes and shuts down a logger provider.
pub async fn shutdown_logs(provider: SdkLoggerProvider) -> Result<(), HarnessError> {
    blocking(
        move || provider.shutdown(),
        "shutting down the logger provider",
    )
    .await
}

/// Collects, exports and shuts down a meter provider.
pub async fn shutdown_meters(provider: SdkMeterProvider) -> Result<(), HarnessError> {
    blocking(
        move || provider.shutdown(),
        "shutting down the meter provider",
    )
    .await
}

async fn blocking<E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<(), E> + Send + 'static,
    what: &'static str,
) -> Result<(), HarnessError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| sdk_err(what, e))?
        .map_err(|e| sdk_err(what, e))
}
