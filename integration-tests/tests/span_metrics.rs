//! Span metrics (`rollup.traces`) with real binaries and the OpenTelemetry Rust SDK: every
//! span sent is counted exactly once in `traces.span.metrics.calls` per (service, span
//! name, status), histogram counts equal calls, and every exemplar points at a trace that
//! was exported — standalone, and across a 3-sampler cluster that scales out and has a
//! sampler killed with SIGKILL while it holds counts.
//!
//! Traffic: two services (`frontend` roots calling `checkout` children), one trace in a
//! hundred an error; the `errors` policy keeps exactly those (1% kept).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::cluster::{Cluster, ClusterSpec};
use otel_tail_integration_tests::export::ExportedData;
use otel_tail_integration_tests::load::unix_nanos_now;
use otel_tail_integration_tests::sdk::{self, Transport};
use otel_tail_integration_tests::wait::poll_until;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Serialises the tests of this file (the cluster test runs five processes).
static SERIAL: Mutex<()> = Mutex::const_new(());

const MS: u64 = 1_000_000;
const CALLS: &str = "traces.span.metrics.calls";
const DURATION: &str = "traces.span.metrics.duration";
/// How long counts may take to leave: decision wait + window + interval, with margin.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);

/// (service.name, span.name, status.code).
type SeriesId = (String, String, String);

/// What was sent: spans per series, their summed durations (ms), every trace id.
#[derive(Default)]
struct Sent {
    calls: BTreeMap<SeriesId, u64>,
    duration_ms: BTreeMap<SeriesId, f64>,
    traces: BTreeSet<String>,
    spans: u64,
}

impl Sent {
    fn record(&mut self, service: &str, name: &str, error: bool, ms: u64) {
        let status = if error {
            "STATUS_CODE_ERROR"
        } else {
            "STATUS_CODE_UNSET"
        };
        let id = (service.to_owned(), name.to_owned(), status.to_owned());
        *self.calls.entry(id.clone()).or_insert(0) += 1;
        *self.duration_ms.entry(id).or_insert(0.0) += ms as f64;
        self.spans += 1;
    }
}

fn at(unix_nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

fn errors_policy() -> Value {
    json!([{"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}])
}

/// Correlation and rollup sections: span metrics closed every two seconds.
fn sections() -> Value {
    json!({
        "correlation": {"window": "3s"},
        "rollup": {"traces": {"interval": "2s", "exemplars": {"max_per_data_point": 3}}},
    })
}

/// Sends `traces` traces numbered from `first` through `grpc` / `http` with the SDK: a
/// `frontend` server root `GET /checkout` of 10–59 ms and a `checkout` client child
/// `charge card` of 5–24 ms, an error when the trace number is 7 mod 100.
async fn send(grpc: &str, http: &str, first: u64, traces: u64, sent: &mut Sent) {
    let frontend =
        sdk::tracer_provider(Transport::Grpc, grpc, http, "frontend").expect("frontend pipeline");
    let checkout =
        sdk::tracer_provider(Transport::Http, grpc, http, "checkout").expect("checkout pipeline");
    let (ft, ct) = (
        frontend.tracer("span-metrics"),
        checkout.tracer("span-metrics"),
    );
    let base = unix_nanos_now() - 5_000 * MS;
    for i in first..first + traces {
        let error = i % 100 == 7;
        let (root_ms, child_ms) = (10 + i % 50, 5 + i % 20);
        let start = base + (i - first) * MS;
        let root = ft
            .span_builder("GET /checkout")
            .with_kind(SpanKind::Server)
            .with_start_time(at(start))
            .start(&ft);
        let cx = Context::current_with_span(root);
        let mut child = ct
            .span_builder("charge card")
            .with_kind(SpanKind::Client)
            .with_start_time(at(start + MS))
            .start_with_context(&ct, &cx);
        if error {
            child.set_status(Status::error("card declined"));
        }
        child.set_attribute(KeyValue::new("order", i as i64));
        child.end_with_timestamp(at(start + MS + child_ms * MS));
        cx.span().end_with_timestamp(at(start + root_ms * MS));
        sent.traces
            .insert(hex(&cx.span().span_context().trace_id().to_bytes()));
        sent.record("frontend", "GET /checkout", false, root_ms);
        sent.record("checkout", "charge card", error, child_ms);
    }
    sdk::shutdown_traces(frontend)
        .await
        .expect("frontend spans acknowledged");
    sdk::shutdown_traces(checkout)
        .await
        .expect("checkout spans acknowledged");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_attr(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Exported span metrics: calls and histogram counts and sums per series, exemplar trace
/// ids.
#[derive(Debug, Default)]
struct Counted {
    calls: BTreeMap<SeriesId, u64>,
    histogram_counts: BTreeMap<SeriesId, u64>,
    duration_ms: BTreeMap<SeriesId, f64>,
    exemplars: BTreeSet<String>,
}

impl Counted {
    fn read(data: &ExportedData) -> Counted {
        let mut out = Counted::default();
        for rm in data.metrics.iter().flat_map(|r| &r.resource_metrics) {
            for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                let id = |attributes: &[_]| {
                    (
                        string_attr(attributes, "service.name"),
                        string_attr(attributes, "span.name"),
                        string_attr(attributes, "status.code"),
                    )
                };
                match (&m.data, m.name.as_str()) {
                    (Some(metric::Data::Sum(s)), CALLS) => {
                        assert!(s.is_monotonic, "calls is a monotonic sum");
                        for p in &s.data_points {
                            let Some(number_data_point::Value::AsInt(n)) = p.value else {
                                panic!("calls are integers: {p:?}")
                            };
                            *out.calls.entry(id(&p.attributes)).or_insert(0) += n as u64;
                        }
                    }
                    (Some(metric::Data::Histogram(h)), DURATION) => {
                        assert_eq!(m.unit, "ms");
                        for p in &h.data_points {
                            let series = id(&p.attributes);
                            *out.histogram_counts.entry(series.clone()).or_insert(0) += p.count;
                            *out.duration_ms.entry(series).or_insert(0.0) += p.sum.unwrap_or(0.0);
                            out.exemplars
                                .extend(p.exemplars.iter().map(|e| hex(&e.trace_id)));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// Waits until the exported calls add up to `spans` (from `read`), then a few seconds
/// more so that a double count would show; returns the final export.
async fn wait_for_counts<F>(spans: u64, read: F) -> ExportedData
where
    F: Fn() -> ExportedData,
{
    poll_until("every span to be counted", OUTPUT_TIMEOUT, || {
        let data = read();
        async move {
            let total = Counted::read(&data).total();
            assert!(total <= spans, "counted {total} of {spans} spans sent");
            Ok((total == spans).then_some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: counted {} of {spans}", Counted::read(&read()).total()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    read()
}

/// The checks every test makes on its final export.
fn assert_exact(sent: &Sent, data: &ExportedData) {
    let counted = Counted::read(data);
    assert_eq!(
        counted.calls, sent.calls,
        "calls per (service, span, status)"
    );
    assert_eq!(
        counted.histogram_counts, sent.calls,
        "histogram counts equal calls"
    );
    for (series, ms) in &sent.duration_ms {
        let got = counted.duration_ms.get(series).copied().unwrap_or(0.0);
        assert!(
            (got - ms).abs() < 1e-6 * ms.max(1.0),
            "duration sum of {series:?}: {got} ms, sent {ms} ms"
        );
    }
    let exported = data.trace_ids();
    let kept: BTreeSet<String> = sent.traces.intersection(&exported).cloned().collect();
    assert!(
        !kept.is_empty() && kept.len() * 50 < sent.traces.len(),
        "about 1% of {} traces kept, got {}",
        sent.traces.len(),
        kept.len()
    );
    assert!(
        !counted.exemplars.is_empty(),
        "the kept error traces give exemplars"
    );
    let dangling: Vec<_> = counted.exemplars.difference(&exported).collect();
    assert!(
        dangling.is_empty(),
        "exemplars of traces never exported: {dangling:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_sent_is_counted_once_and_exemplars_resolve() {
    let _serial = SERIAL.lock().await;
    let mut config = sections();
    config["sampler"] = json!({"decision_wait": "1s", "policies": errors_policy()});
    let sampler = SamplerProcess::start(config).await.expect("sampler starts");
    let mut sent = Sent::default();
    send(
        &sampler.grpc_endpoint(),
        &sampler.http_endpoint(),
        0,
        400,
        &mut sent,
    )
    .await;
    let data = wait_for_counts(sent.spans, || {
        sampler.read_export().expect("export readable")
    })
    .await;
    assert_exact(&sent, &data);
    // Self-metrics: spans received = spans counted into span metrics = spans sent; kept
    // raw + dropped = received.
    let m = sampler.metrics().await.expect("metrics");
    let received = m.sum("otel_tail_spans_received_total", &[]);
    assert_eq!(received, sent.spans as f64);
    assert_eq!(m.sum("otel_tail_span_metrics_spans_total", &[]), received);
    assert_eq!(
        m.sum("otel_tail_spans_kept_total", &[]) + m.sum("otel_tail_spans_dropped_total", &[]),
        received
    );
    assert_eq!(
        m.sum("otel_tail_rollup_in_total", &[("signal", "spans")]),
        received
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_are_exact_across_a_cluster_that_scales_out_and_loses_a_sampler_to_sigkill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(ClusterSpec {
        samplers: 3,
        routers: 1,
        decision_wait: Duration::from_secs(1),
        policies: errors_policy(),
        sampler_sections: sections(),
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let router = &cluster.routers()[0];
    let (grpc, http) = (router.grpc_endpoint(), router.http_endpoint());
    let mut sent = Sent::default();
    send(&grpc, &http, 0, 300, &mut sent).await;
    // Scale out while traces are buffered: some move to the new sampler with a handoff.
    cluster.add_sampler().await.expect("fourth sampler starts");
    cluster
        .wait_ring(4, Duration::from_secs(30))
        .await
        .expect("the ring takes the new sampler");
    send(&grpc, &http, 300, 300, &mut sent).await;
    // SIGKILL while that sampler buffers traces and holds their counts.
    cluster.kill_sampler(1).expect("SIGKILL");
    cluster.restart_sampler(1).await.expect("restarts");
    cluster
        .wait_ring(4, Duration::from_secs(30))
        .await
        .expect("the ring has the restarted sampler");
    send(&grpc, &http, 600, 300, &mut sent).await;
    let data = wait_for_counts(sent.spans, || cluster.sink().snapshot()).await;
    assert_exact(&sent, &data);
}
