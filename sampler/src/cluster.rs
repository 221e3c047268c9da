//! Cluster mode: the sampler as one owner among many on a consistent-hash ring.
//!
//! - Membership: SWIM (`otel_tail_shared::membership`) with role `sampler`; this node's
//!   identity advertises its forward endpoint so routers and peers know where to send.
//! - Ownership: a [`Ring`] of live samplers (this node included) decides who owns a trace
//!   id or routing key. Data received for another owner is forwarded to it (see
//!   [`ClusterIngest`]); data forwarded or handed off by a peer is always accepted here,
//!   so diverging views can never make data bounce.
//! - Handoff (`handoff`): when the ring changes, or when this node buffered data it does
//!   not own, undecided traces move to their owner and recent decisions follow moved trace
//!   ids. On SIGTERM the node leaves, hands everything off and flushes within
//!   [`SHUTDOWN_BUDGET`].
//! - The forward endpoint (`server`) serves OTLP/gRPC and `otel_tail.v1.Handoff`.

pub mod handoff;
pub mod partition;
pub mod peer;
pub mod plan;
pub mod server;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use lru::LruCache;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_proto::v1::DecisionBatch;
use otel_tail_shared::config::{ClusterConfig, Config};
use otel_tail_shared::forward::{ForwardError, Forwarder, ForwarderConfig};
use otel_tail_shared::membership::{
    ClusterView, Membership, MembershipConfig, MembershipHandle, Role,
};
use otel_tail_shared::otlp::{self, Signal, TraceId};
use otel_tail_shared::receiver::{self, Accepted, Ingest, IngestError};
use otel_tail_shared::ring::NodeId;
use otel_tail_shared::split::RouteKey;
use otel_tail_shared::telemetry::Health;
use prost::Message;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::Listening;
use crate::correlation::broadcast::{
    BroadcastConfig, NoticeBroadcaster, NoticesServer, notice_key,
};
use crate::decision::{Cached, Kept};
use crate::engine::Engine;
use crate::export_queue::ExportQueues;
use handoff::Handoff;
use peer::{Mark, PeerClient};
use plan::Topology;

/// Whole SIGTERM sequence in cluster mode, from the signal to exit (the chart's grace
/// period is 30 s).
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(25);
/// Longest flush of the export queue at the end of a cluster shutdown.
pub const QUEUE_DRAIN: Duration = Duration::from_secs(5);
/// Longest wait for the leave notice to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after leaving so peers drop this node from their rings before it hands off.
const LEAVE_SETTLE: Duration = Duration::from_millis(1500);
/// A node that found no peer within this time considers itself a cluster of one (the
/// first pod of a new cluster) and reports ready.
const JOIN_GRACE: Duration = Duration::from_secs(5);
/// Deadline of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How a request reached this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From a client or a router: items this node does not own are forwarded.
    Client,
    /// Forwarded by a peer ([`peer::HOP_HEADER`]): accepted here whatever the ring says.
    Forwarded,
    /// Handed off by a peer ([`peer::HANDOFF_HEADER`]): accepted here, counted as handoff.
    Handoff,
    /// Settled to the summary path by a peer and handed to this node, which owns its
    /// rollup ([`peer::SUMMARY_HEADER`]): held here for the summary path at once.
    Summary,
}

/// This node's view of the cluster: who it is, the current ring, recently seen trace ids
/// (whose decisions may have to follow them), and the client to its peers.
pub struct Cluster {
    local: NodeId,
    local_forward: SocketAddr,
    vnodes: u32,
    topology: RwLock<Arc<Topology>>,
    recent: Mutex<LruCache<TraceId, ()>>,
    peers: PeerClient,
    /// Woken when the ring changed or data this node does not own was buffered here.
    wake: Notify,
    /// Trace ids the owner refused for good; decided here instead of handed off again.
    pinned: Mutex<std::collections::HashSet<TraceId>>,
}

impl Cluster {
    /// A cluster view holding only this node until membership reports more.
    /// `recent_capacity` bounds the trace ids remembered for decision handoff.
    pub fn new(
        local: NodeId,
        local_forward: SocketAddr,
        vnodes: u32,
        recent_capacity: usize,
    ) -> Cluster {
        let topology = Topology::from_members(vnodes, &[], &local, local_forward, true);
        Cluster {
            local,
            local_forward,
            vnodes,
            topology: RwLock::new(Arc::new(topology)),
            recent: Mutex::new(LruCache::new(
                NonZeroUsize::new(recent_capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            peers: PeerClient::default(),
            wake: Notify::new(),
            pinned: Mutex::new(Default::default()),
        }
    }

    /// This node's id.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the ring from a membership view; returns whether its members changed.
    pub fn update(&self, view: &ClusterView) -> bool {
        let next = Topology::from_members(
            self.vnodes,
            &view.members,
            &self.local,
            self.local_forward,
            true,
        );
        let samplers: Vec<String> = next.ring.members().iter().map(NodeId::to_string).collect();
        let mut current = self.topology.write().unwrap_or_else(|e| e.into_inner());
        let ring_changed = current.ring != next.ring;
        if ring_changed || current.forward != next.forward {
            self.peers
                .retain(|addr| next.forward.values().any(|a| a == addr));
            *current = Arc::new(next);
        }
        drop(current);
        if ring_changed {
            tracing::info!(?samplers, "ring changed");
            self.wake.notify_one();
        }
        ring_changed
    }

    /// The topology the rest of the cluster will use once this node is gone.
    pub fn topology_without_local(&self, view: &ClusterView) -> Topology {
        Topology::from_members(
            self.vnodes,
            &view.members,
            &self.local,
            self.local_forward,
            false,
        )
    }

    /// Remembers trace ids buffered or decided here.
    fn remember(&self, ids: &[TraceId]) {
        if ids.is_empty() {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            recent.put(*id, ());
        }
    }

    /// Trace ids seen recently, most recent first.
    pub fn recent_ids(&self) -> Vec<TraceId> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Asks the handoff task for a pass (data not owned here was buffered).
    fn want_handoff(&self) {
        self.wake.notify_one();
    }
}

/// A request of one signal, as the cluster routes it.
enum Payload {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Payload {
    fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) => Signal::Traces,
            Payload::Logs(_) => Signal::Logs,
            Payload::Metrics(_) => Signal::Metrics,
        }
    }

    fn items(&self) -> usize {
        match self {
            Payload::Traces(r) => otlp::span_count(r),
            Payload::Logs(r) => otlp::log_count(r),
            Payload::Metrics(r) => otlp::data_point_count(r),
        }
    }

    fn encode(&self) -> Bytes {
        Bytes::from(match self {
            Payload::Traces(r) => r.encode_to_vec(),
            Payload::Logs(r) => r.encode_to_vec(),
            Payload::Metrics(r) => r.encode_to_vec(),
        })
    }

    fn trace_ids(&self) -> Vec<TraceId> {
        match self {
            Payload::Traces(r) => partition::trace_ids_of_spans(r),
            Payload::Logs(r) => partition::trace_ids_of_logs(r),
            Payload::Metrics(_) => Vec::new(),
        }
    }

    /// Whether ring member `local` owns every item.
    fn owned_by(&self, topology: &Topology, local: usize) -> bool {
        let owner = |k: RouteKey<'_>| topology.owner_index(k).unwrap_or(local);
        let owners = match self {
            Payload::Traces(r) => partition::owners_of_traces(r, local, owner),
            Payload::Logs(r) => partition::owners_of_logs(r, owner),
            Payload::Metrics(r) => partition::owners_of_metrics(r, owner),
        };
        owners.iter().all(|&o| o == local)
    }

    fn ingest(self, engine: &Engine) -> Result<Accepted, IngestError> {
        match self {
            Payload::Traces(r) => engine.ingest_traces(r),
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

    /// Takes spans that arrived by `origin`.
    pub async fn traces_from(
        &self,
        origin: Origin,
        request: ExportTraceServiceRequest,
    ) -> Result<Accepted, IngestError> {
        self.route(origin, Payload::Traces(request)).await
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
        let ids: Vec<TraceId> = decisions.iter().map(|(t, _)| *t).collect();
        let engine = self.engine.clone();
        let settled = tokio::task::spawn_blocking(move || engine.adopt_decisions(decisions))
            .await
            .map_err(|e| IngestError::Unavailable(format!("decision task failed: {e}")))??;
        self.cluster.remember(&ids);
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
            Payload::Traces(r) => partition::partition_traces(r, local, owner)
                .into_iter()
                .map(|(o, r)| (o, Payload::Traces(r)))
                .collect(),
            Payload::Logs(r) => partition::partition_logs(r, owner)
                .into_iter()
                .map(|(o, r)| (o, Payload::Logs(r)))
                .collect(),
            Payload::Metrics(r) => partition::partition_metrics(r, owner)
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
            let (result, part) = joined
                .map_err(|e| IngestError::Unavailable(format!("forwarding task failed: {e}")))?;
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
        let ids = payload.trace_ids();
        let foreign = origin != Origin::Client
            && topology
                .index_of(&self.cluster.local)
                .is_none_or(|local| !payload.owned_by(topology, local));
        if origin == Origin::Handoff && payload.signal() == Signal::Traces {
            metrics::counter!(handoff::HANDOFF_TRACES, "direction" => "in")
                .increment(ids.len() as u64);
        }
        let engine = self.engine.clone();
        let accepted = tokio::task::spawn_blocking(move || payload.ingest(&engine))
            .await
            .map_err(|e| IngestError::Unavailable(format!("ingest task failed: {e}")))??;
        self.cluster.remember(&ids);
        if foreign {
            self.cluster.want_handoff();
        }
        Ok(accepted)
    }
}

/// Runs a storage write on a blocking thread.
async fn blocking(
    f: impl FnOnce() -> Result<(), crate::storage::StorageError> + Send + 'static,
) -> Result<Accepted, IngestError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IngestError::Unavailable(format!("ingest task failed: {e}")))??;
    Ok(Accepted::default())
}

/// Where summary parts belong on the current ring, and the peer calls that hand them
/// over (see [`crate::settle::SummaryRouter`]).
struct RingSummaryRouter {
    cluster: Arc<Cluster>,
    runtime: tokio::runtime::Handle,
}

/// Longest wait for a peer to take summary data before it is rolled up here instead.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(2);

impl RingSummaryRouter {
    /// The forward address of the owner of `key`, unless that is this node.
    fn remote_owner(&self, topology: &Topology, key: RouteKey<'_>) -> Option<SocketAddr> {
        let owner = topology.owner_index(key)?;
        let node = &topology.ring.members()[owner];
        (node != &self.cluster.local)
            .then(|| topology.forward.get(node).copied())
            .flatten()
    }

    fn send(
        &self,
        owner: SocketAddr,
        signal: Signal,
        body: Bytes,
        items: usize,
    ) -> Result<(), String> {
        self.runtime
            .block_on(self.cluster.peers.send(
                owner,
                signal,
                body,
                items,
                Mark::Summary,
                SUMMARY_TIMEOUT,
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl crate::settle::SummaryRouter for RingSummaryRouter {
    fn owner_of_logs(
        &self,
        rl: &opentelemetry_proto::tonic::logs::v1::ResourceLogs,
    ) -> Option<SocketAddr> {
        let mut key = Vec::new();
        otel_tail_shared::split::resource_identity_key(rl.resource.as_ref(), &mut key);
        self.remote_owner(&self.cluster.topology(), RouteKey::Key(&key))
    }

    fn split_metrics(
        &self,
        rm: opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    ) -> Vec<(
        Option<SocketAddr>,
        opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    )> {
        let topology = self.cluster.topology();
        let Some(local) = topology.index_of(&self.cluster.local) else {
            return vec![(None, rm)];
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![rm],
        };
        partition::partition_metrics(request, |k| topology.owner_index(k).unwrap_or(local))
            .into_iter()
            .flat_map(|(owner, part)| {
                let node = &topology.ring.members()[owner];
                let addr = (owner != local)
                    .then(|| topology.forward.get(node).copied())
                    .flatten();
                part.resource_metrics.into_iter().map(move |rm| (addr, rm))
            })
            .collect()
    }

    fn send_logs(
        &self,
        owner: SocketAddr,
        request: ExportLogsServiceRequest,
    ) -> Result<(), String> {
        let items = otlp::log_count(&request);
        self.send(owner, Signal::Logs, request.encode_to_vec().into(), items)
    }

    fn send_metrics(
        &self,
        owner: SocketAddr,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), String> {
        let items = otlp::data_point_count(&request);
        self.send(
            owner,
            Signal::Metrics,
            request.encode_to_vec().into(),
            items,
        )
    }
}

/// The public receivers' view of cluster ingest: every request is a client's.
struct PublicIngest(Arc<ClusterIngest>);

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

/// Static seeds that are `ip:port` addresses, and the names to resolve periodically (the
/// other static seeds and `dns_seed`, given the gossip port when it names none).
pub fn seeds_of(cluster: &ClusterConfig) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for seed in &cluster.seeds {
        match seed.parse::<SocketAddr>() {
            Ok(addr) => addrs.push(addr),
            Err(_) => names.push(seed.clone()),
        }
    }
    if let Some(dns) = &cluster.dns_seed {
        let has_port = dns
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        names.push(if has_port {
            dns.clone()
        } else {
            format!("{dns}:{}", cluster.gossip_endpoint.port())
        });
    }
    (addrs, names)
}

/// The forward address peers should use: the bound address, or, when it is bound to all
/// interfaces, the advertised IP with the bound port.
pub fn advertised_forward(bound: SocketAddr, advertise_ip: IpAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        SocketAddr::new(advertise_ip, bound.port())
    } else {
        bound
    }
}

/// What the cluster shell needs from the sampler's core.
pub(crate) struct Core {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The export queues (flushed by the caller after [`serve`] returns).
    pub queues: Arc<ExportQueues>,
    /// Readiness.
    pub health: Health,
    /// The admin endpoint's address, for the banner.
    pub admin: SocketAddr,
    /// Stops the decider and waits for it.
    pub decider: crate::Decider,
}

/// Runs the cluster node until `shutdown` completes, then performs the SIGTERM sequence:
/// report not ready, stop deciding, leave, hand every undecided trace to its new owner
/// while still receiving (peers and routers keep sending until they updated their
/// rings, so nobody is refused meantime), stop receiving, hand off what arrived since
/// and the recent decisions, and return (the caller flushes the export queue).
/// Whatever could not be handed off stays buffered on disk.
pub(crate) async fn serve(
    config: &Config,
    core: Core,
    on_ready: impl FnOnce(&Listening, &[String]) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cluster_config = &config.cluster;
    let node_id = cluster_config
        .resolved_node_id(&|name| std::env::var(name).ok())
        .context("resolving cluster.node_id")?;
    let secret = cluster_config
        .load_secret()
        .context("reading the cluster secret")?;
    if secret.is_none() {
        tracing::warn!(
            "cluster.secret is not set: gossip is not authenticated; set it outside local tests"
        );
    }
    let forward_listener = tokio::net::TcpListener::bind(cluster_config.forward_endpoint)
        .await
        .with_context(|| {
            format!(
                "binding cluster.forward_endpoint {}",
                cluster_config.forward_endpoint
            )
        })?;
    let advertise = cluster_config
        .advertise()
        .context("cluster.advertise_address")?;
    let forward_addr = advertised_forward(forward_listener.local_addr()?, advertise.ip());

    let mut membership_config = MembershipConfig::new(
        node_id.clone(),
        Role::Sampler,
        cluster_config.gossip_endpoint,
    );
    membership_config.advertise = advertise;
    membership_config.forward = Some(forward_addr);
    let notice_key = secret.as_deref().map(notice_key);
    membership_config.secret = secret;
    (membership_config.seeds, membership_config.dns_seeds) = seeds_of(cluster_config);
    register_metrics();
    let (membership, _events) = Membership::start(membership_config)
        .await
        .context("starting cluster membership")?;

    let recent = config.sampler.decision_cache.sampled_cache_size
        + config.sampler.decision_cache.non_sampled_cache_size;
    let cluster = Arc::new(Cluster::new(
        NodeId::from(node_id.as_str()),
        forward_addr,
        cluster_config.virtual_nodes,
        recent,
    ));
    let ingest = Arc::new(ClusterIngest::new(core.engine.clone(), cluster.clone()));
    let handoff = Arc::new(Handoff::new(core.engine.clone(), cluster.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_ring(
        cluster.clone(),
        membership.watch(),
        stop_rx.clone(),
    ));
    let handoff_loop = tokio::spawn(handoff.clone().run(stop_rx.clone()));
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let peer_watcher = tokio::spawn(watch_peers(
        node_id.clone(),
        membership.watch(),
        peers_tx,
        stop_rx.clone(),
    ));
    let settler = core.engine.settler().clone();
    settler.set_router(Arc::new(RingSummaryRouter {
        cluster: cluster.clone(),
        runtime: tokio::runtime::Handle::current(),
    }));
    if settler.correlates() {
        settler.set_broadcaster(Arc::new(NoticeBroadcaster::spawn(
            node_id.clone(),
            BroadcastConfig {
                key: notice_key.clone(),
                ..BroadcastConfig::default()
            },
            Arc::new(Forwarder::new(ForwarderConfig::default())),
            peers_rx,
        )));
    }

    let (receivers_stop_tx, receivers_stop_rx) = watch::channel(false);
    let (departure_tx, mut departure_rx) = tokio::sync::oneshot::channel();
    let decider = Arc::new(Mutex::new(Some(core.decider)));
    {
        let (membership, cluster, handoff, decider, health) = (
            membership.clone(),
            cluster.clone(),
            handoff.clone(),
            decider.clone(),
            core.health.clone(),
        );
        tokio::spawn(async move {
            shutdown.await;
            health.set_ready(false);
            // Leave while still receiving: routers and peers keep sending here until
            // they drop this node from their rings, and whatever arrives meanwhile is
            // handed off after the receivers stop.
            let departure = depart(&membership, &cluster, &handoff, &decider).await;
            let _ = departure_tx.send(departure);
            let _ = receivers_stop_tx.send(true);
        });
    }
    let forward_server = tokio::spawn(server::serve(
        forward_listener,
        config.receiver.max_request_bytes,
        ingest.clone(),
        NoticesServer::new(settler).with_key(notice_key),
        crate::stopped(receivers_stop_rx.clone()),
    ));
    let bound = Arc::new(AtomicBool::new(false));
    let readiness = tokio::spawn(report_ready(
        core.health.clone(),
        membership.clone(),
        bound.clone(),
        stop_rx.clone(),
    ));
    let descriptions = core.queues.describe();
    let gossip = membership.local_addr();
    let admin = core.admin;
    let served = receiver::serve(
        &config.receiver,
        Arc::new(PublicIngest(ingest)),
        move |receivers| {
            let listening = Listening {
                receivers,
                admin,
                cluster: Some(crate::ClusterAddrs {
                    forward: forward_addr,
                    gossip,
                    node_id: node_id.clone(),
                }),
            };
            on_ready(&listening, &descriptions);
            bound.store(true, Ordering::SeqCst);
        },
        crate::stopped(receivers_stop_rx),
    )
    .await;
    core.health.set_ready(false);
    // Stopped by the shutdown signal after leaving, or by a failing receiver.
    let departure = match departure_rx.try_recv() {
        Ok(departure) => departure,
        Err(_) => depart(&membership, &cluster, &handoff, &decider).await,
    };
    let _ = forward_server.await;
    tracing::info!("receivers stopped; handing off what arrived while leaving");

    let _ = stop_tx.send(true);
    let _ = readiness.await;
    let _ = watcher.await;
    let _ = handoff_loop.await;
    let _ = peer_watcher.await;

    let Departure {
        started,
        view,
        before,
        after,
    } = departure;
    if after.ring.is_empty() {
        tracing::info!(
            buffered_traces = core.engine.active_traces(),
            "last sampler of the cluster: traces stay on disk"
        );
    } else {
        let deadline = handoff_deadline(started);
        let (report, after) = hand_off_rest(&handoff, &cluster, view, after, deadline).await;
        let decisions = handoff.decisions(&before.ring, &after, deadline).await;
        tracing::info!(
            handed_off = report.handed,
            left_on_disk = report.left,
            decisions,
            "handoff on shutdown done"
        );
        let settler = core.engine.settler().clone();
        let settled =
            tokio::task::spawn_blocking(move || settler.settle_all(crate::settle::unix_now()))
                .await;
        match settled {
            Ok(Ok(s)) => tracing::info!(
                groups = s.groups,
                raw = s.raw,
                summary = s.summary,
                "held logs and metrics settled on leaving"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "settling held data on leaving failed; it stays on disk")
            }
            Err(e) => tracing::warn!(error = %e, "settling held data on leaving failed"),
        }
    }
    served.context("serving OTLP receivers")
}

/// What the shutdown sequence remembers from the moment it left the cluster.
struct Departure {
    /// When the shutdown began (the budget counts from here).
    started: tokio::time::Instant,
    /// The membership view just before leaving.
    view: ClusterView,
    /// The ring just before leaving (decisions of trace ids that moved follow them).
    before: Arc<Topology>,
    /// The ring the others use without this node.
    after: Arc<Topology>,
}

/// No handoff batch starts after this: a batch in flight may overrun it by two calls,
/// and the export queue flush follows.
fn handoff_deadline(started: tokio::time::Instant) -> std::time::Instant {
    (started + SHUTDOWN_BUDGET - QUEUE_DRAIN - 2 * handoff::HANDOFF_TIMEOUT).into_std()
}

/// The first half of the SIGTERM sequence, while the caller keeps receiving: stop
/// deciding, leave the cluster, and hand every undecided trace to its new owner during
/// the [`LEAVE_SETTLE`] in which peers and routers drop this node from their rings.
///
/// Handing off at once (not after the settle) matters: spans of these traces that
/// arrive meanwhile already go to the new owner, which decides `decision_wait` after
/// them; the buffered spans must be there by then, or the trace is exported in two
/// pieces. And this node decides nothing more, for the same reason.
async fn depart(
    membership: &MembershipHandle,
    cluster: &Cluster,
    handoff: &Handoff,
    decider: &Mutex<Option<crate::Decider>>,
) -> Departure {
    let started = tokio::time::Instant::now();
    let decider = decider.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(decider) = decider {
        decider.stop().await;
    }
    let view = membership.watch().borrow().clone();
    let before = cluster.topology();
    tracing::info!("leaving the cluster");
    match tokio::time::timeout(LEAVE_TIMEOUT, membership.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster failed"),
        Err(_) => tracing::warn!("leaving the cluster timed out"),
    }
    let after = Arc::new(cluster.topology_without_local(&view));
    if after.ring.is_empty() {
        tokio::time::sleep(LEAVE_SETTLE).await;
    } else {
        let (report, ()) = tokio::join!(
            handoff.traces(after.clone(), handoff_deadline(started)),
            tokio::time::sleep(LEAVE_SETTLE)
        );
        tracing::info!(
            handed_off = report.handed,
            left = report.left,
            "handoff on leaving done; still receiving until peers updated their rings"
        );
    }
    Departure {
        started,
        view,
        before,
        after,
    }
}

/// How long a forward endpoint may take to accept a connection before its node is
/// considered gone.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The last handoff pass of a shutdown, after the receivers stopped. Samplers leaving
/// at the same time (a StatefulSet scaled down by several replicas) are still in the
/// ring this node planned with; when owners did not take their traces and no longer
/// accept connections, they are dropped from the ring and their traces planned again,
/// so the traces reach samplers that stay. Returns the report and the final ring.
async fn hand_off_rest(
    handoff: &Handoff,
    cluster: &Cluster,
    mut view: ClusterView,
    mut after: Arc<Topology>,
    deadline: std::time::Instant,
) -> (handoff::PassReport, Arc<Topology>) {
    let mut total = handoff::PassReport::default();
    loop {
        let report = handoff.traces(after.clone(), deadline).await;
        total.handed += report.handed;
        total.left = report.left;
        if report.left == 0 || std::time::Instant::now() >= deadline {
            return (total, after);
        }
        let mut gone = Vec::new();
        for (node, addr) in &after.forward {
            let connect = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
            if !matches!(connect.await, Ok(Ok(_))) {
                gone.push(node.to_string());
            }
        }
        if gone.is_empty() {
            return (total, after);
        }
        tracing::info!(
            ?gone,
            "owners are gone (leaving too); planning their traces again"
        );
        view.members.retain(|m| !gone.contains(&m.node_id));
        after = Arc::new(cluster.topology_without_local(&view));
        if after.ring.is_empty() {
            return (total, after);
        }
    }
}

/// Makes the cluster counters visible on `/metrics` from the start, at zero.
fn register_metrics() {
    use otel_tail_shared::forward::names as fwd;
    for direction in ["in", "out"] {
        metrics::counter!(handoff::HANDOFF_TRACES, "direction" => direction).increment(0);
    }
    for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
        metrics::counter!(fwd::FORWARDED_ITEMS, "signal" => signal.as_str(), "outcome" => fwd::OUTCOME_OK).increment(0);
    }
}

/// Keeps the list of the other samplers' forward addresses (where decision notices go)
/// in step with the membership view until stopped.
async fn watch_peers(
    local: String,
    mut view: watch::Receiver<ClusterView>,
    peers: watch::Sender<Vec<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let current: Vec<SocketAddr> = view
            .borrow_and_update()
            .members
            .iter()
            .filter(|m| m.role == Role::Sampler && m.node_id != local)
            .filter_map(otel_tail_shared::forward::forward_addr)
            .collect();
        peers.send_if_modified(|old| {
            let changed = *old != current;
            *old = current;
            changed
        });
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps the cluster's ring in step with the membership view until stopped.
async fn watch_ring(
    cluster: Arc<Cluster>,
    mut view: watch::Receiver<ClusterView>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let current = view.borrow_and_update().clone();
        cluster.update(&current);
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Marks the node ready once its receivers listen and it has joined the cluster (or
/// found no peer within [`JOIN_GRACE`]: the first node of a cluster owns everything).
async fn report_ready(
    health: Health,
    membership: MembershipHandle,
    bound: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    loop {
        if bound.load(Ordering::SeqCst)
            && (membership.is_joined() || started.elapsed() >= JOIN_GRACE)
        {
            if !membership.is_joined() {
                tracing::info!("no peer answered; serving as a cluster of one until others join");
            }
            health.set_ready(true);
            return;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_split_into_addresses_and_names() {
        let cluster = ClusterConfig {
            seeds: vec!["127.0.0.1:7001".into(), "sampler-1.svc:7946".into()],
            dns_seed: Some("samplers.ns.svc".into()),
            ..ClusterConfig::default()
        };
        let (addrs, names) = seeds_of(&cluster);
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 7001))]);
        assert_eq!(
            names,
            vec![
                "sampler-1.svc:7946".to_string(),
                "samplers.ns.svc:7946".to_string()
            ]
        );
        let with_port = ClusterConfig {
            dns_seed: Some("samplers:8000".into()),
            ..ClusterConfig::default()
        };
        assert_eq!(seeds_of(&with_port).1, vec!["samplers:8000".to_string()]);
    }

    #[test]
    fn forward_address_uses_the_advertised_ip_when_bound_to_all_interfaces() {
        let ip: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(
            advertised_forward(([0, 0, 0, 0], 4319).into(), ip),
            SocketAddr::new(ip, 4319)
        );
        let bound = SocketAddr::from(([127, 0, 0, 1], 5000));
        assert_eq!(advertised_forward(bound, ip), bound);
    }
}
