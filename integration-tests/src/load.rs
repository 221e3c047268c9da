//! Driving a sampler with generated OTLP over gRPC at a target rate, honouring
//! back-pressure (UNAVAILABLE / RESOURCE_EXHAUSTED with RetryInfo) by backing off and
//! retrying, and counting what was sent, accepted, throttled and failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::HarnessError;
use crate::generate::{Generator, Rng, TraceBatch, TraceShape};
use crate::raw_grpc::{TRACE_EXPORT_PATH, unary_raw};

/// What to send and how fast.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// Target spans per second over all workers; 0 sends as fast as possible.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
    /// Shape of every trace.
    pub shape: TraceShape,
    /// Metric data points per second (0 = none).
    pub metric_points_per_sec: u64,
    /// Concurrent senders (one gRPC connection each).
    pub concurrency: usize,
    /// Spans per export request (rounded up to whole traces).
    pub batch_spans: usize,
    /// Seed of the generators (each worker derives its own from it).
    pub seed: u64,
    /// Stop once this many spans were sent (0 = no limit; a few batches may
    /// overshoot it).
    pub span_limit: u64,
    /// Trace requests each sender encodes once and then sends over and over with fresh
    /// trace ids (0: generate and encode every request). Generating and encoding cost
    /// the load generator about as much CPU per span as the sampler spends taking it, so
    /// on two cores the generator set the ceiling. Span timestamps stay those of the
    /// start of the run, so decision-latency measurements keep this at 0.
    pub prepared: usize,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".into(),
            rate: 10_000.0,
            duration: Duration::from_secs(10),
            shape: TraceShape::default(),
            metric_points_per_sec: 0,
            concurrency: 4,
            batch_spans: 500,
            seed: 1,
            span_limit: 0,
            prepared: 0,
        }
    }
}

impl LoadConfig {
    /// Spans only, as fast as `endpoint` takes them, for `duration`: whole traces of
    /// `spans_per_trace` spans (1% with an error) in requests of `batch_spans` spans from
    /// `concurrency` senders, each cycling through [`PREPARED_REQUESTS`] prepared requests.
    /// The benchmarks' load.
    pub fn max_rate_spans(
        endpoint: String,
        duration: Duration,
        spans_per_trace: usize,
        concurrency: usize,
        batch_spans: usize,
    ) -> LoadConfig {
        LoadConfig {
            endpoint,
            rate: 0.0,
            duration,
            shape: TraceShape {
                spans_per_trace,
                error_share: 0.01,
                logs_per_trace: 0,
            },
            metric_points_per_sec: 0,
            concurrency,
            batch_spans,
            seed: 42,
            span_limit: 0,
            prepared: PREPARED_REQUESTS,
        }
    }
}

/// Live counters, shared with whoever prints progress.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Spans in export requests sent (first attempts only).
    pub sent_spans: AtomicU64,
    /// Spans the sampler acknowledged (minus `partial_success.rejected_spans`).
    pub accepted_spans: AtomicU64,
    /// Spans the sampler rejected through partial success.
    pub rejected_spans: AtomicU64,
    /// Traces acknowledged in full.
    pub accepted_traces: AtomicU64,
    /// Log records acknowledged.
    pub accepted_logs: AtomicU64,
    /// Metric data points acknowledged.
    pub accepted_points: AtomicU64,
    /// Requests answered with UNAVAILABLE or RESOURCE_EXHAUSTED (each retried).
    pub throttled: AtomicU64,
    /// Requests that failed otherwise (given up, not retried).
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`LoadStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// See [`LoadStats::sent_spans`].
    pub sent_spans: u64,
    /// See [`LoadStats::accepted_spans`].
    pub accepted_spans: u64,
    /// See [`LoadStats::rejected_spans`].
    pub rejected_spans: u64,
    /// See [`LoadStats::accepted_traces`].
    pub accepted_traces: u64,
    /// See [`LoadStats::accepted_logs`].
    pub accepted_logs: u64,
    /// See [`LoadStats::accepted_points`].
    pub accepted_points: u64,
    /// See [`LoadStats::throttled`].
    pub throttled: u64,
    /// See [`LoadStats::errors`].
    pub errors: u64,
}

impl LoadStats {
    /// Counts an answered trace request of `spans` spans in `traces` traces.
    fn answered(&self, partial: &Option<ExportTracePartialSuccess>, spans: u64, traces: usize) {
        let rejected = partial
            .as_ref()
            .map_or(0, |p| p.rejected_spans.max(0) as u64);
        self.rejected_spans.fetch_add(rejected, Ordering::Relaxed);
        self.accepted_spans
            .fetch_add(spans.saturating_sub(rejected), Ordering::Relaxed);
        if rejected == 0 {
            self.accepted_traces
                .fetch_add(traces as u64, Ordering::Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> LoadSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LoadSnapshot {
            sent_spans: get(&self.sent_spans),
            accepted_spans: get(&self.accepted_spans),
            rejected_spans: get(&self.rejected_spans),
            accepted_traces: get(&self.accepted_traces),
            accepted_logs: get(&self.accepted_logs),
            accepted_points: get(&self.accepted_points),
            throttled: get(&self.throttled),
            errors: get(&self.errors),
        }
    }
}

/// Requests each sender prepares for maximum-rate load ([`LoadConfig::prepared`]).
pub const PREPARED_REQUESTS: usize = 16;

/// Default pause after a throttling answer without RetryInfo.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause the load generator honours.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long past the end of the run a throttled request keeps being retried.
const RETRY_GRACE: Duration = Duration::from_secs(10);

/// Connects a gRPC channel to `endpoint` (bounded by a 10 s connect timeout).
pub async fn connect(endpoint: &str) -> Result<Channel, HarnessError> {
    let connect_err = |source| HarnessError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(connect_err)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(connect_err)
}

/// Sends load per `config` until `config.duration` has passed, updating `stats`
/// live. Returns the final counters and the elapsed time.
pub async fn run_load(
    config: &LoadConfig,
    stats: Arc<LoadStats>,
) -> Result<(LoadSnapshot, Duration), HarnessError> {
    let started = Instant::now();
    let end = started + config.duration;
    let workers = config.concurrency.max(1);
    let mut tasks = Vec::with_capacity(workers + 1);
    for worker in 0..workers {
        let channel = connect(&config.endpoint).await?;
        let config = config.clone();
        let stats = Arc::clone(&stats);
        tasks.push(tokio::spawn(async move {
            trace_worker(channel, &config, worker, end, &stats).await;
        }));
    }
    if config.metric_points_per_sec > 0 {
        let channel = connect(&config.endpoint).await?;
        let config = config.clone();
        let stats = Arc::clone(&stats);
        tasks.push(tokio::spawn(async move {
            metrics_worker(channel, &config, end, &stats).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok((stats.snapshot(), started.elapsed()))
}

/// Wall-clock now in Unix nanoseconds (the generators take time as a parameter).
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn trace_worker(
    channel: Channel,
    config: &LoadConfig,
    worker: usize,
    end: Instant,
    stats: &LoadStats,
) {
    // Distinct per (run seed, worker); the generator mixes it, so nearby seeds
    // give unrelated trace ids.
    let worker_seed = (config.seed << 16) ^ worker as u64;
    let mut generator = Generator::new(worker_seed, config.shape);
    if config.prepared > 0 && config.shape.logs_per_trace == 0 {
        let prepared = (0..config.prepared)
            .map(|_| {
                Prepared::new(&generator.trace_batch(config.batch_spans.max(1), unix_nanos_now()))
            })
            .collect();
        return prepared_worker(channel, config, worker_seed, prepared, end, stats).await;
    }
    let traces = TraceServiceClient::new(channel.clone())
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024);
    let logs = LogsServiceClient::new(channel).max_encoding_message_size(256 * 1024 * 1024);
    let per_worker_rate = config.rate / config.concurrency.max(1) as f64;
    let mut next_send = Instant::now();
    while Instant::now() < end
        && (config.span_limit == 0 || stats.sent_spans.load(Ordering::Relaxed) < config.span_limit)
    {
        let batch = generator.trace_batch(config.batch_spans.max(1), unix_nanos_now());
        stats
            .sent_spans
            .fetch_add(batch.span_count as u64, Ordering::Relaxed);
        let answer = send_with_backoff(end, stats, || {
            let mut client = traces.clone();
            let request = batch.traces.clone();
            async move { client.export(request).await }
        })
        .await;
        if let Some(response) = answer {
            let rejected = response.into_inner().partial_success;
            stats.answered(&rejected, batch.span_count as u64, batch.trace_ids.len());
        }
        if batch.log_count > 0 {
            let answer = send_with_backoff(end, stats, || {
                let mut client = logs.clone();
                let request = batch.logs.clone();
                async move { client.export(request).await }
            })
            .await;
            if answer.is_some() {
                stats
                    .accepted_logs
                    .fetch_add(batch.log_count as u64, Ordering::Relaxed);
            }
        }
        if per_worker_rate > 0.0 {
            next_send += Duration::from_secs_f64(batch.span_count as f64 / per_worker_rate);
            tokio::time::sleep_until(next_send.min(end)).await;
        }
    }
}

/// An encoded trace request and, per trace, where its id sits in the bytes.
struct Prepared {
    bytes: Vec<u8>,
    traces: Vec<Vec<usize>>,
    spans: u64,
}

impl Prepared {
    fn new(batch: &TraceBatch) -> Prepared {
        let bytes = batch.traces.encode_to_vec();
        let index: HashMap<&[u8], usize> = batch
            .trace_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_slice(), i))
            .collect();
        let mut traces = vec![Vec::new(); batch.trace_ids.len()];
        // A span's trace id: field 1, 16 bytes long (key 0x0a, length 0x10).
        let mut at = 0;
        while at + 18 <= bytes.len() {
            if bytes[at] == 0x0a
                && bytes[at + 1] == 0x10
                && let Some(&trace) = index.get(&bytes[at + 2..at + 18])
            {
                traces[trace].push(at + 2);
                at += 18;
            } else {
                at += 1;
            }
        }
        Prepared {
            bytes,
            traces,
            spans: batch.span_count as u64,
        }
    }

    /// The request with trace ids made from `seed` and `sequence` (unique per send).
    fn fresh(&self, seed: u64, sequence: u64) -> Bytes {
        let mut bytes = BytesMut::from(self.bytes.as_slice());
        let high = mix(seed ^ mix(sequence));
        for (i, offsets) in self.traces.iter().enumerate() {
            let low = mix(high ^ i as u64);
            for &at in offsets {
                bytes[at..at + 8].copy_from_slice(&high.to_be_bytes());
                bytes[at + 8..at + 16].copy_from_slice(&low.to_be_bytes());
            }
        }
        bytes.freeze()
    }
}

/// SplitMix64's first output for `x`: distinct inputs give unrelated outputs.
fn mix(x: u64) -> u64 {
    Rng::new(x).next_u64()
}

/// [`trace_worker`] over prepared requests, sent raw.
async fn prepared_worker(
    channel: Channel,
    config: &LoadConfig,
    seed: u64,
    prepared: Vec<Prepared>,
    end: Instant,
    stats: &LoadStats,
) {
    let per_worker_rate = config.rate / config.concurrency.max(1) as f64;
    let mut next_send = Instant::now();
    let mut sequence = 0u64;
    while Instant::now() < end
        && (config.span_limit == 0 || stats.sent_spans.load(Ordering::Relaxed) < config.span_limit)
    {
        let template = &prepared[sequence as usize % prepared.len()];
        let request = template.fresh(seed, sequence);
        sequence += 1;
        stats
            .sent_spans
            .fetch_add(template.spans, Ordering::Relaxed);
        let answer = send_with_backoff(end, stats, || {
            unary_raw(channel.clone(), TRACE_EXPORT_PATH, request.clone())
        })
        .await;
        if let Some(response) = answer {
            let rejected = ExportTraceServiceResponse::decode(response)
                .ok()
                .and_then(|r| r.partial_success);
            stats.answered(&rejected, template.spans, template.traces.len());
        }
        if per_worker_rate > 0.0 {
            next_send += Duration::from_secs_f64(template.spans as f64 / per_worker_rate);
            tokio::time::sleep_until(next_send.min(end)).await;
        }
    }
}

async fn metrics_worker(channel: Channel, config: &LoadConfig, end: Instant, stats: &LoadStats) {
    let mut generator = Generator::new(config.seed ^ 0x006d_6574_7269_6373, config.shape);
    let client = MetricsServiceClient::new(channel).max_encoding_message_size(256 * 1024 * 1024);
    let tick = Duration::from_millis(100);
    let per_tick = (config.metric_points_per_sec as f64 * tick.as_secs_f64()).ceil() as usize;
    let mut next = Instant::now();
    while Instant::now() < end {
        let request = generator.metrics(per_tick.max(1), unix_nanos_now());
        let answer = send_with_backoff(end, stats, || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.export(request).await }
        })
        .await;
        if answer.is_some() {
            stats
                .accepted_points
                .fetch_add(per_tick.max(1) as u64, Ordering::Relaxed);
        }
        next += tick;
        tokio::time::sleep_until(next.min(end)).await;
    }
}

/// Sends until acknowledged: throttling answers are counted and retried after the
/// server's RetryInfo delay (or [`DEFAULT_BACKOFF`]) until `end + RETRY_GRACE`;
/// other errors are counted and the request is given up.
async fn send_with_backoff<T, F, Fut>(end: Instant, stats: &LoadStats, mut send: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    loop {
        match send().await {
            Ok(answer) => return Some(answer),
            Err(status) if is_throttle(&status) => {
                stats.throttled.fetch_add(1, Ordering::Relaxed);
                if Instant::now() > end + RETRY_GRACE {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                tokio::time::sleep(retry_delay(&status)).await;
            }
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        }
    }
}

/// Whether a status asks the client to slow down and retry.
pub fn is_throttle(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
        && (status.code() == Code::Unavailable || status.get_details_retry_info().is_some())
}

/// The server's RetryInfo delay, or [`DEFAULT_BACKOFF`], capped at [`MAX_BACKOFF`].
pub fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(DEFAULT_BACKOFF)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use tonic_types::ErrorDetails;

    #[test]
    fn prepared_requests_go_out_with_fresh_trace_ids_and_nothing_else_changed() {
        let shape = TraceShape {
            spans_per_trace: 5,
            error_share: 0.0,
            logs_per_trace: 0,
        };
        let batch = Generator::new(3, shape).trace_batch(100, unix_nanos_now());
        let prepared = Prepared::new(&batch);
        assert_eq!(prepared.traces.len(), 20);
        assert!(
            prepared.traces.iter().all(|t| t.len() == 5),
            "every span's id found"
        );
        let ids = |bytes: Bytes| {
            let request = ExportTraceServiceRequest::decode(bytes).unwrap();
            let mut spans: Vec<_> = request
                .resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans)
                .collect();
            spans.sort_by(|a, b| a.span_id.cmp(&b.span_id));
            spans
        };
        let original = ids(Bytes::from(prepared.bytes.clone()));
        let first = ids(prepared.fresh(1, 0));
        let second = ids(prepared.fresh(1, 1));
        for (spans, other) in [(&first, &second), (&second, &first)] {
            let traces: std::collections::HashSet<_> = spans.iter().map(|s| &s.trace_id).collect();
            assert_eq!(traces.len(), 20, "traces stay distinct");
            assert!(
                other.iter().all(|s| !traces.contains(&s.trace_id)),
                "new ids per send"
            );
        }
        for (fresh, was) in first.iter().zip(&original) {
            let mut fresh = fresh.clone();
            fresh.trace_id.clone_from(&was.trace_id);
            assert_eq!(&fresh, was, "only the trace id changes");
        }
    }

    #[test]
    fn throttling_statuses_and_their_delays() {
        let with_info = Status::with_error_details(
            Code::Unavailable,
            "buffer full",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(750))),
        );
        assert!(is_throttle(&with_info));
        assert_eq!(retry_delay(&with_info), Duration::from_millis(750));
        let bare = Status::unavailable("busy");
        assert!(is_throttle(&bare));
        assert_eq!(retry_delay(&bare), DEFAULT_BACKOFF);
        let huge = Status::with_error_details(
            Code::ResourceExhausted,
            "queue full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(600))),
        );
        assert!(is_throttle(&huge));
        assert_eq!(retry_delay(&huge), MAX_BACKOFF);
        assert!(!is_throttle(&Status::resource_exhausted(
            "message too large"
        )));
        assert!(!is_throttle(&Status::invalid_argument("bad")));
    }
}
