//! OTLP receivers: gRPC and HTTP front ends ([`raw`], with pieces in [`grpc`] and [`http`])
//! handing encoded requests to a [`raw::RawIngest`] sink, or decoded ones to an [`Ingest`]
//! sink through [`Decoding`] ([`serve`]).
//!
//! Both enforce `receiver.max_request_bytes` on the decompressed payload while reading it,
//! validate ids (spans with a malformed trace or span id are rejected through
//! `partial_success`, the rest is kept), and map [`IngestError`] to the status codes the
//! OTLP specification prescribes: throttling is retryable (gRPC `UNAVAILABLE` with
//! `RetryInfo`, HTTP 503 with `Retry-After`), malformed input is not (gRPC
//! `INVALID_ARGUMENT`, HTTP 400 with a `google.rpc.Status` body).

pub mod auth;
mod events;
pub mod grpc;
pub mod http;
pub mod raw;
#[cfg(test)]
mod running;
mod signal;

pub use signal::{Decoding, accept_encoded_logs, accept_encoded_metrics, count_spans};
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::config::ReceiverConfig;
use crate::otlp::Signal;
use crate::split::{Spans, decoded_footprint};
use crate::tls::server::{ConnectionBudget, Listener, ServerTls};

/// Items of a request that were accepted or refused individually.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Items (spans, log records or data points) refused while the rest was kept.
    pub rejected: i64,
    /// Why they were refused; empty when nothing was.
    pub message: String,
}

impl Accepted {
    /// Adds `other`'s refusals to this one's.
    pub fn merge(&mut self, other: Accepted) {
        self.rejected += other.rejected;
        if !other.message.is_empty() {
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            self.message.push_str(&other.message);
        }
    }
}

/// Why a whole request was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// A buffer or queue is full: the client should retry after `retry_after`.
    #[error("overloaded ({reason}), retry after {retry_after:?}")]
    Overloaded {
        /// Suggested client back-off.
        retry_after: Duration,
        /// Which limit was reached.
        reason: &'static str,
    },
    /// The payload is malformed; retrying it will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A transient internal failure (e.g. storage error); retryable.
    #[error("internal error: {context}")]
    Unavailable {
        /// What failed.
        context: String,
        /// Why, when another error caused it (kept for logs and error chains).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

impl IngestError {
    /// A retryable internal failure described by `context` alone.
    pub fn unavailable_msg(context: impl Into<String>) -> IngestError {
        IngestError::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// A retryable internal failure caused by `source`.
    pub fn unavailable(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> IngestError {
        IngestError::Unavailable {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message and every cause, joined with `: ` (what clients and logs are told).
    pub fn detail(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cause = e.source();
        }
        out
    }
}

/// The sink receivers deliver decoded, id-validated requests to. Implemented by the
/// sampler (buffer) and, later, the router (forwarder). An `Ok` means the data is durable.
pub trait Ingest: Send + Sync + 'static {
    /// Takes spans.
    fn traces(
        &self,
        request: ExportTraceServiceRequest,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// Takes log records.
    fn logs(
        &self,
        request: ExportLogsServiceRequest,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
    /// Takes metric data points.
    fn metrics(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> impl Future<Output = Result<Accepted, IngestError>> + Send;
}

/// What a sink does with a request's bytes, and so what handling it holds beyond them,
/// which the receivers take from their byte budget before handing it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Passes the bytes on, split or copied (the router): about the body again.
    Passes,
    /// Decodes them, spans as given ([`decoded_footprint`]).
    Decodes(Spans),
    /// Splits them among owners (a copy), then decodes its own share (a sampler in a
    /// cluster): both of the above.
    SplitsAndDecodes(Spans),
}

/// The bounds on requests in flight, shared by a gRPC and an HTTP receiver: request slots
/// (taken once a body is read, for decoding and ingest), bytes held by requests (bodies as
/// they are read, inflated gzip, and what decoding will allocate), per connection and in
/// total, and the deadline for reading one body. A request that finds no room is throttled
/// at once rather than queued, so memory stays bounded and the client backs off as the
/// OTLP specification asks.
#[derive(Debug, Clone)]
pub struct InFlight {
    slots: Arc<tokio::sync::Semaphore>,
    bytes: Arc<tokio::sync::Semaphore>,
    /// The whole of `bytes`.
    capacity: usize,
    read_timeout: Duration,
    /// Accepted bearer tokens (`receiver.auth`); `None`: anyone may send.
    auth: Option<Arc<auth::BearerTokens>>,
}

/// Bytes a request holds of [`InFlight`]'s budget and of its connection's; returned when
/// dropped.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    total: Option<tokio::sync::OwnedSemaphorePermit>,
    connection: Option<ConnectionBudget>,
    on_connection: Option<tokio::sync::OwnedSemaphorePermit>,
    held: usize,
}

/// Why a request's decoded form was not taken on.
#[derive(Debug)]
pub(crate) enum ChargeRefused {
    /// The bytes are not a request the sink could decode.
    Malformed(String),
    /// It would need more than the budget holds even when empty.
    TooLarge {
        /// Bytes the request would hold.
        needed: usize,
        /// The smaller of the total and the connection's budget.
        limit: usize,
    },
    /// No room now; retry.
    Overloaded(IngestError),
}

impl std::fmt::Display for ChargeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChargeRefused::Malformed(message) => f.write_str(message),
            ChargeRefused::TooLarge { needed, limit } => write!(
                f,
                "the request would hold {needed} bytes once decoded, more than the {limit} \
                 bytes requests may hold (receiver.max_buffered_bytes, \
                 receiver.max_connection_bytes); send smaller batches"
            ),
            ChargeRefused::Overloaded(error) => error.fmt(f),
        }
    }
}

impl HeldBytes {
    /// Takes `n` more bytes of `in_flight`'s budget and the connection's; the refusal when
    /// either has no room.
    pub(crate) fn take(&mut self, in_flight: &InFlight, n: usize) -> Result<(), IngestError> {
        if n == 0 {
            return Ok(());
        }
        let Ok(permits) = u32::try_from(n) else {
            return Err(no_room(TOTAL_FULL));
        };
        let total = in_flight
            .bytes
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| no_room(TOTAL_FULL))?;
        if let Some(connection) = &self.connection {
            let on_connection = connection
                .bytes()
                .clone()
                .try_acquire_many_owned(permits)
                .map_err(|_| no_room(CONNECTION_FULL))?;
            merge(&mut self.on_connection, on_connection);
        }
        merge(&mut self.total, total);
        self.held += n;
        Ok(())
    }

    /// Takes what handling `body` (an encoded request of `signal`) will hold beyond its
    /// bytes when the sink `reads` it so; refuses a request that could not fit even in
    /// empty budgets, and bytes a decoder would refuse.
    pub(crate) fn charge_decoded(
        &mut self,
        in_flight: &InFlight,
        signal: Signal,
        body: &[u8],
        reads: Reads,
    ) -> Result<(), ChargeRefused> {
        let decoded = |spans| {
            decoded_footprint(signal, body, spans).map_err(|e| {
                ChargeRefused::Malformed(format!("failed to decode the protobuf request: {e}"))
            })
        };
        let extra = match reads {
            Reads::Passes => body.len(),
            Reads::Decodes(spans) => decoded(spans)?,
            Reads::SplitsAndDecodes(spans) => body.len().saturating_add(decoded(spans)?),
        };
        self.charge(in_flight, extra)
    }

    /// Takes `extra` bytes, refusing what could never fit as too large.
    pub(crate) fn charge(
        &mut self,
        in_flight: &InFlight,
        extra: usize,
    ) -> Result<(), ChargeRefused> {
        let limit = self
            .connection
            .as_ref()
            .map_or(in_flight.capacity, |c| c.capacity().min(in_flight.capacity));
        let needed = self.held.saturating_add(extra);
        if needed > limit {
            return Err(ChargeRefused::TooLarge { needed, limit });
        }
        self.take(in_flight, extra)
            .map_err(ChargeRefused::Overloaded)
    }
}

/// Why a request found no room in the total byte budget.
const TOTAL_FULL: &str = "too many request bytes in flight (receiver.max_buffered_bytes)";
/// Why it found no room in its connection's.
const CONNECTION_FULL: &str =
    "too many request bytes in flight on this connection (receiver.max_connection_bytes)";

/// Throttling for `reason`: retry in a second.
fn no_room(reason: &'static str) -> IngestError {
    IngestError::Overloaded {
        retry_after: Duration::from_secs(1),
        reason,
    }
}

fn merge(
    slot: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    match slot {
        Some(held) => held.merge(permit),
        None => *slot = Some(permit),
    }
}

impl InFlight {
    /// Room for `max` requests at once, the default byte budget and read deadline.
    pub fn new(max: usize) -> Self {
        let defaults = crate::config::ReceiverConfig::default();
        InFlight::with_limits(max, defaults.max_buffered_bytes, defaults.read_timeout)
    }

    /// Room for `max` requests and `max_bytes` of bodies at once; bodies must arrive
    /// within `read_timeout`.
    pub fn with_limits(max: usize, max_bytes: usize, read_timeout: Duration) -> Self {
        let capacity = max_bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
        InFlight {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            bytes: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
            read_timeout,
            auth: None,
        }
    }

    /// The same slots and budget, without client authentication (for the forward
    /// endpoint, whose callers authenticate as nodes).
    pub fn without_auth(&self) -> Self {
        InFlight {
            auth: None,
            ..self.clone()
        }
    }

    /// The bounds and client authentication `config` sets; an error when the bearer
    /// tokens file cannot be read. Watches that file for changes.
    pub fn of(config: &crate::config::ReceiverConfig) -> std::io::Result<Self> {
        let mut in_flight = InFlight::with_limits(
            config.max_concurrent_requests,
            config.max_buffered_bytes,
            config.read_timeout,
        );
        if let Some(path) = &config.auth.bearer_tokens_file {
            let tokens = Arc::new(
                auth::BearerTokens::load(path)
                    .map_err(|e| std::io::Error::other(format!("receiver.auth: {e}")))?,
            );
            auth::BearerTokens::watch(&tokens);
            in_flight.auth = Some(tokens);
        }
        Ok(in_flight)
    }

    /// Whether a request with this `authorization` header may be served.
    pub(crate) fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        self.auth
            .as_ref()
            .is_none_or(|tokens| tokens.check(authorization))
    }

    /// The deadline for reading one request body.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Nothing of the byte budgets held yet by a request on a connection with budget
    /// `connection` (`None`: only the total applies).
    pub(crate) fn hold(connection: Option<ConnectionBudget>) -> HeldBytes {
        HeldBytes {
            total: None,
            connection,
            on_connection: None,
            held: 0,
        }
    }

    /// A slot for one request, released when dropped; `None` when all are taken.
    pub(crate) fn try_enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// The refusal for a request that found no slot.
    pub(crate) fn busy() -> IngestError {
        no_room("too many requests in flight (receiver.max_concurrent_requests)")
    }
}

/// The addresses the receivers actually listen on (differs from the config with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// OTLP/gRPC.
    pub grpc: SocketAddr,
    /// OTLP/HTTP.
    pub http: SocketAddr,
}

/// Binds both receivers and serves them until `shutdown` completes, handing `ingest`
/// decoded requests: the raw receivers ([`raw::serve`]) with [`Decoding`] in front of the
/// sink. In-flight requests finish first; returns once both have stopped. `on_bound` is
/// told the real addresses as soon as the sockets are bound (before any request is served).
pub async fn serve<I: Ingest>(
    config: &ReceiverConfig,
    ingest: Arc<I>,
    on_bound: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    raw::serve(config, Arc::new(Decoding(ingest)), on_bound, shutdown).await
}

/// Binds the gRPC and HTTP listeners (with `receiver.tls` when set, its files watched),
/// reports their addresses, and runs the two servers `start` builds on them until
/// `shutdown` (signalled through the watch channel it is given). Shared by the decoding
/// receivers and the raw ones.
pub(crate) async fn serve_both<G, H>(
    config: &ReceiverConfig,
    on_bound: impl FnOnce(BoundAddrs),
    shutdown: impl Future<Output = ()> + Send + 'static,
    start: impl FnOnce(Listener, Listener, tokio::sync::watch::Receiver<bool>) -> (G, H),
) -> std::io::Result<()>
where
    G: Future<Output = std::io::Result<()>>,
    H: Future<Output = std::io::Result<()>>,
{
    let tls = match &config.tls {
        None => None,
        Some(tls) => {
            let tls = ServerTls::load(tls, "receiver.tls", &[b"h2", b"http/1.1"])
                .map_err(std::io::Error::other)?;
            ServerTls::watch(&tls);
            Some(tls)
        }
    };
    let grpc_listener = Listener::plain(
        tokio::net::TcpListener::bind(config.grpc_endpoint).await?,
        "grpc",
    )
    .with_tls(tls.clone(), config.read_timeout)
    .with_connection_budget(config.max_connection_bytes);
    let http_listener = Listener::plain(
        tokio::net::TcpListener::bind(config.http_endpoint).await?,
        "http",
    )
    .with_tls(tls, config.read_timeout)
    .with_connection_budget(config.max_connection_bytes);
    on_bound(BoundAddrs {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (grpc, http) = start(grpc_listener, http_listener, stop_rx);
    let (g, h) = tokio::join!(grpc, http);
    g?;
    h
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}
