//! Who a cluster member is: the identity foca gossips about ([`GossipIdentity`]) and the
//! plain public view of it ([`NodeIdentity`]).
//!
//! foca treats two identities with the same [`Identity::addr`] (the advertised gossip
//! address) as the same member slot and keeps the one that wins
//! [`Identity::win_addr_conflict`]: the higher generation. A process restarted on the
//! same address therefore replaces its previous self as soon as it announces, instead
//! of waiting out its own obituary. A restart on a *new* address (a pod with a new IP)
//! is a different slot for foca; the membership view dedupes by node id, so it takes
//! over at once there too (see `node.rs`).

use std::{fmt, net::SocketAddr, sync::Arc};

use foca::Identity;

/// Port of a sampler's forward endpoint when its identity does not say
/// (`cluster.forward_endpoint`'s default).
pub const DEFAULT_FORWARD_PORT: u16 = 4319;

/// What a node does in the cluster. Only samplers own a share of the ring; routers
/// join to learn it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A stateless `otel-tail-router`.
    Router,
    /// A stateful `otel-tail-sampler`, owner of a share of the ring.
    Sampler,
}

impl Role {
    /// Every role, for per-role metrics.
    pub const ALL: [Role; 2] = [Role::Router, Role::Sampler];

    /// The lower-case name used in config, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::Sampler => "sampler",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live cluster member as the rest of the program sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// Stable node name (the pod name in Kubernetes); unique in the cluster.
    pub node_id: String,
    /// Advertised gossip address; its IP is where the node's other ports are reached.
    pub address: SocketAddr,
    /// Router or sampler.
    pub role: Role,
    /// Start-up generation; a restarted node has a higher one than its previous self.
    pub generation: u64,
    /// Samplers: the address peers and routers forward OTLP/gRPC and handoffs to. `None`
    /// for routers (and nodes that did not say); see [`NodeIdentity::forward_addr`].
    pub forward: Option<SocketAddr>,
}

impl NodeIdentity {
    /// Where to forward data this node owns: its advertised forward address, else the
    /// gossip address's IP on [`DEFAULT_FORWARD_PORT`].
    pub fn forward_addr(&self) -> SocketAddr {
        self.forward
            .unwrap_or_else(|| SocketAddr::new(self.address.ip(), DEFAULT_FORWARD_PORT))
    }
}

/// The identity type foca works with.
///
/// Besides real nodes it can be a *seed placeholder*: the destination of an `Announce`
/// sent to a seed address whose node is not known yet (empty node id, no role,
/// generation 0). The codec only accepts placeholders in that position, so they never
/// enter a member list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GossipIdentity {
    node_id: Arc<str>,
    address: SocketAddr,
    role: Option<Role>,
    generation: u64,
    forward: Option<SocketAddr>,
}

impl GossipIdentity {
    /// A real node.
    pub(crate) fn new(node_id: Arc<str>, address: SocketAddr, role: Role, generation: u64) -> Self {
        Self {
            node_id,
            address,
            role: Some(role),
            generation,
            forward: None,
        }
    }

    /// The same identity advertising `forward` as its forward endpoint.
    pub(crate) fn with_forward(self, forward: Option<SocketAddr>) -> Self {
        Self { forward, ..self }
    }

    /// The placeholder used to announce ourselves to a seed address.
    pub(crate) fn seed(address: SocketAddr) -> Self {
        Self {
            node_id: Arc::from(""),
            address,
            role: None,
            generation: 0,
            forward: None,
        }
    }

    /// Whether this is a seed placeholder rather than a real node.
    pub(crate) fn is_seed(&self) -> bool {
        self.role.is_none()
    }

    /// Builds an identity from decoded wire fields, rejecting half-placeholders.
    pub(crate) fn from_parts(
        node_id: Arc<str>,
        address: SocketAddr,
        role: Option<Role>,
        generation: u64,
    ) -> Option<Self> {
        let seed = node_id.is_empty() && role.is_none() && generation == 0;
        let real = !node_id.is_empty() && role.is_some();
        (seed || real).then_some(Self {
            node_id,
            address,
            role,
            generation,
            forward: None,
        })
    }

    pub(crate) fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) fn role(&self) -> Option<Role> {
        self.role
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn forward(&self) -> Option<SocketAddr> {
        self.forward
    }

    /// The public view of a real node; `None` for a seed placeholder.
    pub(crate) fn to_public(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity {
            node_id: self.node_id.to_string(),
            address: self.address,
            role: self.role?,
            generation: self.generation,
            forward: self.forward,
        })
    }
}

impl Identity for GossipIdentity {
    type Addr = SocketAddr;

    /// After being declared down, come back at once with the next generation.
    fn renew(&self) -> Option<Self> {
        (!self.is_seed()).then(|| Self {
            generation: self.generation.wrapping_add(1).max(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.address
    }

    /// The higher generation wins; ties (two nodes misconfigured onto one address in the
    /// same millisecond) break on node id and role so every member picks the same one.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.node_id, self.role)
            > (adversary.generation, &adversary.node_id, adversary.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn higher_generation_wins_the_address() {
        let old = GossipIdentity::new(Arc::from("s-0"), addr(1), Role::Sampler, 10);
        let new = GossipIdentity::new(Arc::from("s-0"), addr(1), Role::Sampler, 11);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert!(old.win_addr_conflict(&GossipIdentity::seed(addr(1))));
    }

    #[test]
    fn renew_bumps_generation_and_keeps_the_rest() {
        let id = GossipIdentity::new(Arc::from("r-1"), addr(2), Role::Router, 41);
        let renewed = id.renew().expect("real identities renew");
        assert_eq!(renewed.generation(), 42);
        assert_eq!(renewed.node_id(), id.node_id());
        assert_eq!(renewed.address(), id.address());
        assert!(renewed.win_addr_conflict(&id));
        assert_eq!(GossipIdentity::seed(addr(2)).renew(), None);
    }

    #[test]
    fn from_parts_accepts_real_nodes_and_seed_placeholders_only() {
        let a = addr(3);
        assert!(GossipIdentity::from_parts(Arc::from("n"), a, Some(Role::Sampler), 5).is_some());
        assert!(GossipIdentity::from_parts(Arc::from(""), a, None, 0).is_some());
        assert!(GossipIdentity::from_parts(Arc::from(""), a, Some(Role::Sampler), 5).is_none());
        assert!(GossipIdentity::from_parts(Arc::from("n"), a, None, 5).is_none());
        assert!(GossipIdentity::from_parts(Arc::from(""), a, None, 7).is_none());
    }

    #[test]
    fn forward_address_defaults_to_the_gossip_ip() {
        let id = GossipIdentity::new(Arc::from("s-1"), addr(7946), Role::Sampler, 1);
        let public = id.to_public().unwrap();
        assert_eq!(
            public.forward_addr(),
            SocketAddr::from(([127, 0, 0, 1], DEFAULT_FORWARD_PORT))
        );
        let forward = SocketAddr::from(([10, 1, 2, 3], 14319));
        let public = id.with_forward(Some(forward)).to_public().unwrap();
        assert_eq!(public.forward, Some(forward));
        assert_eq!(public.forward_addr(), forward);
    }
}
