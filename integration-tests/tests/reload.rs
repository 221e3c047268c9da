//! Live reload of the policy set, end to end: a real sampler, spans from the OpenTelemetry
//! Rust SDK, the config file rewritten and SIGHUP sent (or, with
//! `sampler.config_watch_interval`, just rewritten). Valid policy sets apply to traces
//! decided afterwards; invalid files are refused with the key named and the running set
//! stays; a reload under load loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::sdk::{self, Transport};
use otel_tail_integration_tests::wait::poll_until;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const RELOADS: &str = "otel_tail_config_reloads_total";

fn config(policies: Value, extra: Value) -> Value {
    let mut sampler = json!({"decision_wait": "1s", "policies": policies});
    if let (Some(s), Some(e)) = (sampler.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({ "sampler": sampler })
}

fn errors() -> Value {
    json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}})
}

fn route(route: &str) -> Value {
    json!({"name": format!("route {route}"), "type": "string_attribute",
           "string_attribute": {"key": "http.route", "values": [route]}})
}

/// One trace of a root and two children on `route`; returns its hex trace id.
fn send(provider: &SdkTracerProvider, route: &str, error: bool) -> String {
    let tracer = provider.tracer("reload-test");
    let root = tracer
        .span_builder(format!("GET {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([KeyValue::new("http.route", route.to_string())])
        .start(&tracer);
    let cx = Context::current_with_span(root);
    for i in 0..2 {
        let mut child = tracer
            .span_builder(format!("step-{i}"))
            .start_with_context(&tracer, &cx);
        if error && i == 1 {
            child.set_status(Status::error("failed"));
        }
        child.end();
    }
    let id = cx.span().span_context().trace_id().to_string();
    cx.span().end();
    id
}

async fn reloads(sampler: &SamplerProcess, outcome: &str) -> f64 {
    sampler
        .metrics()
        .await
        .expect("metrics")
        .sum(RELOADS, &[("outcome", outcome)])
}

/// Waits until the sampler's log mentions `text` (the reload counter can move before the
/// line reaches the log) and returns whether it did within [`WAIT`].
async fn log_mentions(sampler: &SamplerProcess, text: &str) -> bool {
    poll_until(&format!("the log mentions {text}"), WAIT, || async {
        Ok::<_, otel_tail_integration_tests::HarnessError>(
            sampler.log().contains(text).then_some(()),
        )
    })
    .await
    .is_ok()
}

async fn wait_reloads(sampler: &SamplerProcess, outcome: &str, count: f64) {
    poll_until(&format!("{count} reloads {outcome}"), WAIT, || async {
        Ok::<_, otel_tail_integration_tests::HarnessError>(
            (reloads(sampler, outcome).await >= count).then_some(()),
        )
    })
    .await
    .expect("reload counted");
}

/// Sends one wave of traces (`route`, error) and returns the trace ids per kind.
async fn wave(
    sampler: &SamplerProcess,
    kinds: &[(&str, bool)],
    per_kind: usize,
) -> Vec<BTreeSet<String>> {
    let provider = sdk::tracer_provider(
        Transport::Grpc,
        &sampler.grpc_endpoint(),
        &sampler.http_endpoint(),
        "shop",
    )
    .expect("SDK pipeline");
    let mut out = vec![BTreeSet::new(); kinds.len()];
    for _ in 0..per_kind {
        for (i, (r, error)) in kinds.iter().enumerate() {
            out[i].insert(send(&provider, r, *error));
        }
    }
    sdk::shutdown_traces(provider).await.expect("SDK export");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_policy_set_and_refuses_an_invalid_one() {
    let mut sampler = SamplerProcess::start(config(json!([errors()]), json!({})))
        .await
        .expect("sampler starts");

    let first = wave(&sampler, &[("/a", true), ("/b", false)], 5).await;
    sampler.settle(WAIT).await.expect("settles");

    sampler
        .set_config(config(json!([errors(), route("/b")]), json!({})))
        .expect("config written");
    sampler.signal_hup().expect("SIGHUP");
    wait_reloads(&sampler, "applied", 1.0).await;
    let second = wave(&sampler, &[("/a", false), ("/b", false)], 5).await;
    sampler.settle(WAIT).await.expect("settles");

    // An invalid policy set: refused, the key is named, the running set stays.
    sampler
        .set_config(config(
            json!([errors(), {"name": "bad", "type": "no_such_policy"}]),
            json!({}),
        ))
        .expect("config written");
    sampler.signal_hup().expect("SIGHUP");
    wait_reloads(&sampler, "rejected", 1.0).await;
    assert!(
        log_mentions(&sampler, "sampler.policies[1]").await,
        "the refusal names the key:\n{}",
        sampler.log()
    );
    // A non-reloadable key alone: nothing applied, the key is named in a warning.
    sampler
        .set_config(config(
            json!([errors(), route("/b")]),
            json!({"decision_wait": "3s"}),
        ))
        .expect("config written");
    sampler.signal_hup().expect("SIGHUP");
    wait_reloads(&sampler, "unchanged", 1.0).await;
    assert!(
        log_mentions(&sampler, "sampler.decision_wait").await,
        "{}",
        sampler.log()
    );
    let third = wave(&sampler, &[("/a", false), ("/b", false)], 5).await;
    let data = sampler.settle(WAIT).await.expect("settles");

    let exported: BTreeSet<String> = data.trace_ids();
    let mut expected = first[0].clone();
    expected.extend(second[1].iter().cloned());
    expected.extend(third[1].iter().cloned());
    assert_eq!(
        exported, expected,
        "errors before the reload; errors and /b after it, also after the refused reload"
    );
    assert!(
        first[1].is_disjoint(&exported),
        "/b before the reload was dropped"
    );
    let by_trace = data.spans_by_trace();
    assert!(
        by_trace.values().all(|spans| spans.len() == 3),
        "whole traces"
    );
    assert_eq!(reloads(&sampler, "applied").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_the_watch_and_reloads_under_load_lose_nothing() {
    let watch = json!({"config_watch_interval": "200ms"});
    let mut sampler = SamplerProcess::start(config(json!([errors()]), watch.clone()))
        .await
        .expect("sampler starts");
    let endpoint = (sampler.grpc_endpoint(), sampler.http_endpoint());
    // Error traces keep flowing while the policy set flips between two sets that both
    // keep errors; every one of them must come out whole.
    let load = tokio::spawn(async move {
        let provider = sdk::tracer_provider(Transport::Grpc, &endpoint.0, &endpoint.1, "shop")
            .expect("SDK pipeline");
        let mut ids = BTreeSet::new();
        for i in 0..60 {
            ids.insert(send(&provider, if i % 2 == 0 { "/a" } else { "/b" }, true));
            if i % 10 == 9 {
                sdk::flush_traces(&provider).await.expect("flush");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        sdk::shutdown_traces(provider).await.expect("SDK export");
        ids
    });
    for i in 0..4 {
        let policies = if i % 2 == 0 {
            json!([errors(), route("/c")])
        } else {
            json!([errors()])
        };
        sampler
            .set_config(config(policies, watch.clone()))
            .expect("config written");
        wait_reloads(&sampler, "applied", f64::from(i + 1)).await;
    }
    let sent = load.await.expect("load task");
    let data = sampler.settle(WAIT).await.expect("settles");
    let by_trace = data.spans_by_trace();
    for id in &sent {
        assert_eq!(
            by_trace.get(id).map(Vec::len),
            Some(3),
            "error trace {id} exported whole"
        );
    }
    assert_eq!(reloads(&sampler, "rejected").await, 0.0);
}
