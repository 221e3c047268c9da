//! End to end with the OpenTelemetry Python SDK (OTLP/HTTP and OTLP/gRPC exporters).
//! Ignored where `python3` or the SDK packages are missing (the build script leaves the
//! `python_sdk` cfg unset), and [`python_sdk_is_available_under_ci`] fails if that happens
//! under CI; `.ci/run` installs them. See `otel_tail_integration_tests::prerequisites`.

use std::time::Duration;

use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::{prerequisites, python};
use serde_json::json;

/// Under CI the SDK must be installed, and the build-time probe must still hold.
#[test]
fn python_sdk_is_available_under_ci() {
    let verdict = prerequisites::guard(
        "Python SDK",
        prerequisites::PYTHON_SDK_CFG,
        cfg!(python_sdk),
        prerequisites::python_sdk_missing(),
        prerequisites::in_ci(),
    );
    if let Err(reason) = verdict {
        panic!("{reason}");
    }
}

async fn python_error_traces_kept_whole(transport: &str) {
    if let Some(reason) = prerequisites::python_sdk_missing() {
        panic!("{reason}");
    }
    let sampler = SamplerProcess::start(json!({
        "sampler": {"decision_wait": "1s", "policies": [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
        ]},
    }))
    .await
    .expect("sampler starts");
    let endpoint = match transport {
        "http" => sampler.http_endpoint(),
        _ => sampler.grpc_endpoint(),
    };
    let sent = python::send(python::sender(transport, &endpoint, 20))
        .await
        .expect("the Python SDK sent");
    let (errors, ok) = (sent.error, sent.ok);
    assert_eq!(errors.len(), 10);
    sampler
        .wait_for_export("the Python error traces", Duration::from_secs(30), |d| {
            errors.is_subset(&d.trace_ids())
        })
        .await
        .expect("exported");
    let data = sampler
        .settle(Duration::from_secs(30))
        .await
        .expect("settles");
    assert_eq!(data.trace_ids(), errors);
    assert!(ok.is_disjoint(&data.trace_ids()));
    for (trace, spans) in data.spans_by_trace() {
        assert_eq!(spans.len(), 2, "trace {trace} whole");
        for span in spans {
            assert_eq!(span.policy().as_deref(), Some("errors"));
            assert_eq!(span.service_name().as_deref(), Some("py-shop"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(python_sdk),
    ignore = "python3 with the OpenTelemetry SDK and OTLP exporters is not installed"
)]
async fn python_sdk_over_http_error_traces_kept_whole() {
    python_error_traces_kept_whole("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(python_sdk),
    ignore = "python3 with the OpenTelemetry SDK and OTLP exporters is not installed"
)]
async fn python_sdk_over_grpc_error_traces_kept_whole() {
    python_error_traces_kept_whole("grpc").await;
}
