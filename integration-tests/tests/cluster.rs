//! The cluster end to end with real binaries on 127.0.0.1: samplers and routers
//! gossiping with a shared secret, traffic through both routers, every sampler
//! exporting to one shared sink that records which sampler exported each span.
//!
//! The policy keeps traces marked `keep=yes` on every span, so which traces must come
//! out is known from the sender side, and a trace that reached two samplers shows up
//! as exported in two pieces.
//!
//! The tests in this file run one after the other (each starts five to seven
//! processes; in parallel they would compete for the CPU with gossip timeouts).

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel_tail_integration_tests::cluster::{Cluster, ClusterSpec};
use otel_tail_integration_tests::completeness::{Completeness, Ledger};
use otel_tail_integration_tests::generate::{Generator, TraceShape};
use otel_tail_integration_tests::sdk::{self, Transport};
use otel_tail_integration_tests::traffic::{
    self, KEEP_ATTRIBUTE, SteadyConfig, SteadyLoad, TrafficSnapshot,
};
use otel_tail_shared::ring::{NodeId, Ring};
use tokio::sync::Mutex;

/// Serialises the tests of this file.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Longest wait for every acknowledged kept span to be exported.
const EXPORT_WAIT: Duration = Duration::from_secs(45);

/// One SDK service: name, transport, router index.
const SERVICES: [(&str, Transport, usize); 4] = [
    ("frontend", Transport::Grpc, 0),
    ("cart", Transport::Http, 0),
    ("checkout", Transport::Grpc, 1),
    ("payment", Transport::Http, 1),
];

fn provider(
    cluster: &Cluster,
    service: &str,
    transport: Transport,
    router: usize,
) -> SdkTracerProvider {
    let router = &cluster.routers()[router];
    sdk::tracer_provider(
        transport,
        &router.grpc_endpoint(),
        &router.http_endpoint(),
        service,
    )
    .expect("SDK pipeline")
}

/// One distributed trace made with the SDK: a server root and a child in `caller`
/// (behind one router), a remote child and grandchild in `callee` (behind the other,
/// parented through the propagated span context). Every span is marked `keep`.
/// Records every span in `ledger`.
fn sdk_trace(
    caller: &SdkTracerProvider,
    callee: &SdkTracerProvider,
    kept: bool,
    ledger: &mut Ledger,
) {
    let keep = KeyValue::new(KEEP_ATTRIBUTE, if kept { "yes" } else { "no" });
    let tracer = caller.tracer("cluster-test");
    let root = tracer
        .span_builder("GET /api/checkout")
        .with_kind(SpanKind::Server)
        .with_attributes([keep.clone(), KeyValue::new("http.route", "/api/checkout")])
        .start(&tracer);
    let cx = Context::current_with_span(root);
    let mut local = tracer
        .span_builder("load cart")
        .with_attributes([keep.clone()])
        .start_with_context(&tracer, &cx);
    record(local.span_context(), kept, ledger);
    local.end();

    let remote_tracer = callee.tracer("cluster-test");
    let remote_cx = Context::new().with_remote_span_context(cx.span().span_context().clone());
    let server = remote_tracer
        .span_builder("checkout/Handle")
        .with_kind(SpanKind::Server)
        .with_attributes([keep.clone()])
        .start_with_context(&remote_tracer, &remote_cx);
    let server_cx = Context::current_with_span(server);
    let mut db = remote_tracer
        .span_builder("SELECT orders")
        .with_kind(SpanKind::Client)
        .with_attributes([keep])
        .start_with_context(&remote_tracer, &server_cx);
    record(db.span_context(), kept, ledger);
    db.end();
    record(server_cx.span().span_context(), kept, ledger);
    server_cx.span().end();
    record(cx.span().span_context(), kept, ledger);
    cx.span().end();
}

fn record(sc: &SpanContext, kept: bool, ledger: &mut Ledger) {
    ledger.sent(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes(), kept);
}

/// Marks every span of `ledger` acknowledged (the SDK flushed without error).
fn acknowledge_all(ledger: &mut Ledger) {
    let spans: Vec<([u8; 16], [u8; 8])> = ledger
        .traces()
        .iter()
        .flat_map(|(t, sent)| sent.spans.keys().map(move |s| (*t, *s)))
        .collect();
    for (trace, span) in spans {
        ledger.acknowledged(&trace, &span);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_and_split_traffic_through_two_routers_is_exported_whole_once_by_the_owner() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("3 samplers + 2 routers start");

    // Real SDK pipelines: half the services behind each router, gRPC and HTTP.
    let providers: Vec<SdkTracerProvider> = SERVICES
        .iter()
        .map(|(name, transport, router)| provider(&cluster, name, *transport, *router))
        .collect();
    let mut ledger = Ledger::default();
    let mut kept_sdk = 0;
    for i in 0..60 {
        // Caller behind router 0, callee behind router 1, or the other way round.
        let (caller, callee) = if i % 2 == 0 {
            (i % 4 / 2, 2 + i % 4 / 2)
        } else {
            (2 + i % 4 / 2, i % 4 / 2)
        };
        let kept = i % 3 == 0;
        kept_sdk += usize::from(kept);
        sdk_trace(&providers[caller], &providers[callee], kept, &mut ledger);
    }
    for provider in providers {
        sdk::shutdown_traces(provider)
            .await
            .expect("the SDK exported every span through the routers");
    }
    acknowledge_all(&mut ledger);

    // Raw requests splitting each trace's spans between the two routers.
    let shape = TraceShape {
        spans_per_trace: 6,
        error_share: 0.0,
        logs_per_trace: 0,
    };
    let mut generator = Generator::new(41, shape);
    let (raw, stats) = traffic::send_split(&cluster.router_endpoints(), &mut generator, 6 * 200)
        .await
        .expect("raw split traffic");
    assert_eq!(
        (stats.failed_requests, stats.rejected_spans),
        (0, 0),
        "every split request acknowledged in full: {stats:?}"
    );
    ledger.merge(raw);

    let mut cluster = cluster;
    let c = cluster.assess_when_settled(&ledger, EXPORT_WAIT).await;
    println!("sdk+split traffic through 2 routers: {c}");
    assert!(c.kept_traces >= kept_sdk + 20, "{c}");
    assert_eq!(c.missing_traces, 0, "every kept trace exported: {c}");
    assert_eq!(c.ratio(), 1.0, "every kept trace exported whole: {c}");
    assert_eq!(c.duplicates, 0, "every span exported once: {c}");
    assert_eq!(
        c.split_traces, 0,
        "each kept trace exported by one sampler: {c}"
    );
    assert_eq!(
        c.leaked_spans, 0,
        "no span of a dropped trace exported: {c}"
    );

    // The one sampler is the trace's owner on the ring of the three samplers.
    let ring = Ring::with_members(
        ClusterSpec::default().virtual_nodes,
        cluster
            .samplers()
            .iter()
            .map(|s| NodeId::from(s.node_id.as_str())),
    );
    let exports = cluster.exports();
    let mut exporters = BTreeSet::new();
    for (trace, sent) in ledger.traces().iter().filter(|(_, t)| t.kept) {
        let owner = ring.owner_of_trace(trace).expect("ring not empty");
        let sources = exports.sources_of(trace);
        assert_eq!(
            sources,
            BTreeSet::from([owner.as_str()]),
            "trace {trace:02x?} ({} spans) exported by its owner only",
            sent.spans.len()
        );
        exporters.insert(owner.as_str().to_string());
    }
    assert_eq!(exporters.len(), 3, "every sampler owns some kept traces");
}

/// What one scale event did to the traffic sent around it.
struct EventReport {
    name: &'static str,
    completeness: Completeness,
    traffic: TrafficSnapshot,
}

/// Starts a steady load through the routers and lets it run for a few seconds
/// before the event.
async fn begin_load(cluster: &Cluster, seed: u64) -> SteadyLoad {
    let load = SteadyLoad::start(SteadyConfig {
        endpoints: cluster.router_endpoints(),
        traces_per_sec: 100,
        spans_per_trace: 6,
        part_delay: Duration::from_millis(400),
        seed,
    })
    .await
    .expect("load starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    load
}

/// Lets the load run a few more seconds after the event, stops it, waits for every
/// acknowledged kept span to come out, and prints the event's report line.
async fn finish_load(
    cluster: &mut Cluster,
    load: SteadyLoad,
    name: &'static str,
    what: String,
) -> EventReport {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ledger, traffic) = load.stop().await;
    let completeness = cluster.assess_when_settled(&ledger, EXPORT_WAIT).await;
    println!("{}", completeness.report_line(name));
    println!("  {name}: {what}; traffic {traffic:?}");
    EventReport {
        name,
        completeness,
        traffic,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_events_under_steady_load_keep_traces_whole() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("3 samplers + 2 routers start");
    let mut reports = Vec::new();

    let load = begin_load(&cluster, 101).await;
    let a = cluster.add_sampler().await.expect("4th sampler starts");
    let b = cluster.add_sampler().await.expect("5th sampler starts");
    let took = cluster
        .wait_ring(5, Duration::from_secs(30))
        .await
        .expect("ring of 5");
    let what = format!(
        "added {} and {}; every node counted 5 samplers {took:?} after both were ready",
        cluster.samplers()[a].node_id,
        cluster.samplers()[b].node_id
    );
    reports.push(finish_load(&mut cluster, load, "add-2-samplers", what).await);

    // As the chart's StatefulSet (parallel pod management) scales 5 -> 3: the two
    // highest ordinals get SIGTERM at once and hand off while the other leaves too.
    let load = begin_load(&cluster, 202).await;
    let started = tokio::time::Instant::now();
    for index in [4, 3] {
        cluster.samplers()[index]
            .process
            .signal_term()
            .expect("SIGTERM");
    }
    let mut took = Vec::new();
    for index in [4, 3] {
        let status = cluster
            .sampler_mut(index)
            .process
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("sampler exits after SIGTERM");
        assert!(status.success(), "graceful exit: {status}");
        took.push(format!(
            "{} exited {:?} after SIGTERM",
            cluster.samplers()[index].node_id,
            started.elapsed()
        ));
    }
    cluster
        .wait_ring(3, Duration::from_secs(30))
        .await
        .expect("ring of 3");
    reports.push(
        finish_load(
            &mut cluster,
            load,
            "remove-2-samplers-sigterm",
            took.join(", "),
        )
        .await,
    );

    let load = begin_load(&cluster, 303).await;
    let started = tokio::time::Instant::now();
    cluster.kill_sampler(1).expect("kill -9");
    cluster
        .restart_sampler(1)
        .await
        .expect("restarts on its storage with its node id");
    let ready = started.elapsed();
    cluster
        .wait_ring(3, Duration::from_secs(30))
        .await
        .expect("ring of 3 again");
    let what = format!(
        "{} killed and ready again after {ready:?}",
        cluster.samplers()[1].node_id
    );
    reports.push(finish_load(&mut cluster, load, "kill9-and-restart-1-sampler", what).await);

    for report in &reports {
        let c = &report.completeness;
        assert!(
            c.kept_traces > 100,
            "{}: too little traffic: {c}",
            report.name
        );
        assert!(
            c.ratio() >= 0.999,
            "{}: completeness below 99.9%: {c}; traffic {:?}",
            report.name,
            report.traffic
        );
        assert_eq!(
            c.lost_acknowledged_spans, 0,
            "{}: acknowledged spans lost: {c}",
            report.name
        );
        assert_eq!(
            c.leaked_spans, 0,
            "{}: spans of dropped traces exported: {c}",
            report.name
        );
        assert_eq!(
            report.traffic.rejected_spans, 0,
            "{}: spans refused: {:?}",
            report.name, report.traffic
        );
    }
}
