//! The life of a cluster node: prepared before the engine (so the settler is built with
//! its cluster links), started and served, and on SIGTERM the leave-and-hand-off
//! sequence within [`SHUTDOWN_BUDGET`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use otel_tail_shared::config::Config;
use otel_tail_shared::forward::auth::ForwardAuth;
use otel_tail_shared::forward::{Forwarder, ForwarderConfig};
use otel_tail_shared::membership::{
    ClusterView, Membership, MembershipConfig, MembershipHandle, Role,
};
use otel_tail_shared::receiver::{self, InFlight};
use otel_tail_shared::ring::NodeId;
use otel_tail_shared::seal::ClusterKey;
use otel_tail_shared::telemetry::Health;
use otel_tail_shared::tls::ClientTls;
use otel_tail_shared::tls::server::{Listener, ServerTls};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::handoff::{self, Handoff};
use super::ingest::PublicIngest;
use super::plan::Topology;
use super::summary::RingSummaryRouter;
use super::{Cluster, ClusterIngest, addresses, auth, events, server, watch as watchers};
use crate::Listening;
use crate::correlation::fanout::{BroadcastConfig, NoticeBroadcaster, NoticesServer, notice_key};
use crate::engine::Engine;
use crate::export_queue::ExportQueues;
use crate::settle::SettleLinks;

/// Whole SIGTERM sequence in cluster mode, from the signal to exit (the chart's grace
/// period is 30 s).
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(25);
/// Longest flush of the export queue at the end of a cluster shutdown.
pub const QUEUE_DRAIN: Duration = Duration::from_secs(5);
/// Longest wait for the leave notice to go out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for a peer's TLS handshake on the forward endpoint.
const FORWARD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after leaving so peers drop this node from their rings before it hands off.
const LEAVE_SETTLE: Duration = Duration::from_millis(1500);

/// A cluster node before it joins: its identity, its bound forward endpoint and the
/// links its settler is built with. Made before the engine, so nothing is wired later.
pub(crate) struct Node {
    node_id: String,
    secret: Option<Vec<u8>>,
    /// Checks the credential of every call to the forward endpoint (`None`: insecure).
    gate: Option<Arc<auth::Gate>>,
    notice_key: Option<Arc<ClusterKey>>,
    forward_listener: Listener,
    forward_addr: SocketAddr,
    advertise: SocketAddr,
    cluster: Arc<Cluster>,
    peers_tx: watch::Sender<Vec<SocketAddr>>,
    links: SettleLinks,
}

impl Node {
    /// Resolves the node id and secret, binds the forward endpoint, and builds the ring
    /// view, the summary router and (with correlation on) the notice broadcaster.
    pub(crate) async fn prepare(config: &Config) -> anyhow::Result<Node> {
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
        let (server_tls, client_tls) = match &cluster_config.tls {
            None => (None, None),
            Some(tls) => {
                let server = ServerTls::load(&tls.server(), "cluster.tls", &[b"h2"])?;
                ServerTls::watch(&server);
                (
                    Some(server),
                    Some(ClientTls::load(&tls.client(), "cluster.tls")?),
                )
            }
        };
        let forward_listener = TcpListener::bind(cluster_config.forward_endpoint)
            .await
            .with_context(|| {
                format!(
                    "binding cluster.forward_endpoint {}",
                    cluster_config.forward_endpoint
                )
            })?;
        let forward_listener = Listener::plain(forward_listener, "forward")
            .with_tls(server_tls, FORWARD_HANDSHAKE_TIMEOUT)
            .with_connection_budget(config.receiver.max_connection_bytes);
        let advertise = cluster_config
            .advertise()
            .context("cluster.advertise_address")?;
        let forward_addr =
            addresses::advertised_forward(forward_listener.local_addr()?, advertise.ip());
        let forward_auth = secret
            .as_deref()
            .map(|secret| Arc::new(ForwardAuth::new(secret)));
        let gate = secret
            .as_deref()
            .map(|secret| Arc::new(auth::Gate::new(secret)));
        let cluster = Arc::new(
            Cluster::new(
                NodeId::from(node_id.as_str()),
                forward_addr,
                cluster_config.virtual_nodes,
            )
            .secured(forward_auth.clone(), client_tls.clone()),
        );
        let notice_key = secret.as_deref().map(notice_key);
        let (peers_tx, peers_rx) = watch::channel(Vec::new());
        let broadcaster = config.correlation.enabled.then(|| {
            Arc::new(NoticeBroadcaster::spawn(
                node_id.clone(),
                BroadcastConfig {
                    key: notice_key.clone(),
                    ..BroadcastConfig::default()
                },
                Arc::new(Forwarder::new(ForwarderConfig {
                    auth: forward_auth.clone(),
                    tls: client_tls.clone(),
                    ..ForwarderConfig::default()
                })),
                peers_rx,
            ))
        });
        let links = SettleLinks {
            router: Some(Arc::new(RingSummaryRouter {
                cluster: cluster.clone(),
                runtime: tokio::runtime::Handle::current(),
            })),
            broadcaster,
        };
        Ok(Node {
            node_id,
            secret,
            gate,
            notice_key,
            forward_listener,
            forward_addr,
            advertise,
            cluster,
            peers_tx,
            links,
        })
    }

    /// What the settler is built with.
    pub(crate) fn settle_links(&self) -> SettleLinks {
        self.links.clone()
    }

    /// Joins the cluster over SWIM gossip.
    async fn join(&mut self, config: &Config) -> anyhow::Result<MembershipHandle> {
        let mut membership_config = MembershipConfig::new(
            self.node_id.clone(),
            Role::Sampler,
            config.cluster.gossip_endpoint,
        );
        membership_config.advertise = self.advertise;
        membership_config.forward = Some(self.forward_addr);
        membership_config.secret = self.secret.take();
        (membership_config.seeds, membership_config.dns_seeds) =
            addresses::seeds_of(&config.cluster);
        events::register();
        auth::register();
        let (membership, _events) = Membership::start(membership_config)
            .await
            .context("starting cluster membership")?;
        Ok(membership)
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

/// The background tasks of a running node, stopped together.
struct Watchers {
    stop: watch::Sender<bool>,
    ring: JoinHandle<()>,
    handoff: JoinHandle<()>,
    peers: JoinHandle<()>,
    readiness: JoinHandle<()>,
}

impl Watchers {
    /// Starts keeping the ring, the handoff loop, the peer list and readiness in step
    /// with membership.
    fn start(
        node: &Node,
        membership: &MembershipHandle,
        handoff: &Arc<Handoff>,
        health: &Health,
        bound: &Arc<AtomicBool>,
        peers_tx: watch::Sender<Vec<SocketAddr>>,
    ) -> Watchers {
        let (stop, stop_rx) = watch::channel(false);
        Watchers {
            ring: tokio::spawn(watchers::watch_ring(
                node.cluster.clone(),
                membership.watch(),
                stop_rx.clone(),
            )),
            handoff: tokio::spawn(handoff.clone().run(stop_rx.clone())),
            peers: tokio::spawn(watchers::watch_peers(
                node.node_id.clone(),
                membership.watch(),
                peers_tx,
                stop_rx.clone(),
            )),
            readiness: tokio::spawn(watchers::report_ready(
                health.clone(),
                membership.clone(),
                bound.clone(),
                stop_rx,
            )),
            stop,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.readiness.await;
        let _ = self.ring.await;
        let _ = self.handoff.await;
        let _ = self.peers.await;
    }
}

/// Runs the cluster node until `shutdown` completes, then performs the SIGTERM sequence:
/// report not ready, stop deciding, leave, hand every undecided trace to its new owner
/// while still receiving (peers and routers keep sending until they updated their
/// rings, so nobody is refused meantime), stop receiving, hand off what arrived since
/// and the recent decisions, and return (the caller flushes the export queue).
/// Whatever could not be handed off stays buffered on disk.
pub(crate) async fn serve(
    config: &Config,
    mut node: Node,
    core: Core,
    on_ready: impl FnOnce(&Listening, &[String]) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let membership = node.join(config).await?;
    let cluster = node.cluster.clone();
    let ingest = Arc::new(ClusterIngest::new(core.engine.clone(), cluster.clone()));
    let handoff = Arc::new(Handoff::new(core.engine.clone(), cluster.clone()));
    let bound = Arc::new(AtomicBool::new(false));
    let peers_tx = std::mem::replace(&mut node.peers_tx, watch::channel(Vec::new()).0);
    let watchers = Watchers::start(&node, &membership, &handoff, &core.health, &bound, peers_tx);

    let (receivers_stop_tx, receivers_stop_rx) = watch::channel(false);
    let decider = Arc::new(Mutex::new(Some(core.decider)));
    let mut departure_rx = leave_on_shutdown(
        shutdown,
        &membership,
        &cluster,
        &handoff,
        &decider,
        &core.health,
        receivers_stop_tx,
    );
    // One budget for what requests hold, on the public receivers and the forward endpoint.
    let in_flight = InFlight::of(&config.receiver).context("receiver.auth")?;
    let forward_server = tokio::spawn(server::serve(
        node.forward_listener,
        config.receiver.max_request_bytes,
        in_flight.without_auth(),
        ingest.clone(),
        NoticesServer::new(core.engine.settler().clone()).with_key(node.notice_key.clone()),
        node.gate.clone(),
        crate::stopped(receivers_stop_rx.clone()),
    ));
    let descriptions = core.queues.describe();
    let gossip = membership.local_addr();
    let (admin, forward_addr, node_id) = (core.admin, node.forward_addr, node.node_id.clone());
    let served = receiver::raw::serve_within(
        &config.receiver,
        in_flight,
        Arc::new(PublicIngest(ingest)),
        move |receivers| {
            let listening = Listening {
                receivers,
                admin,
                cluster: Some(crate::ClusterAddrs {
                    forward: forward_addr,
                    gossip,
                    node_id,
                }),
            };
            on_ready(&listening, &descriptions);
            bound.store(true, std::sync::atomic::Ordering::SeqCst);
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
    watchers.stop().await;
    finish_departure(&core.engine, &handoff, &cluster, departure).await;
    served.context("serving OTLP receivers")
}

/// On `shutdown`: reports not ready and leaves while still receiving (routers and peers
/// keep sending here until they drop this node from their rings; what arrives meanwhile
/// is handed off after the receivers stop), then stops the receivers. The departure is
/// on the returned channel by the time the receivers stop for the signal; if they stop
/// on their own (a failure), the channel is empty and the caller departs itself.
fn leave_on_shutdown(
    shutdown: impl Future<Output = ()> + Send + 'static,
    membership: &MembershipHandle,
    cluster: &Arc<Cluster>,
    handoff: &Arc<Handoff>,
    decider: &Arc<Mutex<Option<crate::Decider>>>,
    health: &Health,
    receivers_stop: watch::Sender<bool>,
) -> oneshot::Receiver<Departure> {
    let (departure_tx, departure_rx) = oneshot::channel();
    let (membership, cluster, handoff, decider, health) = (
        membership.clone(),
        cluster.clone(),
        handoff.clone(),
        decider.clone(),
        health.clone(),
    );
    tokio::spawn(async move {
        shutdown.await;
        health.set_ready(false);
        let departure = depart(&membership, &cluster, &handoff, &decider).await;
        let _ = departure_tx.send(departure);
        let _ = receivers_stop.send(true);
    });
    departure_rx
}

/// The last part of the SIGTERM sequence, after the receivers stopped: hand off what
/// arrived while leaving and the recent decisions, then settle held logs and metrics and
/// close the rollup intervals. The last sampler of a cluster keeps its traces on disk.
async fn finish_departure(
    engine: &Arc<Engine>,
    handoff: &Handoff,
    cluster: &Cluster,
    departure: Departure,
) {
    let Departure {
        started,
        view,
        before,
        after,
    } = departure;
    if after.ring.is_empty() {
        tracing::info!(
            buffered_traces = engine.active_traces(),
            "last sampler of the cluster: traces stay on disk"
        );
        return;
    }
    let deadline = handoff_deadline(started);
    let (report, after) = hand_off_rest(handoff, cluster, view, after, deadline).await;
    let decisions = handoff.decisions(&before.ring, &after, deadline).await;
    tracing::info!(
        handed_off = report.handed,
        left_on_disk = report.left,
        decisions,
        "handoff on shutdown done"
    );
    let settler = engine.settler().clone();
    let settled = tokio::task::spawn_blocking(move || settler.settle_all(settler.now())).await;
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
