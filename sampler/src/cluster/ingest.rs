//! The ingest path in cluster mode: each received item goes to the sampler owning it on
//! the ring, or is buffered here (see [`ClusterIngest`] for when a request is
//! acknowledged).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_proto::v1::DecisionBatch;
use otel_tail_shared::forward::ForwardError;
use otel_tail_shared::otlp::{self, Signal, TraceId};
use otel_tail_shared::receiver::raw::RawIngest;
use otel_tail_shared::receiver::{Accepted, Ingest, IngestError, Reads};
use otel_tail_shared::split::{RouteKey, Splitter};
use prost::Message;
use tokio::task::JoinSet;

use super::peer::Mark;
use super::plan::Topology;
use super::{Cluster, Origin, events, partition};
use crate::decision::{Cached, Kept};
use crate::engine::{Engine, TookSpans};

/// Deadline of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A request of one signal, as the cluster routes it.
enum Payload {
    Traces(ExportTraceServiceRequest),
    /// An encoded `ExportTraceServiceRequest` of `spans` spans, read from the wire where it
    /// is buffered ([`Engine::ingest_encoded_traces`]).
    EncodedTraces {
        body: Bytes,
        spans: usize,
    },
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Payload {
    fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) | Payload::EncodedTraces { .. } => Signal::Traces,
            Payload::Logs(_) => Signal::Logs,
            Payload::Metrics(_) => Signal::Metrics,
        }
    }

    fn items(&self) -> usize {
        match self {
            Payload::Traces(r) => otlp::span_count(r),
            Payload::EncodedTraces { spans, .. } => *spans,
            Payload::Logs(r) => otlp::log_count(r),
            Payload::Metrics(r) => otlp::data_point_count(r),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(match self {
            Payload::EncodedTraces { body, .. } => return body.clone(),
            Payload::Traces(r) => r.encode_to_vec(),
            Payload::Logs(r) => r.encode_to_vec(),
            Payload::Metrics(r) => r.encode_to_vec(),
        })
    }

    fn trace_ids(&self) -> Vec<TraceId> {
        match self {
            Payload::Traces(r) => partition::trace_ids_of_spans(r),
            Payload::EncodedTraces { .. } => unreachable!("read where buffered (here_encoded)"),
            Payload::Logs(r) => partition::trace_ids_of_logs(r),
            Payload::Metrics(_) => Vec::new(),
        }
    }

    /// Whether ring member `local` owns every item.
    fn owned_by(&self, topology: &Topology, local: usize) -> bool {
        let owner = |k: RouteKey<'_>| topology.owner_index(k).unwrap_or(local);
        let owners = match self {
            Payload::Traces(r) => partition::owners_of_traces(r, local, owner),
            Payload::EncodedTraces { .. } => unreachable!("read where buffered (here_encoded)"),
            Payload::Logs(r) => partition::owners_of_logs(r, owner),
            Payload::Metrics(r) => partition::owners_of_metrics(r, owner),
        };
        owners.iter().all(|&o| o == local)
    }

    /// Ingests here; handed-off spans were counted into span metrics by the node that
    /// buffered them first.
    fn ingest(self, engine: &Engine, origin: Origin) -> Result<Accepted, IngestError> {
        match self {
            Payload::Traces(r) if origin == Origin::Handoff => engine.ingest_handed_off_traces(r),
            Payload::Traces(r) => engine.ingest_traces(r),
            Payload::EncodedTraces { .. } => unreachable!("read where buffered (here_encoded)"),
            Payload::Logs(r) => engine.ingest_logs(r),
            Payload::Metrics(r) => engine.ingest_metrics(r),
        }
    }
}

/// The ingest path in cluster mode: routes each item to its owner.
///
/// Acknowledgement: a request is acknowledged once every part is accepted by its owner or
/// durably buffered here. A part whose owner cannot be reached (or is throttling while
/// other parts were already accepted) is buffered here and handed off later, so the
/// client never has to resend — and duplicate — parts that were already accepted. Only a
/// request that goes whole to one throttling owner gets the throttling back, so that
/// back-pressure still reaches clients when one node is overloaded.
pub struct ClusterIngest {
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
}

impl ClusterIngest {
    /// Routes over `cluster`, buffering into `engine`.
    pub fn new(engine: Arc<Engine>, cluster: Arc<Cluster>) -> Self {
        ClusterIngest { engine, cluster }
    }

    /// How a request of `signal` is read here, for the receivers' byte budget: spans are
    /// split among owners (a copy) and read as the engine reads them.
    pub fn reads(&self, signal: Signal) -> Reads {
        match self.engine.reads(signal) {
            Reads::Decodes(spans) if signal == Signal::Traces => Reads::SplitsAndDecodes(spans),
            reads => reads,
        }
    }

    /// Takes spans that arrived by `origin`.
    pub async fn traces_from(
        &self,
        origin: Origin,
        request: ExportTraceServiceRequest,
    ) -> Result<Accepted, IngestError> {
        self.route(origin, Payload::Traces(request)).await
    }

    /// Takes an encoded `ExportTraceServiceRequest` that arrived by `origin` (a client or
    /// a peer, not a handoff): split among owners on the wire like a router splits, and
    /// read from the wire where it is buffered. Returns what was refused item by item and
    /// how many spans were taken. A part a router split by a ring with this node's ring
    /// digest (`ring`) is all this node's own and is buffered without splitting it again.
    pub async fn encoded_traces_from(
        &self,
        origin: Origin,
        ring: Option<u64>,
        body: Bytes,
    ) -> Result<(Accepted, u64), IngestError> {
        let topology = self.cluster.topology();
        let split_here = ring != Some(topology.ring.digest());
        let local = topology
            .index_of(&self.cluster.local)
            .filter(|_| origin == Origin::Client && topology.ring.len() > 1 && split_here);
        let Some(local) = local else {
            let took = self.here_encoded(body, origin, &topology).await?;
            return Ok((took.refused, took.spans));
        };
        let owner = |k: RouteKey<'_>| topology.owner_index(k).unwrap_or(local);
        let split = Splitter::new()
            .wire_traces_by_owner(&body, topology.ring.len(), owner)
            .map_err(|e| IngestError::Invalid(e.to_string()))?;
        let mut accepted = Accepted::default();
        if split.invalid > 0 {
            accepted.merge(Accepted {
                rejected: split.invalid as i64,
                message: format!(
                    "{} span(s) with an all-zero or non-16-byte trace_id",
                    split.invalid
                ),
            });
        }
        let parts: Vec<(usize, Payload)> = split
            .parts
            .into_iter()
            .zip(split.counts)
            .enumerate()
            .filter(|(_, (_, spans))| *spans > 0)
            .map(|(owner, (body, spans))| (owner, Payload::EncodedTraces { body, spans }))
            .collect();
        let spans = parts.iter().map(|(_, p)| p.items() as u64).sum();
        accepted.merge(self.dispatch(parts, local, &topology).await?);
        Ok((accepted, spans))
    }

    /// Takes log records that arrived by `origin`.
    pub async fn logs_from(
        &self,
        origin: Origin,
        request: ExportLogsServiceRequest,
    ) -> Result<Accepted, IngestError> {
        if origin == Origin::Summary {
            let settler = self.engine.settler().clone();
            return blocking(move || settler.hold_summary_logs(&request)).await;
        }
        self.route(origin, Payload::Logs(request)).await
    }

    /// Takes metrics that arrived by `origin`.
    pub async fn metrics_from(
        &self,
        origin: Origin,
        request: ExportMetricsServiceRequest,
    ) -> Result<Accepted, IngestError> {
        if origin == Origin::Summary {
            let settler = self.engine.settler().clone();
            return blocking(move || settler.hold_summary_metrics(&request)).await;
        }
        self.route(origin, Payload::Metrics(request)).await
    }

    /// Records decisions handed over by a peer; returns how many were valid.
    pub async fn adopt_decisions(&self, batch: DecisionBatch) -> Result<u32, IngestError> {
        let decisions: Vec<(TraceId, Cached)> = batch
            .decisions
            .into_iter()
            .filter_map(|d| {
                let trace = otlp::trace_id(&d.trace_id)?;
                let cached = if d.sampled {
                    Cached::Sampled(Kept {
                        policy: d.policy.into(),
                        probability: d.probability,
                        correlate: d.correlate,
                    })
                } else {
                    Cached::NotSampled
                };
                Some((trace, cached))
            })
            .collect();
        let count = decisions.len() as u32;
        let engine = self.engine.clone();
        let settled = tokio::task::spawn_blocking(move || engine.adopt_decisions(decisions))
            .await
            .map_err(|e| IngestError::unavailable("decision task failed", e))??;
        tracing::debug!(origin = %batch.origin, decisions = count, settled, "adopted handed-off decisions");
        Ok(count)
    }

    async fn route(&self, origin: Origin, payload: Payload) -> Result<Accepted, IngestError> {
        let topology = self.cluster.topology();
        let Some(local) = topology.index_of(&self.cluster.local) else {
            return self.here(payload, origin, &topology).await;
        };
        if origin != Origin::Client || topology.ring.len() == 1 {
            return self.here(payload, origin, &topology).await;
        }
        let owner = |k: RouteKey<'_>| topology.owner_index(k).unwrap_or(local);
        let parts: Vec<(usize, Payload)> = match payload {
            Payload::EncodedTraces { body, .. } => {
                return Ok(self.encoded_traces_from(origin, None, body).await?.0);
            }
            Payload::Traces(r) => partition::decoded_traces_by_owner(r, local, owner)
                .into_iter()
                .map(|(o, r)| (o, Payload::Traces(r)))
                .collect(),
            Payload::Logs(r) => partition::decoded_logs_by_owner(r, owner)
                .into_iter()
                .map(|(o, r)| (o, Payload::Logs(r)))
                .collect(),
            Payload::Metrics(r) => partition::decoded_metrics_by_owner(r, owner)
                .into_iter()
                .map(|(o, r)| (o, Payload::Metrics(r)))
                .collect(),
        };
        self.dispatch(parts, local, &topology).await
    }

    /// Sends each part to its owner; see the type's documentation for acknowledgement.
    async fn dispatch(
        &self,
        parts: Vec<(usize, Payload)>,
        local: usize,
        topology: &Topology,
    ) -> Result<Accepted, IngestError> {
        let mut accepted = Accepted::default();
        let mut remote = Vec::new();
        let alone = parts.len() == 1;
        for (owner, part) in parts {
            if owner == local {
                accepted.merge(self.here(part, Origin::Client, topology).await?);
            } else {
                let node = &topology.ring.members()[owner];
                match topology.forward.get(node) {
                    Some(addr) => remote.push((*addr, part)),
                    None => accepted.merge(self.here(part, Origin::Forwarded, topology).await?),
                }
            }
        }
        let mut sends = JoinSet::new();
        for (addr, part) in remote {
            let cluster = self.cluster.clone();
            sends.spawn(async move {
                let result = cluster
                    .peers
                    .send(
                        addr,
                        part.signal(),
                        part.encode(),
                        part.items(),
                        Mark::Forwarded,
                        FORWARD_TIMEOUT,
                    )
                    .await;
                (result, part)
            });
        }
        while let Some(joined) = sends.join_next().await {
            let (result, part) =
                joined.map_err(|e| IngestError::unavailable("forwarding task failed", e))?;
            match result {
                Ok(a) => accepted.merge(a),
                Err(ForwardError::Throttled { retry_after }) if alone => {
                    return Err(IngestError::Overloaded {
                        retry_after,
                        reason: "owning sampler overloaded",
                    });
                }
                Err(ForwardError::Rejected(message)) if alone => {
                    return Err(IngestError::Invalid(message));
                }
                Err(ForwardError::Rejected(message)) => accepted.merge(Accepted {
                    rejected: part.items() as i64,
                    message,
                }),
                Err(error) => {
                    tracing::debug!(%error, "owner unavailable; buffering here until handoff");
                    accepted.merge(self.here(part, Origin::Forwarded, topology).await?);
                }
            }
        }
        Ok(accepted)
    }

    /// Buffers `payload` here. Data not owned here (forwarded by a peer whose view
    /// differs, or kept here because its owner failed) triggers a handoff pass.
    async fn here(
        &self,
        payload: Payload,
        origin: Origin,
        topology: &Topology,
    ) -> Result<Accepted, IngestError> {
        if let Payload::EncodedTraces { body, .. } = payload {
            return Ok(self.here_encoded(body, origin, topology).await?.refused);
        }
        let ids = payload.trace_ids();
        let foreign = origin != Origin::Client
            && topology
                .index_of(&self.cluster.local)
                .is_none_or(|local| !payload.owned_by(topology, local));
        if origin == Origin::Handoff && payload.signal() == Signal::Traces {
            events::traces_handed_in(ids.len());
        }
        let engine = self.engine.clone();
        let accepted = tokio::task::spawn_blocking(move || payload.ingest(&engine, origin))
            .await
            .map_err(|e| IngestError::unavailable("ingest task failed", e))??;
        if foreign {
            self.cluster.want_handoff();
        }
        Ok(accepted)
    }

    /// [`ClusterIngest::here`] for encoded spans: read from the wire and buffered here.
    async fn here_encoded(
        &self,
        body: Bytes,
        origin: Origin,
        topology: &Topology,
    ) -> Result<TookSpans, IngestError> {
        let engine = self.engine.clone();
        let took = tokio::task::spawn_blocking(move || engine.ingest_encoded_traces(body))
            .await
            .map_err(|e| IngestError::unavailable("ingest task failed", e))??;
        let foreign = origin != Origin::Client
            && topology.index_of(&self.cluster.local).is_none_or(|local| {
                took.traces
                    .iter()
                    .any(|t| topology.owner_index(RouteKey::Trace(*t)).unwrap_or(local) != local)
            });
        if foreign {
            self.cluster.want_handoff();
        }
        Ok(took)
    }
}

/// Runs a storage write on a blocking thread.
async fn blocking(
    f: impl FnOnce() -> Result<(), crate::storage::StorageError> + Send + 'static,
) -> Result<Accepted, IngestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IngestError::unavailable("ingest task failed", e))??;
    Ok(Accepted::default())
}

/// The public receivers' view of cluster ingest: every request is a client's.
pub(super) struct PublicIngest(pub(super) Arc<ClusterIngest>);

/// The public receivers hand over encoded requests: spans are split and read from the wire
/// ([`ClusterIngest::encoded_traces_from`]); logs and metrics are decoded and take the same
/// path as through [`Ingest`].
impl RawIngest for PublicIngest {
    async fn traces(&self, body: Bytes) -> Result<Accepted, IngestError> {
        let (accepted, spans) = self
            .0
            .encoded_traces_from(Origin::Client, None, body)
            .await?;
        otel_tail_shared::receiver::count_spans(
            spans,
            u64::try_from(accepted.rejected).unwrap_or(0),
        );
        Ok(accepted)
    }

    async fn logs(&self, body: Bytes) -> Result<Accepted, IngestError> {
        otel_tail_shared::receiver::accept_encoded_logs(self, body).await
    }

    async fn metrics(&self, body: Bytes) -> Result<Accepted, IngestError> {
        otel_tail_shared::receiver::accept_encoded_metrics(self, body).await
    }

    fn reads(&self, signal: Signal) -> Reads {
        self.0.reads(signal)
    }
}

impl Ingest for PublicIngest {
    async fn traces(&self, request: ExportTraceServiceRequest) -> Result<Accepted, IngestError> {
        self.0.traces_from(Origin::Client, request).await
    }

    async fn logs(&self, request: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        self.0.logs_from(Origin::Client, request).await
    }

    async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        self.0.metrics_from(Origin::Client, request).await
    }
}
