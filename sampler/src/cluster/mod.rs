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
//!
//! Files by concern: `ingest` (routing each received item to its owner), `summary`
//! (handing summary parts to the owner of their rollup), `lifecycle` (start, serve, leave
//! and hand off on SIGTERM), `watch` (keeping the ring, the peer list and readiness in step
//! with membership), `addresses` (seeds and advertised addresses), `events` (metrics).

mod addresses;
pub mod auth;
mod events;
pub mod handoff;
mod ingest;
mod lifecycle;
pub mod partition;
pub mod peer;
pub mod plan;
pub mod server;
mod summary;
mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use otel_tail_shared::membership::ClusterView;
use otel_tail_shared::otlp::TraceId;
use otel_tail_shared::ring::NodeId;
use tokio::sync::Notify;

pub use addresses::{advertised_forward, seeds_of};
pub use ingest::ClusterIngest;
pub(crate) use lifecycle::{Core, Node, serve};
pub use lifecycle::{QUEUE_DRAIN, SHUTDOWN_BUDGET};
use peer::PeerClient;
use plan::Topology;

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

/// This node's view of the cluster: who it is, the current ring, and the client to its
/// peers. (The decisions that follow moved trace ids come from the engine's caches.)
pub struct Cluster {
    local: NodeId,
    local_forward: SocketAddr,
    vnodes: u32,
    topology: RwLock<Arc<Topology>>,
    peers: PeerClient,
    /// Woken when the ring changed or data this node does not own was buffered here.
    wake: Notify,
    /// Trace ids the owner refused for good; decided here instead of handed off again.
    pinned: Mutex<std::collections::HashSet<TraceId>>,
}

impl Cluster {
    /// A cluster view holding only this node until membership reports more.
    pub fn new(local: NodeId, local_forward: SocketAddr, vnodes: u32) -> Cluster {
        let topology = Topology::from_members(vnodes, &[], &local, local_forward, true);
        Cluster {
            local,
            local_forward,
            vnodes,
            topology: RwLock::new(Arc::new(topology)),
            peers: PeerClient::default(),
            wake: Notify::new(),
            pinned: Mutex::new(Default::default()),
        }
    }

    /// This view with its calls to peers signed by `auth` (`None`: unsigned, with
    /// `cluster.insecure`) and over `tls` (`cluster.tls`; `None`: plaintext).
    pub fn secured(
        mut self,
        auth: Option<Arc<otel_tail_shared::forward::auth::ForwardAuth>>,
        tls: Option<Arc<otel_tail_shared::tls::ClientTls>>,
    ) -> Cluster {
        self.peers = PeerClient::secured(auth, tls);
        self
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

    /// Asks the handoff task for a pass (data not owned here was buffered).
    fn want_handoff(&self) {
        self.wake.notify_one();
    }
}
