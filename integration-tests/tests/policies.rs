//! Policy behaviour end to end, with spans sent by the real OpenTelemetry Rust SDK
//! over OTLP/gRPC and OTLP/HTTP and read back from the sampler's file export.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::sdk::{self, Transport};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn errors_policy() -> Value {
    json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}})
}

async fn start(policies: Value) -> SamplerProcess {
    SamplerProcess::start(json!({
        "sampler": {"decision_wait": "1s", "policies": policies},
    }))
    .await
    .expect("sampler starts")
}

fn provider(sampler: &SamplerProcess, transport: Transport) -> SdkTracerProvider {
    sdk::tracer_provider(
        transport,
        &sampler.grpc_endpoint(),
        &sampler.http_endpoint(),
        "checkout",
    )
    .expect("SDK pipeline")
}

/// A root server span on `route` with `children` child spans; when `error` is set,
/// one child ends with status ERROR. Returns the root's span context.
fn send_trace(
    provider: &SdkTracerProvider,
    route: &str,
    children: usize,
    error: bool,
) -> SpanContext {
    let tracer = provider.tracer("policies-test");
    let root = tracer
        .span_builder(format!("GET {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("http.request.method", "GET"),
        ])
        .start(&tracer);
    let cx = Context::current_with_span(root);
    for i in 0..children {
        let mut child = tracer
            .span_builder(format!("step-{i}"))
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracer, &cx);
        if error && i == children / 2 {
            child.set_status(Status::error("downstream failed"));
        }
        child.end();
    }
    let span_context = cx.span().span_context().clone();
    cx.span().end();
    span_context
}

/// Sends one span into an existing (remote) trace.
fn send_late_span(provider: &SdkTracerProvider, parent: &SpanContext) -> SpanContext {
    let tracer = provider.tracer("policies-test");
    let cx = Context::new().with_remote_span_context(parent.clone());
    let mut span = tracer
        .span_builder("late-retry")
        .with_kind(SpanKind::Client)
        .start_with_context(&tracer, &cx);
    let span_context = span.span_context().clone();
    span.end();
    span_context
}

fn hex_trace(sc: &SpanContext) -> String {
    sc.trace_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_traces_are_kept_whole_and_others_dropped_grpc() {
    let sampler = start(json!([errors_policy()])).await;
    let provider = provider(&sampler, Transport::Grpc);
    let mut error_traces = BTreeSet::new();
    let mut ok_traces = BTreeSet::new();
    for i in 0..40 {
        let error = i % 2 == 0;
        let sc = send_trace(&provider, "/api/checkout", 4, error);
        if error {
            error_traces.insert(hex_trace(&sc));
        } else {
            ok_traces.insert(hex_trace(&sc));
        }
    }
    sdk::shutdown_traces(provider)
        .await
        .expect("SDK export succeeds");
    sampler
        .wait_for_export("every error trace with all 5 spans", WAIT, |d| {
            let by_trace = d.spans_by_trace();
            error_traces
                .iter()
                .all(|t| by_trace.get(t).is_some_and(|s| s.len() >= 5))
        })
        .await
        .expect("error traces exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    let by_trace = data.spans_by_trace();
    let exported: BTreeSet<String> = by_trace.keys().cloned().collect();
    assert_eq!(
        exported, error_traces,
        "exactly the error traces are exported"
    );
    for (trace, spans) in &by_trace {
        assert_eq!(spans.len(), 5, "trace {trace} exported whole, once");
        let span_ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span.span_id.as_slice()).collect();
        assert_eq!(span_ids.len(), 5, "trace {trace}: no duplicate spans");
        for span in spans {
            assert_eq!(
                span.policy().as_deref(),
                Some("errors"),
                "policy attribute on {trace}"
            );
            assert_eq!(
                span.service_name().as_deref(),
                Some("checkout"),
                "resource kept"
            );
        }
    }
    assert!(ok_traces.is_disjoint(&exported));
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum("otel_tail_traces_decided_total", &[]) >= 40.0,
        "40 traces decided:\n{}",
        metrics.text
    );
    assert!(metrics.sum("otel_tail_spans_received_total", &[]) >= 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probabilistic_rate_is_within_binomial_bounds_http() {
    const TRACES: usize = 2000;
    const PERCENT: f64 = 10.0;
    let sampler = start(json!([{
        "name": "baseline",
        "type": "probabilistic",
        "probabilistic": {"sampling_percentage": PERCENT, "hash_salt": "integration"}
    }]))
    .await;
    let provider = provider(&sampler, Transport::Http);
    let mut sent = BTreeSet::new();
    for i in 0..TRACES {
        let sc = send_trace(&provider, "/api/cart", 1, false);
        sent.insert(hex_trace(&sc));
        if i % 500 == 499 {
            sdk::flush_traces(&provider)
                .await
                .expect("HTTP export succeeds");
        }
    }
    sdk::shutdown_traces(provider)
        .await
        .expect("HTTP export succeeds");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = sampler.settle(WAIT).await.expect("settles");
    let by_trace = data.spans_by_trace();
    let kept = by_trace.len() as f64;
    let n = TRACES as f64;
    let p = PERCENT / 100.0;
    let sigma = (n * p * (1.0 - p)).sqrt();
    assert!(
        (kept - n * p).abs() <= 5.0 * sigma,
        "kept {kept} of {n} traces; expected {} ± {:.0} (5σ)",
        n * p,
        5.0 * sigma
    );
    for (trace, spans) in &by_trace {
        assert!(sent.contains(trace), "exported trace {trace} was sent");
        assert_eq!(spans.len(), 2, "trace {trace} kept whole");
        for span in spans {
            assert_eq!(span.policy().as_deref(), Some("baseline"));
            let threshold = threshold_probability(&span.span.trace_state)
                .unwrap_or_else(|| panic!("no ot=th in tracestate {:?}", span.span.trace_state));
            assert!(
                (threshold - p).abs() < 1e-3,
                "tracestate {:?} encodes probability {threshold}, expected {p}",
                span.span.trace_state
            );
        }
    }
}

/// The integer `SampleRate` attribute of a kept span.
fn sample_rate(span: &opentelemetry_proto::tonic::trace::v1::Span) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value;
    span.attributes
        .iter()
        .find(|kv| kv.key == "SampleRate")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::IntValue(n) => Some(*n),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ema_dynamic_records_its_rates_and_keeps_rare_routes_whole_grpc() {
    let sampler = start(json!([{
        "name": "dynamic",
        "type": "ema_dynamic",
        "ema_dynamic": {"key_fields": ["http.route"], "goal_sample_rate": 10,
                        "adjustment_interval": "1s"}
    }]))
    .await;
    let provider = provider(&sampler, Transport::Grpc);
    // Two waves of the same skewed traffic (100 × /api/cart for each /api/rare): the first
    // teaches the sampler the routes' frequencies, the second is sampled by what it learnt.
    let mut waves: Vec<(BTreeSet<String>, BTreeSet<String>)> = Vec::new();
    for wave in 0..2 {
        let (mut cart, mut rare) = (BTreeSet::new(), BTreeSet::new());
        for i in 0..300 {
            cart.insert(hex_trace(&send_trace(&provider, "/api/cart", 1, false)));
            if i % 100 == 50 {
                rare.insert(hex_trace(&send_trace(&provider, "/api/rare", 1, false)));
            }
        }
        sdk::flush_traces(&provider)
            .await
            .expect("gRPC export succeeds");
        waves.push((cart, rare));
        if wave == 0 {
            // decision_wait (1 s), then more than one adjustment interval.
            tokio::time::sleep(Duration::from_secs(2)).await;
            sampler.settle(WAIT).await.expect("first wave decided");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    sdk::shutdown_traces(provider)
        .await
        .expect("gRPC export succeeds");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let data = sampler.settle(WAIT).await.expect("settles");
    let by_trace = data.spans_by_trace();
    let mut rates: BTreeMap<String, i64> = BTreeMap::new();
    for (trace, spans) in &by_trace {
        assert_eq!(spans.len(), 2, "trace {trace} kept whole");
        for span in spans {
            assert_eq!(span.policy().as_deref(), Some("dynamic"));
            let rate = sample_rate(span.span)
                .unwrap_or_else(|| panic!("no SampleRate on a span of {trace}"));
            assert!(rate >= 1, "SampleRate {rate}");
            let p = threshold_probability(&span.span.trace_state)
                .unwrap_or_else(|| panic!("no ot=th in tracestate {:?}", span.span.trace_state));
            assert!(
                (p - 1.0 / rate as f64).abs() < 1e-9,
                "tracestate {:?} encodes {p}, SampleRate is {rate}",
                span.span.trace_state
            );
            let previous = rates.insert(trace.clone(), rate);
            assert!(
                previous.is_none_or(|r| r == rate),
                "the spans of {trace} agree on their rate"
            );
        }
    }
    let (cart, rare) = &waves[1];
    for trace in rare {
        assert_eq!(
            rates.get(trace),
            Some(&1),
            "rare route trace {trace} kept at rate 1"
        );
    }
    let cart_kept: Vec<i64> = cart.iter().filter_map(|t| rates.get(t).copied()).collect();
    assert!(
        !cart_kept.is_empty() && cart_kept.len() < 150,
        "the frequent route is thinned out: {} of 300 kept",
        cart_kept.len()
    );
    assert!(
        cart_kept.iter().all(|&r| r > 1),
        "frequent route rates: {cart_kept:?}"
    );
}

/// Sampling probability encoded by the OTel `ot=th:<hex>` tracestate threshold
/// (rejection threshold T over 2^56: probability = 1 - T / 2^56).
fn threshold_probability(tracestate: &str) -> Option<f64> {
    let ot = tracestate
        .split(',')
        .find_map(|member| member.trim().strip_prefix("ot="))?;
    let th = ot.split(';').find_map(|kv| kv.strip_prefix("th:"))?;
    if th.is_empty() || th.len() > 14 {
        return None;
    }
    let padded = format!("{th:0<14}");
    let t = u64::from_str_radix(&padded, 16).ok()? as f64;
    Some(1.0 - t / (1u64 << 56) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_wins_over_a_keeping_policy_grpc() {
    let sampler = start(json!([
        errors_policy(),
        {"name": "no-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "health", "type": "string_attribute",
             "string_attribute": {"key": "http.route", "values": ["/health"]}}
        ]}}
    ]))
    .await;
    let provider = provider(&sampler, Transport::Grpc);
    let mut health = BTreeSet::new();
    let mut checkout = BTreeSet::new();
    for _ in 0..15 {
        health.insert(hex_trace(&send_trace(&provider, "/health", 2, true)));
        checkout.insert(hex_trace(&send_trace(&provider, "/api/checkout", 2, true)));
    }
    sdk::shutdown_traces(provider)
        .await
        .expect("SDK export succeeds");
    sampler
        .wait_for_export("the /api/checkout error traces", WAIT, |d| {
            checkout.is_subset(&d.trace_ids())
        })
        .await
        .expect("kept traces exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    let exported = data.trace_ids();
    let leaked: Vec<_> = health.intersection(&exported).collect();
    assert!(
        leaked.is_empty(),
        "dropped /health error traces were exported: {leaked:?}"
    );
    assert_eq!(exported, checkout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_spans_follow_the_cached_decision_http() {
    let sampler = start(json!([errors_policy()])).await;
    let provider = provider(&sampler, Transport::Http);
    let kept = send_trace(&provider, "/api/orders/{id}", 2, true);
    let dropped = send_trace(&provider, "/api/orders/{id}", 2, false);
    sdk::flush_traces(&provider)
        .await
        .expect("HTTP export succeeds");
    let kept_id = hex_trace(&kept);
    let dropped_id = hex_trace(&dropped);
    sampler
        .wait_for_export("the kept trace", WAIT, |d| d.trace_ids().contains(&kept_id))
        .await
        .expect("kept trace exported");
    // Both traces are decided once nothing is active any more.
    sampler.settle(WAIT).await.expect("settles");

    let late_kept = send_late_span(&provider, &kept);
    let late_dropped = send_late_span(&provider, &dropped);
    sdk::shutdown_traces(provider)
        .await
        .expect("HTTP export succeeds");
    let late_kept_id = late_kept.span_id().to_string();
    let data = sampler
        .wait_for_export("the late span of the kept trace", WAIT, |d| {
            d.spans()
                .iter()
                .any(|s| otel_tail_integration_tests::export::hex(&s.span.span_id) == late_kept_id)
        })
        .await
        .expect("late span of kept trace exported");
    let late = data
        .spans()
        .into_iter()
        .find(|s| otel_tail_integration_tests::export::hex(&s.span.span_id) == late_kept_id)
        .expect("found");
    assert_eq!(late.trace_id(), kept_id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let data = sampler.settle(WAIT).await.expect("settles");
    let by_trace: BTreeMap<String, usize> = data
        .spans_by_trace()
        .into_iter()
        .map(|(t, s)| (t, s.len()))
        .collect();
    assert_eq!(
        by_trace.get(&kept_id),
        Some(&4),
        "kept trace: 3 spans + 1 late span"
    );
    assert!(
        !by_trace.contains_key(&dropped_id),
        "dropped trace (late span {}) must not be exported",
        late_dropped.span_id()
    );
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum("otel_tail_late_spans_total", &[]) >= 2.0,
        "both late spans counted:\n{}",
        metrics.text
    );
}

#[test]
fn threshold_decoding_matches_the_otel_spec_examples() {
    // Examples from the OTel probability sampling spec: th:8 = 50%, th:c = 25%,
    // th:0 = 100%, th:fd70a3d70a3d71 ≈ 1%.
    assert_eq!(threshold_probability("ot=th:8"), Some(0.5));
    assert_eq!(threshold_probability("vendor=x,ot=rv:abc;th:c"), Some(0.25));
    assert_eq!(threshold_probability("ot=th:0"), Some(1.0));
    let one_percent = threshold_probability("ot=th:fd70a3d70a3d71").unwrap();
    assert!((one_percent - 0.01).abs() < 1e-9);
    assert_eq!(threshold_probability("ot=rv:12"), None);
}

/// `ottl_condition` end to end: health checks (server spans on /healthz) are dropped by an
/// OTTL condition inside `drop`, traces with an exception span event are kept by an OTTL
/// span event condition, and the rest is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ottl_conditions_drop_health_checks_and_keep_exceptions_grpc() {
    let sampler = start(json!([
        {"name": "drop-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "health", "type": "ottl_condition", "ottl_condition": {
                "error_mode": "ignore",
                "span": ["attributes[\"http.route\"] == \"/healthz\" and kind == SPAN_KIND_SERVER"]
            }}
        ]}},
        {"name": "exceptions", "type": "ottl_condition", "ottl_condition": {
            "spanevent": ["name == \"exception\" and IsMatch(attributes[\"exception.type\"], \"Error$\")"]
        }}
    ]))
    .await;
    let provider = provider(&sampler, Transport::Grpc);
    let tracer = provider.tracer("policies-test");
    let send = |route: &str, exception: bool| {
        let root = tracer
            .span_builder(format!("GET {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.route", route.to_string())])
            .start(&tracer);
        let cx = Context::current_with_span(root);
        let mut child = tracer
            .span_builder("query")
            .with_kind(SpanKind::Client)
            .start_with_context(&tracer, &cx);
        if exception {
            child.add_event(
                "exception",
                vec![KeyValue::new("exception.type", "ConnectionError")],
            );
        }
        child.end();
        let trace = hex_trace(cx.span().span_context());
        cx.span().end();
        trace
    };
    let mut kept = BTreeSet::new();
    let mut not_kept = BTreeSet::new();
    for _ in 0..10 {
        kept.insert(send("/api/orders", true));
        not_kept.insert(send("/api/orders", false));
        not_kept.insert(send("/healthz", true));
    }
    sdk::shutdown_traces(provider)
        .await
        .expect("SDK export succeeds");
    sampler
        .wait_for_export("the traces with an exception", WAIT, |d| {
            kept.is_subset(&d.trace_ids())
        })
        .await
        .expect("kept traces exported");
    let data = sampler.settle(WAIT).await.expect("settles");
    assert_eq!(data.trace_ids(), kept, "exactly the exception traces");
    for (trace, spans) in data.spans_by_trace() {
        assert_eq!(spans.len(), 2, "trace {trace} exported whole");
        for span in spans {
            assert_eq!(span.policy().as_deref(), Some("exceptions"));
        }
    }
}
