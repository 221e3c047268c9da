//! Bearer-token ingest authentication (`receiver.auth.bearer_tokens_file`) with real
//! clients: the OpenTelemetry Python SDK sending `authorization: Bearer …` over OTLP/HTTP
//! and OTLP/gRPC is accepted and its traces exported; requests without a token or with an
//! unknown one get 401 / `UNAUTHENTICATED`, are counted, and leave nothing behind; a
//! rotated tokens file takes effect without a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::http_client;
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{prerequisites, python};
use prost::Message;
use serde_json::json;

const REFUSED: &str = "otel_tail_requests_refused_total";

/// Runs the Python SDK sender with `OTEL_EXPORTER_OTLP_HEADERS` carrying `token`;
/// returns the trace ids it sent.
async fn send_with_python(transport: &str, endpoint: &str, token: &str) -> BTreeSet<String> {
    let mut command = python::sender(transport, endpoint, 6);
    command.env(
        "OTEL_EXPORTER_OTLP_HEADERS",
        format!("authorization=Bearer%20{token}"),
    );
    python::send(command)
        .await
        .expect("the Python SDK sent")
        .all()
}

fn one_span() -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0xee; 16],
                    span_id: vec![1; 8],
                    name: "unauthenticated".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(python_sdk),
    ignore = "python3 with the OpenTelemetry SDK and OTLP exporters is not installed"
)]
async fn only_clients_with_a_listed_bearer_token_may_send() {
    if let Some(reason) = prerequisites::python_sdk_missing() {
        panic!("{reason}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# ingest tokens\nteam-a-token\nteam-b-token\n").unwrap();
    let sampler = SamplerProcess::start(json!({
        "receiver": {"auth": {"bearer_tokens_file": tokens}},
        "sampler": {"decision_wait": "1s", "policies": [{"name": "all", "type": "always_sample"}]},
    }))
    .await
    .expect("sampler starts");

    let mut sent = send_with_python("grpc", &sampler.grpc_endpoint(), "team-a-token").await;
    sent.extend(send_with_python("http", &sampler.http_endpoint(), "team-b-token").await);

    let url = format!("{}/v1/traces", sampler.http_endpoint());
    let protobuf = ("content-type", "application/x-protobuf");
    for headers in [
        vec![protobuf],
        vec![protobuf, ("authorization", "Bearer not-a-token")],
        vec![protobuf, ("authorization", "Basic dGVhbS1hLXRva2Vu")],
    ] {
        let response = http_client::post(&url, &headers, one_span())
            .await
            .expect("answered");
        assert_eq!(response.status.as_u16(), 401, "{}", response.text());
        assert_eq!(
            response.header("www-authenticate").as_deref(),
            Some("Bearer")
        );
    }

    let data = sampler
        .wait_for_export("the authenticated traces", Duration::from_secs(20), |d| {
            d.trace_ids().len() >= sent.len()
        })
        .await
        .expect("exported");
    let exported = data.trace_ids();
    assert!(
        sent.is_subset(&exported),
        "every authenticated trace exported"
    );
    assert!(
        !exported.contains(&"ee".repeat(16)),
        "nothing of the refused requests"
    );
    let metrics = sampler.metrics().await.expect("metrics");
    assert_eq!(metrics.sum(REFUSED, &[("reason", "unauthenticated")]), 3.0);

    // Rotation: team-a's token is withdrawn; within the reload interval it is refused.
    std::fs::write(&tokens, "team-b-token\nteam-c-token\n").unwrap();
    let a = [protobuf, ("authorization", "Bearer team-a-token")];
    poll_until(
        "the withdrawn token to be refused",
        Duration::from_secs(15),
        || {
            let url = url.clone();
            async move {
                let response = http_client::post(&url, &a, Vec::new()).await?;
                Ok((response.status.as_u16() == 401).then_some(()))
            }
        },
    )
    .await
    .expect("tokens reloaded without a restart");
    let c = [protobuf, ("authorization", "Bearer team-c-token")];
    let response = http_client::post(&url, &c, Vec::new())
        .await
        .expect("answered");
    assert_eq!(response.status.as_u16(), 200, "{}", response.text());
}
