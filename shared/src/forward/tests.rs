//! The forwarder against real OTLP/gRPC servers (this crate's receivers with a decoding sink) on
//! 127.0.0.1: bytes arrive as the request they encode, and each kind of refusal maps to
//! the right [`ForwardError`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use super::{ForwardCompression, ForwardError, Forwarder, ForwarderConfig, forward_addr};
use crate::membership::{NodeIdentity, Role};
use crate::otlp::Signal;
use crate::receiver::{Accepted, Ingest, IngestError};
use crate::testing;

/// Records decoded requests; answers with a configurable result after a configurable delay.
#[derive(Default)]
struct Sink {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    logs: Mutex<Vec<ExportLogsServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    answer: Mutex<Option<Result<Accepted, IngestError>>>,
    delay: Mutex<Duration>,
}

impl Sink {
    async fn answer(&self) -> Result<Accepted, IngestError> {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.answer
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Ok(Accepted::default()))
    }

    fn answer_with(&self, answer: Result<Accepted, IngestError>) {
        *self.answer.lock().unwrap() = Some(answer);
    }
}

impl Ingest for Sink {
    async fn traces(&self, request: ExportTraceServiceRequest) -> Result<Accepted, IngestError> {
        self.traces.lock().unwrap().push(request);
        self.answer().await
    }

    async fn logs(&self, request: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        self.logs.lock().unwrap().push(request);
        self.answer().await
    }

    async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        self.metrics.lock().unwrap().push(request);
        self.answer().await
    }
}

/// Starts an OTLP/gRPC server on an ephemeral port; it runs until the test ends.
async fn start_sink() -> (Arc<Sink>, SocketAddr) {
    let sink = Arc::new(Sink::default());
    let config = crate::config::ReceiverConfig {
        grpc_endpoint: ([127, 0, 0, 1], 0).into(),
        http_endpoint: ([127, 0, 0, 1], 0).into(),
        max_request_bytes: 1024 * 1024,
        max_concurrent_requests: 64,
        ..Default::default()
    };
    let (bound, addr) = tokio::sync::oneshot::channel();
    let served = sink.clone();
    tokio::spawn(async move {
        crate::receiver::serve(
            &config,
            served,
            move |addrs| {
                let _ = bound.send(addrs.grpc);
            },
            std::future::pending(),
        )
        .await
    });
    (sink, addr.await.unwrap())
}

fn forwarder(compression: ForwardCompression) -> Forwarder {
    Forwarder::new(ForwarderConfig {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        compression,
        auth: None,
        tls: None,
    })
}

fn traces() -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "checkout".to_owned(),
        ..Default::default()
    };
    testing::traces_of(None, vec![span])
}

fn logs() -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: 9,
        ..Default::default()
    };
    testing::logs_of(None, vec![record])
}

fn metrics() -> ExportMetricsServiceRequest {
    let sum = testing::sum("requests", vec![testing::int_point(3)]);
    testing::metrics_of(None, vec![sum])
}

#[tokio::test]
async fn sends_each_signal_as_the_request_its_bytes_encode() {
    let (sink, addr) = start_sink().await;
    for compression in [
        ForwardCompression::Never,
        ForwardCompression::Always,
        ForwardCompression::ExceptLoopback,
    ] {
        let forwarder = forwarder(compression);
        let accepted = forwarder
            .send(
                addr,
                Signal::Traces,
                Bytes::from(traces().encode_to_vec()),
                1,
            )
            .await
            .unwrap();
        assert_eq!(accepted, Accepted::default());
        forwarder
            .send(addr, Signal::Logs, Bytes::from(logs().encode_to_vec()), 1)
            .await
            .unwrap();
        forwarder
            .send(
                addr,
                Signal::Metrics,
                Bytes::from(metrics().encode_to_vec()),
                1,
            )
            .await
            .unwrap();
    }
    assert_eq!(*sink.traces.lock().unwrap(), vec![traces(); 3]);
    assert_eq!(*sink.logs.lock().unwrap(), vec![logs(); 3]);
    assert_eq!(*sink.metrics.lock().unwrap(), vec![metrics(); 3]);
}

#[tokio::test]
async fn partial_success_is_passed_back() {
    let (sink, addr) = start_sink().await;
    sink.answer_with(Ok(Accepted {
        rejected: 1,
        message: "one bad span".to_owned(),
    }));
    let accepted = forwarder(ForwardCompression::Never)
        .send(
            addr,
            Signal::Traces,
            Bytes::from(traces().encode_to_vec()),
            1,
        )
        .await
        .unwrap();
    assert_eq!(accepted.rejected, 1);
    assert_eq!(accepted.message, "one bad span");
}

#[tokio::test]
async fn refusals_are_classified() {
    let (sink, addr) = start_sink().await;
    let forwarder = forwarder(ForwardCompression::Never);
    let send = || {
        forwarder.send(
            addr,
            Signal::Traces,
            Bytes::from(traces().encode_to_vec()),
            1,
        )
    };

    sink.answer_with(Err(IngestError::Overloaded {
        retry_after: Duration::from_secs(7),
        reason: "test",
    }));
    assert_eq!(
        send().await.unwrap_err(),
        ForwardError::Throttled {
            retry_after: Duration::from_secs(7)
        }
    );

    sink.answer_with(Err(IngestError::Invalid("nope".to_owned())));
    assert!(matches!(send().await, Err(ForwardError::Rejected(m)) if m.contains("nope")));

    sink.answer_with(Err(IngestError::unavailable_msg("disk")));
    assert!(matches!(send().await, Err(ForwardError::Unavailable(m)) if m.contains("disk")));

    // Bytes that are not a request: the receiver answers INVALID_ARGUMENT.
    let garbage = forwarder
        .send(addr, Signal::Traces, Bytes::from_static(&[0x0a, 0xff]), 1)
        .await;
    assert!(
        matches!(garbage, Err(ForwardError::Rejected(_))),
        "{garbage:?}"
    );
}

#[tokio::test]
async fn unreachable_and_slow_targets_are_unavailable() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let forwarder = forwarder(ForwardCompression::Never);
    let result = forwarder
        .send(closed, Signal::Logs, Bytes::from(logs().encode_to_vec()), 1)
        .await;
    assert!(
        matches!(result, Err(ForwardError::Unavailable(_))),
        "{result:?}"
    );

    let (sink, addr) = start_sink().await;
    *sink.delay.lock().unwrap() = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let result = forwarder
        .send(addr, Signal::Logs, Bytes::from(logs().encode_to_vec()), 1)
        .await;
    assert!(
        matches!(result, Err(ForwardError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the call timeout applies"
    );
}

#[test]
fn forward_addr_prefers_the_advertised_forward_address() {
    let identity = |address: &str, forward: Option<&str>| NodeIdentity {
        node_id: "sampler-0".to_owned(),
        address: address.parse().unwrap(),
        role: Role::Sampler,
        generation: 1,
        forward: forward.map(|f| f.parse().unwrap()),
    };
    assert_eq!(
        forward_addr(&identity("10.1.2.3:7946", Some("10.1.2.3:14319"))),
        Some("10.1.2.3:14319".parse().unwrap())
    );
    assert_eq!(
        forward_addr(&identity("10.1.2.3:7946", None)),
        Some("10.1.2.3:4319".parse().unwrap())
    );
    assert_eq!(
        forward_addr(&identity("[fd00::5]:7946", Some("0.0.0.0:5000"))),
        Some("[fd00::5]:5000".parse().unwrap())
    );
    assert_eq!(forward_addr(&identity("0.0.0.0:7946", None)), None);
}
