//! The router core end to end in one process: real OTLP/gRPC sinks on 127.0.0.1 stand in
//! for samplers' forward endpoints; requests go through the real split and forwarder
//! (and, in one test, through the real raw receivers and a tonic client first).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Sink, start_sink};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_router::routing::{NO_SAMPLERS, Router, RoutingTable};
use otel_tail_shared::config::ReceiverConfig;
use otel_tail_shared::forward::{ForwardCompression, Forwarder, ForwarderConfig};
use otel_tail_shared::otlp::{self, Signal};
use otel_tail_shared::receiver::IngestError;
use otel_tail_shared::receiver::raw;
use otel_tail_shared::ring::NodeId;
use otel_tail_shared::split::metric_series_key;
use prost::Message;

const VNODES: u32 = 64;

fn forwarder() -> Arc<Forwarder> {
    Arc::new(Forwarder::new(ForwarderConfig {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        compression: ForwardCompression::Never,
        auth: None,
        tls: None,
    }))
}

/// Sinks named `sampler-0`, `sampler-1`, ... and the table over them.
async fn cluster(n: usize) -> (Vec<Sink>, RoutingTable) {
    let mut sinks = Vec::new();
    for _ in 0..n {
        sinks.push(start_sink().await);
    }
    let table = table(sinks.iter().enumerate().map(|(i, s)| (i, s.addr)));
    (sinks, table)
}

fn table(members: impl IntoIterator<Item = (usize, SocketAddr)>) -> RoutingTable {
    RoutingTable::new(
        VNODES,
        members
            .into_iter()
            .map(|(i, addr)| (NodeId::from(format!("sampler-{i}")), addr)),
    )
}

fn service(name: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![otlp::kv_str("service.name", name)],
        ..Default::default()
    })
}

fn trace_id(trace: usize) -> Vec<u8> {
    let mut id = [0x5au8; 16];
    id[..8].copy_from_slice(&(trace as u64 + 1).to_be_bytes());
    id.to_vec()
}

/// `traces` traces of `per_trace` spans under two resources; span ids are unique.
fn trace_request(traces: usize, per_trace: usize) -> ExportTraceServiceRequest {
    let spans = |service_index: usize| -> Vec<Span> {
        (0..traces * per_trace)
            .filter(|i| i % 2 == service_index)
            .map(|i| Span {
                trace_id: trace_id(i / per_trace),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: format!("op-{i}"),
                ..Default::default()
            })
            .collect()
    };
    ExportTraceServiceRequest {
        resource_spans: (0..2)
            .map(|s| ResourceSpans {
                resource: service(&format!("svc-{s}")),
                scope_spans: vec![ScopeSpans {
                    spans: spans(s),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Checks every span of `request` landed exactly once, on its ring owner.
fn assert_each_span_once_on_its_owner(
    request: &ExportTraceServiceRequest,
    sinks: &[Sink],
    table: &RoutingTable,
) {
    let sent: usize = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let mut seen = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        for span in sink.spans() {
            let id: [u8; 16] = span.trace_id.as_slice().try_into().unwrap();
            assert_eq!(
                table.ring().owner_of_trace(&id),
                Some(&NodeId::from(format!("sampler-{i}"))),
                "span {} landed on a sampler that does not own its trace",
                span.name
            );
            assert!(
                seen.insert(span.span_id.clone()),
                "span {} delivered twice",
                span.name
            );
        }
    }
    assert_eq!(seen.len(), sent, "every span delivered");
}

#[tokio::test]
async fn every_span_lands_once_on_its_owner() {
    let (sinks, table) = cluster(3).await;
    let router = Router::new(forwarder(), table.clone());
    let request = trace_request(200, 5);
    let accepted = router
        .route(Signal::Traces, Bytes::from(request.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(accepted.rejected, 0);
    assert_each_span_once_on_its_owner(&request, &sinks, &table);
    assert!(
        sinks.iter().all(|s| !s.spans().is_empty()),
        "200 traces spread over all three samplers"
    );
    // Resource attributes travel with each part.
    for sink in &sinks {
        for rs in sink
            .recorded
            .traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
        {
            let name = &rs.resource.as_ref().unwrap().attributes[0];
            let owner_service = rs.scope_spans[0].spans[0].name.trim_start_matches("op-");
            let index: usize = owner_service.parse().unwrap();
            assert_eq!(
                name.value,
                service(&format!("svc-{}", index % 2)).unwrap().attributes[0].value
            );
        }
    }
}

#[tokio::test]
async fn invalid_trace_ids_are_reported_and_the_rest_is_forwarded() {
    let (sinks, table) = cluster(2).await;
    let router = Router::new(forwarder(), table);
    let mut request = trace_request(10, 1);
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
    request.resource_spans[1].scope_spans[0].spans[0].trace_id = vec![1; 3];
    let accepted = router
        .route(Signal::Traces, Bytes::from(request.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(accepted.rejected, 2);
    assert!(
        accepted.message.contains("trace_id"),
        "{}",
        accepted.message
    );
    let delivered: usize = sinks.iter().map(|s| s.spans().len()).sum();
    assert_eq!(delivered, 8);
}

#[tokio::test]
async fn malformed_requests_are_invalid() {
    let (_sinks, table) = cluster(2).await;
    let router = Router::new(forwarder(), table);
    let result = router
        .route(Signal::Traces, Bytes::from_static(&[0x0a, 0x05, 0x01]))
        .await;
    assert!(matches!(result, Err(IngestError::Invalid(_))), "{result:?}");
}

#[tokio::test]
async fn logs_follow_their_trace_and_metrics_their_series() {
    let (sinks, table) = cluster(3).await;
    let router = Router::new(forwarder(), table.clone());
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: service("checkout"),
            scope_logs: vec![ScopeLogs {
                log_records: (0..60)
                    .map(|i| LogRecord {
                        time_unix_nano: i as u64,
                        trace_id: if i % 3 == 0 { Vec::new() } else { trace_id(i) },
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    router
        .route(Signal::Logs, Bytes::from(logs.encode_to_vec()))
        .await
        .unwrap();
    let mut untraced_on = HashSet::new();
    let mut total = 0;
    for (i, sink) in sinks.iter().enumerate() {
        for record in sink
            .recorded
            .logs
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
        {
            total += 1;
            if record.trace_id.is_empty() {
                untraced_on.insert(i);
            } else {
                let id: [u8; 16] = record.trace_id.as_slice().try_into().unwrap();
                assert_eq!(
                    table.ring().owner_of_trace(&id),
                    Some(&NodeId::from(format!("sampler-{i}")))
                );
            }
        }
    }
    assert_eq!(total, 60);
    assert_eq!(
        untraced_on.len(),
        1,
        "logs without a trace id stay together by resource"
    );

    let metric = |name: &str, value: i64| Metric {
        name: name.to_owned(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                value: Some(number_data_point::Value::AsInt(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let names: Vec<String> = (0..30).map(|i| format!("metric.{i}")).collect();
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: service("checkout"),
            scope_metrics: vec![ScopeMetrics {
                metrics: names.iter().map(|n| metric(n, 1)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    router
        .route(Signal::Metrics, Bytes::from(metrics.encode_to_vec()))
        .await
        .unwrap();
    let mut owner_of: HashMap<String, usize> = HashMap::new();
    for (i, sink) in sinks.iter().enumerate() {
        for m in sink
            .recorded
            .metrics
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
        {
            assert!(
                owner_of.insert(m.name.clone(), i).is_none(),
                "{} delivered twice",
                m.name
            );
        }
    }
    assert_eq!(owner_of.len(), 30);
    for (name, owner) in owner_of {
        let mut key = Vec::new();
        metric_series_key(service("checkout").as_ref(), &name, &mut key);
        assert_eq!(
            table.ring().owner_of_key(&key),
            Some(&NodeId::from(format!("sampler-{owner}"))),
            "{name} is on its series owner"
        );
    }
}

#[tokio::test]
async fn throttling_by_one_owner_is_overloaded() {
    let (sinks, table) = cluster(3).await;
    *sinks[1].recorded.throttle.lock().unwrap() = Some(Duration::from_secs(4));
    let router = Router::new(forwarder(), table);
    let result = router
        .route(
            Signal::Traces,
            Bytes::from(trace_request(100, 2).encode_to_vec()),
        )
        .await;
    assert!(
        matches!(result, Err(IngestError::Overloaded { retry_after, .. }) if retry_after == Duration::from_secs(4)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_dead_owner_is_unavailable() {
    let (sinks, _) = cluster(1).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let router = Router::new(forwarder(), table([(0, sinks[0].addr), (1, dead)]));
    let result = router
        .route(
            Signal::Traces,
            Bytes::from(trace_request(50, 1).encode_to_vec()),
        )
        .await;
    assert!(
        matches!(&result, Err(IngestError::Unavailable { context: m, .. }) if m.contains(&dead.to_string())),
        "{result:?}"
    );
}

#[tokio::test]
async fn no_samplers_is_unavailable() {
    let router = Router::new(forwarder(), RoutingTable::new(VNODES, []));
    let result = router
        .route(
            Signal::Traces,
            Bytes::from(trace_request(1, 1).encode_to_vec()),
        )
        .await;
    assert!(
        matches!(&result, Err(IngestError::Unavailable { context: m, .. }) if m == NO_SAMPLERS),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unreachable_owner_is_retried_against_the_new_ring() {
    let (sinks, _) = cluster(2).await;
    // A peer that accepts connections but never answers: the call times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let full = table([(0, sinks[0].addr), (1, sinks[1].addr), (2, silent_addr)]);
    let request = trace_request(150, 2);
    let silent_owns = (0..150)
        .filter(|&t| {
            let id: [u8; 16] = trace_id(t).try_into().unwrap();
            full.ring().owner_of_trace(&id) == Some(&NodeId::from("sampler-2"))
        })
        .count();
    assert!(
        silent_owns > 0,
        "the silent sampler owns part of the request"
    );
    let router = Arc::new(Router::new(forwarder(), full));
    let routing = tokio::spawn({
        let router = router.clone();
        let body = Bytes::from(request.encode_to_vec());
        async move { router.route(Signal::Traces, body).await }
    });
    // Membership notices sampler-2 is gone while its part is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shrunk = table([(0, sinks[0].addr), (1, sinks[1].addr)]);
    router.set_table(shrunk.clone());
    let accepted = routing.await.unwrap().unwrap();
    assert_eq!(accepted.rejected, 0);
    // sampler-2's spans went to their new owners; the other parts were already theirs, and on a shrink no other span changes owner.
    assert_each_span_once_on_its_owner(&request, &sinks, &shrunk);
}

#[tokio::test]
async fn raw_receivers_feed_the_router() {
    let (sinks, table) = cluster(2).await;
    let router = Arc::new(Router::new(forwarder(), table.clone()));
    let config = ReceiverConfig {
        grpc_endpoint: ([127, 0, 0, 1], 0).into(),
        http_endpoint: ([127, 0, 0, 1], 0).into(),
        max_request_bytes: 4 << 20,
        ..ReceiverConfig::default()
    };
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        raw::serve(
            &config,
            router,
            |addrs| {
                let _ = bound_tx.send(addrs);
            },
            std::future::pending(),
        )
        .await
    });
    let addrs = bound_rx.await.unwrap();
    let mut client = TraceServiceClient::connect(format!("http://{}", addrs.grpc))
        .await
        .unwrap();
    let request = trace_request(40, 3);
    let response = client.export(request.clone()).await.unwrap().into_inner();
    assert_eq!(response.partial_success, None);
    assert_each_span_once_on_its_owner(&request, &sinks, &table);
}
