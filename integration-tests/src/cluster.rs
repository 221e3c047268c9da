//! A cluster of real processes on 127.0.0.1: N `otel-tail-sampler` nodes and M
//! `otel-tail-router` nodes gossiping with a shared secret over static seeds, every
//! sampler exporting over OTLP/gRPC to one shared [`OtlpSink`] (in record mode for
//! tests) and naming itself in [`SOURCE_HEADER`], so every exported span is attributed
//! to its sampler.
//!
//! Samplers can be added, terminated (SIGTERM), killed (`kill -9`) and restarted with
//! the same node id, gossip port and storage; [`Cluster::wait_ring`] waits until every
//! running node counts the expected number of samplers.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::ExitStatus;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::completeness::{Completeness, Exports, Ledger};
use crate::metrics_text::MetricsSnapshot;
use crate::sink::SOURCE_HEADER;
use crate::wait::poll_until;
use crate::{HarnessError, OtlpSink, RouterProcess, SamplerProcess, SinkMode};

/// Gauge of live members by role.
pub const RING_MEMBERS: &str = "otel_tail_ring_members";
/// Counter of gossip datagrams by kind and outcome.
pub const GOSSIP_PACKETS: &str = "otel_tail_gossip_packets_total";

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Samplers started at once.
    pub samplers: usize,
    /// Routers started once the samplers formed their ring.
    pub routers: usize,
    /// `sampler.decision_wait`.
    pub decision_wait: Duration,
    /// `sampler.policies`.
    pub policies: Value,
    /// `cluster.secret` shared by every node.
    pub secret: String,
    /// `cluster.virtual_nodes`.
    pub virtual_nodes: u32,
    /// `telemetry.log_level` of every node.
    pub log_level: String,
    /// Further `sampler` keys of every sampler (a JSON object; e.g. `num_traces`).
    pub sampler_extra: Value,
    /// Whether the shared sink records requests (tests) or only counts (benchmarks).
    pub sink_mode: SinkMode,
    /// Further top-level sections of every sampler's config (a JSON object; e.g.
    /// `correlation`, `rollup`).
    pub sampler_sections: Value,
    /// Further `cluster` keys of every node, routers included (a JSON object; e.g. `tls`).
    pub cluster_extra: Value,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            samplers: 3,
            routers: 2,
            decision_wait: Duration::from_millis(1500),
            policies: crate::traffic::keep_policy(),
            secret: "integration-test-cluster-secret-of-48-bytes-abc".into(),
            virtual_nodes: 64,
            log_level: "info".into(),
            sampler_extra: json!({}),
            sink_mode: SinkMode::Record,
            sampler_sections: json!({}),
            cluster_extra: json!({}),
        }
    }
}

/// One sampler of the cluster.
pub struct ClusterSampler {
    /// Node id (`s-<n>`); also its [`SOURCE_HEADER`] value.
    pub node_id: String,
    /// Gossip address, fixed for the node's life (restarts reuse it).
    pub gossip: SocketAddr,
    /// Forward endpoint, fixed for the node's life like a pod's port.
    pub forward: SocketAddr,
    /// The process.
    pub process: SamplerProcess,
}

/// A running cluster; every process is killed when it drops.
pub struct Cluster {
    spec: ClusterSpec,
    sink: OtlpSink,
    samplers: Vec<ClusterSampler>,
    routers: Vec<RouterProcess>,
    next_sampler: usize,
}

/// How long the cluster may take to agree on its members.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Starts the sink, `spec.samplers` samplers (concurrently, each seeded with the
    /// others), waits until they all see each other, then starts the routers and waits
    /// until they see every sampler.
    pub async fn start(spec: ClusterSpec) -> Result<Self, HarnessError> {
        let sink = OtlpSink::start(spec.sink_mode).await?;
        let mut cluster = Cluster {
            spec,
            sink,
            samplers: Vec::new(),
            routers: Vec::new(),
            next_sampler: 0,
        };
        let gossips = free_udp_addrs(cluster.spec.samplers)?;
        let forwards = free_tcp_addrs(cluster.spec.samplers)?;
        let ids: Vec<String> = (0..gossips.len()).map(|_| cluster.next_id()).collect();
        let starts = ids
            .iter()
            .zip(&gossips)
            .zip(&forwards)
            .map(|((id, gossip), forward)| {
                let seeds: Vec<SocketAddr> =
                    gossips.iter().filter(|g| *g != gossip).copied().collect();
                let secret = cluster.spec.secret.clone();
                SamplerProcess::start(
                    cluster.sampler_config(id, *gossip, *forward, &seeds, &secret),
                )
            });
        let started = join_all(starts).await;
        for (((node_id, gossip), forward), process) in
            ids.into_iter().zip(gossips).zip(forwards).zip(started)
        {
            cluster.samplers.push(ClusterSampler {
                node_id,
                gossip,
                forward,
                process: process?,
            });
        }
        let samplers = cluster.samplers.len();
        cluster.wait_ring(samplers, CONVERGENCE_TIMEOUT).await?;
        let starts = (0..cluster.spec.routers).map(|i| cluster.start_router(i));
        for router in join_all(starts).await {
            cluster.routers.push(router?);
        }
        cluster.wait_ring(samplers, CONVERGENCE_TIMEOUT).await?;
        Ok(cluster)
    }

    fn next_id(&mut self) -> String {
        let id = format!("s-{}", self.next_sampler);
        self.next_sampler += 1;
        id
    }

    /// The config of sampler `node_id` gossiping on `gossip`, accepting forwarded data
    /// on `forward`, seeded with `seeds` and sealing gossip with `secret`, exporting to
    /// the shared sink.
    pub fn sampler_config(
        &self,
        node_id: &str,
        gossip: SocketAddr,
        forward: SocketAddr,
        seeds: &[SocketAddr],
        secret: &str,
    ) -> Value {
        let mut sampler = json!({
            "decision_wait": format!("{}ms", self.spec.decision_wait.as_millis()),
            "policies": self.spec.policies,
        });
        if let (Some(section), Some(extra)) =
            (sampler.as_object_mut(), self.spec.sampler_extra.as_object())
        {
            section.extend(extra.clone());
        }
        let mut config = json!({
            "cluster": {
                "node_id": node_id,
                "gossip_endpoint": gossip.to_string(),
                "forward_endpoint": forward.to_string(),
                "seeds": seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "secret": secret,
                "virtual_nodes": self.spec.virtual_nodes,
            },
            "sampler": sampler,
            "exporter": {
                "otlp": {
                    "endpoint": self.sink.endpoint(),
                    "headers": {SOURCE_HEADER: node_id},
                },
                "retry": {"initial_interval": "50ms", "max_interval": "500ms"},
            },
            "telemetry": {"log_level": self.spec.log_level},
        });
        if let (Some(config), Some(extra)) = (
            config.as_object_mut(),
            self.spec.sampler_sections.as_object(),
        ) {
            config.extend(extra.clone());
        }
        self.extend_cluster(&mut config);
        config
    }

    /// Adds [`ClusterSpec::cluster_extra`] to a node's `cluster` section.
    fn extend_cluster(&self, config: &mut Value) {
        if let (Some(section), Some(extra)) = (
            config["cluster"].as_object_mut(),
            self.spec.cluster_extra.as_object(),
        ) {
            section.extend(extra.clone());
        }
    }

    async fn start_router(&self, index: usize) -> Result<RouterProcess, HarnessError> {
        let gossip = free_udp_addrs(1)?[0];
        let mut config = json!({
            "cluster": {
                "node_id": format!("r-{index}"),
                "gossip_endpoint": gossip.to_string(),
                "seeds": self.sampler_gossip_addrs(),
                "secret": self.spec.secret,
                "virtual_nodes": self.spec.virtual_nodes,
            },
            "telemetry": {"log_level": self.spec.log_level},
        });
        self.extend_cluster(&mut config);
        RouterProcess::start(config).await
    }

    /// Gossip addresses of the samplers not stopped by the test, as seeds.
    pub fn sampler_gossip_addrs(&self) -> Vec<String> {
        self.samplers
            .iter()
            .filter(|s| s.process.pid().is_some())
            .map(|s| s.gossip.to_string())
            .collect()
    }

    /// Starts one more sampler seeded with the running ones; returns its index. Does
    /// not wait for the ring to converge.
    pub async fn add_sampler(&mut self) -> Result<usize, HarnessError> {
        let id = self.next_id();
        let gossip = free_udp_addrs(1)?[0];
        let forward = free_tcp_addrs(1)?[0];
        let seeds: Vec<SocketAddr> = self
            .sampler_gossip_addrs()
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let config = self.sampler_config(&id, gossip, forward, &seeds, &self.spec.secret);
        let process = SamplerProcess::start(config).await?;
        self.samplers.push(ClusterSampler {
            node_id: id,
            gossip,
            forward,
            process,
        });
        Ok(self.samplers.len() - 1)
    }

    /// The shared sink.
    pub fn sink(&self) -> &OtlpSink {
        &self.sink
    }

    /// Every sampler ever started, running or not, in start order.
    pub fn samplers(&self) -> &[ClusterSampler] {
        &self.samplers
    }

    /// Sampler `index`.
    pub fn sampler_mut(&mut self, index: usize) -> &mut ClusterSampler {
        &mut self.samplers[index]
    }

    /// The routers.
    pub fn routers(&self) -> &[RouterProcess] {
        &self.routers
    }

    /// OTLP/gRPC endpoints of the routers.
    pub fn router_endpoints(&self) -> Vec<String> {
        self.routers
            .iter()
            .map(RouterProcess::grpc_endpoint)
            .collect()
    }

    /// Number of samplers not stopped by the test.
    pub fn running_samplers(&self) -> usize {
        self.samplers
            .iter()
            .filter(|s| s.process.pid().is_some())
            .count()
    }

    /// SIGTERM to sampler `index`; waits up to `timeout` for it to hand off and exit.
    pub async fn terminate_sampler(
        &mut self,
        index: usize,
        timeout: Duration,
    ) -> Result<ExitStatus, HarnessError> {
        self.samplers[index].process.terminate(timeout).await
    }

    /// `kill -9` of sampler `index`.
    pub fn kill_sampler(&mut self, index: usize) -> Result<(), HarnessError> {
        self.samplers[index].process.kill9()
    }

    /// Restarts sampler `index` with its node id, gossip port and storage.
    pub async fn restart_sampler(&mut self, index: usize) -> Result<(), HarnessError> {
        self.samplers[index].process.restart().await
    }

    /// `/metrics` of every node not stopped by the test: samplers (by node id) then routers (`r-<i>`).
    pub async fn scrape_all(&self) -> Result<Vec<(String, MetricsSnapshot)>, HarnessError> {
        let mut scraped = Vec::new();
        for sampler in &self.samplers {
            if sampler.process.pid().is_some() {
                scraped.push((sampler.node_id.clone(), sampler.process.metrics().await?));
            }
        }
        for (i, router) in self.routers.iter().enumerate() {
            scraped.push((format!("r-{i}"), router.metrics().await?));
        }
        Ok(scraped)
    }

    /// Waits until every running node (samplers and routers) counts `samplers` live
    /// samplers; returns how long that took.
    pub async fn wait_ring(
        &self,
        samplers: usize,
        timeout: Duration,
    ) -> Result<Duration, HarnessError> {
        let started = Instant::now();
        let what = format!("every node to count {samplers} samplers");
        let deadline = started + timeout;
        loop {
            let scraped = self.scrape_all().await?;
            if scraped
                .iter()
                .all(|(_, m)| sampler_members(m) == samplers as f64)
            {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = scraped
                    .iter()
                    .map(|(n, m)| format!("{n}={}", sampler_members(m)))
                    .collect();
                return Err(HarnessError::Timeout {
                    what: format!("{what} (last seen: {})", seen.join(" ")),
                    waited: timeout,
                });
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }

    /// Waits until every running sampler has no active trace and the sink has received
    /// nothing new for `quiet`; call once the senders stopped and `decision_wait` passed.
    pub async fn settle(&mut self, quiet: Duration, timeout: Duration) -> Result<(), HarnessError> {
        let mut last = self.sink.counts().spans;
        let mut since = Instant::now();
        poll_until("the cluster to settle", timeout, || {
            let spans = self.sink.counts().spans;
            if spans != last {
                last = spans;
                since = Instant::now();
            }
            let quiet_enough = since.elapsed() >= quiet;
            let samplers: Vec<&SamplerProcess> = self.samplers.iter().map(|s| &s.process).collect();
            async move {
                if !quiet_enough {
                    return Ok(None);
                }
                for sampler in samplers {
                    if sampler.pid().is_none() {
                        continue;
                    }
                    let metrics = sampler.metrics().await?;
                    if metrics.sum("otel_tail_traces_active", &[]) > 0.0 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        })
        .await
    }

    /// Everything exported so far, attributed to samplers.
    pub fn exports(&self) -> Exports {
        let requests = self.sink.trace_requests_by_source();
        Exports::from_requests(requests.iter().map(|(s, r)| (s.as_str(), r)))
    }

    /// Compares `sent` with everything exported so far.
    pub fn completeness(&self, sent: &Ledger) -> Completeness {
        Completeness::assess(sent, &self.exports())
    }

    /// Waits (up to `timeout`) until no acknowledged span of a kept trace is missing
    /// from the exports, then for the cluster to [`settle`](Self::settle); returns the
    /// final assessment (also when the wait ran out, so the caller can report it).
    pub async fn assess_when_settled(&mut self, sent: &Ledger, timeout: Duration) -> Completeness {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.completeness(sent).lost_acknowledged_spans > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(error) = self.settle(Duration::from_secs(2), left).await {
            eprintln!("[cluster] {error}");
        }
        self.completeness(sent)
    }
}

/// `otel_tail_ring_members{role="sampler"}` of one node.
pub fn sampler_members(metrics: &MetricsSnapshot) -> f64 {
    metrics.sum(RING_MEMBERS, &[("role", "sampler")])
}

/// `otel_tail_gossip_packets_total{kind="received",outcome=<outcome>}` of one node.
pub fn gossip_received(metrics: &MetricsSnapshot, outcome: &str) -> f64 {
    metrics.sum(
        GOSSIP_PACKETS,
        &[("kind", "received"), ("outcome", outcome)],
    )
}

/// `n` distinct free UDP addresses on 127.0.0.1 (bound together, then released, so
/// they differ from each other).
pub fn free_udp_addrs(n: usize) -> Result<Vec<SocketAddr>, HarnessError> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("binding a UDP port", e))?;
    sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("reading a UDP port", e))
}

/// `n` distinct free TCP ports on 127.0.0.1 (bound together, then released).
pub fn free_tcp_addrs(n: usize) -> Result<Vec<SocketAddr>, HarnessError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("binding a TCP port", e))?;
    listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("reading a TCP port", e))
}
