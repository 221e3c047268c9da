//! Tasks that keep this node in step with the membership view: its ring, the list of
//! peers that get decision notices, and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use otel_tail_shared::membership::{ClusterView, MembershipHandle, Role};
use otel_tail_shared::telemetry::Health;
use tokio::sync::watch;

use super::Cluster;

/// A node that found no peer within this time considers itself a cluster of one (the
/// first pod of a new cluster) and reports ready.
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// Keeps the list of the other samplers' forward addresses (where decision notices go)
/// in step with the membership view until stopped.
pub(super) async fn watch_peers(
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
pub(super) async fn watch_ring(
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
pub(super) async fn report_ready(
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
