//! Multi-node tests of cluster mode: real samplers (`otel_tail_sampler::run`, the function
//! the binary runs) in one process, each with its own RocksDB, file exporter, gossip socket
//! and forward endpoint on 127.0.0.1, driven over real OTLP/gRPC. Stopping a node resolves
//! the shutdown future the binary binds to SIGTERM.
//!
//! The policy keeps traces whose first span carries `keep=yes`; that span is always among
//! the first sent, so a trace is only kept whole if its buffered spans (and the policy
//! state rebuilt from them) reached the node that decided it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_sampler::Listening;
use otel_tail_shared::config::Config;
use otel_tail_shared::membership::{Membership, MembershipConfig, MembershipHandle, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A sampler running in this process.
struct Node {
    name: String,
    dir: PathBuf,
    gossip: SocketAddr,
    grpc: SocketAddr,
    forward: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    /// Starts sampler `name` with its gossip socket on `gossip`, joining `seeds`.
    async fn start(
        name: &str,
        root: &Path,
        gossip: SocketAddr,
        seeds: &[SocketAddr],
        decision_wait: &str,
    ) -> Node {
        let dir = root.join(name);
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let yaml = format!(
            r#"
receiver: {{grpc_endpoint: "127.0.0.1:0", http_endpoint: "127.0.0.1:0"}}
cluster:
  node_id: {name}
  gossip_endpoint: "{gossip}"
  forward_endpoint: "127.0.0.1:0"
  seeds: [{seeds}]
  virtual_nodes: 64
  insecure: true
sampler:
  storage_dir: "{dir}"
  decision_wait: {decision_wait}
  policies:
    - {{name: keep, type: string_attribute, string_attribute: {{key: keep, values: ["yes"]}}}}
exporter:
  retry: {{initial_interval: 50ms, max_interval: 200ms}}
telemetry: {{admin_endpoint: "127.0.0.1:0", log_level: warn}}
"#,
            seeds = seeds.join(", "),
            dir = dir.display(),
        );
        let config = Config::from_yaml(&yaml, &|_| None).expect("valid test config");
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let (ready_tx, ready_rx) = oneshot::channel::<Listening>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(otel_tail_sampler::run(
            config,
            None,
            metrics,
            move |listening, _| {
                let _ = ready_tx.send(listening.clone());
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let listening = tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .expect("sampler starts within 30 s")
            .expect("sampler reports its addresses");
        let node = Node {
            name: name.to_owned(),
            dir,
            gossip,
            grpc: listening.receivers.grpc,
            forward: listening.cluster.as_ref().expect("cluster mode").forward,
            admin: listening.admin,
            stop: Some(stop_tx),
            task: Some(task),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.is_ready().await {
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(self.admin).await else {
            return false;
        };
        let request = format!(
            "GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response.starts_with("HTTP/1.1 200")
    }

    /// Resolves the shutdown future (what SIGTERM does) and waits for `run` to return;
    /// returns how long that took.
    async fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("run task").expect("run returns Ok");
        }
        started.elapsed()
    }

    /// Every exported span as (trace id, span id).
    fn exported(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let text = std::fs::read_to_string(self.dir.join("export.jsonl")).unwrap_or_default();
        let mut spans = Vec::new();
        for line in text.lines().filter(|l| l.contains("\"resourceSpans\"")) {
            let request: ExportTraceServiceRequest =
                serde_json::from_str(line).expect("OTLP JSON line");
            for rs in request.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans.into_iter().map(|s| (s.trace_id, s.span_id)));
                }
            }
        }
        spans
    }
}

/// A free UDP port on 127.0.0.1 for a gossip socket.
fn free_gossip_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    socket.local_addr().expect("bound address")
}

/// A router-role observer that joins the cluster to watch its membership.
async fn observer(seeds: &[SocketAddr]) -> MembershipHandle {
    let mut config = MembershipConfig::new("observer", Role::Router, free_gossip_addr());
    config.seeds = seeds.to_vec();
    Membership::start(config).await.expect("observer starts").0
}

/// Waits until `observer` sees exactly `samplers` as live samplers.
async fn wait_for_samplers(observer: &MembershipHandle, samplers: &[&str]) -> Duration {
    let started = Instant::now();
    let expected: BTreeSet<&str> = samplers.iter().copied().collect();
    loop {
        let seen: Vec<String> = observer
            .members()
            .into_iter()
            .filter(|m| m.role == Role::Sampler)
            .map(|m| m.node_id)
            .collect();
        if seen.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected {
            // Give the samplers' own views a moment to catch up with the observer's.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cluster did not converge: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn trace_id(i: u32) -> Vec<u8> {
    let mut id = vec![0x5a; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    id
}

/// Span `n` (1-based) of trace `i`; span 1 carries `keep=yes` when the trace is kept.
fn span(i: u32, n: u8) -> Span {
    let mut span_id = vec![n; 8];
    span_id[..4].copy_from_slice(&i.to_be_bytes());
    let attributes = if n == 1 && kept(i) {
        vec![KeyValue {
            key: "keep".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("yes".into())),
            }),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    Span {
        trace_id: trace_id(i),
        span_id,
        parent_span_id: if n == 1 { Vec::new() } else { vec![9; 8] },
        name: format!("span-{n}"),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        attributes,
        ..Default::default()
    }
}

fn kept(i: u32) -> bool {
    i.is_multiple_of(2)
}

/// Sends span `n` of each trace in `traces` to `target` in one request.
async fn send(target: SocketAddr, traces: impl Iterator<Item = u32>, n: u8) {
    send_with_ring(target, traces, n, None).await;
}

/// [`send`] with the ring-digest header a router sends with the parts it split.
async fn send_with_ring(
    target: SocketAddr,
    traces: impl Iterator<Item = u32>,
    n: u8,
    ring: Option<u64>,
) {
    let spans: Vec<Span> = traces.map(|i| span(i, n)).collect();
    let mut request = tonic::Request::new(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    if let Some(digest) = ring {
        request.metadata_mut().insert(
            otel_tail_shared::forward::RING_HEADER,
            format!("{digest:016x}").parse().unwrap(),
        );
    }
    let mut client = TraceServiceClient::connect(format!("http://{target}"))
        .await
        .expect("connect");
    client.export(request).await.expect("spans accepted");
}

/// Exported spans per trace per node.
fn exports(nodes: &[&Node]) -> BTreeMap<Vec<u8>, BTreeMap<String, Vec<Vec<u8>>>> {
    let mut by_trace: BTreeMap<Vec<u8>, BTreeMap<String, Vec<Vec<u8>>>> = BTreeMap::new();
    for node in nodes {
        for (trace, span) in node.exported() {
            by_trace
                .entry(trace)
                .or_default()
                .entry(node.name.clone())
                .or_default()
                .push(span);
        }
    }
    by_trace
}

/// Waits until `expected` spans are exported in total across `nodes`, then a little longer
/// to catch duplicates, and checks every kept trace of `traces` is exported whole
/// (`spans_per_trace` distinct spans), exactly once, by exactly one node, and that no
/// dropped trace is exported. Returns the number of kept traces exported by each node.
async fn assert_whole_once(
    nodes: &[&Node],
    traces: std::ops::Range<u32>,
    spans_per_trace: usize,
) -> BTreeMap<String, usize> {
    let expected = traces.clone().filter(|i| kept(*i)).count() * spans_per_trace;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let total: usize = nodes.iter().map(|n| n.exported().len()).sum();
        if total >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {total} of {expected} kept spans exported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_trace = exports(nodes);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in traces {
        let found = by_trace.get(&trace_id(i));
        if !kept(i) {
            assert!(found.is_none(), "dropped trace {i} was exported: {found:?}");
            continue;
        }
        let found = found.unwrap_or_else(|| panic!("kept trace {i} was not exported"));
        assert_eq!(
            found.len(),
            1,
            "trace {i} exported by several nodes: {:?}",
            found.keys()
        );
        let (node, spans) = found.iter().next().expect("one node");
        let distinct: BTreeSet<&Vec<u8>> = spans.iter().collect();
        assert_eq!(
            spans.len(),
            spans_per_trace,
            "trace {i} on {node}: {} spans exported",
            spans.len()
        );
        assert_eq!(
            distinct.len(),
            spans_per_trace,
            "trace {i} on {node}: duplicate spans"
        );
        *per_node.entry(node.clone()).or_default() += 1;
    }
    per_node
}

/// Samplers `sampler-a` and `sampler-b` (decision wait 1.5 s) seeding each other, once a
/// gossip observer sees both.
async fn two_samplers(root: &Path) -> (Node, Node, MembershipHandle) {
    let (ga, gb) = (free_gossip_addr(), free_gossip_addr());
    let a = Node::start("sampler-a", root, ga, &[gb], "1500ms").await;
    let b = Node::start("sampler-b", root, gb, &[ga], "1500ms").await;
    let watch = observer(&[ga, gb]).await;
    let converged = wait_for_samplers(&watch, &["sampler-a", "sampler-b"]).await;
    eprintln!("two samplers converged in {converged:?}");
    (a, b, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_samplers_converge_and_spans_sent_to_the_wrong_node_reach_the_owner() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, watch) = two_samplers(root.path()).await;

    // Every trace is split across both nodes: whichever is not the owner must forward.
    send(a.grpc, 0..200, 1).await;
    send(b.grpc, 0..200, 2).await;
    send(a.grpc, 0..200, 3).await;
    let per_node = assert_whole_once(&[&a, &b], 0..200, 3).await;
    assert_eq!(per_node.values().sum::<usize>(), 100);
    assert!(per_node.len() == 2, "both nodes own a share: {per_node:?}");

    watch.shutdown().await.unwrap();
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_split_by_the_same_ring_is_buffered_without_splitting_it_again() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, watch) = two_samplers(root.path()).await;
    let ring = otel_tail_shared::ring::Ring::with_members(
        64,
        ["sampler-a", "sampler-b"].map(otel_tail_shared::ring::NodeId::from),
    );

    // The router's ring is the sampler's: the part is taken as all sampler-a's own, so the
    // traces sampler-b would own stay on sampler-a too (a router never sends such a part;
    // this shows the split was skipped).
    send_with_ring(a.forward, 0..200, 1, Some(ring.digest())).await;
    let per_node = assert_whole_once(&[&a, &b], 0..200, 1).await;
    assert_eq!(
        per_node,
        BTreeMap::from([("sampler-a".to_owned(), 100)]),
        "nothing forwarded"
    );

    // A router with another view of the ring: sampler-a splits and forwards as usual.
    let stale = otel_tail_shared::ring::Ring::with_members(
        64,
        ["sampler-a", "sampler-b", "sampler-c"].map(otel_tail_shared::ring::NodeId::from),
    );
    send_with_ring(a.forward, 200..400, 1, Some(stale.digest())).await;
    let per_node = assert_whole_once(&[&a, &b], 0..400, 1).await;
    assert_eq!(per_node.values().sum::<usize>(), 200);
    assert!(
        per_node.get("sampler-b").is_some_and(|n| *n > 0),
        "sampler-b got its share: {per_node:?}"
    );

    watch.shutdown().await.unwrap();
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_sampler_receives_active_traces_and_each_kept_trace_is_exported_once() {
    let root = tempfile::tempdir().unwrap();
    let (ga, gb, gc) = (free_gossip_addr(), free_gossip_addr(), free_gossip_addr());
    let mut a = Node::start("sampler-a", root.path(), ga, &[gb], "6s").await;
    let mut b = Node::start("sampler-b", root.path(), gb, &[ga], "6s").await;
    let watch = observer(&[ga, gb]).await;
    wait_for_samplers(&watch, &["sampler-a", "sampler-b"]).await;

    send(a.grpc, 0..300, 1).await;
    send(b.grpc, 0..300, 2).await;
    let mut c = Node::start("sampler-c", root.path(), gc, &[ga, gb], "6s").await;
    let converged = wait_for_samplers(&watch, &["sampler-a", "sampler-b", "sampler-c"]).await;
    eprintln!("third sampler converged in {converged:?}");
    // Let the handoff pass run (it starts half a second after the ring change).
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(a.grpc, 0..300, 3).await;

    let per_node = assert_whole_once(&[&a, &b, &c], 0..300, 3).await;
    eprintln!("kept traces exported per node: {per_node:?}");
    assert!(
        per_node.get("sampler-c").copied().unwrap_or_default() > 0,
        "the new node owns and exported whole traces whose first spans were handed to it"
    );
    assert_eq!(per_node.values().sum::<usize>(), 150);

    watch.shutdown().await.unwrap();
    for node in [&mut a, &mut b, &mut c] {
        node.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminated_sampler_hands_off_its_traces_within_the_budget() {
    let root = tempfile::tempdir().unwrap();
    let (ga, gb, gc) = (free_gossip_addr(), free_gossip_addr(), free_gossip_addr());
    let mut a = Node::start("sampler-a", root.path(), ga, &[gb, gc], "8s").await;
    let mut b = Node::start("sampler-b", root.path(), gb, &[ga, gc], "8s").await;
    let mut c = Node::start("sampler-c", root.path(), gc, &[ga, gb], "8s").await;
    let watch = observer(&[ga, gb, gc]).await;
    wait_for_samplers(&watch, &["sampler-a", "sampler-b", "sampler-c"]).await;
    assert_eq!(b.gossip, gb);

    send(a.grpc, 0..300, 1).await;
    send(c.grpc, 0..300, 2).await;
    let took = b.terminate().await;
    eprintln!("sampler-b shut down in {took:?}");
    assert!(took < Duration::from_secs(25), "shutdown took {took:?}");
    wait_for_samplers(&watch, &["sampler-a", "sampler-c"]).await;
    send(a.grpc, 0..300, 3).await;

    let per_node = assert_whole_once(&[&a, &b, &c], 0..300, 3).await;
    assert!(
        !per_node.contains_key("sampler-b"),
        "the leaving node decided nothing: {per_node:?}"
    );
    assert_eq!(per_node.values().sum::<usize>(), 150);

    watch.shutdown().await.unwrap();
    a.terminate().await;
    c.terminate().await;
}
