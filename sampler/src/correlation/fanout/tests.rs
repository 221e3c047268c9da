use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otel_tail_proto::v1::{self, NoticeAck, NoticeBatch};
use otel_tail_shared::forward::auth::ReplayGuard;
use otel_tail_shared::forward::{ForwardCompression, Forwarder, ForwarderConfig};
use otel_tail_shared::otlp::TraceId;
use otel_tail_shared::seal::ClusterKey;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::{
    BatchBuilder, BroadcastConfig, NOTICES_PATH, NoticeBroadcaster, NoticeSink, NoticesServer,
    OpenError, Received, notice_key, open, receive, seal,
};
use crate::correlation::{DecisionNotice, ResourceIdentity};

const ORIGIN: &str = "sampler-0";

fn trace_id(i: u32) -> TraceId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    id[15] = 1;
    id
}

fn notice(i: u32) -> DecisionNotice {
    DecisionNotice {
        trace_id: trace_id(i),
        resources: vec![ResourceIdentity::new(
            "checkout",
            format!("instance-{}", i % 7),
            "",
            "",
        )],
        start_unix_nano: 1_000 + u64::from(i),
        end_unix_nano: 2_000 + u64::from(i),
        policy: "errors".to_owned(),
        correlate: true,
    }
}

/// Records every batch a receiver accepted.
#[derive(Default)]
struct Recorder(Mutex<Vec<Received>>);

impl NoticeSink for Recorder {
    fn accept(&self, received: Received) {
        self.0.lock().unwrap().push(received);
    }
}

impl Recorder {
    fn batch_sizes(&self) -> Vec<usize> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.notices.len())
            .collect()
    }

    /// How many times each trace id arrived.
    fn arrivals(&self) -> HashMap<TraceId, usize> {
        let mut counts = HashMap::new();
        for received in self.0.lock().unwrap().iter() {
            assert_eq!(received.origin, ORIGIN);
            for notice in &received.notices {
                *counts.entry(notice.trace_id).or_default() += 1;
            }
        }
        counts
    }

    fn notices(&self) -> usize {
        self.batch_sizes().iter().sum()
    }
}

/// A real tonic server with the notice service on 127.0.0.1; stops when the sender drops.
struct Receiver {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    _stop: oneshot::Sender<()>,
}

async fn start_receiver() -> Receiver {
    start_keyed_receiver(None).await
}

async fn start_keyed_receiver(key: Option<Arc<ClusterKey>>) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Arc::new(Recorder::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let service = NoticesServer::new(recorder.clone()).with_key(key);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Receiver {
        addr,
        recorder,
        _stop: stop,
    }
}

fn forwarder(timeout: Duration) -> Arc<Forwarder> {
    Arc::new(Forwarder::new(ForwarderConfig {
        timeout,
        connect_timeout: timeout,
        compression: ForwardCompression::Never,
        auth: None,
        tls: None,
    }))
}

fn spawn(config: BroadcastConfig, peers: Vec<SocketAddr>) -> NoticeBroadcaster {
    let (_tx, rx) = watch::channel(peers);
    NoticeBroadcaster::spawn(
        ORIGIN.to_owned(),
        config,
        forwarder(Duration::from_secs(2)),
        rx,
    )
}

async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

#[test]
fn batch_builder_is_full_at_either_limit_and_counts_encoded_bytes() {
    let mut by_count = BatchBuilder::new(3, usize::MAX);
    assert!(!by_count.add(notice(1).to_proto()));
    assert!(!by_count.add(notice(2).to_proto()));
    assert!(by_count.add(notice(3).to_proto()));
    let batch = by_count.take(ORIGIN, 42);
    assert_eq!(batch.origin, ORIGIN);
    assert_eq!(batch.sent_at_unix_nano, 42);
    assert_eq!(batch.notices.len(), 3);
    assert!(by_count.is_empty() && by_count.bytes() == 0 && !by_count.is_full());

    let one = notice(1).to_proto().encoded_len();
    let mut by_bytes = BatchBuilder::new(usize::MAX, 2 * one + 1);
    assert!(!by_bytes.add(notice(1).to_proto()));
    assert!(by_bytes.add(notice(2).to_proto()));
    assert_eq!(by_bytes.len(), 2);
    let counted = by_bytes.bytes();
    // With an empty origin and zero time the batch holds only the notices.
    assert_eq!(by_bytes.take("", 0).encoded_len(), counted);
}

#[test]
fn receive_keeps_valid_notices_and_measures_propagation() {
    let mut bad_id = notice(2).to_proto();
    bad_id.trace_id = vec![1, 2, 3];
    let mut inverted = notice(3).to_proto();
    inverted.end_time_unix_nano = inverted.start_time_unix_nano - 1;
    let batch = NoticeBatch {
        origin: ORIGIN.to_owned(),
        sent_at_unix_nano: 5_000_000_000,
        notices: vec![notice(1).to_proto(), bad_id, inverted, notice(4).to_proto()],
        sealed: None,
    };

    let received = receive(batch.clone(), 5_250_000_000);
    assert_eq!(received.origin, ORIGIN);
    assert_eq!(received.notices, vec![notice(1), notice(4)]);
    assert_eq!(received.rejected, 2);
    assert_eq!(received.propagation, Duration::from_millis(250));

    // A sender whose clock is ahead yields zero, not an underflow.
    assert_eq!(receive(batch, 4_000_000_000).propagation, Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_notice_reaches_every_peer_exactly_once() {
    let receivers = [
        start_receiver().await,
        start_receiver().await,
        start_receiver().await,
    ];
    let broadcaster = spawn(
        BroadcastConfig {
            max_batch_notices: 64,
            ..BroadcastConfig::default()
        },
        receivers.iter().map(|r| r.addr).collect(),
    );
    const N: u32 = 1_000;
    for i in 0..N {
        assert!(broadcaster.push(notice(i)));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    let stats = broadcaster.close().await;

    assert_eq!(stats.pushed, u64::from(N));
    assert_eq!(stats.batched, u64::from(N));
    assert_eq!(stats.delivered, 3 * u64::from(N));
    assert_eq!((stats.dropped, stats.failed, stats.peer_dropped), (0, 0, 0));
    for receiver in &receivers {
        let arrivals = receiver.recorder.arrivals();
        assert_eq!(arrivals.len(), N as usize);
        for i in 0..N {
            assert_eq!(arrivals.get(&trace_id(i)), Some(&1), "trace {i}");
        }
        let sizes = receiver.recorder.batch_sizes();
        assert!(sizes.iter().all(|&size| size <= 64), "{sizes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_are_grouped_into_batches() {
    let receiver = start_receiver().await;

    // Within one flush interval: a single batch, sent about when the interval ends.
    let broadcaster = spawn(
        BroadcastConfig {
            flush_interval: Duration::from_millis(150),
            ..BroadcastConfig::default()
        },
        vec![receiver.addr],
    );
    for i in 0..10 {
        broadcaster.push(notice(i));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(receiver.recorder.notices(), 0, "sent before the interval");
    assert!(wait_until(Duration::from_secs(2), || receiver.recorder.notices() == 10).await);
    assert_eq!(receiver.recorder.batch_sizes(), vec![10]);
    let stats = broadcaster.close().await;
    assert_eq!((stats.batches, stats.batched), (1, 10));

    // A full batch leaves at once; closing flushes the rest.
    let receiver = start_receiver().await;
    let broadcaster = spawn(
        BroadcastConfig {
            flush_interval: Duration::from_secs(60),
            max_batch_notices: 4,
            ..BroadcastConfig::default()
        },
        vec![receiver.addr],
    );
    for i in 0..10 {
        broadcaster.push(notice(i));
    }
    assert!(wait_until(Duration::from_secs(2), || receiver.recorder.notices() == 8).await);
    let stats = broadcaster.close().await;
    assert_eq!(receiver.recorder.batch_sizes(), vec![4, 4, 2]);
    assert_eq!(stats.batches, 3);
    assert!(stats.batch_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_does_not_block_the_others() {
    let live = [start_receiver().await, start_receiver().await];
    // Accepts connections (kernel backlog) but never speaks HTTP/2: every call times out.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Nothing listens here: connections are refused.
    let refused = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut peers: Vec<SocketAddr> = live.iter().map(|r| r.addr).collect();
    peers.push(silent.local_addr().unwrap());
    peers.push(refused);
    let (_tx, rx) = watch::channel(peers);
    let broadcaster = NoticeBroadcaster::spawn(
        ORIGIN.to_owned(),
        BroadcastConfig {
            flush_interval: Duration::from_millis(20),
            call_timeout: Duration::from_millis(300),
            retry_backoff: Duration::from_millis(50),
            ..BroadcastConfig::default()
        },
        forwarder(Duration::from_millis(300)),
        rx,
    );

    for round in 0..3u32 {
        let started = tokio::time::Instant::now();
        for i in 0..50 {
            broadcaster.push(notice(round * 50 + i));
        }
        let expected = (round as usize + 1) * 50;
        assert!(
            wait_until(Duration::from_millis(500), || live
                .iter()
                .all(|r| r.recorder.notices() == expected))
            .await,
            "round {round}: live peers waited for the dead ones"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    let stats = tokio::time::timeout(Duration::from_secs(10), broadcaster.close())
        .await
        .expect("closing is bounded by the attempts");
    assert_eq!(stats.delivered, 2 * 150);
    assert_eq!(stats.failed + stats.peer_dropped, 2 * 150);
    for receiver in &live {
        assert_eq!(receiver.recorder.arrivals().len(), 150);
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let receiver = start_receiver().await;
    let broadcaster = spawn(
        BroadcastConfig {
            queue_capacity: 5,
            ..BroadcastConfig::default()
        },
        vec![receiver.addr],
    );
    // On this single-threaded runtime the batcher cannot run between the pushes.
    let accepted: Vec<bool> = (0..20).map(|i| broadcaster.push(notice(i))).collect();
    assert_eq!(accepted.iter().filter(|&&ok| ok).count(), 5);
    assert!(accepted[..5].iter().all(|&ok| ok));

    let stats = broadcaster.close().await;
    assert_eq!((stats.pushed, stats.dropped), (5, 15));
    assert_eq!(receiver.recorder.notices(), 5);
    assert_eq!(receiver.recorder.arrivals().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_misses_batches_beyond_its_queue() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(vec![silent.local_addr().unwrap()]);
    let broadcaster = NoticeBroadcaster::spawn(
        ORIGIN.to_owned(),
        BroadcastConfig {
            max_batch_notices: 1,
            peer_queue_batches: 1,
            max_attempts: 1,
            call_timeout: Duration::from_millis(200),
            ..BroadcastConfig::default()
        },
        forwarder(Duration::from_millis(200)),
        rx,
    );
    for i in 0..10 {
        broadcaster.push(notice(i));
    }
    let stats = tokio::time::timeout(Duration::from_secs(5), broadcaster.close())
        .await
        .unwrap();
    assert_eq!(stats.batches, 10);
    assert!(stats.peer_dropped >= 1, "{stats:?}");
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.failed + stats.peer_dropped, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_join_later_receive_later_batches() {
    let first = start_receiver().await;
    let second = start_receiver().await;
    let (tx, rx) = watch::channel(vec![first.addr]);
    let broadcaster = NoticeBroadcaster::spawn(
        ORIGIN.to_owned(),
        BroadcastConfig {
            flush_interval: Duration::from_millis(10),
            ..BroadcastConfig::default()
        },
        forwarder(Duration::from_secs(2)),
        rx,
    );
    broadcaster.push(notice(1));
    assert!(wait_until(Duration::from_secs(2), || first.recorder.notices() == 1).await);
    tx.send(vec![first.addr, second.addr]).unwrap();
    broadcaster.push(notice(2));
    broadcaster.close().await;

    assert_eq!(first.recorder.arrivals().len(), 2);
    let second_got = second.recorder.arrivals();
    assert_eq!(second_got.len(), 1);
    assert!(second_got.contains_key(&trace_id(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_acknowledges_valid_notices_over_grpc() {
    let receiver = start_receiver().await;
    let mut bad = notice(9).to_proto();
    bad.trace_id = vec![0; 16];
    let batch = NoticeBatch {
        origin: ORIGIN.to_owned(),
        sent_at_unix_nano: 1,
        notices: vec![notice(1).to_proto(), bad, notice(2).to_proto()],
        sealed: None,
    };
    let ack: NoticeAck = forwarder(Duration::from_secs(2))
        .unary(receiver.addr, NOTICES_PATH, batch, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(ack.accepted, 2);
    let received = receiver.recorder.0.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].notices, vec![notice(1), notice(2)]);
    assert_eq!(received[0].rejected, 1);

    let unknown: Result<NoticeAck, _> = forwarder(Duration::from_secs(2))
        .unary(
            receiver.addr,
            "/otel_tail.v1.Correlation/Other",
            v1::NoticeBatch::default(),
            Duration::from_secs(2),
        )
        .await;
    assert!(unknown.is_err());
}

#[test]
fn sealed_batches_open_only_with_the_cluster_key() {
    let key = notice_key(b"cluster secret");
    let batch = NoticeBatch {
        origin: ORIGIN.to_owned(),
        sent_at_unix_nano: SENT,
        notices: vec![notice(1).to_proto()],
        sealed: None,
    };
    let guard = ReplayGuard::default();
    let sealed = seal(batch.clone(), Some(&key));
    assert!(sealed.notices.is_empty() && sealed.origin.is_empty());
    assert_eq!(
        open(
            sealed.clone(),
            Some(&notice_key(b"other secret")),
            SENT,
            &guard
        ),
        Err(OpenError::Unauthenticated)
    );
    assert_eq!(
        open(sealed.clone(), None, SENT, &guard),
        Err(OpenError::Unauthenticated)
    );
    assert_eq!(open(sealed, Some(&key), SENT, &guard), Ok(batch.clone()));
    assert_eq!(
        open(batch.clone(), Some(&key), SENT, &guard),
        Err(OpenError::Unauthenticated),
        "a keyed node refuses plain batches"
    );
    assert_eq!(open(batch.clone(), None, SENT, &guard), Ok(batch));
}

/// Unix nanoseconds a test batch is sent at.
const SENT: u64 = 1_767_225_600_000_000_000;

#[test]
fn a_sealed_batch_is_accepted_once_and_only_within_a_minute() {
    let key = notice_key(b"cluster secret");
    let guard = ReplayGuard::default();
    let batch = |sent_at_unix_nano| NoticeBatch {
        origin: ORIGIN.to_owned(),
        sent_at_unix_nano,
        notices: vec![notice(1).to_proto()],
        sealed: None,
    };
    let sealed = seal(batch(SENT), Some(&key));
    assert!(open(sealed.clone(), Some(&key), SENT + 1_000, &guard).is_ok());
    assert_eq!(
        open(sealed, Some(&key), SENT + 2_000, &guard),
        Err(OpenError::Replayed),
        "the same sealed batch again"
    );
    let minute = 60_000_000_000;
    for sent in [SENT - minute - 1_000_000, SENT + minute + 1_000_000, 0] {
        assert_eq!(
            open(seal(batch(sent), Some(&key)), Some(&key), SENT, &guard),
            Err(OpenError::Replayed),
            "sent at {sent}"
        );
    }
    assert!(
        open(
            seal(batch(SENT - minute), Some(&key)),
            Some(&key),
            SENT,
            &guard
        )
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_notices_reach_a_keyed_peer_and_forged_ones_are_refused() {
    let key = notice_key(b"cluster secret");
    let receiver = start_keyed_receiver(Some(key.clone())).await;
    let (addr, recorder) = (receiver.addr, receiver.recorder.clone());
    let broadcaster = spawn(
        BroadcastConfig {
            key: Some(key),
            ..BroadcastConfig::default()
        },
        vec![addr],
    );
    assert!(broadcaster.push(notice(1)));
    assert!(
        wait_until(Duration::from_secs(5), || recorder.0.lock().unwrap().len()
            == 1)
        .await,
        "the sealed batch arrived"
    );
    assert_eq!(recorder.0.lock().unwrap()[0].notices, vec![notice(1)]);
    let forged: Result<NoticeAck, _> = forwarder(Duration::from_secs(2))
        .unary(
            addr,
            NOTICES_PATH,
            NoticeBatch {
                origin: "intruder".into(),
                notices: vec![notice(2).to_proto()],
                ..NoticeBatch::default()
            },
            Duration::from_secs(2),
        )
        .await;
    assert!(forged.is_err(), "a plain batch is refused by a keyed node");
    assert_eq!(recorder.0.lock().unwrap().len(), 1);
}
