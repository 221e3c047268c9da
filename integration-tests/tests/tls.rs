//! TLS on the OTLP receivers (`receiver.tls`) with real clients: the OpenTelemetry Python
//! SDK over https (OTLP/HTTP and OTLP/gRPC) presenting a client certificate and a bearer
//! token, and the Rust SDK over https; a client without a certificate, or one that does
//! not trust the server, gets no service and is counted; a rotated certificate is served
//! to new connections without a restart while an open connection keeps working.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use opentelemetry_sdk::trace::SdkTracerProvider;
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::pki::{Pki, SERVER_NAME, TlsConnection};
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{prerequisites, python, sdk};
use prost::Message;
use serde_json::json;

const HANDSHAKE_FAILURES: &str = "otel_tail_tls_handshake_failures_total";

/// Runs the Python SDK sender over https with the SDK's TLS variables pointing at `pki`
/// and `token` as bearer token; returns the trace ids it sent.
async fn send_with_python(
    transport: &str,
    endpoint: &str,
    pki: &Pki,
    token: &str,
) -> BTreeSet<String> {
    let mut command = python::sender(transport, endpoint, 4);
    command
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"))
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.path("client.pem"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key"))
        // `requests` lets these override the exporter's CA (a session's `verify`).
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer%20{token}"),
        );
    python::send(command)
        .await
        .expect("the Python SDK sent over TLS")
        .all()
}

fn one_span(byte: u8) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![byte; 16],
                    span_id: vec![1; 8],
                    name: "over tls".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// A sampler with TLS on its receivers, mutual TLS, a bearer token, keeping everything.
async fn tls_sampler(pki: &Pki, tokens: &std::path::Path) -> SamplerProcess {
    SamplerProcess::start(json!({
        "receiver": {
            "tls": {
                "cert_file": pki.path("server.pem"),
                "key_file": pki.path("server.key"),
                "client_ca_file": pki.path("ca.pem"),
            },
            "auth": {"bearer_tokens_file": tokens},
        },
        "sampler": {"decision_wait": "1s", "policies": [{"name": "all", "type": "always_sample"}]},
    }))
    .await
    .expect("sampler starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(python_sdk),
    ignore = "python3 with the OpenTelemetry SDK and OTLP exporters is not installed"
)]
async fn sdks_send_over_mutual_tls_with_a_token_and_others_are_turned_away() {
    if let Some(reason) = prerequisites::python_sdk_missing() {
        panic!("{reason}");
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tls-token\n").unwrap();
    let sampler = tls_sampler(&pki, &tokens).await;
    let grpc = format!("https://{}", sampler.addrs().grpc);
    let http = format!("https://{}", sampler.addrs().http);

    let mut sent = send_with_python("grpc", &grpc, &pki, "tls-token").await;
    sent.extend(send_with_python("http", &http, &pki, "tls-token").await);

    // The Rust SDK over https (OTLP/HTTP through hyper with rustls), with a client
    // certificate and the token.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*pki.client_config(true)).clone())
        .https_only()
        .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            SERVER_NAME.try_into().unwrap(),
        ))
        .enable_http1()
        .build();
    let client = HyperClient::new(
        connector,
        Duration::from_secs(10),
        Some("Bearer tls-token".parse().unwrap()),
    );
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{http}/v1/traces"))
        .build()
        .expect("exporter");
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build(),
        )
        .build();
    let tracer = provider.tracer("tls-it");
    let rust_trace = tracer.in_span("rust over https", |cx| {
        use opentelemetry::trace::TraceContextExt as _;
        cx.span().span_context().trace_id().to_string()
    });
    sdk::shutdown_traces(provider)
        .await
        .expect("the Rust SDK exported over TLS");
    sent.insert(rust_trace);

    // No client certificate: the handshake (or the first read after it) fails.
    let refused = match TlsConnection::open(sampler.addrs().http, pki.client_config(false)).await {
        Err(_) => true,
        Ok(mut connection) => connection
            .post(
                "/v1/traces",
                &[("authorization", "Bearer tls-token")],
                one_span(0xe1),
            )
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must not be served");
    // Plaintext to a TLS port: not served either.
    let plain = otel_tail_integration_tests::http_client::post(
        &format!("http://{}/v1/traces", sampler.addrs().http),
        &[("content-type", "application/x-protobuf")],
        one_span(0xe2),
    )
    .await;
    assert!(plain.is_err(), "plaintext HTTP on a TLS port: {plain:?}");

    let data = match sampler
        .wait_for_export("the traces sent over TLS", Duration::from_secs(20), |d| {
            sent.is_subset(&d.trace_ids())
        })
        .await
    {
        Ok(data) => data,
        Err(error) => {
            let exported = sampler
                .read_export()
                .map(|d| d.trace_ids())
                .unwrap_or_default();
            let missing: Vec<_> = sent.difference(&exported).collect();
            panic!("{error}: not exported {missing:?} of {sent:?}");
        }
    };
    let exported = data.trace_ids();
    for refused in [0xe1u8, 0xe2] {
        assert!(!exported.contains(&format!("{refused:02x}").repeat(16)));
    }
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(
        metrics.sum(HANDSHAKE_FAILURES, &[("listener", "http")]) >= 1.0,
        "failed handshakes are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tls-token\n").unwrap();
    let sampler = tls_sampler(&pki, &tokens).await;
    let addr = sampler.addrs().http;
    let auth = [("authorization", "Bearer tls-token")];

    let old_client = pki.client_config(true);
    let mut open = TlsConnection::open(addr, old_client.clone())
        .await
        .expect("TLS connection with the first certificates");
    let (status, body) = open
        .post("/v1/traces", &auth, one_span(0xa1))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{body:?}");

    pki.rotate();
    let new_client = pki.client_config(true);
    poll_until(
        "the sampler to serve the rotated certificate",
        Duration::from_secs(20),
        || {
            let config = new_client.clone();
            async move { Ok(TlsConnection::open(addr, config).await.ok().map(|_| ())) }
        },
    )
    .await
    .expect("new connections get the new certificate without a restart");
    assert!(
        TlsConnection::open(addr, old_client).await.is_err(),
        "the old CA no longer verifies new connections"
    );
    let mut fresh = TlsConnection::open(addr, new_client).await.unwrap();
    let (status, _) = fresh
        .post("/v1/traces", &auth, one_span(0xa2))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    // The connection made before the rotation was not dropped.
    let (status, _) = open
        .post("/v1/traces", &auth, one_span(0xa3))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);

    sampler
        .wait_for_export(
            "traces from before and after the rotation",
            Duration::from_secs(20),
            |d| {
                let ids = d.trace_ids();
                [0xa1u8, 0xa2, 0xa3]
                    .iter()
                    .all(|b| ids.contains(&format!("{b:02x}").repeat(16)))
            },
        )
        .await
        .expect("all exported");
    let metrics = sampler.metrics().await.expect("metrics");
    assert!(metrics.sum("otel_tail_tls_reloads_total", &[("outcome", "ok")]) >= 1.0);
}
