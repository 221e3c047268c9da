//! The sampler's core: takes validated OTLP requests, buffers spans durably, keeps the
//! trace index and decision cache, decides due traces and moves kept ones to the export
//! queue.
//!
//! Concurrency: receivers call [`Engine::ingest_encoded_traces`] / [`Engine::ingest_traces`] /
//! [`Engine::ingest_logs`] on blocking threads. Reading, grouping and policy observation
//! happen outside any lock. The index and the decision cache are split by trace id into
//! shards (`shards`), each behind its own mutex. A request's spans are routed by the cache
//! of their shard (when their trace is decided already), written to RocksDB without any
//! lock — so requests are written concurrently — and indexed under their shard's lock once
//! written; a trace decided while its spans were being written is found in the cache at
//! that point and those spans follow the decision like late spans. Log records are written
//! while the shards of their traces are locked. Kept traces are read back and queued after
//! the lock is released: by then their id is in the decision cache, so later spans take the
//! late path instead of the buffer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_tail_shared::config::{Config, PolicyConfig};
use otel_tail_shared::exporter::ExportRequest;
use otel_tail_shared::otlp::{self, Signal, TraceId};
use otel_tail_shared::receiver::{Accepted, IngestError, Reads};
use otel_tail_shared::split::Spans;
use prost::Message;
use rocksdb::WriteBatch;
use smallvec::SmallVec;

use crate::buffer::{Arrival, BufferSettings, Generation, STALE, TraceEntry};
use crate::clock::{Clock, SystemClock};
use crate::correlation::classify::mark_trace_logs;
use crate::correlation::{DecisionNotice, ResourceIdentity};
use crate::decision::{Cached, DecisionCache, Kept};
use crate::dedup::SpanDedup;
use crate::export_queue::ExportQueues;
use crate::policy::{
    PolicyEngine, PolicyError, PolicyState, SpanObserver, TraceStats, apply_sample_rate,
    apply_sampling_probability,
};
use crate::rollup::spans::SpanPoints;
use crate::settle::{SettleConfig, SettleError, SettleLinks, Settler};
use crate::storage::{
    BufferedKind, Forgetting, ItemKey, Location, Locations, RequestValue, SHARED_GROUP_HEAD,
    SharedGroup, Storage, StorageError, Store,
};
use shards::{ShardGuard, Shards, State};
use wire::kept::{KeptSpans, SplicedRequest};

/// Span attribute naming the policy that kept a trace (as the Collector records it).
pub const POLICY_ATTRIBUTE: &str = "tailsampling.policy";

/// Most traces decided in one pass of the decider.
const DECIDE_BATCH: usize = 4096;
/// Kept or dropped traces moved out of the buffer per RocksDB write.
const FINISH_CHUNK: usize = 256;
/// Room in a request's write batch beyond its value, for the held span-metric points that
/// go with it (a few KiB).
const BATCH_SLACK_BYTES: usize = 16 * 1024;
/// Most resources whose identity a finishing chunk remembers (see [`resource_identity`]).
const KNOWN_RESOURCES: usize = 64;
/// Span ids remembered per kept trace to drop repeats that arrive late.
const DEDUP_SPANS_PER_TRACE: usize = 256;
/// Longest a span is taken to last when it sets a correlation window; a longer one (an end
/// time of `u64::MAX`, say) is clamped and counted.
const MAX_SPAN_TIME_SKEW: Duration = Duration::from_secs(3600);
/// Widest correlation window of a kept trace; a wider one keeps its latest part.
const MAX_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Back-off suggested to clients while a limit is reached.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What an engine is built with besides its configuration and storage: the one clock it
/// and its settler read, and, in a cluster, the settler's links to the other samplers.
#[derive(Clone)]
pub struct Wiring {
    /// Where every deadline, hold window and rollup interval reads the time.
    pub clock: Arc<dyn Clock>,
    /// The settler's cluster links (none standalone).
    pub links: SettleLinks,
}

impl Default for Wiring {
    /// The system clock, standalone.
    fn default() -> Self {
        Wiring {
            clock: Arc::new(SystemClock::new()),
            links: SettleLinks::default(),
        }
    }
}

/// The policy set in force (its generation is [`Observing::generation`]).
struct Policies {
    engine: PolicyEngine,
    /// This node's share of the cluster's traffic, kept for a replacement set.
    share: f64,
}

/// What ingest reads of the policy set in force: its span observer and generation. Kept
/// apart from [`Policies`], whose lock a decision batch holds, so that requests observe
/// their spans meanwhile.
#[derive(Clone)]
struct Observing {
    observer: Arc<SpanObserver>,
    /// Bumped by each reload, so traces observed under an earlier set are recognised (see
    /// [`Slot::generation`](crate::buffer::Slot::generation)).
    generation: Generation,
}

/// Span groups of a request whose trace was decided already: kept ones (with their
/// bytes) are exported like late spans, dropped ones counted.
#[derive(Default)]
struct Late {
    kept: Vec<(TraceId, BufferedKind, Vec<u8>, Kept)>,
    dropped: u64,
}

impl Late {
    /// Routes a group (its kind and bytes from `item`) whose trace the cache knows: kept
    /// ones are taken for export, dropped ones counted. Returns the arrival back when the
    /// trace is undecided.
    fn route<'a>(
        &mut self,
        cache: &mut DecisionCache,
        trace: TraceId,
        arrival: Arrival,
        item: impl FnOnce() -> (BufferedKind, Cow<'a, [u8]>),
    ) -> Option<Arrival> {
        match cache.get(&trace) {
            Some(Cached::Sampled(kept)) => {
                let (kind, bytes) = item();
                self.kept.push((trace, kind, bytes.into_owned(), kept));
                None
            }
            Some(Cached::NotSampled) => {
                self.dropped += u64::from(arrival.stats.span_count);
                None
            }
            None => Some(arrival),
        }
    }
}

/// What [`Engine::ingest_encoded_traces`] took.
#[derive(Debug, Clone, Default)]
pub struct TookSpans {
    /// Spans refused for invalid ids (`partial_success`).
    pub refused: Accepted,
    /// Spans taken.
    pub spans: u64,
    /// Their trace ids, each once.
    pub traces: Vec<TraceId>,
}

/// A decided trace whose buffered data still has to be queued or forgotten.
struct Decided {
    trace: TraceId,
    /// Where its buffered items lie (taken out of the index with it).
    items: Locations,
    kept: Option<Kept>,
    spans: u32,
    /// Log records were buffered with the trace.
    has_logs: bool,
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The policy set is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The hold or the rollups could not be set up.
    #[error(transparent)]
    Settle(#[from] SettleError),
}

/// Why the index could not be rebuilt after a restart.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The buffer could not be read.
    #[error("reading the trace buffer")]
    Storage(#[from] StorageError),
    /// The hold or the rollup inputs could not be read back.
    #[error("recovering held logs, metrics and rollup inputs")]
    Settle(#[from] SettleError),
}

/// The sampler core. Shared as `Arc<Engine>`.
pub struct Engine {
    storage: Arc<Storage>,
    queues: Arc<ExportQueues>,
    policies: RwLock<Policies>,
    /// The span observer of `policies`, replaced with it (lock order: `policies` first).
    observing: RwLock<Observing>,
    /// Index and decision cache, split by trace id.
    shards: Shards,
    clock: Arc<dyn Clock>,
    max_storage_bytes: u64,
    storage_bytes: AtomicU64,
    /// `min_free_disk_bytes`: new data is throttled with less free disk than this.
    min_free_disk_bytes: u64,
    /// Free bytes on the storage filesystem at the last refresh.
    free_disk_bytes: AtomicU64,
    settler: Arc<Settler>,
    /// Span ids of recently kept traces, so each leaves once.
    dedup: Mutex<SpanDedup>,
    /// `maximum_trace_size_bytes`: a trace buffering more is dropped at once (0: no limit).
    max_trace_bytes: u64,
    /// `max_spans_per_trace`: a trace with this many spans is decided at once (0: no limit).
    max_trace_spans: u32,
    /// `block_on_overflow`: with this many traces buffered, new data is refused rather than a
    /// trace being decided early.
    block_at_traces: Option<usize>,
}

impl Engine {
    /// Builds the engine over opened storage and queues, with its clock and cluster links
    /// fixed here. Call [`Engine::recover`] next.
    pub fn new(
        full: &Config,
        storage: Arc<Storage>,
        queues: Arc<ExportQueues>,
        wiring: Wiring,
    ) -> Result<Engine, BuildError> {
        let config = &full.sampler;
        let settler = Arc::new(Settler::new(
            SettleConfig {
                sampler: config,
                correlation: &full.correlation,
                rollup: &full.rollup,
            },
            storage.clone(),
            queues.clone(),
            wiring.clock.clone(),
            wiring.links,
        )?);
        let policies = PolicyEngine::new(&config.policies, config.sample_on_first_match)?;
        let settings = BufferSettings {
            decision_wait_ms: config.decision_wait.as_millis() as u64,
            after_root_ms: config
                .decision_wait_after_root_received
                .map(|d| d.as_millis() as u64),
            max_age_ms: config.effective_max_trace_age().as_millis() as u64,
            // With block_on_overflow the bound is enforced at admission instead.
            capacity: if config.block_on_overflow {
                usize::MAX
            } else {
                config.num_traces
            },
        };
        Ok(Engine {
            storage,
            queues,
            observing: RwLock::new(Observing {
                observer: policies.observer(),
                generation: 0,
            }),
            policies: RwLock::new(Policies {
                engine: policies,
                share: 1.0,
            }),
            shards: Shards::new(
                settings,
                config.decision_cache.sampled_cache_size,
                config.decision_cache.non_sampled_cache_size,
            ),
            clock: wiring.clock,
            max_storage_bytes: config.max_storage_bytes,
            storage_bytes: AtomicU64::new(0),
            min_free_disk_bytes: config.min_free_disk_bytes,
            free_disk_bytes: AtomicU64::new(u64::MAX),
            settler,
            dedup: Mutex::new(SpanDedup::new(
                config.decision_cache.sampled_cache_size,
                DEDUP_SPANS_PER_TRACE,
            )),
            max_trace_bytes: config.maximum_trace_size_bytes,
            max_trace_spans: config.max_spans_per_trace,
            block_at_traces: config.block_on_overflow.then_some(config.num_traces),
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.monotonic_ms()
    }

    fn unix_now(&self) -> u64 {
        self.clock.unix_nanos()
    }

    /// The hold and summary path: held logs and metric points, kept-trace notices, rollups.
    pub fn settler(&self) -> &Arc<Settler> {
        &self.settler
    }

    /// Locks the shard holding `trace`'s index entry and cached decision.
    #[cfg(test)]
    fn shard(&self, trace: &TraceId) -> ShardGuard<'_> {
        self.shards.lock_trace(trace)
    }

    /// Tells the policies this node's share of the cluster's traffic (`1 / samplers on the
    /// ring`), by which the dynamic throughput goals are scaled. Called on ring changes.
    pub fn set_policy_share(&self, share: f64) {
        let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        policies.share = share;
        policies.engine.set_share(share);
    }

    /// The span observer in force, with its generation.
    fn observing(&self) -> Observing {
        self.observing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Traces currently buffered.
    pub fn active_traces(&self) -> usize {
        self.shards.traces()
    }

    /// Rebuilds the index from what RocksDB still buffers (after a restart or crash). Every
    /// recovered trace gets a fresh `decision_wait`, so its late spans can still join it.
    /// Buffered records that fail to decode are quarantined (see [`Storage::quarantine`]).
    pub fn recover(&self) -> Result<usize, RecoverError> {
        let now = self.now_ms();
        let mut arrivals = Vec::new();
        let mut full = Vec::new();
        let mut corrupt = Vec::new();
        {
            let policies = &self.observing();
            self.storage.scan_buffer(|trace, location, kind, payload| {
                let arrival = match kind {
                    BufferedKind::Logs => Arrival {
                        logs: true,
                        ..Arrival::default()
                    },
                    _ => match kind.decode_spans(payload) {
                        Ok(all) => {
                            let mut arrival = Arrival::default();
                            for rs in &all {
                                arrival.merge(&arrival_of(policies, rs, 0));
                            }
                            arrival.stats.bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                            arrival
                        }
                        Err(error) => {
                            corrupt.push((trace, location.key(), kind, payload.to_vec(), error));
                            return false;
                        }
                    },
                };
                arrivals.push((trace, arrival, location));
                true
            })?;
        }
        // Indexed once the scan is over: a shard lock is never taken inside it.
        for (at, part) in self.shards.partition(arrivals, |(t, _, _)| t) {
            let mut shard = self.shards.lock(at);
            for (trace, arrival, location) in part {
                full.extend(
                    shard
                        .index
                        .observe(trace, &arrival, &[location], now)
                        .evicted,
                );
            }
        }
        if !corrupt.is_empty() {
            let mut batch = WriteBatch::default();
            for (trace, key, kind, payload, _) in &corrupt {
                self.storage
                    .quarantine_item(&mut batch, trace, *key, *kind, payload);
            }
            self.storage.write(batch)?;
            for (.., error) in &corrupt {
                crate::events::corrupt_record(Store::Buffer, error);
            }
        }
        let (held, pending) = self.settler.recover(self.unix_now())?;
        if held + pending > 0 {
            tracing::info!(held, pending, "resumed held logs and metrics from storage");
        }
        let recovered = self.active_traces() + full.len();
        let evicted = self.decide_by_shard(full);
        self.finish_all(&evicted)?;
        events::active_traces(self.active_traces());
        Ok(recovered)
    }

    /// Refuses new data while the export queue or the buffer is over its bound.
    fn admit(&self) -> Result<(), IngestError> {
        if self.queues.is_full() {
            return Err(IngestError::Overloaded {
                retry_after: RETRY_AFTER,
                reason: "export queue full",
            });
        }
        if self.storage_bytes.load(Ordering::Relaxed) >= self.max_storage_bytes {
            return Err(IngestError::Overloaded {
                retry_after: RETRY_AFTER,
                reason: "buffer storage full",
            });
        }
        if self.free_disk_bytes.load(Ordering::Relaxed) < self.min_free_disk_bytes {
            return Err(IngestError::Overloaded {
                retry_after: RETRY_AFTER,
                reason: "disk almost full (sampler.min_free_disk_bytes)",
            });
        }
        if self
            .block_at_traces
            .is_some_and(|limit| self.active_traces() >= limit)
        {
            return Err(IngestError::Overloaded {
                retry_after: Duration::from_secs(1),
                reason: "num_traces traces buffered (block_on_overflow)",
            });
        }
        Ok(())
    }

    /// Refreshes the storage size and free disk figures used for admission, and the gauges;
    /// trims the write-ahead log ([`Storage::trim_wal`]) and sets blob GC's cutoff
    /// ([`Storage::tune_blob_gc`]).
    pub fn refresh_storage_bytes(&self) {
        if let Err(error) = self.storage.trim_wal_to_limit() {
            tracing::warn!(%error, "flushing to trim the write-ahead log failed");
        }
        if let Err(error) = self.storage.tune_blob_gc() {
            tracing::warn!(%error, "setting the buffer's blob GC cutoff failed");
        }
        let bytes = self.storage.approximate_bytes();
        self.storage_bytes.store(bytes, Ordering::Relaxed);
        if let Some(free) = self.storage.free_disk_bytes() {
            self.free_disk_bytes.store(free, Ordering::Relaxed);
            events::disk_free(free);
        }
        let index_bytes = self.shards.memory_bytes() + self.storage.layout_memory_bytes();
        events::storage_sizes(bytes, self.storage.memory_bytes(), index_bytes);
    }

    /// Buffers the spans of a request (durably, before returning) or routes them by a cached
    /// decision when their trace was decided already; counts them into span metrics in the
    /// same write.
    pub fn ingest_traces(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Result<Accepted, IngestError> {
        self.ingest_spans(request, true)
    }

    /// [`Engine::ingest_traces`] for spans another sampler handed off: they were counted
    /// into span metrics where they were first buffered, so they are not counted again.
    pub fn ingest_handed_off_traces(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Result<Accepted, IngestError> {
        self.ingest_spans(request, false)
    }

    fn ingest_spans(
        &self,
        request: ExportTraceServiceRequest,
        count: bool,
    ) -> Result<Accepted, IngestError> {
        self.admit()?;
        let now_unix = self.unix_now();
        let span_points = count
            .then(|| self.settler.span_metrics(&request, now_unix))
            .flatten();
        let groups = group_spans_by_trace(request);
        let mut value = RequestValue::default();
        let arrivals: Vec<(TraceId, Arrival)> = {
            let policies = &self.observing();
            groups
                .into_iter()
                .map(|(trace, rs)| {
                    let len = value.push(trace, BufferedKind::Spans, &rs);
                    (trace, arrival_of(policies, &rs, len + 1))
                })
                .collect()
        };
        self.buffer_spans(value, arrivals, span_points, now_unix)?;
        Ok(Accepted::default())
    }

    /// Buffers the spans of an encoded `ExportTraceServiceRequest` as [`Engine::ingest_traces`]
    /// does, without decoding it whole: spans are read for what deciding needs and stored as
    /// the bytes they arrived in ([`wire`]). Spans with invalid ids are refused as
    /// [`otlp::sanitize_traces`] refuses them.
    pub fn ingest_encoded_traces(&self, body: bytes::Bytes) -> Result<TookSpans, IngestError> {
        self.admit()?;
        let parsed = wire::parse(body, self.span_needs()).map_err(IngestError::Invalid)?;
        // Groups by trace, each trace's in the request's order: one sort serves both the
        // items and the list of traces taken. It sorts (trace id as an integer, group)
        // pairs, not group indexes by a key read from each group, which was a cache miss
        // per comparison.
        let mut keyed: Vec<(u128, usize)> = parsed
            .groups
            .iter()
            .enumerate()
            .map(|(i, group)| (u128::from_be_bytes(group.trace), i))
            .collect();
        keyed.sort_unstable();
        let order: Vec<usize> = keyed.iter().map(|&(_, i)| i).collect();
        // Runs of one trace, found on the sorted keys (no read through the groups).
        let mut runs: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        for run in keyed.chunk_by(|a, b| a.0 == b.0) {
            runs.push(&order[start..start + run.len()]);
            start += run.len();
        }
        let took = TookSpans {
            refused: parsed.refused.clone(),
            spans: parsed.span_count() as u64,
            traces: runs.iter().map(|run| parsed.groups[run[0]].trace).collect(),
        };
        if parsed.groups.is_empty() {
            return Ok(took);
        }
        let now_unix = self.unix_now();
        let span_points = self.settler.span_metrics(&parsed.slim, now_unix);
        // Per group: its scopes' lengths, the length of its encoding after the resource,
        // and of its whole encoding as a `ResourceSpans`.
        let sized: Vec<(wire::ScopeLens, usize, usize)> = parsed
            .groups
            .iter()
            .map(|group| {
                let lens = parsed.scope_lens(group);
                let rest = parsed.rest_len(group, &lens);
                let whole = parsed.encoded_len(group, rest);
                (lens, rest, whole)
            })
            .collect();
        // One item per trace: its groups (one per resource its spans came under), each
        // naming its resource, stored once per chunk of the request's value.
        let items: Vec<(&[usize], usize)> = runs
            .into_iter()
            .map(|run| {
                (
                    run,
                    run.iter().map(|&i| SHARED_GROUP_HEAD + sized[i].1).sum(),
                )
            })
            .collect();
        let mut value =
            RequestValue::for_items(items.iter().map(|(_, len)| *len), parsed.resource_lens());
        let arrivals: Vec<(TraceId, Arrival)> = {
            let policies = &self.observing();
            items
                .iter()
                .map(|&(run, _)| {
                    let trace = parsed.groups[run[0]].trace;
                    let groups: SmallVec<[SharedGroup<'_>; 2]> = run
                        .iter()
                        .map(|&i| SharedGroup {
                            resource: parsed.resource(&parsed.groups[i]),
                            rest_len: sized[i].1,
                        })
                        .collect();
                    value.push_shared(trace, &groups, |at, buf| {
                        let i = run[at];
                        parsed.encode_rest(&parsed.groups[i], &sized[i].0, buf);
                    });
                    let mut arrival = Arrival::default();
                    for &i in run {
                        let group = &parsed.groups[i];
                        let rs = &parsed.slim.resource_spans[group.resource];
                        let spans = group.spans.iter().map(|&(scope, span)| {
                            let ss = &rs.scope_spans[scope];
                            (ss.scope.as_ref(), &ss.spans[span])
                        });
                        arrival.merge(&arrival_from(
                            policies,
                            rs.resource.as_ref(),
                            spans,
                            sized[i].2 + 1,
                        ));
                    }
                    (trace, arrival)
                })
                .collect()
        };
        self.buffer_spans(value, arrivals, span_points, now_unix)?;
        wire::recycle(parsed);
        Ok(took)
    }

    /// How the receivers should expect a request of `signal` to be read, for their budget
    /// of decoded bytes: spans slim unless policies or span metrics read more; logs and
    /// metrics decoded whole.
    pub fn reads(&self, signal: Signal) -> Reads {
        match (signal, self.span_needs()) {
            (Signal::Traces, wire::SpanNeeds::Fixed) => Reads::Decodes(Spans::Slim),
            _ => Reads::Decodes(Spans::Whole),
        }
    }

    /// What the policies and span metrics read of a span: its attributes only when one of
    /// them looks at attributes; all of it for OTTL conditions.
    fn span_needs(&self) -> wire::SpanNeeds {
        match self.observing().observer.span_needs() {
            wire::SpanNeeds::Fixed if self.settler.span_metrics_read_attributes() => {
                wire::SpanNeeds::Attributes
            }
            needs => needs,
        }
    }

    /// Buffers one request's span groups (`value`, one item per entry of `arrivals`), or
    /// routes them by a cached decision when their trace was decided already, with their
    /// span-metric points in the same write.
    ///
    /// The write happens outside the shard locks, so requests are written concurrently
    /// (RocksDB groups concurrent writers into one WAL write). The items are indexed only
    /// once written; a trace decided in between is found in the decision cache then, and
    /// its just-written items follow that decision like late spans.
    fn buffer_spans(
        &self,
        mut value: RequestValue,
        arrivals: Vec<(TraceId, Arrival)>,
        span_points: Option<SpanPoints>,
        now_unix: u64,
    ) -> Result<(), IngestError> {
        let mut late = Late::default();
        let mut batch = WriteBatch::with_capacity_bytes(value.batch_bytes() + BATCH_SLACK_BYTES);
        if let Some(points) = &span_points {
            self.settler.hold_span_metrics(&mut batch, points, now_unix);
        }
        // Groups of traces decided already take the late path instead of the buffer;
        // each shard is locked once, for its own traces.
        let mut keep = vec![true; arrivals.len()];
        let mut buffered = Vec::with_capacity(arrivals.len());
        // Per shard, its decision cache's version when these traces were looked up.
        let mut looked_up: SmallVec<[(usize, u64); 4]> = SmallVec::new();
        for (at, part) in self
            .shards
            .partition(arrivals.into_iter().enumerate(), |(_, (t, _))| t)
        {
            let mut shard = self.shards.lock(at);
            for (i, (trace, arrival)) in part {
                match late.route(&mut shard.cache, trace, arrival, || value.item(i)) {
                    Some(arrival) => buffered.push((i, at, trace, arrival)),
                    None => keep[i] = false,
                }
            }
            looked_up.push((at, shard.cache.version()));
        }
        if buffered.len() < keep.len() {
            value = value.filtered(&keep);
        }
        // Items are renumbered by the filter; arrival order is kept.
        buffered.sort_unstable_by_key(|(i, _, _, _)| *i);
        let staged = (!value.is_empty()).then(|| self.storage.stage_request(&mut batch, value));
        let staged = self.storage.write_staged(batch, staged)?;
        let mut forgetting = Forgetting::default();
        let mut evicted = Vec::new();
        if let Some(staged) = staged {
            let now = self.now_ms();
            let items = buffered
                .into_iter()
                .enumerate()
                .map(|(item, (_, at, trace, arrival))| (at, (item, trace, arrival)));
            for (at, part) in self.shards.group(items) {
                let mut shard = self.shards.lock(at);
                // Nothing decided in this shard since the lookup: its traces are still
                // undecided, no need to look again.
                let unchanged = looked_up
                    .iter()
                    .any(|&(shard_at, version)| shard_at == at && version == shard.cache.version());
                let mut indexed = Vec::with_capacity(part.len());
                for (item, trace, arrival) in part {
                    let routed = if unchanged {
                        Some(arrival)
                    } else {
                        late.route(&mut shard.cache, trace, arrival, || staged.item(item))
                    };
                    let location = staged.location(item);
                    match routed {
                        Some(arrival) => indexed.push((trace, arrival, location)),
                        None => forgetting.forget([location]),
                    }
                }
                evicted.extend(self.index_buffered(&mut shard, &indexed, now));
            }
        }
        if !forgetting.is_empty() {
            self.storage
                .write_forgetting(WriteBatch::default(), forgetting)?;
        }
        events::late_spans_dropped(late.dropped);
        if let Some(points) = &span_points {
            events::span_metrics_counted(points.spans);
        }
        if !late.kept.is_empty() {
            let decoded = late
                .kept
                .into_iter()
                .flat_map(|(trace, kind, bytes, kept)| {
                    kind.decode_spans(&bytes)
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |rs| (trace, rs, kept.clone()))
                })
                .collect();
            self.export_late_spans(decoded)?;
        }
        self.finish_evicted(&evicted)?;
        Ok(())
    }

    /// Exports spans of traces kept already, without the span ids exported for them
    /// before (a client's retry), remembering the new ones once they are queued.
    fn export_late_spans(
        &self,
        late_kept: Vec<(TraceId, ResourceSpans, Kept)>,
    ) -> Result<(), StorageError> {
        let mut dedup = self.dedup.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups = Vec::with_capacity(late_kept.len());
        let mut spans = 0u64;
        let mut repeats = 0u64;
        for (trace, mut rs, kept) in late_kept {
            repeats += dedup.keep_first(&trace, &mut rs);
            if rs.scope_spans.is_empty() {
                continue;
            }
            spans += annotate_kept(&mut rs, &kept);
            groups.push((trace, rs));
        }
        events::spans_deduplicated(repeats);
        if groups.is_empty() {
            return Ok(());
        }
        let request = ExportRequest::Traces(ExportTraceServiceRequest {
            resource_spans: otlp::merge_spans(groups.iter().map(|(_, rs)| rs.clone()).collect()),
        });
        if let Err(error) = self.queues.enqueue(&request) {
            for (trace, rs) in &groups {
                dedup.forget(trace, rs);
            }
            return Err(error);
        }
        events::late_spans_kept(spans);
        Ok(())
    }

    /// Buffers log records that carry a trace id with their trace (or routes them by a
    /// cached decision: kept ones are exported marked, dropped ones held like the rest);
    /// holds the others until their fate is settled.
    pub fn ingest_logs(&self, request: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        self.admit()?;
        let (with_trace, without_trace) = group_logs_by_trace(request);
        let now = self.now_ms();
        let now_unix = self.unix_now();
        let arrival = Arrival {
            logs: true,
            ..Arrival::default()
        };
        let mut late_kept = Vec::new();
        let evicted;
        {
            // The shards of these traces stay locked (in shard order) until the records
            // are written and indexed: a decision cannot slip in between.
            let parts = self.shards.partition(with_trace, |(t, _)| t);
            let mut locked: Vec<ShardGuard<'_>> =
                parts.iter().map(|(at, _)| self.shards.lock(*at)).collect();
            let mut batch = WriteBatch::default();
            for rl in &without_trace.resource_logs {
                self.settler.hold_logs(&mut batch, rl, now_unix);
            }
            // Per part, each buffered record's trace and its item's place in `value`.
            let mut buffered: Vec<Vec<(TraceId, usize)>> = vec![Vec::new(); parts.len()];
            let mut value = RequestValue::default();
            for (part, (_, records)) in parts.into_iter().enumerate() {
                for (trace, mut rl) in records {
                    match locked[part].cache.get(&trace) {
                        Some(Cached::Sampled(_)) => {
                            mark_trace_logs(&mut rl);
                            late_kept.push(rl);
                        }
                        Some(Cached::NotSampled) => {
                            self.settler.hold_logs(&mut batch, &rl, now_unix)
                        }
                        None => {
                            buffered[part].push((trace, value.len()));
                            value.push(trace, BufferedKind::Logs, &rl);
                        }
                    }
                }
            }
            let staged = (!value.is_empty()).then(|| self.storage.stage_request(&mut batch, value));
            let staged = self.storage.write_staged(batch, staged)?;
            evicted = locked
                .iter_mut()
                .zip(&buffered)
                .flat_map(|(shard, part)| {
                    let part: Vec<(TraceId, Arrival, Location)> = part
                        .iter()
                        .map(|&(trace, item)| {
                            let staged = staged.as_ref().expect("buffered records were staged");
                            (trace, arrival.clone(), staged.location(item))
                        })
                        .collect();
                    self.index_buffered(shard, &part, now)
                })
                .collect::<Vec<_>>();
        }
        if !late_kept.is_empty() {
            self.queues
                .enqueue(&ExportRequest::Logs(ExportLogsServiceRequest {
                    resource_logs: otlp::merge_logs(late_kept),
                }))?;
        }
        self.finish_evicted(&evicted)?;
        Ok(Accepted::default())
    }

    /// Indexes written items with their locations (under the lock of their shard, which the
    /// caller holds), deciding traces the per-trace limits end and those a full index
    /// decides early to make room.
    fn index_buffered(
        &self,
        state: &mut State,
        buffered: &[(TraceId, Arrival, Location)],
        now: u64,
    ) -> Vec<Decided> {
        let mut full = Vec::new();
        let mut too_large = Vec::new();
        let mut too_many = Vec::new();
        for (trace, arrival, location) in buffered {
            let items = std::slice::from_ref(location);
            let observed = state.index.observe(*trace, arrival, items, now);
            full.extend(observed.evicted);
            if self.max_trace_spans > 0
                && observed.span_count >= self.max_trace_spans
                && let Some(entry) = state.index.remove(trace)
            {
                too_many.push((*trace, entry));
                continue;
            }
            if self.max_trace_bytes > 0
                && u64::from(observed.bytes) > self.max_trace_bytes
                && let Some(entry) = state.index.remove(trace)
            {
                too_large.push((*trace, entry));
            }
        }
        events::traces_limited("max_spans", too_many.len());
        events::traces_limited("max_size", too_large.len());
        full.extend(too_many);
        let mut decided = self.decide_locked(state, full);
        if !too_large.is_empty() {
            tracing::debug!(
                traces = too_large.len(),
                limit = self.max_trace_bytes,
                "dropping traces over maximum_trace_size_bytes"
            );
            decided.extend(drop_locked(state, too_large));
        }
        decided
    }

    /// Drops every trace still waiting for a decision (`drop_pending_traces_on_shutdown`):
    /// each is decided not sampled without its policies and forgotten from the buffer.
    /// Returns how many.
    pub fn drop_pending(&self) -> Result<usize, StorageError> {
        let dropped: Vec<Decided> = (0..self.shards.count())
            .flat_map(|at| {
                let mut shard = self.shards.lock(at);
                let pending = shard.index.drain();
                drop_locked(&mut shard, pending)
            })
            .collect();
        self.finish_all(&dropped)?;
        events::active_traces(self.active_traces());
        Ok(dropped.len())
    }

    /// Moves traces decided early (index full) out of the buffer.
    fn finish_evicted(&self, evicted: &[Decided]) -> Result<(), StorageError> {
        if evicted.is_empty() {
            return Ok(());
        }
        events::traces_evicted(evicted.len());
        self.finish_all(evicted)
    }

    /// Holds metric points (durably, before returning) until their fate is settled.
    pub fn ingest_metrics(
        &self,
        request: ExportMetricsServiceRequest,
    ) -> Result<Accepted, IngestError> {
        self.admit()?;
        if request.resource_metrics.is_empty() {
            return Ok(Accepted::default());
        }
        let now_unix = self.unix_now();
        let mut batch = WriteBatch::default();
        for rm in &request.resource_metrics {
            self.settler.hold_metrics(&mut batch, rm, now_unix);
        }
        self.storage.write(batch)?;
        Ok(Accepted::default())
    }

    /// Decides every trace whose deadline has passed; returns how many were decided.
    pub fn decide_due(&self) -> Result<usize, StorageError> {
        let mut total = 0;
        // Each round takes up to a batch from every shard (each under its own lock) and
        // finishes them together in deadline order, as one index would: traces due
        // together mostly arrived in the same requests, and a finishing chunk reads each
        // request once and records what it forgot of it once.
        let per_shard = DECIDE_BATCH.div_ceil(self.shards.count());
        loop {
            let mut round: Vec<(u64, Decided)> = Vec::new();
            for at in 0..self.shards.count() {
                let now = self.now_ms();
                let mut state = self.shards.lock(at);
                let due = state.index.pop_due(now, per_shard);
                if due.is_empty() {
                    continue;
                }
                events::decision_latencies(
                    due.iter().map(|(_, e)| now.saturating_sub(e.deadline_ms)),
                );
                events::traces_limited(
                    "max_age",
                    due.iter().filter(|(_, e)| e.reached_max_age()).count(),
                );
                let deadlines: Vec<u64> = due.iter().map(|(_, e)| e.deadline_ms).collect();
                round.extend(
                    deadlines
                        .into_iter()
                        .zip(self.decide_locked(&mut state, due)),
                );
            }
            if round.is_empty() {
                events::active_traces(self.active_traces());
                return Ok(total);
            }
            round.sort_by_key(|(deadline, _)| *deadline);
            let decided: Vec<Decided> = round.into_iter().map(|(_, d)| d).collect();
            total += decided.len();
            self.finish_all(&decided)?;
        }
    }

    /// Milliseconds until the next trace may be due (bounded by `max`).
    pub fn next_due_in(&self, max: Duration) -> Duration {
        let now = self.now_ms();
        match self.shards.next_deadline() {
            Some(at) => Duration::from_millis(at.saturating_sub(now)).min(max),
            None => max,
        }
    }

    /// Decides traces just removed from the index and caches the decisions. Runs under the
    /// lock of the shard that removed them, so no span can slip in between removal and
    /// caching.
    fn decide_locked(&self, state: &mut State, traces: Vec<(TraceId, TraceEntry)>) -> Vec<Decided> {
        if traces.is_empty() {
            return Vec::new();
        }
        let now_unix = self.unix_now();
        let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
        // Read under the policies' lock, which a reload holds while it replaces both.
        let generation = self.observing().generation;
        let mut decided = Vec::with_capacity(traces.len());
        for (trace, mut entry) in traces {
            if entry.generation != generation && entry.stats.span_count > 0 {
                entry.policy = self.observe_again(&policies.engine, &entry.items);
            }
            let decision = policies
                .engine
                .decide(&trace, &entry.policy, &entry.stats, now_unix);
            let kept = decision.sampled.then(|| Kept {
                policy: decision.policy.unwrap_or_else(|| "unknown".into()),
                probability: decision.probability,
                correlate: decision.correlate,
            });
            state.cache.insert(
                trace,
                match &kept {
                    Some(k) => Cached::Sampled(k.clone()),
                    None => Cached::NotSampled,
                },
            );
            decided.push(Decided {
                trace,
                items: entry.items,
                kept,
                spans: entry.stats.span_count,
                has_logs: entry.has_logs,
            });
        }
        events::traces_decided(decided.iter().map(|d| d.kept.as_ref()));
        decided
    }

    /// Decides `traces` (just taken out of their shards' indexes) shard by shard, each part
    /// under its shard's lock.
    fn decide_by_shard(&self, traces: Vec<(TraceId, TraceEntry)>) -> Vec<Decided> {
        let mut decided = Vec::new();
        for (at, part) in self.shards.partition(traces, |(t, _)| t) {
            decided.extend(self.decide_locked(&mut self.shards.lock(at), part));
        }
        decided
    }

    /// The policy state under `policies` of a trace whose buffered items lie at `items`,
    /// from its spans: for a trace whose spans were observed (partly) under a policy set
    /// replaced since. Records that do not decode are left to [`Engine::finish`], which
    /// quarantines them.
    fn observe_again(&self, policies: &PolicyEngine, items: &[Location]) -> PolicyState {
        let mut state = PolicyState::default();
        let read = self.storage.visit_trace(items, |_, kind, payload| {
            for rs in kind.decode_spans(payload).unwrap_or_default() {
                for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    policies.observe_span(&mut state, rs.resource.as_ref(), span);
                }
            }
        });
        if let Err(error) = read {
            tracing::warn!(%error, "cannot read a trace again after a policy reload; deciding on what was observed");
        }
        state
    }

    /// Replaces the policy set, atomically: traces decided from now on are decided by
    /// `policies` (those whose spans were observed under the old set are observed again
    /// from the buffer first). An invalid set is refused and the current one stays.
    pub fn replace_policies(
        &self,
        policies: &[PolicyConfig],
        sample_on_first_match: bool,
    ) -> Result<(), PolicyError> {
        let mut engine = PolicyEngine::new(policies, sample_on_first_match)?;
        let mut current = self.policies.write().unwrap_or_else(|e| e.into_inner());
        engine.set_share(current.share);
        let mut observing = self.observing.write().unwrap_or_else(|e| e.into_inner());
        *observing = Observing {
            observer: engine.observer(),
            generation: match observing.generation.wrapping_add(1) {
                STALE => 0,
                next => next,
            },
        };
        current.engine = engine;
        Ok(())
    }

    /// Moves decided traces out of the buffer, a chunk per RocksDB write.
    fn finish_all(&self, decided: &[Decided]) -> Result<(), StorageError> {
        for chunk in decided.chunks(FINISH_CHUNK) {
            self.finish(chunk)?;
        }
        Ok(())
    }

    /// Moves kept traces from the buffer to the export queue (their logs marked as
    /// correlated), moves the logs of dropped traces to the hold, and forgets the rest,
    /// in one atomic write; then publishes the kept traces for correlation. A buffered
    /// record that fails to decode is quarantined and the rest of its trace, and of the
    /// chunk, carries on.
    fn finish(&self, decided: &[Decided]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let mut resource_spans = Vec::new();
        let mut resource_logs = Vec::new();
        let mut kept_spans = 0u64;
        let mut dropped_spans = 0u64;
        let mut notices = Vec::new();
        let mut corrupt = Vec::new();
        let mut repeats = 0u64;
        let mut clamped = 0u64;
        let mut forgetting = Forgetting::default();
        let now_unix = self.unix_now();
        // The kept traces' items, read once per request chunk for the whole chunk and
        // copied out as they are.
        let kept_items: Vec<(usize, Location)> = decided
            .iter()
            .filter(|d| d.kept.is_some())
            .enumerate()
            .flat_map(|(index, d)| d.items.iter().map(move |l| (index, *l)))
            .collect();
        let kept_traces = decided.iter().filter(|d| d.kept.is_some()).count();
        let mut stored = Vec::new();
        let mut items: Vec<Vec<(ItemKey, BufferedKind, std::ops::Range<usize>)>> =
            vec![Vec::new(); kept_traces];
        self.storage
            .visit_items(kept_items, |index, location, kind, payload| {
                let start = stored.len();
                stored.extend_from_slice(payload);
                items[index].push((location.key(), kind, start..stored.len()));
            })?;
        let stored = &stored[..];
        let mut items = items.into_iter();
        let mut spliced = SplicedRequest::default();
        let mut identities: Vec<(&[u8], ResourceIdentity)> = Vec::new();
        let mut dedup = self.dedup.lock().unwrap_or_else(|e| e.into_inner());
        for d in decided {
            match &d.kept {
                Some(kept) => {
                    let items = items.next().expect("one read per kept trace");
                    let mut notice = NoticeBuilder::new(d.trace, kept);
                    let spans = KeptSpans::read(
                        items
                            .iter()
                            .map(|(_, kind, range)| (*kind, &stored[range.clone()])),
                    )
                    .filter(|spans| spans.fits(kept))
                    .and_then(|spans| {
                        let identities = spans
                            .groups()
                            .iter()
                            .map(|g| resource_identity(&mut identities, g.resource()))
                            .collect::<Option<Vec<_>>>()?;
                        dedup
                            .first_time(&d.trace, spans.span_ids())
                            .then_some((spans, identities))
                    });
                    let decode_spans = spans.is_none();
                    if let Some((spans, identities)) = spans {
                        for (group, identity) in spans.groups().iter().zip(identities) {
                            clamped += notice.add_times(identity, group.span_times());
                        }
                        kept_spans += spliced.add(spans, kept);
                    }
                    for (key, kind, range) in items {
                        let payload = &stored[range];
                        let decoded = match kind {
                            BufferedKind::Logs => ResourceLogs::decode(payload).map(|mut rl| {
                                mark_trace_logs(&mut rl);
                                resource_logs.push(rl);
                            }),
                            _ if !decode_spans => Ok(()),
                            _ => kind.decode_spans(payload).map(|all| {
                                for mut rs in all {
                                    repeats += dedup.keep_first(&d.trace, &mut rs);
                                    clamped += notice.add(&rs);
                                    kept_spans += annotate_kept(&mut rs, kept);
                                    resource_spans.push(rs);
                                }
                            }),
                        };
                        if let Err(error) = decoded {
                            corrupt.push((d.trace, key, kind, payload.to_vec(), error));
                        }
                    }
                    notices.extend(notice.build());
                }
                None => {
                    dropped_spans += u64::from(d.spans);
                    if d.has_logs {
                        // Only the log items are read: the spans go unread.
                        let logs: Vec<Location> = (d.items.iter().copied())
                            .filter(|l| l.kind() == BufferedKind::Logs)
                            .collect();
                        self.storage.visit_trace(&logs, |_, _, payload| {
                            self.settler
                                .hold_encoded_logs(&mut batch, payload, now_unix);
                        })?;
                    }
                }
            }
            forgetting.forget(d.items.iter().copied());
        }
        let mut staged = Vec::new();
        if spliced.span_count() > 0 || !resource_spans.is_empty() {
            // The spliced traces' groups, then those of traces that took the decoded path:
            // one request (a decoder appends the entries of a repeated field across both).
            let mut payload = Vec::new();
            spliced.encode(&mut payload);
            ExportTraceServiceRequest {
                resource_spans: otlp::merge_spans(resource_spans),
            }
            .encode_raw(&mut payload);
            staged.push(self.queues.stage_encoded(
                &mut batch,
                Signal::Traces,
                kept_spans,
                &payload,
            ));
        }
        if !resource_logs.is_empty() {
            let request = ExportRequest::Logs(ExportLogsServiceRequest {
                resource_logs: otlp::merge_logs(resource_logs),
            });
            staged.push(self.queues.stage(&mut batch, &request));
        }
        for (trace, key, kind, payload, _) in &corrupt {
            self.storage
                .quarantine_item(&mut batch, trace, *key, *kind, payload);
        }
        if let Err(error) = self.storage.write_forgetting(batch, forgetting) {
            // Nothing left: a later attempt must not find these spans "exported".
            for d in decided.iter().filter(|d| d.kept.is_some()) {
                dedup.forget_trace(&d.trace);
            }
            return Err(error);
        }
        drop(dedup);
        for (.., error) in &corrupt {
            crate::events::corrupt_record(Store::Buffer, error);
        }
        for s in staged {
            self.queues.committed(s);
        }
        events::spans_finished(kept_spans, dropped_spans);
        events::spans_deduplicated(repeats);
        events::span_times_clamped(clamped);
        self.settler.publish(notices, now_unix);
        Ok(())
    }
}

/// Decides traces just removed from the index as not sampled without evaluating policies
/// (too large, or pending at a shutdown that drops them), caching the decision so their late
/// spans are dropped too.
fn drop_locked(state: &mut State, traces: Vec<(TraceId, TraceEntry)>) -> Vec<Decided> {
    let mut decided = Vec::with_capacity(traces.len());
    for (trace, entry) in traces {
        state.cache.insert(trace, Cached::NotSampled);
        decided.push(Decided {
            trace,
            items: entry.items,
            kept: None,
            spans: entry.stats.span_count,
            has_logs: entry.has_logs,
        });
    }
    events::traces_decided(decided.iter().map(|d| d.kept.as_ref()));
    decided
}

/// The identity of a stored resource (`None`: the group has none), decoded once per
/// finishing chunk; `None` when its bytes do not decode. A chunk's kept traces come from
/// a few resources: they are looked up by comparing bytes, which costs less than hashing
/// them.
fn resource_identity<'a>(
    known: &mut Vec<(&'a [u8], ResourceIdentity)>,
    resource: Option<&'a [u8]>,
) -> Option<ResourceIdentity> {
    let bytes = resource.unwrap_or_default();
    if let Some((_, identity)) = known.iter().find(|(b, _)| *b == bytes) {
        return Some(identity.clone());
    }
    let decoded = resource.map(Resource::decode).transpose().ok()?;
    let identity = ResourceIdentity::from_resource(decoded.as_ref());
    if known.len() < KNOWN_RESOURCES {
        known.push((bytes, identity.clone()));
    }
    Some(identity)
}

/// Collects what other samplers need to match a kept trace: its resources and time window.
struct NoticeBuilder {
    notice: DecisionNotice,
}

impl NoticeBuilder {
    fn new(trace: TraceId, kept: &Kept) -> NoticeBuilder {
        NoticeBuilder {
            notice: DecisionNotice {
                trace_id: trace,
                resources: Vec::new(),
                start_unix_nano: u64::MAX,
                end_unix_nano: 0,
                policy: kept.policy.to_string(),
                correlate: kept.correlate,
            },
        }
    }

    /// Adds one group's resource and time range. Bad span times cannot widen correlation
    /// windows without limit: an unset time (0) takes the span's other time, a span is
    /// taken to last at most [`MAX_SPAN_TIME_SKEW`], and the whole window to span at most
    /// [`MAX_WINDOW`] (its latest part is kept). Returns how many times were clamped.
    fn add(&mut self, rs: &ResourceSpans) -> u64 {
        self.add_times(
            ResourceIdentity::from_resource(rs.resource.as_ref()),
            rs.scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(|span| (span.start_time_unix_nano, span.end_time_unix_nano)),
        )
    }

    /// [`NoticeBuilder::add`] for a group given as its resource's identity and its spans'
    /// start and end times.
    fn add_times(
        &mut self,
        identity: ResourceIdentity,
        times: impl Iterator<Item = (u64, u64)>,
    ) -> u64 {
        if !self.notice.resources.contains(&identity) {
            self.notice.resources.push(identity);
        }
        let longest = u64::try_from(MAX_SPAN_TIME_SKEW.as_nanos()).unwrap_or(u64::MAX);
        let widest = u64::try_from(MAX_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        let mut clamped = 0;
        for (mut start, mut end) in times {
            if start == 0 {
                start = end;
            }
            if end < start {
                end = start;
            }
            if start == 0 {
                continue;
            }
            if end - start > longest {
                end = start + longest;
                clamped += 1;
            }
            self.notice.start_unix_nano = self.notice.start_unix_nano.min(start);
            self.notice.end_unix_nano = self.notice.end_unix_nano.max(end);
        }
        if self.notice.end_unix_nano > self.notice.start_unix_nano.saturating_add(widest)
            && self.notice.start_unix_nano <= self.notice.end_unix_nano
        {
            self.notice.start_unix_nano = self.notice.end_unix_nano - widest;
            clamped += 1;
        }
        clamped
    }

    /// The notice, unless no span was read (a trace of logs only has no window).
    fn build(self) -> Option<DecisionNotice> {
        (self.notice.start_unix_nano <= self.notice.end_unix_nano).then_some(self.notice)
    }
}

impl From<StorageError> for IngestError {
    /// A storage failure is transient for the client: it may retry.
    fn from(error: StorageError) -> Self {
        IngestError::unavailable("buffer storage failed", error)
    }
}

/// Splits a request into one `ResourceSpans` per (trace, input resource), each holding only
/// that trace's spans under their original scopes.
pub fn group_spans_by_trace(request: ExportTraceServiceRequest) -> Vec<(TraceId, ResourceSpans)> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let mut per_trace: HashMap<TraceId, Vec<ScopeSpans>> = HashMap::new();
        let mut order = Vec::new();
        for ss in rs.scope_spans {
            let mut per_scope: HashMap<TraceId, Vec<_>> = HashMap::new();
            let mut scope_order = Vec::new();
            for span in ss.spans {
                let Some(trace) = otlp::trace_id(&span.trace_id) else {
                    continue;
                };
                per_scope
                    .entry(trace)
                    .or_insert_with(|| {
                        scope_order.push(trace);
                        Vec::new()
                    })
                    .push(span);
            }
            for trace in scope_order {
                let spans = per_scope.remove(&trace).unwrap_or_default();
                per_trace
                    .entry(trace)
                    .or_insert_with(|| {
                        order.push(trace);
                        Vec::new()
                    })
                    .push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans,
                        schema_url: ss.schema_url.clone(),
                    });
            }
        }
        for trace in order {
            let scope_spans = per_trace.remove(&trace).unwrap_or_default();
            out.push((
                trace,
                ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans,
                    schema_url: rs.schema_url.clone(),
                },
            ));
        }
    }
    out
}

/// Splits log records into those with a trace id (grouped per trace and resource) and the
/// rest, which keep their original grouping.
pub fn group_logs_by_trace(
    request: ExportLogsServiceRequest,
) -> (Vec<(TraceId, ResourceLogs)>, ExportLogsServiceRequest) {
    let mut with_trace = Vec::new();
    let mut without = ExportLogsServiceRequest::default();
    for rl in request.resource_logs {
        let mut per_trace: HashMap<TraceId, Vec<ScopeLogs>> = HashMap::new();
        let mut order = Vec::new();
        let mut rest_scopes = Vec::new();
        for sl in rl.scope_logs {
            let mut rest = Vec::new();
            let mut per_scope: HashMap<TraceId, Vec<_>> = HashMap::new();
            let mut scope_order = Vec::new();
            for record in sl.log_records {
                match otlp::trace_id(&record.trace_id) {
                    Some(trace) => per_scope
                        .entry(trace)
                        .or_insert_with(|| {
                            scope_order.push(trace);
                            Vec::new()
                        })
                        .push(record),
                    None => rest.push(record),
                }
            }
            for trace in scope_order {
                per_trace
                    .entry(trace)
                    .or_insert_with(|| {
                        order.push(trace);
                        Vec::new()
                    })
                    .push(ScopeLogs {
                        scope: sl.scope.clone(),
                        log_records: per_scope.remove(&trace).unwrap_or_default(),
                        schema_url: sl.schema_url.clone(),
                    });
            }
            if !rest.is_empty() {
                rest_scopes.push(ScopeLogs {
                    scope: sl.scope,
                    log_records: rest,
                    schema_url: sl.schema_url,
                });
            }
        }
        for trace in order {
            with_trace.push((
                trace,
                ResourceLogs {
                    resource: rl.resource.clone(),
                    scope_logs: per_trace.remove(&trace).unwrap_or_default(),
                    schema_url: rl.schema_url.clone(),
                },
            ));
        }
        if !rest_scopes.is_empty() {
            without.resource_logs.push(ResourceLogs {
                resource: rl.resource,
                scope_logs: rest_scopes,
                schema_url: rl.schema_url,
            });
        }
    }
    (with_trace, without)
}

/// What one trace's group of spans contributes to the index; `encoded_len` is the group's
/// stored size, counted as the trace's bytes (for `bytes_limiting`) without walking every
/// span's encoding again.
fn arrival_of(policies: &Observing, rs: &ResourceSpans, encoded_len: usize) -> Arrival {
    let spans = rs
        .scope_spans
        .iter()
        .flat_map(|ss| ss.spans.iter().map(move |span| (ss.scope.as_ref(), span)));
    arrival_from(policies, rs.resource.as_ref(), spans, encoded_len)
}

/// [`arrival_of`] for spans given one by one with their scopes.
fn arrival_from<'a>(
    policies: &Observing,
    resource: Option<&Resource>,
    spans: impl Iterator<Item = (Option<&'a InstrumentationScope>, &'a Span)>,
    encoded_len: usize,
) -> Arrival {
    let mut arrival = Arrival {
        generation: policies.generation,
        stats: TraceStats {
            min_start_unix_nano: u64::MAX,
            bytes: u32::try_from(encoded_len).unwrap_or(u32::MAX),
            ..TraceStats::default()
        },
        ..Arrival::default()
    };
    for (scope, span) in spans {
        policies
            .observer
            .observe_scoped_span(&mut arrival.policy, resource, scope, span);
        arrival.stats.span_count += 1;
        arrival.stats.min_start_unix_nano = arrival
            .stats
            .min_start_unix_nano
            .min(span.start_time_unix_nano);
        arrival.stats.max_end_unix_nano =
            arrival.stats.max_end_unix_nano.max(span.end_time_unix_nano);
        arrival.root |= span.parent_span_id.is_empty();
    }
    arrival
}

/// Marks every span with the keeping policy and, where defined, the sampling probability
/// (tracestate `ot=th:` and the `SampleRate` attribute).
/// Returns the number of spans.
fn annotate_kept(rs: &mut ResourceSpans, kept: &Kept) -> u64 {
    let mut n = 0;
    for ss in &mut rs.scope_spans {
        for span in &mut ss.spans {
            span.attributes.retain(|kv| kv.key != POLICY_ATTRIBUTE);
            span.attributes
                .push(otlp::kv_str(POLICY_ATTRIBUTE, kept.policy.to_string()));
            if let Some(p) = kept.probability {
                span.trace_state = apply_sampling_probability(&span.trace_state, p);
                apply_sample_rate(&mut span.attributes, p);
            }
            n += 1;
        }
    }
    n
}

mod events;
mod shards;
pub mod transfer;
pub mod wire;

pub use wire::SpanNeeds;

pub(crate) use events::register as register_metrics;
#[cfg(test)]
mod tests;
