//! The router as a whole ([`otel_tail_router::run`]) in a real gossip cluster on
//! 127.0.0.1: a sampler identity joins through real SWIM membership, advertising a sink
//! as its forward endpoint; the router learns it, turns ready, and forwards to it.

mod common;

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_router::Listening;
use otel_tail_shared::config::Config;
use otel_tail_shared::membership::{Membership, MembershipConfig, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn readyz(admin: std::net::SocketAddr) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn spans(count: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..count)
                    .map(|i| Span {
                        trace_id: vec![i as u8 + 1; 16],
                        span_id: vec![i as u8 + 1; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn router_learns_a_sampler_through_gossip_and_forwards_to_it() {
    let sink = common::start_sink().await;
    let mut sampler = MembershipConfig::new("sampler-0", Role::Sampler, ([127, 0, 0, 1], 0).into());
    sampler.forward = Some(sink.addr);
    sampler.announce_interval = Duration::from_millis(100);
    let (sampler, _events) = Membership::start(sampler).await.unwrap();

    let yaml = format!(
        "receiver: {{grpc_endpoint: 127.0.0.1:0, http_endpoint: 127.0.0.1:0}}\n\
         cluster: {{node_id: router-0, gossip_endpoint: 127.0.0.1:0, advertise_address: 127.0.0.1, seeds: [{}], insecure: true}}\n\
         telemetry: {{admin_endpoint: 127.0.0.1:0}}\n",
        sampler.local_addr()
    );
    let config = Config::from_yaml(&yaml, &|_| None).unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Listening>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = tokio::spawn(otel_tail_router::run(
        config,
        metrics,
        move |listening| {
            let _ = ready_tx.send(*listening);
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    let listening = ready_rx.await.unwrap();

    let mut client = TraceServiceClient::connect(format!("http://{}", listening.receivers.grpc))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match client.export(spans(20)).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "router never learnt the sampler"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(readyz(listening.admin).await, 200);
    assert_eq!(sink.spans().len(), 20, "the only sampler owns every span");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), router)
        .await
        .expect("router stops")
        .unwrap()
        .unwrap();
}
