//! Where this node finds its peers and where they find it.

use std::net::{IpAddr, SocketAddr};

use otel_tail_shared::config::ClusterConfig;

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
