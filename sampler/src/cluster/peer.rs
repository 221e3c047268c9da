//! The sampler's client to other samplers' forward endpoints: encoded OTLP export
//! requests marked as forwarded or handed off, and decision batches.
//!
//! It is the router's `otel_tail_shared::forward::Forwarder` with, on every call, the
//! metadata header that tells the receiver not to forward again ([`HOP_HEADER`]) or that
//! the data is a handoff ([`HANDOFF_HEADER`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use otel_tail_proto::v1::{DecisionAck, DecisionBatch};
use otel_tail_shared::forward::{CallMeta, ForwardError, Forwarder, ForwarderConfig};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::receiver::Accepted;

/// Metadata header on requests a sampler forwards to the owner of their data. A sampler
/// receiving it buffers what it does not own instead of forwarding again (no loops while
/// views disagree) and hands it off once its ring says where it belongs.
pub const HOP_HEADER: &str = "x-otel-tail-hop";
/// Metadata header on buffered data handed to its new owner after a ring change.
pub const HANDOFF_HEADER: &str = "x-otel-tail-handoff";
/// Metadata header on logs and metric points a sampler settled to the summary path and
/// hands to the sampler owning their rollup: held there for the summary path at once.
pub const SUMMARY_HEADER: &str = "x-otel-tail-summary";
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
    /// Settled summary data handed to its rollup's owner ([`SUMMARY_HEADER`]).
    Summary,
}

impl Mark {
    fn header(self) -> &'static str {
        match self {
            Mark::Forwarded => HOP_HEADER,
            Mark::Handoff => HANDOFF_HEADER,
            Mark::Summary => SUMMARY_HEADER,
        }
    }
}

/// Channels to peers' forward endpoints, shared by all tasks: the shared [`Forwarder`]
/// with the sampler's marks on every call.
#[derive(Debug)]
pub struct PeerClient {
    forwarder: Forwarder,
}

impl Default for PeerClient {
    /// Unsigned calls (`cluster.insecure`).
    fn default() -> Self {
        PeerClient::secured(None, None)
    }
}

impl PeerClient {
    /// A client signing every call with `auth` (see
    /// [`otel_tail_shared::forward::auth`]; `None`: unsigned) and calling over `tls`
    /// (`None`: plaintext).
    pub fn secured(
        auth: Option<std::sync::Arc<otel_tail_shared::forward::auth::ForwardAuth>>,
        tls: Option<std::sync::Arc<otel_tail_shared::tls::ClientTls>>,
    ) -> Self {
        PeerClient {
            forwarder: Forwarder::new(ForwarderConfig {
                connect_timeout: CONNECT_TIMEOUT,
                auth,
                tls,
                ..ForwarderConfig::default()
            }),
        }
    }

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
        let meta = CallMeta {
            mark: Some(mark.header()),
            timeout: Some(timeout),
            counted: mark == Mark::Forwarded,
            ring: None,
        };
        self.forwarder
            .send_with(target, signal, body, items, meta)
            .await
    }

    /// Sends decisions to the new owner of their traces; returns how many it recorded.
    pub async fn decisions(
        &self,
        target: SocketAddr,
        batch: DecisionBatch,
        timeout: Duration,
    ) -> Result<u32, ForwardError> {
        self.forwarder
            .unary::<DecisionBatch, DecisionAck>(target, DECISIONS_PATH, batch, timeout)
            .await
            .map(|ack| ack.accepted)
    }

    /// Drops channels to targets for which `keep` is false (peers that left).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.forwarder.retain(keep);
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
}
