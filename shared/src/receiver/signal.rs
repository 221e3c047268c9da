//! What both transports do with a decoded export request, whatever its signal: validate
//! ids, hand it to the [`Ingest`] sink, count the outcome, and build the OTLP response.

use std::future::Future;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use std::sync::Arc;

use super::events::{self, reason};
use super::raw::RawIngest;
use super::{Accepted, Ingest, IngestError};
use crate::otlp::{self, Signal};

/// An OTLP export request of one signal, with what the receivers need to know about it.
pub(crate) trait OtlpRequest:
    prost::Message + Default + serde::de::DeserializeOwned + Send + 'static
{
    /// The matching `Export*ServiceResponse`.
    type Response: prost::Message + Default + Send + 'static;
    /// The signal carried.
    const SIGNAL: Signal;
    /// Name of the refused-items counter inside `partialSuccess` in OTLP JSON.
    const REJECTED_JSON_FIELD: &'static str;

    /// Removes items with malformed ids; returns what was removed.
    fn sanitize(&mut self) -> Accepted;
    /// Number of items (spans, log records, data points).
    fn item_count(&self) -> usize;
    /// Hands the request to the matching [`Ingest`] method.
    fn deliver<I: Ingest>(
        self,
        ingest: &I,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// The response carrying `accepted` as `partial_success` when anything was refused.
    fn response(accepted: &Accepted) -> Self::Response;
}

/// Whether `accepted` must be reported through `partial_success`.
fn is_partial(accepted: &Accepted) -> bool {
    accepted.rejected > 0 || !accepted.message.is_empty()
}

impl OtlpRequest for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Traces;
    const REJECTED_JSON_FIELD: &'static str = "rejectedSpans";

    fn sanitize(&mut self) -> Accepted {
        otlp::sanitize_traces(self)
    }

    fn item_count(&self) -> usize {
        otlp::span_count(self)
    }

    fn deliver<I: Ingest>(
        self,
        ingest: &I,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send {
        ingest.traces(self)
    }

    fn response(accepted: &Accepted) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: is_partial(accepted).then(|| ExportTracePartialSuccess {
                rejected_spans: accepted.rejected,
                error_message: accepted.message.clone(),
            }),
        }
    }
}

impl OtlpRequest for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const SIGNAL: Signal = Signal::Logs;
    const REJECTED_JSON_FIELD: &'static str = "rejectedLogRecords";

    fn sanitize(&mut self) -> Accepted {
        otlp::sanitize_logs(self)
    }

    fn item_count(&self) -> usize {
        otlp::log_count(self)
    }

    fn deliver<I: Ingest>(
        self,
        ingest: &I,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send {
        ingest.logs(self)
    }

    fn response(accepted: &Accepted) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: is_partial(accepted).then(|| ExportLogsPartialSuccess {
                rejected_log_records: accepted.rejected,
                error_message: accepted.message.clone(),
            }),
        }
    }
}

impl OtlpRequest for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::Metrics;
    const REJECTED_JSON_FIELD: &'static str = "rejectedDataPoints";

    /// Metric data points carry no ids that could be malformed.
    fn sanitize(&mut self) -> Accepted {
        Accepted::default()
    }

    fn item_count(&self) -> usize {
        otlp::data_point_count(self)
    }

    fn deliver<I: Ingest>(
        self,
        ingest: &I,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send {
        ingest.metrics(self)
    }

    fn response(accepted: &Accepted) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: is_partial(accepted).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: accepted.rejected,
                error_message: accepted.message.clone(),
            }),
        }
    }
}

/// The `reason` label of a request refused by the sink.
pub(crate) fn ingest_error_reason(error: &IngestError) -> &'static str {
    match error {
        IngestError::Overloaded { .. } => reason::OVERLOADED,
        // The sinks decode what the raw receivers hand over: a payload they cannot read is
        // malformed, whichever layer found it.
        IngestError::Invalid(_) => reason::MALFORMED,
        IngestError::Unavailable { .. } => reason::UNAVAILABLE,
    }
}

/// Validates ids, delivers the rest to `ingest` and counts the items. `Ok` carries
/// everything refused item by item (bad ids plus what the sink refused); `Err` means the
/// whole request was refused (the raw receivers count that). A request left empty by
/// validation is not delivered.
async fn deliver_counted<R: OtlpRequest, I: Ingest>(
    ingest: &I,
    mut request: R,
) -> Result<Accepted, IngestError> {
    let mut accepted = request.sanitize();
    events::items_rejected(
        R::SIGNAL,
        reason::INVALID_ID,
        non_negative(accepted.rejected),
    );
    let count = request.item_count() as u64;
    if count == 0 {
        return Ok(accepted);
    }
    let refused = request.deliver(ingest).await?;
    let refused_count = non_negative(refused.rejected).min(count);
    events::items_received(R::SIGNAL, count - refused_count);
    events::items_rejected(R::SIGNAL, reason::REFUSED_BY_SINK, refused_count);
    accepted.merge(refused);
    Ok(accepted)
}

/// A [`RawIngest`] over an [`Ingest`] sink: decodes each request and takes it through id
/// validation, counting and delivery ([`super::serve`] runs the raw receivers with it).
pub struct Decoding<I>(pub Arc<I>);

impl<I: Ingest> RawIngest for Decoding<I> {
    async fn traces(&self, body: bytes::Bytes) -> Result<Accepted, IngestError> {
        deliver_counted(&*self.0, decode_body::<ExportTraceServiceRequest>(body)?).await
    }

    async fn logs(&self, body: bytes::Bytes) -> Result<Accepted, IngestError> {
        accept_encoded_logs(&*self.0, body).await
    }

    async fn metrics(&self, body: bytes::Bytes) -> Result<Accepted, IngestError> {
        accept_encoded_metrics(&*self.0, body).await
    }
}

/// For a [`RawIngest`] sink that wants the decoded request after all: decodes
/// an encoded `ExportLogsServiceRequest` and takes it through id validation, counting and
/// delivery to `ingest`, as [`Decoding`] does.
pub async fn accept_encoded_logs<I: Ingest>(
    ingest: &I,
    body: bytes::Bytes,
) -> Result<Accepted, IngestError> {
    deliver_counted(ingest, decode_body::<ExportLogsServiceRequest>(body)?).await
}

/// [`accept_encoded_logs`] for an encoded `ExportMetricsServiceRequest`.
pub async fn accept_encoded_metrics<I: Ingest>(
    ingest: &I,
    body: bytes::Bytes,
) -> Result<Accepted, IngestError> {
    deliver_counted(ingest, decode_body::<ExportMetricsServiceRequest>(body)?).await
}

fn decode_body<R: OtlpRequest>(body: bytes::Bytes) -> Result<R, IngestError> {
    R::decode(body).map_err(|error| IngestError::Invalid(format!("invalid protobuf: {error}")))
}

/// For a [`RawIngest`] sink that reads spans itself: counts what it took the way
/// [`Decoding`] counts a request — `received` spans kept, `invalid` refused for their ids.
pub fn count_spans(received: u64, invalid: u64) {
    events::items_rejected(Signal::Traces, reason::INVALID_ID, invalid);
    events::items_received(Signal::Traces, received);
}

fn non_negative(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}
