//! `otel-tail-router`: the stateless front tier. It accepts OTLP like a sampler, learns the
//! live samplers through SWIM membership (as a router: it owns no share of the ring),
//! splits each request by the consistent-hash ring without decoding it, forwards every
//! part to its owning sampler's forward endpoint, and acknowledges only when all owners
//! accepted.
//!
//! - [`routing`]: the split + forward core ([`routing::Router`]) and its routing table.
//! - [`cluster`]: membership settings, the sampler set, readiness, config checks.
//! - [`run`]: wires receivers, membership, admin endpoint and shutdown together.

pub mod cluster;
pub mod routing;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use otel_tail_shared::config::Config;
use otel_tail_shared::forward::auth::ForwardAuth;
use otel_tail_shared::forward::{Forwarder, ForwarderConfig};
use otel_tail_shared::membership::Membership;
use otel_tail_shared::receiver::{BoundAddrs, raw};
use otel_tail_shared::telemetry::{self, Health};
use otel_tail_shared::tls::ClientTls;
use tokio::sync::watch;

use cluster::{Readiness, SamplerSet};
use routing::{Router, RoutingTable};

/// Where a running router listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// OTLP receivers.
    pub receivers: BoundAddrs,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    /// Gossip (UDP).
    pub gossip: SocketAddr,
}

/// Runs a router until `shutdown` completes: then it stops receiving, lets in-flight
/// requests finish (each waits for its owners' answers), and leaves the cluster.
/// `on_ready` is called once every socket is bound.
pub async fn run(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    on_ready: impl FnOnce(&Listening) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    cluster::check_router_config(&config)?;
    let membership_config =
        cluster::membership_config(&config.cluster, &|name| std::env::var(name).ok())?;
    if membership_config.secret.is_none() {
        tracing::warn!(
            "cluster.secret is not set: gossip is not authenticated; set it (or cluster.secret_file) outside local tests"
        );
    }
    let forward_auth = membership_config
        .secret
        .as_deref()
        .map(|secret| Arc::new(ForwardAuth::new(secret)));
    let (membership, events) = Membership::start(membership_config).await.context(
        "starting cluster membership (check cluster.gossip_endpoint and cluster.advertise_address)",
    )?;
    let gossip = membership.local_addr();

    let tls = match &config.cluster.tls {
        Some(tls) => Some(ClientTls::load(&tls.client(), "cluster.tls")?),
        None => None,
    };
    let forwarder = Arc::new(Forwarder::new(ForwarderConfig {
        auth: forward_auth,
        tls,
        ..ForwarderConfig::default()
    }));
    let vnodes = config.cluster.virtual_nodes;
    let router = Arc::new(Router::new(forwarder, RoutingTable::new(vnodes, [])));
    let health = Health::default();
    let readiness = Arc::new(Readiness::new(health.clone()));
    let follower = tokio::spawn(cluster::follow_membership(
        events,
        SamplerSet::new(vnodes),
        router.clone(),
        readiness.clone(),
    ));

    let admin_listener = tokio::net::TcpListener::bind(config.telemetry.admin_endpoint)
        .await
        .with_context(|| format!("binding admin endpoint {}", config.telemetry.admin_endpoint))?;
    let admin_addr = admin_listener.local_addr()?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let admin = tokio::spawn(telemetry::admin::serve(
        admin_listener,
        metrics,
        health,
        async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        },
    ));

    let bound_readiness = readiness.clone();
    let served = raw::serve(
        &config.receiver,
        router,
        move |receivers| {
            on_ready(&Listening {
                receivers,
                admin: admin_addr,
                gossip,
            });
            bound_readiness.set_receivers_up(true);
        },
        shutdown,
    )
    .await;
    readiness.set_receivers_up(false);
    tracing::info!("receivers stopped; leaving the cluster");
    if let Err(error) = membership.leave().await {
        tracing::warn!(%error, "leaving the cluster failed; peers will detect the silence");
    }
    follower.abort();
    let _ = stop_tx.send(true);
    let _ = admin.await;
    served.context("serving OTLP receivers")
}
