//! Cluster traffic whose fate the sender knows: generated traces with a `keep`
//! attribute on every span (`yes` on a fixed share of traces, chosen from the trace id),
//! each trace's spans split between several endpoints (routers), sent with retries
//! until acknowledged and recorded in a [`Ledger`].
//!
//! [`SteadyLoad`] sends such traffic at a fixed rate in the background while a test
//! changes the cluster; [`send_split`] sends one batch and waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::HarnessError;
use crate::completeness::Ledger;
use crate::generate::{Generator, TraceShape, kv_str};
use crate::load::{connect, is_throttle, retry_delay, unix_nanos_now};

/// Span attribute that marks a trace to keep (`yes`) or not (`no`).
pub const KEEP_ATTRIBUTE: &str = "keep";

/// A `string_attribute` policy keeping exactly the traces marked `keep=yes`.
pub fn keep_policy() -> serde_json::Value {
    serde_json::json!([{
        "name": "keep-marked",
        "type": "string_attribute",
        "string_attribute": {"key": KEEP_ATTRIBUTE, "values": ["yes"]}
    }])
}

/// Whether a trace is one to keep: one in four, chosen by its first id byte, so the
/// sender knows the policy's answer without asking anyone.
pub fn is_kept(trace_id: &[u8]) -> bool {
    trace_id.first().is_some_and(|b| b % 4 == 0)
}

/// One batch of traces split into parts, one per endpoint.
#[derive(Debug, Clone, Default)]
pub struct SplitBatch {
    /// `parts[i]` goes to endpoint `i`.
    pub parts: Vec<ExportTraceServiceRequest>,
    /// Every span: (trace id, span id, kept, part).
    pub spans: Vec<(Vec<u8>, Vec<u8>, bool, usize)>,
}

/// Generates traces totalling about `spans` spans, marks every span with
/// [`KEEP_ATTRIBUTE`] per [`is_kept`], and deals each trace's spans round-robin over
/// `parts` requests, so every trace of two spans or more reaches several endpoints.
pub fn split_batch(generator: &mut Generator, spans: usize, parts: usize) -> SplitBatch {
    let parts = parts.max(1);
    let batch = generator.trace_batch(spans, unix_nanos_now());
    let mut split = SplitBatch {
        parts: vec![ExportTraceServiceRequest::default(); parts],
        spans: Vec::with_capacity(batch.span_count),
    };
    let mut dealt: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for rs in batch.traces.resource_spans {
        let mut per_part: Vec<ResourceSpans> = (0..parts)
            .map(|_| ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans: Vec::new(),
                schema_url: rs.schema_url.clone(),
            })
            .collect();
        for ss in rs.scope_spans {
            let mut scoped: Vec<_> = (0..parts)
                .map(|_| {
                    let mut s = ss.clone();
                    s.spans.clear();
                    s
                })
                .collect();
            for mut span in ss.spans {
                let kept = is_kept(&span.trace_id);
                span.attributes
                    .push(kv_str(KEEP_ATTRIBUTE, if kept { "yes" } else { "no" }));
                let next = dealt.entry(span.trace_id.clone()).or_default();
                let part = *next % parts;
                *next += 1;
                split
                    .spans
                    .push((span.trace_id.clone(), span.span_id.clone(), kept, part));
                scoped[part].spans.push(span);
            }
            for (part, s) in scoped.into_iter().enumerate() {
                if !s.spans.is_empty() {
                    per_part[part].scope_spans.push(s);
                }
            }
        }
        for (part, r) in per_part.into_iter().enumerate() {
            if !r.scope_spans.is_empty() {
                split.parts[part].resource_spans.push(r);
            }
        }
    }
    split
}

/// Counters of a sender.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// Export requests acknowledged.
    pub acknowledged_requests: AtomicU64,
    /// Attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Requests given up (never acknowledged before their deadline).
    pub failed_requests: AtomicU64,
    /// Spans refused through partial success.
    pub rejected_spans: AtomicU64,
}

/// A copy of [`TrafficStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// See [`TrafficStats::acknowledged_requests`].
    pub acknowledged_requests: u64,
    /// See [`TrafficStats::retries`].
    pub retries: u64,
    /// See [`TrafficStats::failed_requests`].
    pub failed_requests: u64,
    /// See [`TrafficStats::rejected_spans`].
    pub rejected_spans: u64,
}

impl TrafficStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> TrafficSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TrafficSnapshot {
            acknowledged_requests: get(&self.acknowledged_requests),
            retries: get(&self.retries),
            failed_requests: get(&self.failed_requests),
            rejected_spans: get(&self.rejected_spans),
        }
    }
}

/// How long one request is retried before it is given up.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failure that is not a throttling answer.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

/// Sends `request` until it is acknowledged (retrying any failure, as an OTLP client
/// does) or [`RETRY_BUDGET`] has passed. Returns spans rejected through partial
/// success, or `None` if the request was given up.
async fn send_until_acknowledged(
    client: &TraceServiceClient<Channel>,
    request: &ExportTraceServiceRequest,
    stats: &TrafficStats,
) -> Option<i64> {
    let deadline = Instant::now() + RETRY_BUDGET;
    loop {
        let mut client = client.clone();
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, client.export(request.clone())).await;
        let delay = match attempt {
            Ok(Ok(response)) => {
                stats.acknowledged_requests.fetch_add(1, Ordering::Relaxed);
                return Some(
                    response
                        .into_inner()
                        .partial_success
                        .map_or(0, |p| p.rejected_spans),
                );
            }
            Ok(Err(status)) if is_throttle(&status) => retry_delay(&status),
            Ok(Err(_)) | Err(_) => ERROR_BACKOFF,
        };
        if Instant::now() + delay > deadline {
            stats.failed_requests.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
    }
}

/// Sends part `part` of a batch and records its spans as acknowledged once it is.
async fn send_part(
    client: TraceServiceClient<Channel>,
    request: ExportTraceServiceRequest,
    spans: Vec<(Vec<u8>, Vec<u8>)>,
    ledger: Arc<Mutex<Ledger>>,
    stats: Arc<TrafficStats>,
) {
    match send_until_acknowledged(&client, &request, &stats).await {
        Some(0) => {
            let mut ledger = ledger.lock().expect("ledger lock");
            for (trace, span) in &spans {
                ledger.acknowledged(trace, span);
            }
        }
        Some(rejected) => {
            stats
                .rejected_spans
                .fetch_add(rejected.max(0) as u64, Ordering::Relaxed);
        }
        None => {}
    }
}

/// Trace clients, one per endpoint.
async fn clients(endpoints: &[String]) -> Result<Vec<TraceServiceClient<Channel>>, HarnessError> {
    let mut clients = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        clients.push(TraceServiceClient::new(connect(endpoint).await?));
    }
    Ok(clients)
}

/// Records `batch` as sent, then sends part `i` to `clients[i]`, part `i` after
/// `i * part_delay`, each in its own task in `tasks`.
fn dispatch(
    batch: SplitBatch,
    clients: &[TraceServiceClient<Channel>],
    part_delay: Duration,
    ledger: &Arc<Mutex<Ledger>>,
    stats: &Arc<TrafficStats>,
    tasks: &mut JoinSet<()>,
) {
    {
        let mut ledger = ledger.lock().expect("ledger lock");
        for (trace, span, kept, _) in &batch.spans {
            ledger.sent(trace, span, *kept);
        }
    }
    for (part, request) in batch.parts.into_iter().enumerate() {
        if request.resource_spans.is_empty() {
            continue;
        }
        let spans: Vec<(Vec<u8>, Vec<u8>)> = batch
            .spans
            .iter()
            .filter(|(_, _, _, p)| *p == part)
            .map(|(t, s, _, _)| (t.clone(), s.clone()))
            .collect();
        let client = clients[part % clients.len()].clone();
        let (ledger, stats) = (Arc::clone(ledger), Arc::clone(stats));
        let delay = part_delay * part as u32;
        tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            send_part(client, request, spans, ledger, stats).await;
        });
    }
}

/// Sends one batch of `spans` spans split over `endpoints` (all parts at once) and
/// waits until every part is acknowledged or given up. Returns what was sent.
pub async fn send_split(
    endpoints: &[String],
    generator: &mut Generator,
    spans: usize,
) -> Result<(Ledger, TrafficSnapshot), HarnessError> {
    let clients = clients(endpoints).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stats = Arc::new(TrafficStats::default());
    let mut tasks = JoinSet::new();
    let batch = split_batch(generator, spans, endpoints.len());
    dispatch(batch, &clients, Duration::ZERO, &ledger, &stats, &mut tasks);
    while tasks.join_next().await.is_some() {}
    let ledger = ledger.lock().expect("ledger lock").clone();
    Ok((ledger, stats.snapshot()))
}

/// Shape of a steady background load.
#[derive(Debug, Clone)]
pub struct SteadyConfig {
    /// Endpoints (router OTLP/gRPC, `http://host:port`); every trace is split over all.
    pub endpoints: Vec<String>,
    /// Traces started per second.
    pub traces_per_sec: u32,
    /// Spans in every trace.
    pub spans_per_trace: usize,
    /// Pause between sending part `i` and part `i + 1` of a batch, so that a trace's
    /// later spans arrive while its first ones are already buffered.
    pub part_delay: Duration,
    /// Seed of the trace generator.
    pub seed: u64,
}

/// A background sender at a fixed rate; see the module docs.
pub struct SteadyLoad {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    ledger: Arc<Mutex<Ledger>>,
    stats: Arc<TrafficStats>,
}

/// Sending ticks per second.
const TICKS_PER_SEC: u32 = 10;

impl SteadyLoad {
    /// Connects to every endpoint and starts sending.
    pub async fn start(config: SteadyConfig) -> Result<Self, HarnessError> {
        let clients = clients(&config.endpoints).await?;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stats = Arc::new(TrafficStats::default());
        let (stop, mut stop_rx) = watch::channel(false);
        let task = {
            let (ledger, stats) = (Arc::clone(&ledger), Arc::clone(&stats));
            tokio::spawn(async move {
                let shape = TraceShape {
                    spans_per_trace: config.spans_per_trace.max(2),
                    error_share: 0.0,
                    logs_per_trace: 0,
                };
                let mut generator = Generator::new(config.seed, shape);
                let per_tick = (config.traces_per_sec / TICKS_PER_SEC).max(1) as usize;
                let tick = Duration::from_secs(1) / TICKS_PER_SEC;
                let mut tasks = JoinSet::new();
                let mut next = Instant::now();
                while !*stop_rx.borrow() {
                    let batch = split_batch(
                        &mut generator,
                        per_tick * shape.spans_per_trace,
                        clients.len(),
                    );
                    dispatch(
                        batch,
                        &clients,
                        config.part_delay,
                        &ledger,
                        &stats,
                        &mut tasks,
                    );
                    while tasks.try_join_next().is_some() {}
                    next += tick;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = stop_rx.changed() => {}
                    }
                }
                while tasks.join_next().await.is_some() {}
            })
        };
        Ok(Self {
            stop,
            task,
            ledger,
            stats,
        })
    }

    /// Spans sent so far.
    pub fn sent_spans(&self) -> usize {
        self.ledger.lock().expect("ledger lock").span_count()
    }

    /// Counters so far.
    pub fn stats(&self) -> TrafficSnapshot {
        self.stats.snapshot()
    }

    /// Stops starting new traces, waits for requests in flight (each retried for at
    /// most [`RETRY_BUDGET`]) and returns the ledger and counters.
    pub async fn stop(self) -> (Ledger, TrafficSnapshot) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let ledger = self.ledger.lock().expect("ledger lock").clone();
        (ledger, self.stats.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::attribute_str;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn batches_mark_every_span_and_deal_each_trace_over_all_parts() {
        let shape = TraceShape {
            spans_per_trace: 5,
            error_share: 0.0,
            logs_per_trace: 0,
        };
        let mut generator = Generator::new(3, shape);
        let batch = split_batch(&mut generator, 5 * 200, 2);
        assert_eq!(batch.parts.len(), 2);
        assert_eq!(batch.spans.len(), 1000);
        let mut parts_of: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
        let mut seen = 0;
        for (part, request) in batch.parts.iter().enumerate() {
            for span in request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
            {
                seen += 1;
                let keep = attribute_str(&span.attributes, KEEP_ATTRIBUTE);
                let expected = if is_kept(&span.trace_id) { "yes" } else { "no" };
                assert_eq!(keep.as_deref(), Some(expected));
                parts_of
                    .entry(span.trace_id.clone())
                    .or_default()
                    .insert(part);
            }
        }
        assert_eq!(seen, 1000);
        assert_eq!(parts_of.len(), 200);
        assert!(parts_of.values().all(|p| p.len() == 2));
        let kept = parts_of.keys().filter(|t| is_kept(t)).count();
        assert!((30..70).contains(&kept), "kept {kept} of 200");
        assert!(batch.spans.iter().all(|(t, _, k, _)| *k == is_kept(t)));
    }
}
