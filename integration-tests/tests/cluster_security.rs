//! Cluster traffic is authenticated from `cluster.secret`, with real processes: a forged
//! "not sampled" decision or a span export sent to a sampler's forward endpoint without a
//! valid credential is refused (`UNAUTHENTICATED`), changes nothing and is counted, while
//! the cluster's own calls (router → sampler, sampler → sampler) carry on; and a node with
//! seeds but no secret refuses to start unless `cluster.insecure: true` says so. With
//! `cluster.tls` every forward call runs over mutual TLS: plaintext callers and callers
//! with a certificate from another CA are turned away (counted) while the cluster works.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_integration_tests::SamplerProcess;
use otel_tail_integration_tests::cluster::{Cluster, ClusterSpec};
use otel_tail_integration_tests::pki::{Pki, SERVER_NAME};
use otel_tail_integration_tests::sdk::{self, Transport};
use otel_tail_integration_tests::traffic::KEEP_ATTRIBUTE;
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_proto::v1::{DecisionAck, DecisionBatch, TraceDecision};
use otel_tail_shared::config::TlsConfig;
use otel_tail_shared::forward::auth::ForwardAuth;
use otel_tail_shared::forward::{ForwardCompression, Forwarder, ForwarderConfig};
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::tls::ClientTls;
use prost::Message;
use serde_json::json;

const DECISIONS_PATH: &str = "/otel_tail.v1.Handoff/Decisions";
const UNAUTHENTICATED: &str = "otel_tail_forward_unauthenticated_total";

fn client(auth: Option<ForwardAuth>) -> Forwarder {
    Forwarder::new(ForwarderConfig {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        compression: ForwardCompression::Never,
        auth: auth.map(Arc::new),
        tls: None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forward_calls_are_refused_and_change_nothing() {
    let cluster = Cluster::start(ClusterSpec {
        samplers: 2,
        routers: 1,
        decision_wait: Duration::from_secs(2),
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let router = &cluster.routers()[0];
    // A trace the policy keeps, sent by the SDK through the router (signed router →
    // sampler calls).
    let provider = sdk::tracer_provider(
        Transport::Grpc,
        &router.grpc_endpoint(),
        &router.http_endpoint(),
        "checkout",
    )
    .expect("tracer pipeline");
    let tracer = provider.tracer("cluster-security");
    let mut span = tracer.start("POST /pay");
    span.set_attribute(KeyValue::new(KEEP_ATTRIBUTE, "yes"));
    let trace_id = span.span_context().trace_id().to_bytes();
    span.end();
    sdk::shutdown_traces(provider)
        .await
        .expect("the router acknowledged the span");

    // While it is buffered, forge "not sampled" for it at every sampler: without a
    // credential and with one made from another secret.
    let forged = DecisionBatch {
        origin: "intruder".into(),
        decisions: vec![TraceDecision {
            trace_id: trace_id.to_vec(),
            sampled: false,
            ..Default::default()
        }],
    };
    let wrong = ForwardAuth::new(b"a-secret-that-is-not-the-cluster-one");
    let forwards: Vec<_> = cluster.samplers().iter().map(|s| s.forward).collect();
    for (name, forger) in [("no", client(None)), ("a wrong", client(Some(wrong)))] {
        for forward in &forwards {
            let refused = forger
                .unary::<DecisionBatch, DecisionAck>(
                    *forward,
                    DECISIONS_PATH,
                    forged.clone(),
                    Duration::from_secs(2),
                )
                .await
                .expect_err("a forged decision must be refused");
            assert!(
                refused.to_string().contains("cluster credential"),
                "{name} credential: {refused}"
            );
        }
    }
    // Spans sent straight to a sampler's forward endpoint without a credential.
    let intruder_span = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0xab; 16],
                    span_id: vec![1; 8],
                    name: "injected".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let refused = client(None)
        .send(
            forwards[0],
            Signal::Traces,
            intruder_span.encode_to_vec().into(),
            1,
        )
        .await
        .expect_err("unsigned spans must be refused");
    assert!(
        refused.to_string().contains("cluster credential"),
        "{refused}"
    );

    // The trace is still kept and exported whole; the injected span is nowhere.
    let want = hex(&trace_id);
    poll_until(
        "the kept trace to be exported",
        Duration::from_secs(30),
        || {
            let exported = cluster.sink().snapshot().trace_ids();
            let want = want.clone();
            async move { Ok(exported.contains(&want).then_some(())) }
        },
    )
    .await
    .expect("the forged decision changed nothing");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exported = cluster.sink().snapshot().trace_ids();
    assert!(
        !exported.contains(&hex(&[0xab; 16])),
        "injected span exported"
    );
    let mut refusals = 0.0;
    for (node, metrics) in cluster.scrape_all().await.expect("metrics") {
        if node.starts_with("s-") {
            refusals += metrics.sum(UNAUTHENTICATED, &[]);
            assert_eq!(
                metrics.sum(UNAUTHENTICATED, &[("reason", "replayed")]),
                0.0,
                "the cluster's own calls are never replays"
            );
        }
    }
    assert_eq!(
        refusals, 5.0,
        "two forgeries at two samplers, one span export"
    );
}

#[test]
fn a_node_with_seeds_needs_a_secret_unless_insecure_is_explicit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |yaml: &str| {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        SamplerProcess::run_cli(&[
            OsStr::new("--config"),
            path.as_os_str(),
            OsStr::new("--check-config"),
        ])
        .expect("sampler runs")
    };
    let refused = check("cluster:\n  seeds: [127.0.0.1:7946]\n");
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        refused.stderr.contains("cluster.secret"),
        "{}",
        refused.stderr
    );
    let short = check("cluster:\n  seeds: [127.0.0.1:7946]\n  secret: short\n");
    assert!(!short.status.success(), "{short:?}");
    assert!(short.stderr.contains("32"), "{}", short.stderr);
    let insecure = check("cluster:\n  seeds: [127.0.0.1:7946]\n  insecure: true\n");
    assert!(insecure.status.success(), "{insecure:?}");
}

/// A sampler started with seeds and no secret exits at once with the reason.
#[tokio::test]
async fn a_sampler_without_secret_does_not_join() {
    let started = SamplerProcess::start(json!({
        "cluster": {"seeds": ["127.0.0.1:9"], "gossip_endpoint": "127.0.0.1:0", "forward_endpoint": "127.0.0.1:0"},
    }))
    .await;
    let error = started.err().expect("refuses to start").to_string();
    assert!(error.contains("cluster.secret"), "{error}");
}

/// A forwarder signing with `auth` and calling over TLS with `tls` (certificates of `pki`).
fn tls_client(auth: Option<ForwardAuth>, pki: &Pki) -> Forwarder {
    let tls = ClientTls::load(
        &TlsConfig {
            ca_file: Some(pki.path("ca.pem")),
            cert_file: Some(pki.path("server.pem")),
            key_file: Some(pki.path("server.key")),
            server_name: Some(SERVER_NAME.into()),
            ..TlsConfig::default()
        },
        "test",
    )
    .expect("client TLS");
    Forwarder::new(ForwarderConfig {
        auth: auth.map(Arc::new),
        tls: Some(tls),
        ..ForwarderConfig::default()
    })
}

/// Sends `traces` kept traces with the Rust SDK to `grpc_endpoint`; returns their ids.
async fn send_kept(grpc_endpoint: &str, http_endpoint: &str, traces: usize) -> Vec<String> {
    let provider = sdk::tracer_provider(Transport::Grpc, grpc_endpoint, http_endpoint, "payments")
        .expect("tracer pipeline");
    let tracer = provider.tracer("cluster-tls");
    let ids = (0..traces)
        .map(|_| {
            let mut span = tracer.start("POST /charge");
            span.set_attribute(KeyValue::new(KEEP_ATTRIBUTE, "yes"));
            let id = hex(&span.span_context().trace_id().to_bytes());
            span.end();
            id
        })
        .collect();
    sdk::shutdown_traces(provider)
        .await
        .expect("the node acknowledged the spans");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_traffic_runs_over_mutual_tls_and_plaintext_peers_are_turned_away() {
    let pki = Pki::new();
    let cluster = Cluster::start(ClusterSpec {
        samplers: 2,
        routers: 1,
        decision_wait: Duration::from_secs(1),
        cluster_extra: json!({"tls": {
            "cert_file": pki.path("server.pem"),
            "key_file": pki.path("server.key"),
            "ca_file": pki.path("ca.pem"),
            "server_name": SERVER_NAME,
        }}),
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let router = &cluster.routers()[0];
    // Router → sampler and sampler → sampler (data sent to a sampler that it does not own).
    let mut sent = send_kept(&router.grpc_endpoint(), &router.http_endpoint(), 12).await;
    let sampler = &cluster.samplers()[0].process;
    sent.extend(send_kept(&sampler.grpc_endpoint(), &sampler.http_endpoint(), 12).await);

    // An empty decision batch, signed with the cluster secret, from each kind of caller.
    let forward = cluster.samplers()[1].forward;
    let call = |caller: Forwarder| async move {
        let empty = DecisionBatch {
            origin: "test".into(),
            decisions: vec![],
        };
        caller
            .unary::<DecisionBatch, DecisionAck>(
                forward,
                DECISIONS_PATH,
                empty,
                Duration::from_secs(2),
            )
            .await
    };
    let secret = || Some(ForwardAuth::new(ClusterSpec::default().secret.as_bytes()));
    call(tls_client(secret(), &pki))
        .await
        .expect("a node of the cluster is served over TLS");
    call(client(secret()))
        .await
        .expect_err("plaintext calls are not served, even with the secret");
    call(tls_client(secret(), &Pki::new()))
        .await
        .expect_err("a certificate from another CA is refused");

    poll_until(
        "every trace sent through the TLS cluster to be exported",
        Duration::from_secs(30),
        || {
            let exported = cluster.sink().snapshot().trace_ids();
            let done = sent.iter().all(|id| exported.contains(id));
            async move { Ok(done.then_some(())) }
        },
    )
    .await
    .expect("exported");
    let metrics = cluster.scrape_all().await.expect("metrics");
    let failures: f64 = metrics
        .iter()
        .map(|(_, m)| {
            m.sum(
                "otel_tail_tls_handshake_failures_total",
                &[("listener", "forward")],
            )
        })
        .sum();
    assert!(
        failures >= 2.0,
        "refused handshakes are counted: {failures}"
    );
}
