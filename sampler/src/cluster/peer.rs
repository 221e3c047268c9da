//! The sampler's client to other samplers' forward endpoints: encoded OTLP export
//! requests marked as forwarded or handed off, and decision batches.
//!
//! Like the router's `otel_tail_shared::forward::Forwarder` it keeps one lazily connected
//! channel per target and classifies failures as [`ForwardError`]s; unlike it, every call
//! carries the metadata header that tells the receiver not to forward again
//! ([`HOP_HEADER`]) or that the data is a handoff ([`HANDOFF_HEADER`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::uri::PathAndQuery;
use metrics::counter;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use otel_tail_proto::v1::{DecisionAck, DecisionBatch};
use otel_tail_shared::forward::{DEFAULT_RETRY_AFTER, ForwardError, export_path, names as fwd};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::receiver::Accepted;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstDecoder;
use tonic_types::StatusExt;

/// Metadata header on requests a sampler forwards to the owner of their data. A sampler
/// receiving it buffers what it does not own instead of forwarding again (no loops while
/// views disagree) and hands it off once its ring says where it belongs.
pub const HOP_HEADER: &str = "x-otel-tail-hop";
/// Metadata header on buffered data handed to its new owner after a ring change.
pub const HANDOFF_HEADER: &str = "x-otel-tail-handoff";
/// gRPC path of the decision handoff call (`otel_tail.v1.Handoff/Decisions`).
pub const DECISIONS_PATH: &str = "/otel_tail.v1.Handoff/Decisions";
/// How long to wait for a connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request is sent to a peer; decides the metadata header it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Data received here that the peer owns ([`HOP_HEADER`]).
    Forwarded,
    /// Buffered data handed to its new owner ([`HANDOFF_HEADER`]).
    Handoff,
}

impl Mark {
    fn header(self) -> &'static str {
        match self {
            Mark::Forwarded => HOP_HEADER,
            Mark::Handoff => HANDOFF_HEADER,
        }
    }
}

/// Channels to peers' forward endpoints, shared by all tasks (channels multiplex).
#[derive(Debug, Default)]
pub struct PeerClient {
    channels: RwLock<HashMap<SocketAddr, Channel>>,
}

impl PeerClient {
    /// Sends `body`, an encoded export request of `signal` with `items` items, to the
    /// forward endpoint at `target`. Forwarded items are counted in
    /// `otel_tail_forwarded_items_total{signal,outcome}`; handoffs are counted by the caller.
    pub async fn send(
        &self,
        target: SocketAddr,
        signal: Signal,
        body: Bytes,
        items: usize,
        mark: Mark,
        timeout: Duration,
    ) -> Result<Accepted, ForwardError> {
        let result = self.call(target, signal, body, mark, timeout).await;
        if mark == Mark::Forwarded {
            let outcome = match &result {
                Ok(_) => fwd::OUTCOME_OK,
                Err(ForwardError::Throttled { .. }) => fwd::OUTCOME_THROTTLED,
                Err(ForwardError::Rejected(_)) => fwd::OUTCOME_REJECTED,
                Err(ForwardError::Unavailable(_)) => fwd::OUTCOME_FAILED,
            };
            counter!(fwd::FORWARDED_ITEMS, "signal" => signal.as_str(), "outcome" => outcome)
                .increment(items as u64);
        }
        if let Err(error) = &result {
            tracing::debug!(%target, signal = signal.as_str(), ?mark, %error, "sending to peer failed");
        }
        result
    }

    /// Sends decisions to the new owner of their traces; returns how many it recorded.
    pub async fn decisions(
        &self,
        target: SocketAddr,
        batch: DecisionBatch,
        timeout: Duration,
    ) -> Result<u32, ForwardError> {
        let mut grpc = tonic::client::Grpc::new(self.channel(target));
        grpc.ready()
            .await
            .map_err(|e| ForwardError::Unavailable(format!("{target}: {e}")))?;
        let mut request = tonic::Request::new(batch);
        request.set_timeout(timeout);
        let codec = tonic_prost::ProstCodec::<DecisionBatch, DecisionAck>::default();
        grpc.unary(request, PathAndQuery::from_static(DECISIONS_PATH), codec)
            .await
            .map(|r| r.into_inner().accepted)
            .map_err(|status| classify(target, &status))
    }

    async fn call(
        &self,
        target: SocketAddr,
        signal: Signal,
        body: Bytes,
        mark: Mark,
        timeout: Duration,
    ) -> Result<Accepted, ForwardError> {
        let mut grpc = tonic::client::Grpc::new(self.channel(target));
        grpc.ready()
            .await
            .map_err(|e| ForwardError::Unavailable(format!("{target}: {e}")))?;
        let mut request = tonic::Request::new(body);
        request.set_timeout(timeout);
        request
            .metadata_mut()
            .insert(mark.header(), MetadataValue::from_static("1"));
        let path = PathAndQuery::from_static(export_path(signal));
        let response = match signal {
            Signal::Traces => grpc
                .unary(
                    request,
                    path,
                    BytesCodec::<ExportTraceServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map(|p| (p.rejected_spans, p.error_message))
                }),
            Signal::Logs => grpc
                .unary(
                    request,
                    path,
                    BytesCodec::<ExportLogsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map(|p| (p.rejected_log_records, p.error_message))
                }),
            Signal::Metrics => grpc
                .unary(
                    request,
                    path,
                    BytesCodec::<ExportMetricsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    r.into_inner()
                        .partial_success
                        .map(|p| (p.rejected_data_points, p.error_message))
                }),
        };
        match response {
            Ok(partial) => {
                let (rejected, message) = partial.unwrap_or_default();
                Ok(Accepted { rejected, message })
            }
            Err(status) => Err(classify(target, &status)),
        }
    }

    /// The channel to `target`, created (not yet connected) on first use.
    fn channel(&self, target: SocketAddr) -> Channel {
        if let Some(channel) = self
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
        {
            return channel.clone();
        }
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target)
            .or_insert_with(|| {
                Endpoint::from(
                    http::Uri::try_from(format!("http://{target}"))
                        .expect("a socket address is a valid authority"),
                )
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy()
            })
            .clone()
    }

    /// Drops channels to targets for which `keep` is false (peers that left).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|target, _| keep(target));
    }
}

/// Classifies a failed call: throttling (retryable with `RetryInfo`), permanent refusal,
/// or anything else (unreachable, timed out, internal).
fn classify(target: SocketAddr, status: &Status) -> ForwardError {
    let message = format!("{target}: {}: {}", status.code(), status.message());
    match (status.code(), status.get_details_retry_info()) {
        (Code::Unavailable | Code::ResourceExhausted, Some(info)) => ForwardError::Throttled {
            retry_after: info.retry_delay.unwrap_or(DEFAULT_RETRY_AFTER),
        },
        (Code::InvalidArgument | Code::ResourceExhausted | Code::Unimplemented, _) => {
            ForwardError::Rejected(message)
        }
        _ => ForwardError::Unavailable(message),
    }
}

/// Appends `payload` (an encoded message) to `body` as one element of field 1 of the
/// enclosing message: for `Export{Trace,Logs}ServiceRequest`, one `Resource{Spans,Logs}`.
/// Concatenating these builds a request from buffered groups without decoding them.
pub fn push_field_1(body: &mut Vec<u8>, payload: &[u8]) {
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, body);
    prost::encoding::encode_varint(payload.len() as u64, body);
    body.extend_from_slice(payload);
}

/// Client codec: an already-encoded request out, a prost-decoded response `R` in.
struct BytesCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for BytesCodec<R> {
    fn default() -> Self {
        BytesCodec(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for BytesCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder::default()
    }
}

/// Writes an already-encoded message as-is.
struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use prost::Message;

    use super::*;

    #[test]
    fn concatenated_groups_decode_as_one_request() {
        let groups: Vec<ResourceSpans> = (0..3)
            .map(|i| ResourceSpans {
                schema_url: format!("schema-{i}"),
                ..Default::default()
            })
            .collect();
        let mut body = Vec::new();
        for g in &groups {
            push_field_1(&mut body, &g.encode_to_vec());
        }
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(request.resource_spans, groups);
    }

    #[test]
    fn throttling_needs_retry_info() {
        let target = SocketAddr::from(([127, 0, 0, 1], 1));
        let throttled = Status::with_error_details(
            Code::Unavailable,
            "busy",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(
            classify(target, &throttled),
            ForwardError::Throttled {
                retry_after: Duration::from_secs(3)
            }
        );
        assert!(matches!(
            classify(target, &Status::unavailable("down")),
            ForwardError::Unavailable(_)
        ));
        assert!(matches!(
            classify(target, &Status::invalid_argument("bad")),
            ForwardError::Rejected(_)
        ));
    }
}
