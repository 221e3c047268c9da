//! SWIM membership between real processes on 127.0.0.1: how fast a join and a crash
//! are seen by every node, a node with the wrong secret kept out, malformed datagrams
//! dropped and counted. Read through each node's `/metrics`
//! (`otel_tail_ring_members{role="sampler"}`, `otel_tail_gossip_packets_total`).
//!
//! The tests in this file run one after the other, so their timings are not skewed by
//! each other's processes.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use otel_tail_integration_tests::cluster::{
    Cluster, ClusterSpec, free_tcp_addrs, free_udp_addrs, gossip_received, sampler_members,
};
use otel_tail_integration_tests::generate::{Generator, TraceShape};
use otel_tail_integration_tests::metrics_text::MetricsSnapshot;
use otel_tail_integration_tests::traffic;
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{HarnessError, SamplerProcess};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Serialises the tests of this file.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Longest a membership change may take to be seen everywhere.
const CONVERGENCE: Duration = Duration::from_secs(30);

fn small_cluster() -> ClusterSpec {
    ClusterSpec {
        samplers: 2,
        routers: 1,
        ..ClusterSpec::default()
    }
}

/// Gossip addresses of every node of `cluster`: samplers, then routers.
fn gossip_addrs(cluster: &Cluster) -> Vec<SocketAddr> {
    let samplers = cluster.samplers().iter().map(|s| s.gossip);
    let routers = cluster.routers().iter().map(|r| {
        r.addrs()
            .gossip
            .expect("routers print their gossip address")
    });
    samplers.chain(routers).collect()
}

/// Waits until `scrape` (one node's metrics) shows `samplers` live samplers; returns
/// how long it took from `since`.
async fn node_sees(
    what: &str,
    since: Instant,
    samplers: f64,
    scrape: impl AsyncFn() -> Result<MetricsSnapshot, HarnessError>,
) -> Duration {
    poll_until(what, CONVERGENCE, || async {
        Ok((sampler_members(&scrape().await?) == samplers).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_and_crash_are_seen_by_every_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(small_cluster())
        .await
        .expect("2 samplers + 1 router start");

    let spawned = Instant::now();
    let joined = cluster.add_sampler().await.expect("3rd sampler starts");
    let ready = spawned.elapsed();
    let converged = cluster
        .wait_ring(3, CONVERGENCE)
        .await
        .expect("every node counts the new sampler");
    println!(
        "membership: join: {} spawned → ready {ready:?}; every node counted 3 samplers {:?} after spawn",
        cluster.samplers()[joined].node_id,
        spawned.elapsed()
    );
    assert!(
        converged < Duration::from_secs(10),
        "join seen in {converged:?}"
    );

    let victim = cluster.samplers()[0].node_id.clone();
    let crashed = Instant::now();
    cluster.kill_sampler(0).expect("kill -9");
    let survivor_a = &cluster.samplers()[1].process;
    let survivor_b = &cluster.samplers()[joined].process;
    let router = &cluster.routers()[0];
    let (samplers_a, samplers_b, routers) = tokio::join!(
        node_sees(
            "survivor 1 to drop the crashed sampler",
            crashed,
            2.0,
            || survivor_a.metrics()
        ),
        node_sees(
            "survivor 2 to drop the crashed sampler",
            crashed,
            2.0,
            || survivor_b.metrics()
        ),
        node_sees(
            "the router to drop the crashed sampler",
            crashed,
            2.0,
            || router.metrics()
        ),
    );
    println!(
        "membership: crash: {victim} kill -9 → marked down by the samplers after {:?} / {:?}, \
         router stopped routing to it after {routers:?}",
        samplers_a, samplers_b
    );

    // The router no longer routes to the dead sampler: traffic through it is accepted
    // at the first attempt.
    let shape = TraceShape {
        spans_per_trace: 4,
        error_share: 0.0,
        logs_per_trace: 0,
    };
    let mut generator = Generator::new(7, shape);
    let (sent, stats) = traffic::send_split(&[router.grpc_endpoint()], &mut generator, 4 * 100)
        .await
        .expect("traffic");
    assert_eq!(sent.acknowledged_count(), 400, "{stats:?}");
    assert_eq!(
        stats.retries, 0,
        "no request went to the crashed sampler: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(small_cluster())
        .await
        .expect("2 samplers + 1 router start");
    let before: Vec<f64> = scrape_each(&cluster)
        .await
        .iter()
        .map(|m| gossip_received(m, "auth_failed"))
        .collect();
    assert!(before.iter().all(|n| *n == 0.0), "{before:?}");

    let gossip = free_udp_addrs(1).expect("port")[0];
    let forward = free_tcp_addrs(1).expect("port")[0];
    let seeds: Vec<SocketAddr> = cluster.samplers().iter().map(|s| s.gossip).collect();
    let intruder = SamplerProcess::start(cluster.sampler_config(
        "intruder",
        gossip,
        forward,
        &seeds,
        "not-the-cluster-secret-but-32-bytes-long",
    ))
    .await
    .expect("the intruder starts (alone, after its join grace)");

    // The intruder announces itself to its seeds (the samplers); nobody answers it,
    // so the router never hears from it.
    poll_until(
        "the intruder's seeds to count failed authentications",
        CONVERGENCE,
        || async {
            let samplers = &scrape_each(&cluster).await[..seeds.len()];
            Ok(samplers
                .iter()
                .all(|m| gossip_received(m, "auth_failed") > 0.0)
                .then_some(()))
        },
    )
    .await
    .expect("the intruder's datagrams reached the samplers and were refused");
    // Keep watching for a while: no member ever counts the intruder.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        for m in scrape_each(&cluster).await {
            assert_eq!(sampler_members(&m), 2.0, "the intruder was let in");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let intruder_view = intruder.metrics().await.expect("intruder metrics");
    assert_eq!(
        sampler_members(&intruder_view),
        1.0,
        "the intruder sees nobody but itself"
    );
    assert_eq!(
        gossip_received(&intruder_view, "ok"),
        0.0,
        "no member answered the intruder"
    );
    let refused: Vec<String> = cluster
        .scrape_all()
        .await
        .expect("every node answers /metrics")
        .iter()
        .map(|(node, m)| format!("{node}={}", gossip_received(m, "auth_failed")))
        .collect();
    println!(
        "membership: wrong secret: auth_failed {}; no member ever counted the intruder",
        refused.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_datagrams_are_dropped_and_counted() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(small_cluster())
        .await
        .expect("2 samplers + 1 router start");
    let targets = gossip_addrs(&cluster);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
    // Not a protobuf message (field 31, wire type 7 does not exist), and an empty one.
    let garbage: [&[u8]; 2] = [&[0xff; 32], &[]];
    for target in &targets {
        for datagram in garbage {
            socket.send_to(datagram, target).expect("send");
        }
    }
    poll_until(
        "every node to count the malformed datagrams",
        Duration::from_secs(10),
        || async {
            let scraped = scrape_each(&cluster).await;
            Ok(scraped
                .iter()
                .all(|m| gossip_received(m, "malformed") >= 2.0)
                .then_some(()))
        },
    )
    .await
    .expect("malformed datagrams counted");
    for m in scrape_each(&cluster).await {
        assert_eq!(sampler_members(&m), 2.0, "membership unaffected by garbage");
        assert_eq!(gossip_received(&m, "auth_failed"), 0.0);
    }
    println!(
        "membership: malformed: {} nodes each dropped and counted 2 garbage datagrams",
        targets.len()
    );
}

/// `/metrics` of every node, samplers then routers.
async fn scrape_each(cluster: &Cluster) -> Vec<MetricsSnapshot> {
    cluster
        .scrape_all()
        .await
        .expect("every node answers /metrics")
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}
