//! Forwarding of already-encoded OTLP export requests to other nodes over OTLP/gRPC.
//!
//! The router regroups each request per owning sampler ([`crate::split`]) and hands each
//! part to a [`Forwarder`], which sends the bytes as the body of the standard
//! `opentelemetry.proto.collector.*.v1.*Service/Export` call without decoding or
//! re-encoding them; only the small response is decoded. Samplers use the same forwarder
//! for data they received but do not own, and for handoff.
//!
//! One lazily connected tonic [`Channel`] (one HTTP/2 connection, multiplexed) is kept per
//! target address, so start-up never waits for a peer and a peer that restarts is
//! reconnected on the next call. Failures are classified for the caller's retry logic
//! ([`ForwardError`]) and every forwarded item is counted under
//! [`names::FORWARDED_ITEMS`].

pub mod auth;
mod codec;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use codec::ClientCodec;
pub use codec::{BytesDecoder, ServerCodec};

use crate::membership::NodeIdentity;
use crate::otlp::Signal;
use crate::receiver::Accepted;

/// Self-metric names and label values of forwarding.
pub mod names {
    /// Items (spans, log records, data points) forwarded to another node, by `signal` and
    /// `outcome`. Counter.
    pub const FORWARDED_ITEMS: &str = "otel_tail_forwarded_items_total";
    /// `outcome`: the target accepted the items.
    pub const OUTCOME_OK: &str = "ok";
    /// `outcome`: the target is overloaded and asked to retry later.
    pub const OUTCOME_THROTTLED: &str = "throttled";
    /// `outcome`: the target refused the items for good (whole request or partial success).
    pub const OUTCOME_REJECTED: &str = "rejected";
    /// `outcome`: the target could not be reached or failed transiently.
    pub const OUTCOME_FAILED: &str = "failed";
}

/// Back-off suggested to callers when a target throttles without saying for how long.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where a cluster member accepts forwarded data: the forward address its identity
/// carries ([`NodeIdentity::forward_addr`]). A sampler that advertised an unspecified IP
/// (its bind address, `0.0.0.0:4319`) is reached at its gossip IP on that port instead.
/// `None` when neither IP is usable, so nothing could reach it.
pub fn forward_addr(identity: &NodeIdentity) -> Option<SocketAddr> {
    let addr = identity.forward_addr();
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(identity.address.ip(), addr.port())
    } else {
        addr
    };
    (!addr.ip().is_unspecified()).then_some(addr)
}

/// When forwarded requests are gzip-compressed.
///
/// The default is [`ForwardCompression::Never`]: gzip costs the router about 9 times the
/// CPU of everything else it does per span (`cargo bench -p otel-tail-router`), while
/// bandwidth between nodes of one cluster is rarely the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardCompression {
    /// Never.
    #[default]
    Never,
    /// Always.
    Always,
    /// Except to loopback addresses, where compression only costs CPU.
    ExceptLoopback,
}

/// Settings of a [`Forwarder`].
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Deadline of one call, connecting included; also sent as `grpc-timeout`.
    pub timeout: Duration,
    /// Deadline for establishing a connection to a target.
    pub connect_timeout: Duration,
    /// When to gzip requests.
    pub compression: ForwardCompression,
    /// Signs every call with a credential from the cluster secret ([`auth`]); `None` only
    /// with `cluster.insecure`.
    pub auth: Option<std::sync::Arc<auth::ForwardAuth>>,
    /// TLS to the targets (`cluster.tls`); `None`: plaintext HTTP/2.
    pub tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
}

impl Default for ForwarderConfig {
    /// 5 s per call, 1 s to connect (peers are on the same network), no gzip.
    fn default() -> Self {
        ForwarderConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            compression: ForwardCompression::default(),
            auth: None,
            tls: None,
        }
    }
}

/// What a forwarded call carries besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct CallMeta {
    /// A metadata header sent with the value `1`, e.g. a sampler's hop or handoff mark.
    pub mark: Option<&'static str>,
    /// Deadline of this call instead of the configured one.
    pub timeout: Option<Duration>,
    /// Whether the items count in [`names::FORWARDED_ITEMS`].
    pub counted: bool,
    /// The [`crate::ring::Ring::digest`] the body was split by, sent as [`RING_HEADER`].
    pub ring: Option<u64>,
}

/// Metadata header of a part a router split by its ring: the ring's digest in hex. A
/// sampler whose ring has the same digest owns every item of the part and buffers it
/// without splitting it again; any other value (or none) and it splits as usual.
pub const RING_HEADER: &str = "x-otel-tail-ring";

/// The ring digest a request was split by ([`RING_HEADER`]), if it carries a readable one.
pub fn split_by(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    let value = metadata.get(RING_HEADER)?.to_str().ok()?;
    u64::from_str_radix(value, 16).ok()
}

impl Default for CallMeta {
    /// No mark, the configured deadline, counted.
    fn default() -> Self {
        CallMeta {
            mark: None,
            timeout: None,
            counted: true,
            ring: None,
        }
    }
}

/// Why a forwarded request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The target is overloaded (`UNAVAILABLE` or `RESOURCE_EXHAUSTED` with `RetryInfo`):
    /// retry after `retry_after`, not elsewhere.
    #[error("target throttled, retry after {retry_after:?}")]
    Throttled {
        /// The delay the target asked for ([`DEFAULT_RETRY_AFTER`] when it named none).
        retry_after: Duration,
    },
    /// The target refused the data for good (`INVALID_ARGUMENT`, or `RESOURCE_EXHAUSTED`
    /// without `RetryInfo`: too large); resending it will not help.
    #[error("target rejected the request: {0}")]
    Rejected(String),
    /// The target could not be reached, timed out, or failed otherwise; the data may be
    /// sent again, possibly to another node.
    #[error("target unavailable: {0}")]
    Unavailable(String),
}

impl ForwardError {
    /// The `outcome` label this error is counted under.
    fn outcome(&self) -> &'static str {
        match self {
            ForwardError::Throttled { .. } => names::OUTCOME_THROTTLED,
            ForwardError::Rejected(_) => names::OUTCOME_REJECTED,
            ForwardError::Unavailable(_) => names::OUTCOME_FAILED,
        }
    }
}

/// A pool of lazily connected gRPC channels keyed by target address, sending encoded
/// `Export*ServiceRequest` bytes. Share it (`Arc`) between all tasks: channels multiplex.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    /// Channels by target, made with the TLS configuration generation they carry.
    channels: RwLock<(u64, HashMap<SocketAddr, Channel>)>,
}

impl Forwarder {
    /// A forwarder with no connections yet. Must be used inside a tokio runtime, where
    /// channels spawn their connection tasks.
    pub fn new(config: ForwarderConfig) -> Self {
        Forwarder {
            config,
            channels: RwLock::new((0, HashMap::new())),
        }
    }

    /// Sends `body`, an encoded export request of `signal` holding `items` spans, log
    /// records or data points, to the OTLP/gRPC server at `target`. `Ok` carries what the
    /// target refused through `partial_success` (usually nothing).
    pub async fn send(
        &self,
        target: SocketAddr,
        signal: Signal,
        body: Bytes,
        items: usize,
    ) -> Result<Accepted, ForwardError> {
        self.send_with(target, signal, body, items, CallMeta::default())
            .await
    }

    /// [`Forwarder::send`] with a metadata mark, another deadline, or without counting.
    pub async fn send_with(
        &self,
        target: SocketAddr,
        signal: Signal,
        body: Bytes,
        items: usize,
        meta: CallMeta,
    ) -> Result<Accepted, ForwardError> {
        let result = self.call(target, signal, body, meta).await;
        if !meta.counted {
            if let Err(error) = &result {
                tracing::debug!(%target, signal = signal.as_str(), %error, "forwarding failed");
            }
            return result;
        }
        let items = items as u64;
        let counter = |outcome: &'static str, count: u64| {
            if count > 0 {
                metrics::counter!(names::FORWARDED_ITEMS, "signal" => signal.as_str(), "outcome" => outcome)
                    .increment(count);
            }
        };
        match &result {
            Ok(accepted) => {
                let refused = u64::try_from(accepted.rejected).unwrap_or(0).min(items);
                counter(names::OUTCOME_OK, items - refused);
                counter(names::OUTCOME_REJECTED, refused);
            }
            Err(error) => {
                tracing::debug!(%target, signal = signal.as_str(), %error, "forwarding failed");
                counter(error.outcome(), items);
            }
        }
        result
    }

    /// Drops the channels of targets for which `keep` is false (members that left), so
    /// their connections close.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.channels
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
            .retain(|target, _| keep(target));
    }

    /// A unary call of another method of the target (`path`) with prost messages, over
    /// the same channel, classified like exports.
    pub async fn unary<M, R>(
        &self,
        target: SocketAddr,
        path: &'static str,
        message: M,
        timeout: Duration,
    ) -> Result<R, ForwardError>
    where
        M: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel(target));
        grpc.ready()
            .await
            .map_err(|error| ForwardError::Unavailable(format!("{target}: {error}")))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        self.sign(request.metadata_mut(), path);
        let codec = tonic_prost::ProstCodec::<M, R>::default();
        grpc.unary(request, PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| classify(target, &status))
    }

    /// Adds the credential for calling `path`, when calls are signed.
    fn sign(&self, metadata: &mut tonic::metadata::MetadataMap, path: &str) {
        let Some(auth) = &self.config.auth else {
            return;
        };
        let now_ms = crate::otlp::unix_now() / 1_000_000;
        if let Ok(value) = auth.credential(path, now_ms).parse() {
            metadata.insert(auth::AUTH_HEADER, value);
        }
    }

    async fn call(
        &self,
        target: SocketAddr,
        signal: Signal,
        body: Bytes,
        meta: CallMeta,
    ) -> Result<Accepted, ForwardError> {
        let mut grpc = tonic::client::Grpc::new(self.channel(target));
        if self.gzip(target) {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|error| ForwardError::Unavailable(format!("{target}: {error}")))?;
        let mut request = tonic::Request::new(body);
        request.set_timeout(meta.timeout.unwrap_or(self.config.timeout));
        if let Some(mark) = meta.mark {
            request
                .metadata_mut()
                .insert(mark, tonic::metadata::MetadataValue::from_static("1"));
        }
        if let Some(digest) = meta.ring
            && let Ok(value) = format!("{digest:016x}").parse()
        {
            request.metadata_mut().insert(RING_HEADER, value);
        }
        self.sign(request.metadata_mut(), export_path(signal));
        let response = export_unary(&mut grpc, signal, request).await;
        match response {
            Ok((rejected, message)) => Ok(Accepted { rejected, message }),
            Err(status) => Err(classify(target, &status)),
        }
    }

    fn gzip(&self, target: SocketAddr) -> bool {
        match self.config.compression {
            ForwardCompression::Never => false,
            ForwardCompression::Always => true,
            ForwardCompression::ExceptLoopback => !target.ip().is_loopback(),
        }
    }

    /// The channel to `target`, created (not yet connected) on first use. With TLS,
    /// channels made before the certificates last changed are dropped and remade.
    fn channel(&self, target: SocketAddr) -> Channel {
        let tls = self.config.tls.as_ref().map(|tls| tls.current());
        let generation = tls.as_ref().map_or(0, |(_, generation)| *generation);
        {
            let channels = self
                .channels
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if channels.0 == generation
                && let Some(channel) = channels.1.get(&target)
            {
                return channel.clone();
            }
        }
        let mut channels = self
            .channels
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if channels.0 != generation {
            *channels = (generation, HashMap::new());
        }
        channels
            .1
            .entry(target)
            .or_insert_with(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let endpoint = Endpoint::from(
                    http::Uri::try_from(format!("{scheme}://{target}"))
                        .expect("a socket address forms a valid URI authority"),
                )
                .timeout(self.config.timeout)
                .connect_timeout(self.config.connect_timeout)
                .tcp_nodelay(true);
                match (tls, &self.config.tls) {
                    (Some((client, _)), Some(config)) => {
                        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                        http.enforce_http(false);
                        http.set_nodelay(true);
                        http.set_connect_timeout(Some(self.config.connect_timeout));
                        let builder = hyper_rustls::HttpsConnectorBuilder::new()
                            .with_tls_config((*client).clone())
                            .https_only();
                        let builder = match config.server_name() {
                            Some(name) => builder.with_server_name_resolver(
                                hyper_rustls::FixedServerNameResolver::new(name),
                            ),
                            None => builder,
                        };
                        endpoint.connect_with_connector_lazy(
                            builder.enable_http2().wrap_connector(http),
                        )
                    }
                    _ => endpoint.connect_lazy(),
                }
            })
            .clone()
    }
}

/// The gRPC method path of a signal's OTLP export call.
pub fn export_path(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    }
}

/// Sends `request`, an encoded OTLP export request of `signal`, as one unary call on
/// `grpc` (ready already); returns what the response's `partial_success` rejected and its
/// message. Shared by the forwarder and the OTLP/gRPC exporter, which both send bytes.
pub(crate) async fn export_unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    signal: Signal,
    request: tonic::Request<Bytes>,
) -> Result<(i64, String), Status> {
    let path = PathAndQuery::from_static(export_path(signal));
    match signal {
        Signal::Traces => {
            let codec = ClientCodec::<ExportTraceServiceResponse>::default();
            let partial = grpc.unary(request, path, codec).await?.into_inner();
            let partial = partial.partial_success.unwrap_or_default();
            Ok((partial.rejected_spans, partial.error_message))
        }
        Signal::Logs => {
            let codec = ClientCodec::<ExportLogsServiceResponse>::default();
            let partial = grpc.unary(request, path, codec).await?.into_inner();
            let partial = partial.partial_success.unwrap_or_default();
            Ok((partial.rejected_log_records, partial.error_message))
        }
        Signal::Metrics => {
            let codec = ClientCodec::<ExportMetricsServiceResponse>::default();
            let partial = grpc.unary(request, path, codec).await?.into_inner();
            let partial = partial.partial_success.unwrap_or_default();
            Ok((partial.rejected_data_points, partial.error_message))
        }
    }
}

/// Classifies a failed call (see [`ForwardError`]).
fn classify(target: SocketAddr, status: &Status) -> ForwardError {
    let retry_info = status.get_details_retry_info();
    let message = format!("{target}: {}: {}", status.code(), status.message());
    match (status.code(), retry_info) {
        (Code::Unavailable | Code::ResourceExhausted, Some(info)) => ForwardError::Throttled {
            retry_after: info.retry_delay.unwrap_or(DEFAULT_RETRY_AFTER),
        },
        (Code::InvalidArgument | Code::ResourceExhausted | Code::Unimplemented, _) => {
            ForwardError::Rejected(message)
        }
        _ => ForwardError::Unavailable(message),
    }
}
