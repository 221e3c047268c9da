//! The async shell around [`Node`]: one task owns the UDP socket, the node and its
//! timer queue, so foca's timers fire in deadline order from a single scheduler (one
//! task per timer would break its probe cycle). A helper task resolves DNS seeds.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};

use super::{
    ClusterView, Command, MembershipEvent, RECEIVE_BUFFER_LEN, node::Node, stats::PacketStats,
};

/// Everything the membership task owns.
pub(super) struct Driver {
    pub(super) node: Node,
    pub(super) socket: UdpSocket,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) events: mpsc::UnboundedSender<MembershipEvent>,
    pub(super) view: watch::Sender<ClusterView>,
    pub(super) stats: Arc<PacketStats>,
    pub(super) seeds: Vec<SocketAddr>,
    pub(super) dns_seeds: Vec<String>,
    pub(super) announce_interval: Duration,
    pub(super) dns_refresh_interval: Duration,
}

/// Whether the task goes on after handling one thing.
enum Flow {
    Continue,
    /// Stop, acknowledging the command that asked for it (none when all handles are gone).
    Stop(Option<oneshot::Sender<()>>),
}

/// Runs the membership task until it is told to stop or every handle is gone.
pub(super) async fn run(mut driver: Driver) {
    let mut buf = vec![0u8; RECEIVE_BUFFER_LEN];
    let mut announce = tokio::time::interval(driver.announce_interval);
    announce.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (dns_tx, mut dns_rx) = mpsc::channel(1);
    let resolver: Option<JoinHandle<()>> = (!driver.dns_seeds.is_empty()).then(|| {
        tokio::spawn(resolve_dns_seeds(
            std::mem::take(&mut driver.dns_seeds),
            driver.dns_refresh_interval,
            dns_tx,
        ))
    });
    let mut resolved: Vec<SocketAddr> = Vec::new();

    loop {
        let deadline = driver.node.next_deadline();
        let flow = tokio::select! {
            received = driver.socket.recv_from(&mut buf) => {
                match received {
                    Ok((len, from)) => {
                        if let Err(reason) = driver.node.handle_datagram(&buf[..len], Instant::now()) {
                            tracing::debug!(%from, %reason, "gossip datagram dropped");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "gossip receive failed"),
                }
                Flow::Continue
            }
            () = sleep_until(deadline) => {
                driver.node.handle_due_timers(Instant::now());
                Flow::Continue
            }
            _ = announce.tick() => {
                announce_to_seeds(&mut driver.node, driver.seeds.iter().chain(&resolved), Instant::now());
                Flow::Continue
            }
            Some(addresses) = dns_rx.recv() => {
                let fresh: Vec<SocketAddr> =
                    addresses.iter().filter(|a| !resolved.contains(a)).copied().collect();
                resolved = addresses;
                announce_to_seeds(&mut driver.node, fresh.iter(), Instant::now());
                Flow::Continue
            }
            command = driver.commands.recv() => match command {
                None => Flow::Stop(None),
                Some(Command::Broadcast { payload, reply }) => {
                    let _ = reply.send(driver.node.broadcast(&payload, Instant::now()));
                    Flow::Continue
                }
                Some(Command::Leave { reply }) => {
                    driver.node.leave(Instant::now());
                    Flow::Stop(Some(reply))
                }
                Some(Command::Shutdown { reply }) => Flow::Stop(Some(reply)),
            },
        };
        flush(&mut driver).await;
        if let Flow::Stop(reply) = flow {
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            break;
        }
    }
    if let Some(resolver) = resolver {
        resolver.abort();
    }
    tracing::info!(node_id = %driver.node.local().node_id, "cluster membership stopped");
}

/// Waits for the next timer, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Announces to every seed while not joined; once joined, only to seeds that are not
/// live members (a restarted seed, or another partition that formed on its own).
fn announce_to_seeds<'a>(
    node: &mut Node,
    seeds: impl Iterator<Item = &'a SocketAddr>,
    now: Instant,
) {
    let joined = node.is_joined();
    let known: HashSet<SocketAddr> = if joined {
        node.member_addresses().collect()
    } else {
        HashSet::new()
    };
    for seed in seeds {
        if !known.contains(seed) {
            node.announce(*seed, now);
        }
    }
}

/// Sends what the node produced, publishes its events and its view.
async fn flush(driver: &mut Driver) {
    for outgoing in driver.node.take_outgoing() {
        let sent = driver.socket.send_to(&outgoing.datagram, outgoing.to).await;
        if let Err(error) = &sent {
            tracing::debug!(to = %outgoing.to, %error, "gossip send failed");
        }
        driver.stats.sent(sent.is_ok());
    }
    for event in driver.node.take_events() {
        // Nobody listening is fine: the view still serves queries.
        let _ = driver.events.send(event);
    }
    let next = ClusterView {
        local: driver.node.local(),
        members: driver.node.members(),
        joined: driver.node.is_joined(),
    };
    driver.view.send_if_modified(|view| {
        let changed = *view != next;
        if changed {
            *view = next;
        }
        changed
    });
}

/// Resolves `names` every `every` and sends the address set whenever it changes.
async fn resolve_dns_seeds(
    names: Vec<String>,
    every: Duration,
    seeds: mpsc::Sender<Vec<SocketAddr>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<BTreeSet<SocketAddr>> = None;
    loop {
        tick.tick().await;
        let mut addresses = BTreeSet::new();
        for name in &names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(resolved) => addresses.extend(resolved),
                Err(error) => {
                    tracing::warn!(name = %name, %error, "cannot resolve cluster DNS seed")
                }
            }
        }
        if last.as_ref() != Some(&addresses) {
            if seeds
                .send(addresses.iter().copied().collect())
                .await
                .is_err()
            {
                return;
            }
            last = Some(addresses);
        }
    }
}
