//! Cluster membership: SWIM gossip through [`foca`] over UDP, protobuf on the wire
//! (`proto/otel_tail/v1/cluster.proto`), every datagram authenticated with the cluster
//! secret.
//!
//! Layers, innermost first:
//! - `identity`: who a member is — node id, advertised gossip address, role and a
//!   generation chosen at start-up, so a restarted node replaces its previous self at
//!   once instead of waiting to be declared down.
//! - `codec`: foca's messages as protobuf, and foca's frame as one `GossipPacket`.
//! - `seal`: XChaCha20-Poly1305 with a key derived from the secret; sealed and
//!   unsealed nodes reject each other.
//! - `broadcast`: application broadcasts riding on gossip, delivered once per node.
//! - `node`: the sans-I/O state machine (foca, timers in deadline order, the view by
//!   node id and its change events), tested deterministically with an in-memory network.
//! - `driver`: the thin async shell — one task owning the UDP socket, the timer queue
//!   and the node, re-announcing to seeds (static and DNS) until joined.
//!
//! Start with [`Membership::start`]; it returns a [`MembershipHandle`] for queries and
//! commands and a receiver of [`MembershipEvent`]s.

mod broadcast;
mod codec;
mod datagram;
mod driver;
mod identity;
mod node;
mod stats;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use rand::rngs::StdRng;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
};

pub use codec::MAX_NODE_ID_LEN;
pub use identity::{DEFAULT_FORWARD_PORT, NodeIdentity, Role};
pub use stats::PacketCounts;

use identity::GossipIdentity;
use node::Node;
use stats::PacketStats;

/// Self-metric names and label values of the membership layer (to move into
/// `telemetry::names` when the router and sampler wire membership in).
pub mod names {
    /// Counter of gossip datagrams, labels `kind` and `outcome`.
    pub const GOSSIP_PACKETS_TOTAL: &str = "otel_tail_gossip_packets_total";
    /// Gauge of live cluster members (this node included), label `role`.
    pub const RING_MEMBERS: &str = "otel_tail_ring_members";
    /// `kind` of a datagram this node received.
    pub const KIND_RECEIVED: &str = "received";
    /// `kind` of a datagram this node sent.
    pub const KIND_SENT: &str = "sent";
    /// `outcome`: accepted (received) or handed to the socket (sent).
    pub const OUTCOME_OK: &str = "ok";
    /// `outcome`: dropped, failed authentication.
    pub const OUTCOME_AUTH_FAILED: &str = "auth_failed";
    /// `outcome`: dropped, not a valid datagram or gossip message.
    pub const OUTCOME_MALFORMED: &str = "malformed";
    /// `outcome`: dropped, authentic but replayed or outside the 60 s time window.
    pub const OUTCOME_REPLAYED: &str = "replayed";
    /// `outcome`: the socket refused to send.
    pub const OUTCOME_ERROR: &str = "error";
}

/// Largest payload [`MembershipHandle::broadcast`] accepts. Broadcasts ride on gossip
/// datagrams of at most ~1400 bytes next to a header with two identities; larger data
/// (or a high rate of it) needs batching into several broadcasts or its own channel.
pub const MAX_BROADCAST_PAYLOAD: usize = 512;

/// Largest foca frame; the protobuf packet, envelope, nonce and tag around it keep the
/// datagram under a 1500-byte MTU.
const MAX_FRAME_LEN: usize = 1300;

/// Largest datagram read from the socket; anything longer is truncated and dropped
/// as malformed.
const RECEIVE_BUFFER_LEN: usize = 65_536;

/// Failure-detection timing preset (foca's, derived from memberlist's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GossipProfile {
    /// Same network: probe every second, suspicion of a few seconds.
    #[default]
    Lan,
    /// Across regions: probe every 5 s, longer timeouts.
    Wan,
}

/// How to run membership for one node.
#[derive(Clone)]
pub struct MembershipConfig {
    /// Local UDP address to bind (`cluster.gossip_endpoint`).
    pub bind: SocketAddr,
    /// Address other nodes reach us at (`cluster.advertise_address`). Port 0 means the
    /// bound port. Seeds must list exactly this address: it is how a seed recognises an
    /// announce meant for it.
    pub advertise: SocketAddr,
    /// Stable node name, unique in the cluster (the pod name).
    pub node_id: String,
    /// Router or sampler.
    pub role: Role,
    /// Samplers: the forward endpoint peers and routers should send to, published in
    /// this node's identity ([`NodeIdentity::forward`]). `None` for routers.
    pub forward: Option<SocketAddr>,
    /// Shared cluster secret; `None` sends and accepts unsealed datagrams only (local
    /// use; the caller should warn).
    pub secret: Option<Vec<u8>>,
    /// Static seed addresses (`cluster.seeds`).
    pub seeds: Vec<SocketAddr>,
    /// `host:port` names resolved periodically into more seeds (`cluster.dns_seed`).
    pub dns_seeds: Vec<String>,
    /// Identity generation; `None` uses the wall clock in milliseconds, so a restart
    /// always has a higher one.
    pub generation: Option<u64>,
    /// Failure-detection timing preset.
    pub profile: GossipProfile,
    /// Expected number of nodes; scales dissemination and suspicion timeouts.
    pub expected_cluster_size: u32,
    /// How often seeds are announced to while not joined (and seeds not known as
    /// members afterwards, which heals partitions and restarted seeds).
    pub announce_interval: Duration,
    /// How often `dns_seeds` are resolved.
    pub dns_refresh_interval: Duration,
}

impl MembershipConfig {
    /// A configuration with defaults: advertise the bind address, no secret, no seeds,
    /// LAN timing, announce every second, resolve DNS seeds every 10 seconds.
    pub fn new(node_id: impl Into<String>, role: Role, bind: SocketAddr) -> Self {
        Self {
            bind,
            advertise: bind,
            node_id: node_id.into(),
            role,
            forward: None,
            secret: None,
            seeds: Vec::new(),
            dns_seeds: Vec::new(),
            generation: None,
            profile: GossipProfile::Lan,
            expected_cluster_size: 8,
            announce_interval: Duration::from_secs(1),
            dns_refresh_interval: Duration::from_secs(10),
        }
    }

    fn foca_config(&self) -> foca::Config {
        let size = NonZeroU32::new(self.expected_cluster_size.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = match self.profile {
            GossipProfile::Lan => foca::Config::new_lan(size),
            GossipProfile::Wan => foca::Config::new_wan(size),
        };
        config.max_packet_size = NonZeroUsize::new(MAX_FRAME_LEN).unwrap_or(config.max_packet_size);
        config
    }
}

impl fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("forward", &self.forward)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("seeds", &self.seeds)
            .field("dns_seeds", &self.dns_seeds)
            .field("generation", &self.generation)
            .field("profile", &self.profile)
            .field("expected_cluster_size", &self.expected_cluster_size)
            .field("announce_interval", &self.announce_interval)
            .field("dns_refresh_interval", &self.dns_refresh_interval)
            .finish()
    }
}

/// Why membership could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node id is empty or too long.
    #[error("cluster node id must be 1 to {MAX_NODE_ID_LEN} bytes long, got {0} bytes")]
    InvalidNodeId(usize),
    /// A configured secret is empty (use `None` for no secret).
    #[error("cluster secret is empty")]
    EmptySecret,
    /// The advertised address cannot be reached by peers.
    #[error("advertised gossip address {0} is unspecified; set an address peers can reach")]
    UnspecifiedAdvertise(SocketAddr),
    /// The gossip socket could not be bound.
    #[error("cannot bind gossip socket {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A broadcast payload exceeds [`MAX_BROADCAST_PAYLOAD`].
    #[error("broadcast payload of {len} bytes exceeds the {max}-byte limit")]
    BroadcastTooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// foca refused a broadcast.
    #[error("broadcast rejected: {0}")]
    Broadcast(String),
    /// The membership task has stopped (left, shut down, or all handles dropped).
    #[error("cluster membership has stopped")]
    Stopped,
}

/// A change of the cluster as this node sees it, or a broadcast from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node became live, or a live node's identity changed (a restart: new generation,
    /// possibly new address). Keyed by `node_id`: replace what you held for it.
    MemberUp(NodeIdentity),
    /// A node left or was declared down.
    MemberDown(NodeIdentity),
    /// A broadcast issued by another node (`origin` is its node id).
    Broadcast {
        /// Node id of the issuer.
        origin: String,
        /// The bytes it broadcast.
        payload: Bytes,
    },
}

/// A snapshot of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's current identity.
    pub local: NodeIdentity,
    /// Live members, this node included, sorted by node id.
    pub members: Vec<NodeIdentity>,
    /// Whether at least one other member knows this node.
    pub joined: bool,
}

/// The receiving end of a node's [`MembershipEvent`]s. Unbounded: membership changes
/// are rare, so drain it promptly if broadcasts are frequent.
pub type MembershipEvents = mpsc::UnboundedReceiver<MembershipEvent>;

/// Entry point of cluster membership.
pub struct Membership;

impl Membership {
    /// Binds the gossip socket and spawns the membership task on the current tokio
    /// runtime. The task stops on [`MembershipHandle::leave`],
    /// [`MembershipHandle::shutdown`], or when every handle is dropped.
    pub async fn start(
        config: MembershipConfig,
    ) -> Result<(MembershipHandle, MembershipEvents), Error> {
        if config.node_id.is_empty() || config.node_id.len() > MAX_NODE_ID_LEN {
            return Err(Error::InvalidNodeId(config.node_id.len()));
        }
        if config.secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::EmptySecret);
        }
        if config.advertise.ip().is_unspecified() {
            return Err(Error::UnspecifiedAdvertise(config.advertise));
        }
        let socket = UdpSocket::bind(config.bind)
            .await
            .map_err(|source| Error::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        let mut advertise = config.advertise;
        if advertise.port() == 0 {
            advertise.set_port(local_addr.port());
        }
        let generation = config.generation.unwrap_or_else(wall_clock_generation);
        let identity = GossipIdentity::new(
            Arc::from(config.node_id.as_str()),
            advertise,
            config.role,
            generation,
        )
        .with_forward(config.forward);
        let stats = Arc::new(PacketStats::default());
        let node = Node::new(
            identity,
            config.foca_config(),
            rand::make_rng::<StdRng>(),
            config.secret.as_deref(),
            Arc::clone(&stats),
        );
        let (view_tx, view_rx) = watch::channel(ClusterView {
            local: node.local(),
            members: node.members(),
            joined: false,
        });
        let (command_tx, command_rx) = mpsc::channel(64);
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        tracing::info!(
            node_id = %config.node_id,
            role = %config.role,
            %local_addr,
            %advertise,
            generation,
            sealed = config.secret.is_some(),
            "cluster membership starting"
        );
        tokio::spawn(driver::run(driver::Driver {
            node,
            socket,
            commands: command_rx,
            events: event_tx,
            view: view_tx,
            stats: Arc::clone(&stats),
            seeds: config.seeds,
            dns_seeds: config.dns_seeds,
            announce_interval: config.announce_interval,
            dns_refresh_interval: config.dns_refresh_interval,
        }));
        let handle = MembershipHandle {
            commands: command_tx,
            view: view_rx,
            stats,
            local_addr,
        };
        Ok((handle, event_rx))
    }
}

fn wall_clock_generation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1)
}

/// A command for the membership task.
enum Command {
    Broadcast {
        payload: Bytes,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Queries and commands for a running membership task. Cheap to clone.
#[derive(Clone)]
pub struct MembershipHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<ClusterView>,
    stats: Arc<PacketStats>,
    local_addr: SocketAddr,
}

impl fmt::Debug for MembershipHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipHandle")
            .field("local_addr", &self.local_addr)
            .field("local", &self.view.borrow().local)
            .finish_non_exhaustive()
    }
}

impl MembershipHandle {
    /// Live members, this node included, sorted by node id.
    pub fn members(&self) -> Vec<NodeIdentity> {
        self.view.borrow().members.clone()
    }

    /// This node's current identity.
    pub fn local(&self) -> NodeIdentity {
        self.view.borrow().local.clone()
    }

    /// Whether at least one other member knows this node.
    pub fn is_joined(&self) -> bool {
        self.view.borrow().joined
    }

    /// A receiver that sees every new [`ClusterView`] (for readiness and ring updates).
    pub fn watch(&self) -> watch::Receiver<ClusterView> {
        self.view.clone()
    }

    /// The address the gossip socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Datagram counters of this node.
    pub fn packet_counts(&self) -> PacketCounts {
        self.stats.snapshot()
    }

    /// Disseminates `payload` (at most [`MAX_BROADCAST_PAYLOAD`] bytes) to every other
    /// member, which each receive it once as [`MembershipEvent::Broadcast`]. Best effort:
    /// gossip retransmits a few times but does not acknowledge.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Broadcast {
            payload: payload.into(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Leaves the cluster gracefully (for SIGTERM): tells members we are going, sends
    /// that out, and stops the task. Returns once the notice is on the wire.
    pub async fn leave(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Leave { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// Stops the task without telling anyone; peers will detect the silence.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Shutdown { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
    }
}

/// Datagrams a node would send, with their destinations.
pub type Outgoing = Vec<(SocketAddr, Vec<u8>)>;

/// One gossip node without a socket or timers: datagrams go in through the same
/// authentication, decoding and SWIM handling as the gossip task's, and the datagrams it
/// would send come out. It exists so the gossip decoder can be fuzzed with what a node
/// really does with a datagram, and seeded with datagrams nodes really send.
pub struct DatagramProbe {
    node: Node,
    address: SocketAddr,
}

impl DatagramProbe {
    /// A sampler node `node_id` at `address`, sealing with `secret` when given.
    pub fn new(node_id: &str, address: SocketAddr, secret: Option<&[u8]>) -> Self {
        let config = MembershipConfig::new(node_id, Role::Sampler, address);
        let identity = GossipIdentity::new(Arc::from(node_id), address, Role::Sampler, 1)
            .with_forward(Some(address));
        let node = Node::new(
            identity,
            config.foca_config(),
            rand::make_rng::<StdRng>(),
            secret,
            Arc::new(PacketStats::default()),
        );
        DatagramProbe { node, address }
    }

    /// This node's gossip address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Asks the node at `seed` to let us in; returns the datagrams to send.
    pub fn announce(&mut self, seed: SocketAddr) -> Outgoing {
        self.node.announce(seed, Instant::now());
        self.outgoing()
    }

    /// Handles one received datagram: `Err` names why it was dropped. Returns the
    /// datagrams the node sends in answer either way.
    pub fn receive(&mut self, datagram: &[u8]) -> (Result<(), String>, Outgoing) {
        let result = self
            .node
            .handle_datagram(datagram, Instant::now())
            .map_err(|e| e.to_string());
        (result, self.outgoing())
    }

    /// Live members this node knows, itself included.
    pub fn members(&self) -> Vec<NodeIdentity> {
        self.node.members()
    }

    fn outgoing(&mut self) -> Outgoing {
        self.node.take_events();
        self.node
            .take_outgoing()
            .into_iter()
            .map(|out| (out.to, out.datagram))
            .collect()
    }
}
