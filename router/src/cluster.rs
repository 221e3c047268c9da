//! The router's view of the cluster: membership as a [`Role::Router`] (routers own no
//! share of the ring), and a [`RoutingTable`] of live samplers rebuilt on every
//! membership change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use otel_tail_shared::config::{ClusterConfig, Config, ConfigError};
use otel_tail_shared::forward::forward_addr;
use otel_tail_shared::membership::{
    MembershipConfig, MembershipEvent, MembershipEvents, NodeIdentity, Role,
};
use otel_tail_shared::ring::NodeId;
use otel_tail_shared::telemetry::Health;

use crate::routing::{Router, RoutingTable};

/// Checks what the router needs beyond the shared validation: a router without seeds
/// would have no sampler to forward to, so standalone is refused.
pub fn check_router_config(config: &Config) -> Result<(), ConfigError> {
    if config.cluster.is_standalone() {
        return Err(ConfigError::invalid(
            "cluster.seeds",
            "otel-tail-router needs samplers to forward to: set cluster.seeds (host:port of \
             sampler gossip endpoints) or cluster.dns_seed; for a single node run \
             otel-tail-sampler alone instead",
        ));
    }
    config.cluster.load_secret()?;
    Ok(())
}

/// The membership settings of a router node from `cluster.*`. `env` resolves the node id
/// fallbacks (`$POD_NAME`, `$HOSTNAME`).
pub fn membership_config(
    cluster: &ClusterConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MembershipConfig, ConfigError> {
    let node_id = cluster.resolved_node_id(env)?;
    let mut config = MembershipConfig::new(node_id, Role::Router, cluster.gossip_endpoint);
    config.advertise = cluster.advertise()?;
    config.secret = cluster.load_secret()?;
    for seed in &cluster.seeds {
        match seed.parse::<SocketAddr>() {
            Ok(addr) => config.seeds.push(addr),
            // A host name: resolved periodically like the DNS seed.
            Err(_) => config.dns_seeds.push(seed.clone()),
        }
    }
    if let Some(name) = &cluster.dns_seed {
        config
            .dns_seeds
            .push(with_default_port(name, cluster.gossip_endpoint.port()));
    }
    Ok(config)
}

/// `name` as `host:port`, adding `port` when it names none.
fn with_default_port(name: &str, port: u16) -> String {
    let has_port = name.rsplit_once(':').is_some_and(|(host, p)| {
        !host.is_empty() && !host.ends_with(':') && p.parse::<u16>().is_ok()
    });
    if has_port {
        name.to_owned()
    } else {
        format!("{name}:{port}")
    }
}

/// `/readyz`: receivers bound and at least one sampler in the ring.
#[derive(Debug, Default)]
pub struct Readiness {
    health: Health,
    receivers_up: AtomicBool,
    samplers_known: AtomicBool,
}

impl Readiness {
    /// Readiness reported through `health`.
    pub fn new(health: Health) -> Self {
        Readiness {
            health,
            ..Readiness::default()
        }
    }

    /// Whether the receivers are serving.
    pub fn set_receivers_up(&self, up: bool) {
        self.receivers_up.store(up, Ordering::SeqCst);
        self.publish();
    }

    /// Whether the ring has at least one sampler.
    pub fn set_samplers_known(&self, known: bool) {
        self.samplers_known.store(known, Ordering::SeqCst);
        self.publish();
    }

    fn publish(&self) {
        self.health.set_ready(
            self.receivers_up.load(Ordering::SeqCst) && self.samplers_known.load(Ordering::SeqCst),
        );
    }
}

/// Live samplers by node id, as membership events report them.
#[derive(Debug)]
pub struct SamplerSet {
    vnodes: u32,
    samplers: BTreeMap<String, NodeIdentity>,
}

impl SamplerSet {
    /// No samplers yet; tables built from it give each `vnodes` ring points.
    pub fn new(vnodes: u32) -> Self {
        SamplerSet {
            vnodes,
            samplers: BTreeMap::new(),
        }
    }

    /// Applies one event; returns whether the set of samplers changed.
    pub fn apply(&mut self, event: &MembershipEvent) -> bool {
        match event {
            MembershipEvent::MemberUp(identity) if identity.role == Role::Sampler => {
                self.samplers
                    .insert(identity.node_id.clone(), identity.clone())
                    .as_ref()
                    != Some(identity)
            }
            // A node id that came back as a router no longer owns a share.
            MembershipEvent::MemberUp(identity) | MembershipEvent::MemberDown(identity) => {
                self.samplers.remove(&identity.node_id).is_some()
            }
            MembershipEvent::Broadcast { .. } => false,
        }
    }

    /// The routing table of the current samplers. Samplers without a reachable forward
    /// address are left out (and logged).
    pub fn table(&self) -> RoutingTable {
        let members = self
            .samplers
            .values()
            .filter_map(|identity| match forward_addr(identity) {
                Some(addr) => Some((NodeId::from(identity.node_id.as_str()), addr)),
                None => {
                    tracing::warn!(node_id = %identity.node_id, address = %identity.address,
                    "sampler has no reachable forward address; leaving it out of the ring");
                    None
                }
            });
        RoutingTable::new(self.vnodes, members)
    }
}

/// Follows membership events until the channel closes: rebuilds the router's table on
/// every change of the sampler set, drops connections to samplers that left, and keeps
/// readiness in step. Broadcasts (decisions meant for samplers) are ignored.
pub async fn follow_membership(
    mut events: MembershipEvents,
    mut samplers: SamplerSet,
    router: Arc<Router>,
    readiness: Arc<Readiness>,
) {
    while let Some(event) = events.recv().await {
        if !samplers.apply(&event) {
            continue;
        }
        let table = samplers.table();
        let targets = table.targets().to_vec();
        router.forwarder().retain(|addr| targets.contains(addr));
        tracing::info!(
            samplers = table.ring().len(),
            members = ?table.ring().members().iter().map(NodeId::as_str).collect::<Vec<_>>(),
            "sampler ring changed"
        );
        readiness.set_samplers_known(!table.is_empty());
        router.set_table(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(id: &str, ip: [u8; 4], generation: u64) -> NodeIdentity {
        NodeIdentity {
            node_id: id.to_owned(),
            address: SocketAddr::from((ip, 7946)),
            role: Role::Sampler,
            generation,
            forward: None,
        }
    }

    #[test]
    fn sampler_set_follows_up_down_and_restarts() {
        let mut set = SamplerSet::new(8);
        assert!(set.apply(&MembershipEvent::MemberUp(sampler("s-0", [10, 0, 0, 1], 1))));
        assert!(set.apply(&MembershipEvent::MemberUp(sampler("s-1", [10, 0, 0, 2], 1))));
        assert!(!set.apply(&MembershipEvent::MemberUp(sampler("s-1", [10, 0, 0, 2], 1))));
        // s-1 restarted at a new IP: same ring member, new target.
        assert!(set.apply(&MembershipEvent::MemberUp(sampler("s-1", [10, 0, 0, 9], 2))));
        let table = set.table();
        assert_eq!(
            table.ring().members(),
            &[NodeId::from("s-0"), NodeId::from("s-1")]
        );
        assert_eq!(
            table.targets(),
            &[
                "10.0.0.1:4319".parse::<SocketAddr>().unwrap(),
                "10.0.0.9:4319".parse().unwrap()
            ]
        );
        let mut router = sampler("r-0", [10, 0, 0, 5], 1);
        router.role = Role::Router;
        assert!(!set.apply(&MembershipEvent::MemberUp(router)));
        assert!(set.apply(&MembershipEvent::MemberDown(sampler(
            "s-0",
            [10, 0, 0, 1],
            1
        ))));
        assert_eq!(set.table().ring().members(), &[NodeId::from("s-1")]);
        assert!(!set.apply(&MembershipEvent::Broadcast {
            origin: "s-1".to_owned(),
            payload: bytes::Bytes::from_static(b"x"),
        }));
    }

    #[test]
    fn standalone_is_refused_and_seeds_are_sorted_into_static_and_dns() {
        let env = |_: &str| None;
        let standalone = Config::from_yaml("", &env).unwrap();
        let error = check_router_config(&standalone).unwrap_err();
        assert!(error.to_string().contains("cluster.seeds"), "{error}");
        assert!(error.to_string().contains("needs samplers"), "{error}");

        let config = Config::from_yaml(
            "cluster:\n  node_id: r-0\n  advertise_address: 10.0.0.5\n  seeds: [10.0.0.1:7946, sampler-0.svc:7946]\n  dns_seed: samplers.ns.svc\n  insecure: true\n",
            &env,
        )
        .unwrap();
        check_router_config(&config).unwrap();
        let membership = membership_config(&config.cluster, &env).unwrap();
        assert_eq!(membership.role, Role::Router);
        assert_eq!(membership.node_id, "r-0");
        assert_eq!(membership.advertise, "10.0.0.5:7946".parse().unwrap());
        assert_eq!(membership.seeds, vec!["10.0.0.1:7946".parse().unwrap()]);
        assert_eq!(
            membership.dns_seeds,
            vec![
                "sampler-0.svc:7946".to_owned(),
                "samplers.ns.svc:7946".to_owned()
            ]
        );
    }

    #[test]
    fn dns_seed_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("samplers", 7946), "samplers:7946");
        assert_eq!(with_default_port("samplers:9000", 7946), "samplers:9000");
    }

    #[test]
    fn ready_needs_receivers_and_a_sampler() {
        let health = Health::default();
        let readiness = Readiness::new(health.clone());
        readiness.set_receivers_up(true);
        assert!(!health.is_ready());
        readiness.set_samplers_known(true);
        assert!(health.is_ready());
        readiness.set_samplers_known(false);
        assert!(!health.is_ready());
    }
}
