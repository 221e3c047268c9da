//! Fan-out of decision notices to every other sampler, and the receiving end.
//!
//! Sending: callers [`NoticeBroadcaster::push`] a [`DecisionNotice`] into a bounded queue
//! (a full queue drops the notice and counts it). One task groups notices into a
//! [`NoticeBatch`] — flushed [`BroadcastConfig::flush_interval`] after its first notice,
//! or earlier once it holds [`BroadcastConfig::max_batch_notices`] notices or
//! [`BroadcastConfig::max_batch_bytes`] encoded bytes — and hands the batch to one worker
//! per peer. Each worker sends its batches in order with
//! [`Forwarder::unary`] at [`NOTICES_PATH`], retrying a bounded number of times; its own
//! queue is bounded too, so a slow or dead peer loses batches instead of delaying the
//! others. A peer that failed a whole batch gets a single attempt per batch until it
//! answers again. Notices are idempotent, so a retry that duplicates one is harmless.
//!
//! Receiving: [`receive`] validates a batch and measures its propagation latency
//! (receive time − `sent_at_unix_nano`) without I/O or clock; [`NoticesServer`] is the
//! tonic service (`otel_tail.v1.Correlation`) that calls it, records
//! [`names::PROPAGATION_SECONDS`] and hands the notices to a [`NoticeSink`].

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use otel_tail_proto::v1::{self, NoticeAck, NoticeBatch};
use otel_tail_shared::forward::auth::{MAX_SKEW, ReplayGuard};
use otel_tail_shared::forward::{ForwardError, Forwarder};
use otel_tail_shared::seal::ClusterKey;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codegen::{Body, BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::DecisionNotice;

/// gRPC service carrying notices, served on the forward endpoint.
pub const SERVICE_NAME: &str = "otel_tail.v1.Correlation";

/// gRPC method path of the notice fan-out call.
pub const NOTICES_PATH: &str = "/otel_tail.v1.Correlation/Notices";

/// Self-metric names and label values of the notice fan-out.
pub mod names {
    /// Notices sent to peers, counted once per peer, by `outcome`. Counter.
    pub const DECISIONS_BROADCAST: &str = "otel_tail_decisions_broadcast_total";
    /// Notices refused by [`super::NoticeBroadcaster::push`] because its queue was full;
    /// they reached no peer. Counter.
    pub const NOTICES_DROPPED: &str = "otel_tail_decision_notices_dropped_total";
    /// Received notice batches refused because they were not sealed with this cluster's
    /// secret (or sealed when this node has none). Counter.
    pub const BATCHES_UNAUTHENTICATED: &str =
        "otel_tail_decision_notice_batches_unauthenticated_total";
    /// Received notice batches refused as replays: authentic, but sent more than a minute
    /// off this node's clock or received before. Counter.
    pub const BATCHES_REPLAYED: &str = "otel_tail_decision_notice_batches_replayed_total";
    /// Time from the origin sending a batch to a peer receiving it, one sample per
    /// accepted notice. Histogram, seconds.
    pub const PROPAGATION_SECONDS: &str = "otel_tail_decision_propagation_seconds";
    /// `outcome`: the peer accepted the notices.
    pub const OUTCOME_OK: &str = "ok";
    /// `outcome`: the peer could not be reached or refused them after every attempt.
    pub const OUTCOME_FAILED: &str = "failed";
    /// `outcome`: the peer's queue of batches was full, the batch was not sent to it.
    pub const OUTCOME_DROPPED: &str = "dropped";
}

/// Settings of a [`NoticeBroadcaster`].
#[derive(Debug, Clone)]
pub struct BroadcastConfig {
    /// Longest time a notice waits in a batch before the batch is sent.
    pub flush_interval: Duration,
    /// A batch is sent as soon as it holds this many notices.
    pub max_batch_notices: usize,
    /// A batch is sent as soon as its notices encode to at least this many bytes (so a
    /// batch exceeds it by at most one notice).
    pub max_batch_bytes: usize,
    /// Notices waiting to be batched; beyond it [`NoticeBroadcaster::push`] drops.
    pub queue_capacity: usize,
    /// Batches waiting per peer; beyond it that peer misses the batch.
    pub peer_queue_batches: usize,
    /// Calls per batch and peer, the first included (at least 1).
    pub max_attempts: u32,
    /// Pause before the first retry; doubled before each further one. A throttling peer's
    /// requested delay is used instead, capped at `call_timeout`.
    pub retry_backoff: Duration,
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// Seals every batch with this key (derived from the cluster secret with
    /// [`notice_key`]); `None` sends plain batches (a cluster without a secret).
    pub key: Option<Arc<ClusterKey>>,
}

/// HKDF info of the key that seals notice batches.
const KEY_INFO: &[u8] = b"decision notice batch xchacha20-poly1305 key";
/// Associated data of a sealed notice batch.
const AAD: &[u8] = b"otel_tail.v1.NoticeBatch";

/// The key sealing notice batches in a cluster with `secret`.
pub fn notice_key(secret: &[u8]) -> Arc<ClusterKey> {
    Arc::new(ClusterKey::derive(secret, KEY_INFO))
}

/// The batch to send: sealed into [`NoticeBatch::sealed`] with `key`, or as it is.
pub fn seal(batch: NoticeBatch, key: Option<&ClusterKey>) -> NoticeBatch {
    match key {
        None => batch,
        Some(key) => NoticeBatch {
            sealed: Some(key.seal(AAD, &batch.encode_to_vec())),
            ..NoticeBatch::default()
        },
    }
}

/// Why a received batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed with another key, tampered, or sealed/plain where the other was expected.
    #[error("decision notice batch failed authentication")]
    Unauthenticated,
    /// Authentic, but sent more than a minute off this node's clock or already received.
    #[error("decision notice batch replayed or outside the time window")]
    Replayed,
}

/// The plain batch inside one received at `now_unix_nano`: with `key`, only a batch sealed
/// with it, sent within [`MAX_SKEW`] of now and whose nonce `guard` has not seen; without,
/// only a plain batch.
pub fn open(
    mut batch: NoticeBatch,
    key: Option<&ClusterKey>,
    now_unix_nano: u64,
    guard: &ReplayGuard,
) -> Result<NoticeBatch, OpenError> {
    match (key, batch.sealed.take()) {
        (None, None) => Ok(batch),
        (Some(key), Some(sealed)) => {
            let plain = key.open(AAD, &sealed).ok_or(OpenError::Unauthenticated)?;
            let inner =
                NoticeBatch::decode(plain.as_slice()).map_err(|_| OpenError::Unauthenticated)?;
            if inner.sealed.is_some() {
                return Err(OpenError::Unauthenticated);
            }
            let now_ms = now_unix_nano / 1_000_000;
            if (inner.sent_at_unix_nano / 1_000_000).abs_diff(now_ms) > MAX_SKEW {
                return Err(OpenError::Replayed);
            }
            let nonce = sealed
                .nonce
                .as_slice()
                .try_into()
                .map_err(|_| OpenError::Unauthenticated)?;
            guard
                .admit(nonce, now_ms)
                .map_err(|_| OpenError::Replayed)?;
            Ok(inner)
        }
        _ => Err(OpenError::Unauthenticated),
    }
}

impl Default for BroadcastConfig {
    /// 50 ms / 1024 notices / 64 KiB batches, 65 536 queued notices, 32 queued batches per
    /// peer, 3 attempts from 100 ms back-off, 1 s per call: a notice reaches healthy peers
    /// well within the second the correlation window allows for it.
    fn default() -> Self {
        BroadcastConfig {
            flush_interval: Duration::from_millis(50),
            max_batch_notices: 1024,
            max_batch_bytes: 64 * 1024,
            queue_capacity: 65_536,
            peer_queue_batches: 32,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(100),
            call_timeout: Duration::from_secs(1),
            key: None,
        }
    }
}

/// Counts of a [`NoticeBroadcaster`] since it started (for tests, benchmarks and logs;
/// the self-metrics carry the same information).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastStats {
    /// Notices accepted by [`NoticeBroadcaster::push`].
    pub pushed: u64,
    /// Notices refused by [`NoticeBroadcaster::push`]: queue full or broadcaster stopped.
    pub dropped: u64,
    /// Batches formed.
    pub batches: u64,
    /// Notices put into batches.
    pub batched: u64,
    /// Encoded bytes of all batches formed (each is sent once per peer).
    pub batch_bytes: u64,
    /// Notice deliveries a peer acknowledged (one per notice and peer).
    pub delivered: u64,
    /// Notice deliveries abandoned after every attempt failed.
    pub failed: u64,
    /// Notice deliveries skipped because the peer's queue was full.
    pub peer_dropped: u64,
}

/// Live counters behind [`BroadcastStats`].
#[derive(Debug, Default)]
struct Counters {
    pushed: AtomicU64,
    dropped: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    batch_bytes: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    peer_dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BroadcastStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BroadcastStats {
            pushed: get(&self.pushed),
            dropped: get(&self.dropped),
            batches: get(&self.batches),
            batched: get(&self.batched),
            batch_bytes: get(&self.batch_bytes),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            peer_dropped: get(&self.peer_dropped),
        }
    }
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

/// Accumulates notices into a batch and says when it is full. Pure: the caller decides
/// when time is up and supplies the send time.
#[derive(Debug)]
pub struct BatchBuilder {
    notices: Vec<v1::DecisionNotice>,
    bytes: usize,
    max_notices: usize,
    max_bytes: usize,
}

impl BatchBuilder {
    /// An empty builder that is full at `max_notices` notices or `max_bytes` encoded bytes.
    pub fn new(max_notices: usize, max_bytes: usize) -> BatchBuilder {
        BatchBuilder {
            notices: Vec::new(),
            bytes: 0,
            max_notices: max_notices.max(1),
            max_bytes,
        }
    }

    /// Adds a notice; true when the batch is now full and should be sent.
    pub fn add(&mut self, notice: v1::DecisionNotice) -> bool {
        let len = notice.encoded_len();
        // Field tag (1 byte) + length prefix + the notice, as inside the encoded batch.
        self.bytes += 1 + prost::length_delimiter_len(len) + len;
        self.notices.push(notice);
        self.is_full()
    }

    /// Whether the batch reached a limit.
    pub fn is_full(&self) -> bool {
        self.notices.len() >= self.max_notices || self.bytes >= self.max_bytes
    }

    /// Whether no notice is waiting.
    pub fn is_empty(&self) -> bool {
        self.notices.is_empty()
    }

    /// Notices waiting.
    pub fn len(&self) -> usize {
        self.notices.len()
    }

    /// Encoded size of the waiting notices as they appear in a batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the waiting notices as a batch from `origin` sent at `sent_at_unix_nano`,
    /// leaving the builder empty.
    pub fn take(&mut self, origin: &str, sent_at_unix_nano: u64) -> NoticeBatch {
        self.bytes = 0;
        NoticeBatch {
            origin: origin.to_owned(),
            sent_at_unix_nano,
            notices: std::mem::take(&mut self.notices),
            sealed: None,
        }
    }
}

/// Sends every pushed [`DecisionNotice`] to every peer in batches (see the module docs).
/// Share it (`Arc`) between the tasks that keep traces.
#[derive(Debug)]
pub struct NoticeBroadcaster {
    queue: mpsc::Sender<DecisionNotice>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl NoticeBroadcaster {
    /// Starts the batching task on the current tokio runtime. `origin` is this sampler's
    /// `node_id`; `peers` holds the forward addresses of the *other* samplers (see
    /// [`otel_tail_shared::forward::forward_addr`]) and is followed as it changes: a new
    /// peer receives batches formed after it appeared, a departed one none.
    pub fn spawn(
        origin: String,
        config: BroadcastConfig,
        forwarder: Arc<Forwarder>,
        peers: watch::Receiver<Vec<SocketAddr>>,
    ) -> NoticeBroadcaster {
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let fanout = Fanout {
            config: Arc::new(config),
            forwarder,
            peers,
            workers: HashMap::new(),
            counters: counters.clone(),
        };
        let task = tokio::spawn(run_batcher(origin, receiver, fanout));
        NoticeBroadcaster {
            queue,
            counters,
            task,
        }
    }

    /// Queues `notice` for every peer; false (and counted under
    /// [`names::NOTICES_DROPPED`]) when the queue is full. Never waits.
    pub fn push(&self, notice: DecisionNotice) -> bool {
        match self.queue.try_send(notice) {
            Ok(()) => {
                add(&self.counters.pushed, 1);
                true
            }
            Err(_) => {
                add(&self.counters.dropped, 1);
                metrics::counter!(names::NOTICES_DROPPED).increment(1);
                false
            }
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> BroadcastStats {
        self.counters.snapshot()
    }

    /// Stops accepting notices, sends what is queued (each peer's remaining batches,
    /// with their retries) and returns when done. Wrap it in a timeout to bound shutdown
    /// when peers are unreachable.
    pub async fn close(self) -> BroadcastStats {
        drop(self.queue);
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "decision notice broadcaster failed");
        }
        self.counters.snapshot()
    }
}

/// Batches queued notices until the queue closes, then lets the peer workers drain.
async fn run_batcher(
    origin: String,
    mut queue: mpsc::Receiver<DecisionNotice>,
    mut fanout: Fanout,
) {
    let config = fanout.config.clone();
    let mut builder = BatchBuilder::new(config.max_batch_notices, config.max_batch_bytes);
    let mut open = true;
    while open {
        let Some(first) = queue.recv().await else {
            break;
        };
        builder.add(first.to_proto());
        let deadline = Instant::now() + config.flush_interval;
        while !builder.is_full() {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(notice)) => {
                    builder.add(notice.to_proto());
                }
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        let batch = builder.take(&origin, otel_tail_shared::otlp::unix_now());
        fanout.dispatch(batch);
    }
    fanout.close().await;
}

/// The per-peer workers and the peer set they follow.
struct Fanout {
    config: Arc<BroadcastConfig>,
    forwarder: Arc<Forwarder>,
    peers: watch::Receiver<Vec<SocketAddr>>,
    workers: HashMap<SocketAddr, PeerWorker>,
    counters: Arc<Counters>,
}

/// A batch as sent (perhaps sealed) and the notices it carries.
struct Outgoing {
    batch: NoticeBatch,
    notices: u64,
}

/// The queue and task sending batches to one peer.
struct PeerWorker {
    queue: mpsc::Sender<Arc<Outgoing>>,
    task: JoinHandle<()>,
}

impl Fanout {
    /// Queues `batch` for every current peer.
    fn dispatch(&mut self, batch: NoticeBatch) {
        let notices = batch.notices.len() as u64;
        add(&self.counters.batches, 1);
        add(&self.counters.batched, notices);
        add(&self.counters.batch_bytes, batch.encoded_len() as u64);
        self.follow_peers();
        let batch = Arc::new(Outgoing {
            batch: seal(batch, self.config.key.as_deref()),
            notices,
        });
        for (target, worker) in &self.workers {
            if worker.queue.try_send(batch.clone()).is_err() {
                tracing::debug!(%target, notices, "peer is behind, decision notice batch skipped");
                add(&self.counters.peer_dropped, notices);
                metrics::counter!(names::DECISIONS_BROADCAST, "outcome" => names::OUTCOME_DROPPED)
                    .increment(notices);
            }
        }
    }

    /// Starts workers for new peers and stops those of departed ones.
    fn follow_peers(&mut self) {
        // A closed watch keeps its last value: keep following it.
        let peers = self.peers.borrow_and_update().clone();
        self.workers.retain(|target, worker| {
            let keep = peers.contains(target);
            if !keep {
                worker.task.abort();
            }
            keep
        });
        for target in peers {
            if self.workers.contains_key(&target) {
                continue;
            }
            let (queue, receiver) = mpsc::channel(self.config.peer_queue_batches.max(1));
            let task = tokio::spawn(run_peer(
                target,
                receiver,
                self.forwarder.clone(),
                self.config.clone(),
                self.counters.clone(),
            ));
            self.workers.insert(target, PeerWorker { queue, task });
        }
    }

    /// Lets every worker send its queued batches, then returns.
    async fn close(self) {
        for (target, worker) in self.workers {
            drop(worker.queue);
            if let Err(error) = worker.task.await {
                tracing::warn!(%target, %error, "decision notice sender failed");
            }
        }
    }
}

/// Sends the batches queued for `target`, in order.
async fn run_peer(
    target: SocketAddr,
    mut queue: mpsc::Receiver<Arc<Outgoing>>,
    forwarder: Arc<Forwarder>,
    config: Arc<BroadcastConfig>,
    counters: Arc<Counters>,
) {
    let mut down = false;
    while let Some(outgoing) = queue.recv().await {
        let (batch, notices) = (&outgoing.batch, outgoing.notices);
        let attempts = if down { 1 } else { config.max_attempts.max(1) };
        match deliver(&forwarder, target, batch, attempts, &config).await {
            Ok(()) => {
                if down {
                    tracing::info!(%target, "peer receives decision notices again");
                }
                down = false;
                add(&counters.delivered, notices);
                metrics::counter!(names::DECISIONS_BROADCAST, "outcome" => names::OUTCOME_OK)
                    .increment(notices);
            }
            Err(error) => {
                if !down {
                    tracing::warn!(%target, %error, "decision notices not delivered; one attempt per batch until the peer answers");
                }
                down = true;
                add(&counters.failed, notices);
                metrics::counter!(names::DECISIONS_BROADCAST, "outcome" => names::OUTCOME_FAILED)
                    .increment(notices);
            }
        }
    }
}

/// One batch to one peer, with up to `attempts` calls.
async fn deliver(
    forwarder: &Forwarder,
    target: SocketAddr,
    batch: &NoticeBatch,
    attempts: u32,
    config: &BroadcastConfig,
) -> Result<(), ForwardError> {
    let mut backoff = config.retry_backoff;
    let mut attempt = 1;
    loop {
        let error = match forwarder
            .unary::<NoticeBatch, NoticeAck>(
                target,
                NOTICES_PATH,
                batch.clone(),
                config.call_timeout,
            )
            .await
        {
            Ok(_ack) => return Ok(()),
            Err(error) => error,
        };
        let delay = match &error {
            ForwardError::Rejected(_) => return Err(error),
            ForwardError::Throttled { retry_after } => (*retry_after).min(config.call_timeout),
            ForwardError::Unavailable(_) => backoff,
        };
        if attempt >= attempts {
            return Err(error);
        }
        tokio::time::sleep(delay).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

/// A received batch after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `node_id` of the sampler that sent the batch.
    pub origin: String,
    /// The valid notices, in batch order.
    pub notices: Vec<DecisionNotice>,
    /// Notices skipped as malformed (bad trace id or inverted window).
    pub rejected: usize,
    /// Receive time − send time; zero when the sender's clock is ahead.
    pub propagation: Duration,
}

/// Validates `batch` received at `now_unix_nano`: keeps the well-formed notices and
/// measures how long the batch travelled.
pub fn receive(batch: NoticeBatch, now_unix_nano: u64) -> Received {
    let total = batch.notices.len();
    let notices: Vec<DecisionNotice> = batch
        .notices
        .into_iter()
        .filter_map(|notice| DecisionNotice::try_from(notice).ok())
        .collect();
    Received {
        origin: batch.origin,
        rejected: total - notices.len(),
        notices,
        propagation: Duration::from_nanos(now_unix_nano.saturating_sub(batch.sent_at_unix_nano)),
    }
}

/// Where received notices go (the kept-trace index of the correlation shell).
pub trait NoticeSink: Send + Sync + 'static {
    /// Takes one validated batch.
    fn accept(&self, received: Received);
}

/// `otel_tail.v1.Correlation`, written out by hand like `otel_tail.v1.Handoff` (the proto
/// crate generates messages only). Mount it on the forward endpoint's tonic router.
#[derive(Clone)]
pub struct NoticesServer {
    sink: Arc<dyn NoticeSink>,
    key: Option<Arc<ClusterKey>>,
    seen: Arc<ReplayGuard>,
}

impl NoticesServer {
    /// A service handing every valid received notice to `sink`, accepting plain batches.
    pub fn new(sink: Arc<dyn NoticeSink>) -> NoticesServer {
        NoticesServer {
            sink,
            key: None,
            seen: Arc::default(),
        }
    }

    /// Accepts only batches sealed with `key` (see [`notice_key`]); `None`: plain only.
    pub fn with_key(mut self, key: Option<Arc<ClusterKey>>) -> NoticesServer {
        self.key = key;
        self
    }
}

impl NamedService for NoticesServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for NoticesServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        crate::unary::call(
            NOTICES_PATH,
            request,
            NoticesMethod(self.sink.clone(), self.key.clone(), self.seen.clone()),
        )
    }
}

/// The `Notices` call.
struct NoticesMethod(
    Arc<dyn NoticeSink>,
    Option<Arc<ClusterKey>>,
    Arc<ReplayGuard>,
);

impl tonic::server::UnaryService<NoticeBatch> for NoticesMethod {
    type Response = NoticeAck;
    type Future = BoxFuture<Response<NoticeAck>, Status>;

    fn call(&mut self, request: Request<NoticeBatch>) -> Self::Future {
        let sink = self.0.clone();
        let now = otel_tail_shared::otlp::unix_now();
        let opened = open(request.into_inner(), self.1.as_deref(), now, &self.2);
        Box::pin(async move {
            let batch = opened.map_err(|e| {
                let counter = match e {
                    OpenError::Unauthenticated => names::BATCHES_UNAUTHENTICATED,
                    OpenError::Replayed => names::BATCHES_REPLAYED,
                };
                metrics::counter!(counter).increment(1);
                Status::unauthenticated(e.to_string())
            })?;
            let received = receive(batch, now);
            if received.rejected > 0 {
                tracing::debug!(
                    origin = received.origin,
                    rejected = received.rejected,
                    "malformed decision notices skipped"
                );
            }
            let accepted = received.notices.len();
            metrics::histogram!(names::PROPAGATION_SECONDS)
                .record_many(received.propagation.as_secs_f64(), accepted);
            sink.accept(received);
            Ok(Response::new(NoticeAck {
                accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
            }))
        })
    }
}
