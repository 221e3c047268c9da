//! Cluster-level tests: several [`Node`]s on an in-memory network with a fake clock
//! (deterministic, like foca's own tests), then real [`Membership`] tasks on
//! 127.0.0.1 sockets.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{SeedableRng, rngs::StdRng};

use super::{identity::GossipIdentity, node::Node, stats::PacketStats, *};

const STEP: Duration = Duration::from_millis(10);

struct SimNode {
    node: Node,
    up: bool,
    events: Vec<MembershipEvent>,
    stats: Arc<PacketStats>,
}

/// An in-memory network of nodes sharing a fake clock. Packets are delivered
/// instantly and in order; nodes that are down neither send nor receive.
struct Sim {
    now: Instant,
    nodes: Vec<SimNode>,
    seed: u64,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The foca configuration `Membership::start` uses by default.
fn lan_config() -> foca::Config {
    MembershipConfig::new("n", Role::Sampler, addr(0)).foca_config()
}

impl Sim {
    fn new() -> Self {
        Self {
            now: Instant::now(),
            nodes: Vec::new(),
            seed: 1,
        }
    }

    fn add(&mut self, name: &str, port: u16, generation: u64, secret: Option<&[u8]>) -> usize {
        self.seed += 1;
        let stats = Arc::new(PacketStats::default());
        let identity = GossipIdentity::new(Arc::from(name), addr(port), Role::Sampler, generation);
        let node = Node::new(
            identity,
            lan_config(),
            StdRng::seed_from_u64(self.seed),
            secret,
            Arc::clone(&stats),
        );
        self.nodes.push(SimNode {
            node,
            up: true,
            events: Vec::new(),
            stats,
        });
        self.nodes.len() - 1
    }

    fn announce(&mut self, from: usize, to: usize) {
        let seed = self.nodes[to].node.local().address;
        self.nodes[from].node.announce(seed, self.now);
        self.deliver();
    }

    fn crash(&mut self, index: usize) {
        self.nodes[index].up = false;
        self.nodes[index].node.take_outgoing();
    }

    /// Routes packets until the network is quiet.
    fn deliver(&mut self) {
        loop {
            let mut in_flight = Vec::new();
            for sim in &mut self.nodes {
                let outgoing = sim.node.take_outgoing();
                if sim.up {
                    in_flight.extend(outgoing);
                }
            }
            if in_flight.is_empty() {
                break;
            }
            for packet in in_flight {
                let now = self.now;
                if let Some(target) = self
                    .nodes
                    .iter_mut()
                    .find(|sim| sim.up && sim.node.local().address == packet.to)
                {
                    let _ = target.node.handle_datagram(&packet.datagram, now);
                }
            }
        }
        for sim in &mut self.nodes {
            let events = sim.node.take_events();
            sim.events.extend(events);
        }
    }

    fn tick(&mut self) {
        self.now += STEP;
        for index in 0..self.nodes.len() {
            if self.nodes[index].up {
                let now = self.now;
                self.nodes[index].node.handle_due_timers(now);
                self.deliver();
            }
        }
    }

    /// Advances the clock until `done` holds; returns the simulated time it took.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let from = self.now;
        while self.now - from <= limit {
            if done(self) {
                return Some(self.now - from);
            }
            self.tick();
        }
        None
    }

    fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.tick();
        }
    }

    fn member_ids(&self, index: usize) -> BTreeSet<String> {
        self.nodes[index]
            .node
            .members()
            .into_iter()
            .map(|m| m.node_id)
            .collect()
    }

    fn sees(&self, index: usize, names: &[&str]) -> bool {
        self.member_ids(index) == names.iter().map(|n| n.to_string()).collect()
    }

    fn member(&self, index: usize, node_id: &str) -> Option<NodeIdentity> {
        self.nodes[index]
            .node
            .members()
            .into_iter()
            .find(|m| m.node_id == node_id)
    }
}

fn ups(events: &[MembershipEvent], node_id: &str) -> Vec<NodeIdentity> {
    events
        .iter()
        .filter_map(|e| match e {
            MembershipEvent::MemberUp(id) if id.node_id == node_id => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn downs(events: &[MembershipEvent], node_id: &str) -> Vec<NodeIdentity> {
    events
        .iter()
        .filter_map(|e| match e {
            MembershipEvent::MemberDown(id) if id.node_id == node_id => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Three nodes, the second and third announcing to the first, converged.
fn converged_three(secret: Option<&[u8]>) -> Sim {
    let mut sim = Sim::new();
    let a = sim.add("a", 1001, 100, secret);
    let b = sim.add("b", 1002, 100, secret);
    let c = sim.add("c", 1003, 100, secret);
    sim.announce(b, a);
    sim.announce(c, a);
    let took = sim
        .run_until(Duration::from_secs(10), |s| {
            (0..3).all(|i| s.sees(i, &["a", "b", "c"]))
        })
        .expect("three nodes converge");
    println!("in-memory: 3 nodes converged after {took:?} of simulated time");
    sim
}

#[test]
fn in_memory_three_nodes_converge() {
    let sim = converged_three(Some(b"secret"));
    for (index, others) in [(0, ["b", "c"]), (1, ["a", "c"]), (2, ["a", "b"])] {
        let events = &sim.nodes[index].events;
        for other in others {
            assert_eq!(
                ups(events, other).len(),
                1,
                "node {index} saw {other} up once"
            );
            assert!(downs(events, other).is_empty());
        }
        assert!(sim.nodes[index].node.is_joined());
        let stats = sim.nodes[index].stats.snapshot();
        assert!(stats.received_ok > 0);
        assert_eq!(stats.received_auth_failed + stats.received_malformed, 0);
    }
    assert_eq!(sim.member(0, "b").unwrap().address, addr(1002));
}

#[test]
fn in_memory_leaving_node_is_seen_down() {
    let mut sim = converged_three(Some(b"secret"));
    let now = sim.now;
    sim.nodes[2].node.leave(now);
    sim.deliver();
    sim.crash(2);
    let took = sim
        .run_until(Duration::from_secs(2), |s| {
            s.sees(0, &["a", "b"]) && s.sees(1, &["a", "b"])
        })
        .expect("a graceful leave is seen quickly");
    println!("in-memory: leave seen by all after {took:?}");
    for index in [0, 1] {
        assert_eq!(downs(&sim.nodes[index].events, "c").len(), 1);
    }
}

#[test]
fn in_memory_crashed_node_is_detected_down() {
    let mut sim = converged_three(Some(b"secret"));
    sim.crash(2);
    let took = sim
        .run_until(Duration::from_secs(30), |s| {
            s.sees(0, &["a", "b"]) && s.sees(1, &["a", "b"])
        })
        .expect("a silent node is declared down");
    println!("in-memory: crash detected by all after {took:?} of simulated time");
    for index in [0, 1] {
        assert_eq!(downs(&sim.nodes[index].events, "c").len(), 1);
    }
}

#[test]
fn in_memory_restart_on_same_address_replaces_the_old_identity_at_once() {
    let mut sim = converged_three(Some(b"secret"));
    sim.crash(2);
    let c2 = sim.add("c", 1003, 101, Some(b"secret"));
    sim.announce(c2, 0);
    let took = sim
        .run_until(Duration::from_secs(1), |s| {
            [0, 1]
                .iter()
                .all(|&i| s.member(i, "c").is_some_and(|m| m.generation == 101))
                && s.sees(c2, &["a", "b", "c"])
        })
        .expect("the restarted node takes over well before suspicion would expire");
    println!("in-memory: restart (same address) adopted after {took:?}");
    for index in [0, 1] {
        let events = &sim.nodes[index].events;
        assert_eq!(ups(events, "c").last().unwrap().generation, 101);
        assert!(
            downs(events, "c").is_empty(),
            "node {index} never saw c down"
        );
    }
    // It stays that way: the old identity lost its slot and is never reported.
    sim.run_for(Duration::from_secs(20));
    for index in [0, 1] {
        assert_eq!(sim.member(index, "c").unwrap().generation, 101);
        assert!(downs(&sim.nodes[index].events, "c").is_empty());
    }
}

#[test]
fn in_memory_restart_on_new_address_replaces_the_old_identity_at_once() {
    let mut sim = converged_three(Some(b"secret"));
    sim.crash(2);
    let c2 = sim.add("c", 2003, 101, Some(b"secret"));
    sim.announce(c2, 0);
    let took = sim
        .run_until(Duration::from_secs(1), |s| {
            [0, 1]
                .iter()
                .all(|&i| s.member(i, "c").is_some_and(|m| m.address == addr(2003)))
        })
        .expect("the restarted node takes over at once");
    println!("in-memory: restart (new address) adopted after {took:?}");
    // The old slot is eventually declared down by foca, but it no longer stands for
    // node c, so nobody reports c down.
    sim.run_for(Duration::from_secs(30));
    for index in [0, 1] {
        let c = sim.member(index, "c").expect("c is still a member");
        assert_eq!((c.address, c.generation), (addr(2003), 101));
        assert!(downs(&sim.nodes[index].events, "c").is_empty());
    }
    assert!(sim.sees(c2, &["a", "b", "c"]));
}

#[test]
fn in_memory_broadcasts_reach_every_other_node_once() {
    let mut sim = converged_three(Some(b"secret"));
    let now = sim.now;
    sim.nodes[0]
        .node
        .broadcast(b"decision batch 1", now)
        .unwrap();
    sim.nodes[0]
        .node
        .broadcast(b"decision batch 2", now)
        .unwrap();
    sim.deliver();
    sim.run_for(Duration::from_secs(5));
    for index in [1, 2] {
        let got: Vec<_> = sim.nodes[index]
            .events
            .iter()
            .filter_map(|e| match e {
                MembershipEvent::Broadcast { origin, payload } => {
                    Some((origin.clone(), payload.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "a".to_string(),
                    bytes::Bytes::from_static(b"decision batch 1")
                ),
                (
                    "a".to_string(),
                    bytes::Bytes::from_static(b"decision batch 2")
                ),
            ],
            "node {index}"
        );
    }
    assert!(
        !sim.nodes[0]
            .events
            .iter()
            .any(|e| matches!(e, MembershipEvent::Broadcast { .. })),
        "the issuer does not deliver to itself"
    );
    let too_big = vec![0u8; MAX_BROADCAST_PAYLOAD + 1];
    assert!(matches!(
        sim.nodes[0].node.broadcast(&too_big, now),
        Err(Error::BroadcastTooLarge { .. })
    ));
}

#[test]
fn in_memory_nodes_with_different_secrets_never_join() {
    for (secret_a, secret_b) in [
        (Some(&b"secret-a"[..]), Some(&b"secret-b"[..])),
        (Some(&b"secret"[..]), None),
        (None, Some(&b"secret"[..])),
    ] {
        let mut sim = Sim::new();
        let a = sim.add("a", 1001, 1, secret_a);
        let b = sim.add("b", 1002, 1, secret_b);
        for _ in 0..5 {
            sim.announce(b, a);
            sim.announce(a, b);
            sim.run_for(Duration::from_secs(1));
        }
        assert!(sim.sees(a, &["a"]) && sim.sees(b, &["b"]));
        assert!(!sim.nodes[a].node.is_joined() && !sim.nodes[b].node.is_joined());
        for index in [a, b] {
            let stats = sim.nodes[index].stats.snapshot();
            assert_eq!(stats.received_ok, 0);
            assert_eq!(
                stats.received_auth_failed, 5,
                "{secret_a:?} vs {secret_b:?}"
            );
        }
    }
}

// ---- real sockets -------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(10);

fn socket_config(name: &str, secret: Option<&[u8]>, seeds: Vec<SocketAddr>) -> MembershipConfig {
    let local = addr(0);
    let mut config = MembershipConfig::new(name, Role::Sampler, local);
    config.secret = secret.map(<[u8]>::to_vec);
    config.seeds = seeds;
    config.announce_interval = Duration::from_millis(100);
    config.dns_refresh_interval = Duration::from_millis(200);
    config.expected_cluster_size = 3;
    config
}

async fn wait_for_members(handle: &MembershipHandle, names: &[&str]) -> Duration {
    let started = Instant::now();
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let mut watch = handle.watch();
    tokio::time::timeout(
        WAIT,
        watch.wait_for(|view| {
            view.members
                .iter()
                .map(|m| m.node_id.clone())
                .collect::<BTreeSet<_>>()
                == want
        }),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{:?} did not see {names:?} within {WAIT:?}",
            handle.local().node_id
        )
    })
    .expect("membership task alive");
    started.elapsed()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn udp_three_nodes_converge_and_a_leave_is_seen() {
    let started = Instant::now();
    let (a, mut a_events) = Membership::start(socket_config("a", Some(b"s3cret"), vec![]))
        .await
        .unwrap();
    let seeds = vec![a.local().address];
    let (b, _b_events) = Membership::start(socket_config("b", Some(b"s3cret"), seeds.clone()))
        .await
        .unwrap();
    let (c, _c_events) = Membership::start(socket_config("c", Some(b"s3cret"), seeds))
        .await
        .unwrap();
    for handle in [&a, &b, &c] {
        wait_for_members(handle, &["a", "b", "c"]).await;
    }
    println!("udp: 3 nodes converged in {:?}", started.elapsed());
    assert!(a.is_joined() && b.is_joined() && c.is_joined());
    assert_eq!(a.local().address, a.local_addr());

    let left = Instant::now();
    c.leave().await.unwrap();
    wait_for_members(&a, &["a", "b"]).await;
    wait_for_members(&b, &["a", "b"]).await;
    println!("udp: leave seen by all in {:?}", left.elapsed());
    let mut saw_down = false;
    while let Ok(event) = a_events.try_recv() {
        if let MembershipEvent::MemberDown(id) = event {
            assert_eq!(id.node_id, "c");
            saw_down = true;
        }
    }
    assert!(saw_down);
    assert!(matches!(
        c.broadcast(&b"late"[..]).await,
        Err(Error::Stopped)
    ));

    b.broadcast(&b"hello"[..]).await.unwrap();
    let event = tokio::time::timeout(WAIT, async {
        loop {
            match a_events.recv().await {
                Some(MembershipEvent::Broadcast { origin, payload }) => break (origin, payload),
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("broadcast delivered");
    assert_eq!(
        event,
        ("b".to_string(), bytes::Bytes::from_static(b"hello"))
    );

    for handle in [&a, &b] {
        handle.shutdown().await.unwrap();
    }
    assert!(matches!(a.broadcast(&b"x"[..]).await, Err(Error::Stopped)));
}

#[tokio::test]
async fn udp_node_with_the_wrong_secret_cannot_join() {
    let (a, mut a_events) = Membership::start(socket_config("a", Some(b"right"), vec![]))
        .await
        .unwrap();
    let seeds = vec![a.local().address];
    let (b, _b_events) = Membership::start(socket_config("b", Some(b"right"), seeds.clone()))
        .await
        .unwrap();
    wait_for_members(&a, &["a", "b"]).await;
    let (x, _x_events) = Membership::start(socket_config("x", Some(b"wrong"), seeds.clone()))
        .await
        .unwrap();
    let (y, _y_events) = Membership::start(socket_config("y", None, seeds))
        .await
        .unwrap();

    eventually("a to count the intruders' packets as auth_failed", || {
        a.packet_counts().received_auth_failed >= 6
    })
    .await;
    // Keep watching for a while: they keep announcing every 100 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for handle in [&a, &b] {
        let names: Vec<String> = handle.members().into_iter().map(|m| m.node_id).collect();
        assert_eq!(names, ["a", "b"]);
    }
    for intruder in [&x, &y] {
        assert_eq!(intruder.members().len(), 1);
        assert!(!intruder.is_joined());
        assert_eq!(intruder.packet_counts().received_ok, 0);
    }
    while let Ok(event) = a_events.try_recv() {
        if let MembershipEvent::MemberUp(id) = event {
            assert_eq!(id.node_id, "b", "only b ever joined");
        }
    }
    let counts = a.packet_counts();
    println!("udp: a's counts with intruders: {counts:?}");
    assert_eq!(counts.received_malformed, 0);
    for handle in [&a, &b, &x, &y] {
        handle.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn udp_garbage_is_dropped_and_counted() {
    let (a, _events) = Membership::start(socket_config("a", Some(b"s"), vec![]))
        .await
        .unwrap();
    let sender = tokio::net::UdpSocket::bind(addr(0)).await.unwrap();
    for garbage in [&b"\xff\xff\xff\xff"[..], b"", b"GET / HTTP/1.1\r\n\r\n"] {
        sender.send_to(garbage, a.local_addr()).await.unwrap();
    }
    eventually("three malformed datagrams", || {
        a.packet_counts().received_malformed == 3
    })
    .await;
    assert_eq!(a.packet_counts().received_ok, 0);
    assert_eq!(a.members().len(), 1);
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn udp_dns_seed_is_resolved_and_joined() {
    let (a, _a_events) = Membership::start(socket_config("a", None, vec![]))
        .await
        .unwrap();
    let mut config = socket_config("b", None, vec![]);
    config.dns_seeds = vec![format!("localhost:{}", a.local_addr().port())];
    let (b, _b_events) = Membership::start(config).await.unwrap();
    let took = wait_for_members(&b, &["a", "b"]).await;
    println!("udp: joined through a DNS seed in {took:?}");
    wait_for_members(&a, &["a", "b"]).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let mut config = socket_config("", None, vec![]);
    assert!(matches!(
        Membership::start(config.clone()).await,
        Err(Error::InvalidNodeId(0))
    ));
    config.node_id = "n".repeat(MAX_NODE_ID_LEN + 1);
    assert!(matches!(
        Membership::start(config.clone()).await,
        Err(Error::InvalidNodeId(_))
    ));
    config.node_id = "n".into();
    config.secret = Some(Vec::new());
    assert!(matches!(
        Membership::start(config.clone()).await,
        Err(Error::EmptySecret)
    ));
    config.secret = None;
    config.advertise = SocketAddr::from(([0, 0, 0, 0], 7946));
    assert!(matches!(
        Membership::start(config).await,
        Err(Error::UnspecifiedAdvertise(_))
    ));
    let debug = format!("{:?}", socket_config("n", Some(b"hunter2"), vec![]));
    assert!(debug.contains("<redacted>") && !debug.contains("hunter2"));
}
