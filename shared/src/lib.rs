//! Pieces shared by the `otel-tail-router` and `otel-tail-sampler` binaries.
//!
//! - [`config`]: the one YAML configuration model, its defaults, `${env:NAME}`
//!   expansion and validation with errors that name the offending key.
//! - [`receiver`]: OTLP/gRPC and OTLP/HTTP receivers that enforce size limits before
//!   allocation, validate ids, and answer with OTLP-spec status codes. They hand decoded
//!   requests to an [`receiver::Ingest`] implementation supplied by the binary.
//! - [`exporter`]: clients that send one OTLP export request downstream (gRPC, HTTP, file)
//!   and classify failures as retryable or permanent. Queueing lives with the caller.
//! - [`launch`]: what both binaries do around their `run` (config flags, logs, runtime, signals).
//! - [`telemetry`]: self-metric names, logging set-up and the admin HTTP endpoint.
//! - [`otlp`]: small helpers over the OTLP data model (ids, signals, request merging).
//! - [`ring`]: the consistent-hash ring (virtual nodes over xxh3) that assigns traces and keys to samplers.
//! - [`split`]: regroups an encoded OTLP request per owner by walking the wire format, copying items as-is.
//! - `testing` (tests, and the `testing` feature): builders of OTLP requests for tests.

pub mod config;
pub mod exporter;
pub mod forward;
pub mod launch;
pub mod membership;
pub mod otlp;
pub mod receiver;
pub mod ring;
pub mod seal;
pub mod split;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
