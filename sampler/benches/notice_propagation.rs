//! Propagation of decision notices from one sampler to 3 and to 10 others on loopback:
//! real tonic servers with the `otel_tail.v1.Correlation` service on 127.0.0.1, one
//! `NoticeBroadcaster` pushing 20 000 notices at a steady 10 000/s, then 2 000 at
//! 1 000/s, with the default batching (50 ms / 1024 notices / 64 KiB). Everything shares
//! one 2-thread runtime, so the receivers compete with the sender for the CPU.
//!
//! Prints, per cluster size, the p50/p99/max of
//! - end to end: `push` until a receiver's sink has the notice (batching wait included);
//! - wire: receive time − the batch's `sent_at_unix_nano` (what the
//!   `otel_tail_decision_propagation_seconds` histogram records);
//!
//! and the bytes per decision on the wire: encoded batch bytes / notices (each peer gets
//! that much; gRPC adds a 5-byte frame header per batch, HTTP/2 its own framing).
//! Figures only; nothing is asserted.
//!
//! `cargo bench -p otel-tail-sampler --bench notice_propagation`

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otel_tail_sampler::correlation::fanout::{
    BroadcastConfig, NoticeBroadcaster, NoticeSink, NoticesServer, Received, notice_key,
};
use otel_tail_sampler::correlation::{DecisionNotice, ResourceIdentity};
use otel_tail_shared::forward::{Forwarder, ForwarderConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// Notices pushed, notices per millisecond: the main load (batches fill to 64 KiB before
/// the 50 ms flush) and a light one (batches leave on the flush interval).
const LOADS: [(u32, u32); 2] = [(20_000, 10), (2_000, 1)];
const TICK: Duration = Duration::from_millis(1);

/// What a receiver saw: per notice, its index, when it arrived, and the batch's wire time.
#[derive(Default)]
struct Arrivals(Mutex<Vec<(u32, Instant, Duration)>>);

impl NoticeSink for Arrivals {
    fn accept(&self, received: Received) {
        let now = Instant::now();
        let mut arrivals = self.0.lock().unwrap();
        for notice in &received.notices {
            let index = u32::from_be_bytes(notice.trace_id[..4].try_into().unwrap()) - 1;
            arrivals.push((index, now, received.propagation));
        }
    }
}

/// Notice `i`; its trace id starts with `i + 1` (an all-zero id would be invalid).
fn notice(i: u32) -> DecisionNotice {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&(i + 1).to_be_bytes());
    trace_id[4..].copy_from_slice(
        &(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128).to_be_bytes()[4..],
    );
    let start = 1_764_000_000_000_000_000 + u64::from(i) * 1_000_000;
    let pod = i % 40;
    DecisionNotice {
        trace_id,
        resources: vec![
            ResourceIdentity::new(
                "checkout",
                format!("5f0c6a3e-1b2d-4c9e-8f7a-{:012x}", pod),
                format!("checkout-7d9f8b6c5-{pod:05}"),
                format!("ip-10-0-{}-{}.ec2.internal", pod / 8, pod % 8),
            ),
            ResourceIdentity::new(
                "payments",
                "",
                format!("payments-5c8d7f9b4-{:05}", i % 12),
                "",
            ),
        ],
        start_unix_nano: start,
        end_unix_nano: start + 250_000_000,
        policy: "errors".to_owned(),
        correlate: true,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start_receiver() -> (SocketAddr, Arc<Arrivals>, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals = Arc::new(Arrivals::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = NoticesServer::new(arrivals.clone()).with_key(Some(bench_key()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, arrivals, stop)
}

async fn run(peers: usize, count: u32, per_tick: u32) {
    let mut receivers = Vec::new();
    for _ in 0..peers {
        receivers.push(start_receiver().await);
    }
    let (_peers_tx, peers_rx) = watch::channel(receivers.iter().map(|r| r.0).collect());
    let broadcaster = NoticeBroadcaster::spawn(
        "sampler-0".to_owned(),
        BroadcastConfig {
            key: Some(bench_key()),
            ..BroadcastConfig::default()
        },
        Arc::new(Forwarder::new(ForwarderConfig::default())),
        peers_rx,
    );
    let notices: Vec<DecisionNotice> = (0..count).map(notice).collect();

    let mut pushed_at = Vec::with_capacity(count as usize);
    let mut ticks = tokio::time::interval(TICK);
    let started = Instant::now();
    for chunk in notices.chunks(per_tick as usize) {
        ticks.tick().await;
        for notice in chunk {
            pushed_at.push(Instant::now());
            broadcaster.push(notice.clone());
        }
    }
    let push_time = started.elapsed();
    let stats = broadcaster.close().await;

    let mut end_to_end = Vec::new();
    let mut wire = Vec::new();
    for (_, arrivals, _) in &receivers {
        for &(index, at, propagation) in arrivals.0.lock().unwrap().iter() {
            end_to_end.push(at.duration_since(pushed_at[index as usize]));
            wire.push(propagation);
        }
    }
    end_to_end.sort();
    wire.sort();
    let expected = u64::from(count) * peers as u64;
    println!(
        "{peers:>2} peers: {} notices pushed in {:.2} s ({:.0}/s), {} of {expected} deliveries, {} dropped, {} failed",
        stats.pushed,
        push_time.as_secs_f64(),
        f64::from(count) / push_time.as_secs_f64(),
        end_to_end.len(),
        stats.dropped + stats.peer_dropped,
        stats.failed,
    );
    println!(
        "    end to end  p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
        ms(percentile(&end_to_end, 0.50)),
        ms(percentile(&end_to_end, 0.99)),
        ms(*end_to_end.last().unwrap()),
    );
    println!(
        "    wire        p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
        ms(percentile(&wire, 0.50)),
        ms(percentile(&wire, 0.99)),
        ms(*wire.last().unwrap()),
    );
    println!(
        "    {} batches, {:.1} notices/batch, {:.1} bytes per decision per peer, {:.1} bytes per decision for the cluster",
        stats.batches,
        stats.batched as f64 / stats.batches as f64,
        stats.batch_bytes as f64 / stats.batched as f64,
        stats.batch_bytes as f64 * peers as f64 / stats.batched as f64,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (count, per_tick) in LOADS {
            println!(
                "decision notice propagation on loopback: {count} notices at {}/s, default batching",
                u128::from(per_tick) * 1000 / TICK.as_millis()
            );
            run(3, count, per_tick).await;
            run(10, count, per_tick).await;
        }
    });
}

/// Batches are sealed with the cluster secret, as in a cluster with `cluster.secret` set.
fn bench_key() -> std::sync::Arc<otel_tail_shared::seal::ClusterKey> {
    notice_key(b"bench cluster secret")
}
