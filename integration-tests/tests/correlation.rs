//! Correlated retention with real binaries (`docs/correlation-and-rollups.md`): which logs
//! and metric points leave raw, marked with why, and that everything else is rolled up
//! with totals that add up — across a cluster, and across a SIGKILL during the hold.
//!
//! Every log record and point carries a unique `test.item_id`, so each raw export is
//! matched with the item sent; the expected fate of every item is computed from what was
//! sent and which traces were exported (see `otel_tail_integration_tests::correlate`).
//!
//! The tests in this file run one after the other: both are timing-sensitive (holds and
//! rollup intervals of a few seconds) and the cluster test runs four processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::completeness::TraceKey;
use otel_tail_integration_tests::correlate::{
    Assessment, Batch, HELD_ITEMS, ITEM_ID_ATTRIBUTE, Identity, ItemKind, Observed, Reason, Sender,
    SentItem, SentSignals, SentTrace, SignalCluster, TEST_METRIC, VIRTUAL_NODES, Widening,
    Workload, WorkloadShape, held_items, kept_traces, repeated_rollup_series, span,
};
use otel_tail_integration_tests::export::ExportedData;
use otel_tail_integration_tests::load::unix_nanos_now;
use otel_tail_integration_tests::sdk::{self, Transport};
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_shared::ring::{NodeId, Ring};
use otel_tail_shared::split::{metric_series_key, resource_identity_key};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Serialises the tests of this file.
static SERIAL: Mutex<()> = Mutex::const_new(());

const MS: u64 = 1_000_000;
/// `correlation.before` / `correlation.after` of every sampler here.
const WIDENING: Widening = Widening {
    before: Duration::from_millis(200),
    after: Duration::from_millis(200),
};
/// The policy that keeps error traces; it correlates by window (the default of
/// `status_code`).
const ERRORS_POLICY: &str = "errors";
/// How long output may take beyond the hold and the rollup interval.
const OUTPUT_MARGIN: Duration = Duration::from_secs(20);

fn errors_policy() -> Value {
    json!({"name": ERRORS_POLICY, "type": "status_code", "status_code": {"status_codes": ["ERROR"]}})
}

/// The rollup section: `interval` for both signals; the item id is dropped from the test
/// metric's series (it exists only to match raw exports).
fn rollup(interval: Duration) -> Value {
    let interval = format!("{}ms", interval.as_millis());
    json!({
        "logs": {"interval": interval},
        "metrics": {"interval": interval, "rules": [
            {"metric": TEST_METRIC, "drop_attributes": [ITEM_ID_ATTRIBUTE]}
        ]},
    })
}

/// Kept traces of an export: trace id → whether its policy correlates by window.
fn kept_by_window(data: &ExportedData) -> (BTreeMap<TraceKey, String>, BTreeMap<TraceKey, bool>) {
    let policies = kept_traces(data);
    let windows = policies
        .iter()
        .map(|(t, p)| (*t, p == ERRORS_POLICY))
        .collect();
    (policies, windows)
}

/// Waits until every sent log record and point value is accounted for in `read()`
/// (raw or rolled up), then until nothing is held or active anywhere and the output
/// has not changed for `quiet` (so a late duplicate would be seen). Returns the output.
async fn wait_for_output<F, Fut>(
    sent: &SentSignals,
    timeout: Duration,
    quiet: Duration,
    mut read: F,
) -> ExportedData
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (ExportedData, f64)>,
{
    let (logs, points) = (
        sent.count(ItemKind::Log),
        sent.count(ItemKind::Point) as f64,
    );
    let deadline = Instant::now() + timeout;
    let mut last: Option<(u64, f64)> = None;
    let mut stable_since = Instant::now();
    loop {
        let (data, pending) = read().await;
        let observed = Observed::read(&data);
        let totals = (observed.logs_out(), observed.point_value_out());
        if Some(totals) != last {
            last = Some(totals);
            stable_since = Instant::now();
        }
        let complete = totals.0 >= logs && totals.1 >= points;
        if complete && pending == 0.0 && stable_since.elapsed() >= quiet {
            return data;
        }
        if Instant::now() >= deadline {
            println!(
                "  output wait ran out after {timeout:?}: logs {}/{logs}, points {}/{points}, \
                 held or active {pending}",
                totals.0, totals.1
            );
            return data;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sampler that settles `item` on `ring`: a log record with a trace id is held by
/// the trace's owner (once the trace is dropped); other log records route by resource
/// instance, points by metric series.
fn owner_of<'r>(ring: &'r Ring, item: &SentItem) -> Option<&'r NodeId> {
    let resource = item.identity.as_ref().map(Identity::resource);
    let mut key = Vec::new();
    match (item.kind, item.trace_id) {
        (ItemKind::Log, Some(trace)) => return ring.owner_of_trace(&trace),
        (ItemKind::Log, None) => resource_identity_key(resource.as_ref(), &mut key),
        (ItemKind::Point, _) => metric_series_key(resource.as_ref(), TEST_METRIC, &mut key),
    }
    ring.owner_of_key(&key)
}

/// Per reason, (items expected raw only through kept traces owned by another sampler than
/// the item's own, items expected raw): what only the decision broadcast can find.
fn cross_node(
    sent: &SentSignals,
    kept: &BTreeMap<TraceKey, bool>,
    samplers: usize,
) -> BTreeMap<Reason, (usize, usize)> {
    let ring = Ring::with_members(
        VIRTUAL_NODES,
        (0..samplers).map(|i| NodeId::from(format!("s-{i}"))),
    );
    let mut counts: BTreeMap<Reason, (usize, usize)> = BTreeMap::new();
    for item in sent.items().values() {
        let (Some(reason), traces) = sent.fate(item, kept, WIDENING) else {
            continue;
        };
        let owner = owner_of(&ring, item);
        let count = counts.entry(reason).or_default();
        count.1 += 1;
        if traces.iter().all(|t| ring.owner_of_trace(t) != owner) {
            count.0 += 1;
        }
    }
    counts
}

/// `unix_nanos` as a `SystemTime`, for the SDK's explicit timestamps.
fn at(unix_nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

/// Error and non-error traces of one service, their logs and trace-less logs, sent through
/// a router by the OpenTelemetry Rust SDK with explicit timestamps. The SDK's resource has
/// `service.name` but no instance attribute: its resources are one for window correlation.
/// Trace `i` spans `[base + 400ms·i, +50ms]`; its trace-less log lies inside its span, so
/// it is in a window exactly when the trace is an error trace.
async fn send_with_sdk(cluster: &SignalCluster, sent: &mut SentSignals) {
    let router = &cluster.routers()[0];
    let service = "sdk-checkout";
    let identity = Identity::service_only(service);
    let tracer_provider = sdk::tracer_provider(
        Transport::Grpc,
        &router.grpc_endpoint(),
        &router.http_endpoint(),
        service,
    )
    .expect("tracer pipeline");
    let logger_provider =
        sdk::logger_provider(&router.grpc_endpoint(), service).expect("logger pipeline");
    let tracer = tracer_provider.tracer("correlation-test");
    let logger = logger_provider.logger("correlation-test");
    let emit = |sent: &mut SentSignals, body: String, time: u64, trace: Option<&Context>| {
        let trace_id = trace.map(|cx| cx.span().span_context().trace_id().to_bytes());
        let id = sent.add_item(SentItem {
            kind: ItemKind::Log,
            identity: Some(identity.clone()),
            time,
            trace_id,
            exemplar: None,
        });
        let mut record = logger.create_log_record();
        record.set_timestamp(at(time));
        record.set_severity_number(Severity::Info);
        record.set_body(AnyValue::from(body));
        record.add_attribute(ITEM_ID_ATTRIBUTE, id);
        if let Some(cx) = trace {
            let sc = cx.span().span_context().clone();
            record.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
        }
        logger.emit(record);
    };
    let base = unix_nanos_now() - 4_000 * MS;
    for i in 0..8u64 {
        let error = i % 2 == 0;
        let (start, end) = (base + i * 400 * MS, base + i * 400 * MS + 50 * MS);
        let root = tracer
            .span_builder("POST /checkout")
            .with_kind(SpanKind::Server)
            .with_start_time(at(start))
            .start(&tracer);
        let cx = Context::current_with_span(root);
        let mut child = tracer
            .span_builder("charge card")
            .with_start_time(at(start + 10 * MS))
            .start_with_context(&tracer, &cx);
        if error {
            child.set_status(Status::error("card declined"));
        }
        child.set_attribute(KeyValue::new("sdk.trace.index", i as i64));
        let child_cx = cx.with_span(child);
        emit(
            sent,
            format!("charging order {i}"),
            start + 20 * MS,
            Some(&child_cx),
        );
        emit(
            sent,
            format!("order {i} processed"),
            start + 40 * MS,
            Some(&cx),
        );
        emit(
            sent,
            format!("inventory checked for order {i}"),
            start + 30 * MS,
            None,
        );
        child_cx.span().end_with_timestamp(at(start + 45 * MS));
        cx.span().end_with_timestamp(at(end));
        sent.add_trace(
            cx.span().span_context().trace_id().to_bytes(),
            SentTrace {
                error,
                start,
                end,
                identities: BTreeSet::from([identity.clone()]),
            },
        );
    }
    sdk::shutdown_traces(tracer_provider)
        .await
        .expect("the SDK exported its spans through the router");
    sdk::shutdown_logs(logger_provider)
        .await
        .expect("the SDK exported its logs through the router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn correlated_logs_and_points_of_kept_traces_leave_raw_across_nodes() {
    const DECISION_WAIT: Duration = Duration::from_secs(1);
    const WINDOW: Duration = Duration::from_secs(4);
    const INTERVAL: Duration = Duration::from_secs(2);
    const ROUNDS: u32 = 8;
    const ROUND_EVERY: Duration = Duration::from_millis(500);
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let sections = json!({
        "sampler": {
            "decision_wait": format!("{}ms", DECISION_WAIT.as_millis()),
            "policies": [
                errors_policy(),
                {"name": "baseline", "type": "probabilistic",
                 "probabilistic": {"sampling_percentage": 10}},
            ],
        },
        "correlation": {
            "window": format!("{}ms", WINDOW.as_millis()),
            "before": format!("{}ms", WIDENING.before.as_millis()),
            "after": format!("{}ms", WIDENING.after.as_millis()),
        },
        "rollup": rollup(INTERVAL),
    });
    let cluster = SignalCluster::start(3, 1, sections, Duration::from_secs(30))
        .await
        .expect("3 samplers and a router start and see each other");
    let started = began.elapsed();

    let mut workload = Workload::new(
        2024,
        WorkloadShape {
            services: 20,
            instances: 3,
            traces_per_round: 40,
            error_share: 0.05,
            background_logs_per_round: 60,
            points_per_round: 60,
            exemplar_share: 0.25,
            lookback: Duration::from_secs(3),
            widening: WIDENING,
        },
    );
    send_with_sdk(&cluster, workload.sent_mut()).await;
    let router = &cluster.router_endpoints()[0];
    let mut sender = Sender::connect(router).await.expect("router reachable");
    let mut next = Instant::now();
    for _ in 0..ROUNDS {
        let requests = workload.round(unix_nanos_now());
        sender
            .send(requests)
            .await
            .expect("every round acknowledged in full by the router");
        next += ROUND_EVERY;
        tokio::time::sleep_until(next).await;
    }
    let sent = workload.sent();
    let sent_at = began.elapsed();

    let samplers = cluster.samplers();
    let data = wait_for_output(
        sent,
        DECISION_WAIT + WINDOW + INTERVAL + OUTPUT_MARGIN,
        INTERVAL + Duration::from_millis(500),
        || async {
            let held = held_items(samplers)
                .await
                .expect("samplers answer /metrics");
            (cluster.sink().snapshot(), held)
        },
    )
    .await;
    let (policies, kept) = kept_by_window(&data);
    let observed = Observed::read(&data);
    let a = Assessment::new(sent, &observed, &kept, WIDENING);
    let errors = sent.error_traces();
    let baseline = policies.values().filter(|p| *p != ERRORS_POLICY).count();
    println!(
        "correlation across 3 samplers: {} traces sent ({} with errors), {} kept ({} by baseline); \
         {} logs, {} points; cluster up after {started:?}, sent by {sent_at:?}, done after {:?}\n{a}",
        sent.traces().len(),
        errors.len(),
        policies.len(),
        baseline,
        a.logs_sent,
        a.points_sent,
        began.elapsed()
    );

    let remote = cross_node(sent, &kept, samplers.len());
    println!(
        "  matched through another sampler's decision: {}",
        remote
            .iter()
            .map(|(r, (n, of))| format!("{} {n} of {of}", r.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for reason in [Reason::Window, Reason::Exemplar] {
        assert!(
            remote.get(&reason).is_some_and(|(n, _)| *n > 0),
            "some {} matches need another sampler's decision: {remote:?}",
            reason.as_str()
        );
    }
    let missing: Vec<&TraceKey> = errors
        .iter()
        .filter(|t| policies.get(*t).map(String::as_str) != Some(ERRORS_POLICY))
        .collect();
    assert!(
        missing.is_empty(),
        "every error trace kept by {ERRORS_POLICY}: {} not",
        missing.len()
    );
    assert!(
        policies.keys().all(|t| sent.traces().contains_key(t)),
        "only sent traces exported"
    );
    for reason in Reason::ALL {
        assert!(
            a.score(reason).expected >= 20,
            "the workload exercises {}: {a}",
            reason.as_str()
        );
    }
    assert!(
        a.expected_summary > a.logs_sent / 2,
        "most items roll up: {a}"
    );
    for reason in [Reason::TraceId, Reason::Exemplar] {
        let s = a.score(reason);
        assert_eq!(s.recall(), 1.0, "{} recall: {a}", reason.as_str());
        assert_eq!(s.precision(), 1.0, "{} precision: {a}", reason.as_str());
    }
    let window = a.score(Reason::Window);
    assert!(window.recall() >= 0.99, "window recall: {a}");
    assert!(window.precision() >= 0.99, "window precision: {a}");
    assert!(a.duplicated.is_empty(), "raw twice: {:?}", a.duplicated);
    assert!(
        a.unexpected.is_empty(),
        "raw without expectation: {:?}",
        a.unexpected
    );
    assert_eq!(a.unknown, 0, "raw items not sent: {a}");
    assert_eq!(a.logs_out, a.logs_sent, "raw + rolled-up log records: {a}");
    assert_eq!(
        a.points_out, a.points_sent as f64,
        "raw + rolled-up point values: {a}"
    );
    let (repeated, distinct) = repeated_rollup_series(&data);
    println!(
        "  rolled-up metric series (per interval): {distinct}, written twice: {}",
        repeated.len()
    );
    assert!(distinct > 0, "metrics were rolled up");
    assert!(
        repeated.is_empty(),
        "each rolled-up series is written by one sampler per interval: {repeated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_items_survive_a_sigkill_during_the_hold_exactly_once() {
    const DECISION_WAIT: Duration = Duration::from_secs(2);
    const WINDOW: Duration = Duration::from_secs(5);
    const INTERVAL: Duration = Duration::from_secs(1);
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let mut sampler = SamplerProcess::start(json!({
        "sampler": {
            "decision_wait": format!("{}ms", DECISION_WAIT.as_millis()),
            "policies": [errors_policy()],
        },
        "correlation": {
            "window": format!("{}ms", WINDOW.as_millis()),
            "before": format!("{}ms", WIDENING.before.as_millis()),
            "after": format!("{}ms", WIDENING.after.as_millis()),
        },
        "rollup": rollup(INTERVAL),
    }))
    .await
    .expect("sampler starts");

    let (a, b, c) = (
        Identity::new(0, 0),
        Identity::new(0, 1),
        Identity::new(1, 0),
    );
    let (error_trace, dropped_trace) = ([0xe1; 16], [0xd1; 16]);
    let (root, child, other) = ([1; 8], [2; 8], [3; 8]);
    let now = unix_nanos_now();
    let (start, end) = (now - 300 * MS, now - 20 * MS);
    let mut sent = SentSignals::default();
    let mut batch = Batch::new(&mut sent);
    batch.trace(
        error_trace,
        vec![
            (
                a.clone(),
                span(
                    error_trace,
                    root,
                    None,
                    "GET /checkout",
                    (start, end),
                    false,
                ),
            ),
            (
                b.clone(),
                span(
                    error_trace,
                    child,
                    Some(root),
                    "charge",
                    (start + 50 * MS, end - 50 * MS),
                    true,
                ),
            ),
        ],
    );
    batch.trace(
        dropped_trace,
        vec![(
            c.clone(),
            span(dropped_trace, other, None, "GET /cart", (start, end), false),
        )],
    );
    for (i, identity) in [&a, &b, &a].into_iter().enumerate() {
        let time = start + (i as u64 + 1) * 60 * MS;
        batch.log(
            identity,
            time,
            format!("checkout step {i} failed"),
            Some((error_trace, root)),
        );
    }
    // A dropped trace's logs: in the error trace's window on its resource, and elsewhere.
    batch.log(
        &a,
        start + 100 * MS,
        "cart loaded".into(),
        Some((dropped_trace, other)),
    );
    batch.log(
        &c,
        start + 100 * MS,
        "cart loaded".into(),
        Some((dropped_trace, other)),
    );
    for time in [start - 100 * MS, start + 100 * MS, end + 150 * MS] {
        batch.log(&a, time, "retrying payment".into(), None);
        batch.log(&b, time, "payment gateway slow".into(), None);
        batch.point(&a, time, None);
    }
    for time in [start - 5_000 * MS, start - 2_000 * MS, end + 1_000 * MS] {
        batch.log(&a, time, "heartbeat ok".into(), None);
        batch.point(&b, time, None);
    }
    batch.log(&c, start + 100 * MS, "heartbeat ok".into(), None);
    batch.point(&c, start + 100 * MS, None);
    batch.point(&c, start - 3_000 * MS, Some((error_trace, child)));
    batch.point(&c, start - 3_000 * MS, Some((dropped_trace, other)));
    let requests = batch.finish();
    Sender::connect(&sampler.grpc_endpoint())
        .await
        .expect("sampler reachable")
        .send(requests)
        .await
        .expect("every request acknowledged in full");
    let acknowledged = Instant::now();

    let (held, active) = poll_until(
        "items held and the trace still undecided",
        Duration::from_secs(5),
        || async {
            let m = sampler.metrics().await?;
            let (held, active) = (
                m.sum(HELD_ITEMS, &[]),
                m.sum("otel_tail_traces_active", &[]),
            );
            Ok((held > 0.0 && active > 0.0).then_some((held, active)))
        },
    )
    .await
    .expect("the sampler holds the items");
    sampler.kill9().expect("SIGKILL");
    let killed_after = acknowledged.elapsed();
    let before_kill = Observed::read(&sampler.read_export().expect("export readable"));
    sampler
        .restart()
        .await
        .expect("restarts on the same storage");
    let restarted_after = acknowledged.elapsed();

    let data = wait_for_output(
        &sent,
        DECISION_WAIT + WINDOW + INTERVAL + OUTPUT_MARGIN,
        INTERVAL + Duration::from_millis(500),
        || async {
            let m = sampler.metrics().await.expect("sampler answers /metrics");
            let pending = m.sum(HELD_ITEMS, &[]) + m.sum("otel_tail_traces_active", &[]);
            (sampler.read_export().expect("export readable"), pending)
        },
    )
    .await;
    let (policies, kept) = kept_by_window(&data);
    let observed = Observed::read(&data);
    let a = Assessment::new(&sent, &observed, &kept, WIDENING);
    println!(
        "SIGKILL during the hold: {held} held groups and {active} active trace(s) at the kill, \
         {killed_after:?} after the acknowledgement (exported before it: {} raw logs, {} raw \
         points); ready again after {restarted_after:?}; done after {:?}\n{a}",
        before_kill.raw_logs,
        before_kill.raw_points,
        began.elapsed()
    );

    assert_eq!(
        policies.keys().collect::<Vec<_>>(),
        vec![&error_trace],
        "the error trace is re-decided and kept after the restart, the other dropped"
    );
    assert!(
        a.missed.is_empty(),
        "correlated items of the error trace raw: {a}"
    );
    assert!(
        a.unexpected.is_empty() && a.mislabelled.is_empty(),
        "raw only as expected: {a}"
    );
    assert!(a.duplicated.is_empty(), "raw twice: {:?}", a.duplicated);
    assert_eq!(a.unknown, 0, "{a}");
    for reason in Reason::ALL {
        assert!(
            a.score(reason).expected > 0,
            "{} exercised: {a}",
            reason.as_str()
        );
    }
    assert!(a.expected_summary > 0, "{a}");
    assert_eq!(
        a.logs_out, a.logs_sent,
        "every log record once, raw or summarised: {a}"
    );
    assert_eq!(
        a.points_out, a.points_sent as f64,
        "every point once, raw or summarised: {a}"
    );
}
