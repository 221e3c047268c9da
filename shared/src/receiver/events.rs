//! The receivers' self-metrics, recorded in this one place so every counter a receiver
//! touches, and the label values it uses, can be read at a glance.
//!
//! Semantics: `*_received` counts items a sink accepted; `items_rejected` counts items
//! refused individually (reported back through `partial_success`); `requests_refused`
//! counts requests refused whole (the client gets an error status and decides whether to
//! retry, so their items are not counted as rejected, which would double-count retries).

use crate::otlp::Signal;
use crate::telemetry::names;

/// The wire a request arrived on, for the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
    /// A sampler's forward endpoint (OTLP/gRPC from routers and peers).
    Forward,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Forward => "forward",
        }
    }
}

/// Why items or requests were refused: the `reason` label values.
pub(crate) mod reason {
    /// A span or log record with a malformed trace or span id.
    pub(crate) const INVALID_ID: &str = "invalid_id";
    /// Items the sink refused individually.
    pub(crate) const REFUSED_BY_SINK: &str = "refused_by_sink";
    /// The payload could not be decoded (protobuf, JSON, gzip or gRPC framing).
    pub(crate) const MALFORMED: &str = "malformed";
    /// The payload exceeded `receiver.max_request_bytes` (compressed or decompressed).
    pub(crate) const TOO_LARGE: &str = "too_large";
    /// A `Content-Type` other than protobuf or JSON.
    pub(crate) const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// A `Content-Encoding` other than gzip or identity.
    pub(crate) const UNSUPPORTED_ENCODING: &str = "unsupported_encoding";
    /// An HTTP method other than POST.
    pub(crate) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The request body could not be read (client went away mid-body).
    pub(crate) const BODY_READ: &str = "body_read";
    /// The request body did not arrive within `receiver.read_timeout`.
    pub(crate) const READ_TIMEOUT: &str = "read_timeout";
    /// No or an unknown bearer token (`receiver.auth`).
    pub(crate) const UNAUTHENTICATED: &str = "unauthenticated";
    /// The sink's buffers or queues are full.
    pub(crate) const OVERLOADED: &str = "overloaded";
    /// The sink failed transiently.
    pub(crate) const UNAVAILABLE: &str = "unavailable";
}

/// Items of `signal` accepted by the sink.
pub(crate) fn items_received(signal: Signal, count: u64) {
    let name = match signal {
        Signal::Traces => names::SPANS_RECEIVED,
        Signal::Logs => names::LOGS_RECEIVED,
        Signal::Metrics => names::DATA_POINTS_RECEIVED,
    };
    metrics::counter!(name).increment(count);
}

/// Items of `signal` refused individually (the rest of their request was kept).
pub(crate) fn items_rejected(signal: Signal, reason: &'static str, count: u64) {
    if count == 0 {
        return;
    }
    metrics::counter!(names::ITEMS_REJECTED, "signal" => signal.as_str(), "reason" => reason)
        .increment(count);
    if signal == Signal::Traces {
        metrics::counter!(names::SPANS_REJECTED, "reason" => reason).increment(count);
    }
}

/// A whole request refused with an error status.
pub(crate) fn request_refused(signal: Signal, transport: Transport, reason: &'static str) {
    metrics::counter!(
        names::REQUESTS_REFUSED,
        "signal" => signal.as_str(),
        "transport" => transport.as_str(),
        "reason" => reason,
    )
    .increment(1);
}
