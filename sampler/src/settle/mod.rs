//! Hold, then choose: the shell around correlated retention and rollups.
//!
//! Logs without a buffered trace and metric points wait in the hold store
//! ([`HoldStore`], RocksDB) for `correlation.window`; then [`Settler::settle_due`] splits
//! each held group against the [`KeptIndex`] of kept traces (this node's and every other
//! sampler's, via decision notices): correlated items go to the export queue raw and
//! marked, the rest down the summary path. The summary path is the rollup of its signal,
//! or unchanged pass-through when that rollup is off.
//!
//! **Exactly once.** Each step is one RocksDB write batch:
//! - ingest: the held group is written before the client is acknowledged;
//! - settle: the raw part is queued for export, the summary part is written to
//!   [`CF_ROLLUP`](crate::storage::CF_ROLLUP) (or queued, in pass-through), and the held group is deleted;
//! - flush: at the end of a rollup interval the summaries are queued and every summary
//!   input of the interval is deleted from [`CF_ROLLUP`](crate::storage::CF_ROLLUP).
//!
//! A crash between steps leaves each item in exactly one place; on restart
//! [`Settler::recover`] re-indexes the hold and folds [`CF_ROLLUP`](crate::storage::CF_ROLLUP) back into the rollups,
//! so no item is lost and none is exported twice. The metric flush also stores the last
//! point of every cumulative input stream; recovery primes the rollup with it before the
//! replay, so cumulative inputs convert to exact deltas across a restart too. Rollup state lives in memory only for
//! the current interval; what it summarises is on disk until the summary is queued.
//!
//! Settling, rollups and flushes run on one thread (the settle loop), so a flush never
//! races with a summary input being written.
//!
//! Files: this one holds the [`Settler`] and the hold → settle step; `interval` the rollup
//! intervals (fold, flush, recovery of [`CF_ROLLUP`](crate::storage::CF_ROLLUP)); `summary` the summary path (hand
//! parts to their rollup's owner, write what stays); `events` the metrics it reports.
//! Every time the settler reads comes from the [`Clock`] it was built with.

mod events;
mod interval;
mod summary;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use otel_tail_shared::config::{CorrelationConfig, RollupConfig, SamplerConfig};
use otel_tail_shared::exporter::ExportRequest;
use prost::Message;
use rocksdb::WriteBatch;

use crate::clock::Clock;
use crate::correlation::classify::{self, Split};
use crate::correlation::fanout::{NoticeBroadcaster, NoticeSink, Received};
use crate::correlation::store::{HeldItem, HeldKind, HoldError, HoldStore};
use crate::correlation::{DecisionNotice, HoldLimits, KeptIndex, KeptIndexConfig};
use crate::export_queue::ExportQueues;
use crate::rollup::logs::{LogRollup, LogRollupOptions, MinerConfig};
use crate::rollup::metrics::{MetricRollup, MetricRollupError};
use crate::rollup::spans::{
    SpanMetricsBuilder, SpanPoints, SpanRollup, combine, exemplars_per_point, is_span_metrics_scope,
};
use crate::storage::{Storage, StorageError, Store};
pub(crate) use events::register as register_metrics;
use interval::{Interval, Rollups};
use summary::Summaries;
pub use summary::{SummaryError, SummaryRouter};

/// Most held groups settled per RocksDB write.
const SETTLE_BATCH: usize = 1024;

/// Why the settler could not be built or could not settle.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// `rollup.metrics` is invalid.
    #[error(transparent)]
    Rollup(#[from] MetricRollupError),
    /// The hold store failed.
    #[error(transparent)]
    Hold(#[from] HoldError),
    /// Storage refused an operation.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rocksdb::Error> for SettleError {
    fn from(e: rocksdb::Error) -> SettleError {
        SettleError::Storage(StorageError::Rocks(e))
    }
}

/// What a settler in a cluster talks to, given at construction: where summary parts
/// owned by another sampler go, and where this node's kept-trace notices go. Standalone,
/// both are `None`.
#[derive(Clone, Default)]
pub struct SettleLinks {
    /// Hands summary parts to the sampler owning their rollup.
    pub router: Option<Arc<dyn SummaryRouter>>,
    /// Sends this node's kept-trace notices to the other samplers.
    pub broadcaster: Option<Arc<NoticeBroadcaster>>,
}

/// The hold, the kept-trace index and the summary path of one sampler.
pub struct Settler {
    storage: Arc<Storage>,
    queues: Arc<ExportQueues>,
    clock: Arc<dyn Clock>,
    store: HoldStore,
    correlate: bool,
    kept: Mutex<KeptIndex>,
    broadcaster: Option<Arc<NoticeBroadcaster>>,
    router: Option<Arc<dyn SummaryRouter>>,
    rollups: Mutex<Rollups>,
    max_pending_bytes: u64,
    /// Counts spans into span metrics at ingest (`rollup.traces`; `None` when off).
    span_metrics: Option<SpanMetricsBuilder>,
    /// Exemplars the span rollup keeps per output point (0 when exemplars are off).
    span_exemplars: usize,
}

/// What a [`Settler::settle_due`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Held groups settled.
    pub groups: usize,
    /// Items kept raw.
    pub raw: u64,
    /// Items sent down the summary path.
    pub summary: u64,
}

impl Settled {
    fn add(&mut self, pass: Settled) {
        self.groups += pass.groups;
        self.raw += pass.raw;
        self.summary += pass.summary;
    }
}

/// The configuration sections a settler is built from.
pub struct SettleConfig<'a> {
    /// `sampler` (the decision wait sets the default hold window).
    pub sampler: &'a SamplerConfig,
    /// `correlation`.
    pub correlation: &'a CorrelationConfig,
    /// `rollup`.
    pub rollup: &'a RollupConfig,
}

impl Settler {
    /// Builds the settler over opened storage, whole: its clock and its cluster links
    /// are fixed here. Call [`Settler::recover`] next.
    pub fn new(
        config: SettleConfig<'_>,
        storage: Arc<Storage>,
        queues: Arc<ExportQueues>,
        clock: Arc<dyn Clock>,
        links: SettleLinks,
    ) -> Result<Settler, SettleError> {
        let SettleConfig {
            sampler,
            correlation,
            rollup,
        } = config;
        let window = if correlation.enabled {
            correlation.effective_window(sampler.decision_wait)
        } else {
            Duration::ZERO
        };
        let store = HoldStore::new(
            storage.clone(),
            HoldLimits {
                window,
                max_items: correlation.max_held_items,
                max_bytes: usize::try_from(correlation.max_held_bytes).unwrap_or(usize::MAX),
            },
        );
        let kept = KeptIndex::new(KeptIndexConfig {
            before: correlation.before,
            after: correlation.after,
            // An item arriving up to one window after a notice is settled one window
            // later still, and must find the trace.
            hold: window.saturating_mul(2),
            max_traces: std::num::NonZeroUsize::new(correlation.max_traces)
                .unwrap_or(std::num::NonZeroUsize::MIN),
        });
        let now = clock.unix_nanos();
        let logs = rollup.logs.enabled.then(|| {
            Interval::new(
                LogRollup::new(LogRollupOptions {
                    miner: MinerConfig {
                        max_templates: rollup.logs.max_templates,
                        ..MinerConfig::default()
                    },
                    samples_per_template: rollup.logs.samples_per_template,
                    max_resources: rollup.logs.max_resources,
                }),
                rollup.logs.interval,
                now,
            )
        });
        let metrics = if rollup.metrics.enabled {
            Some(Interval::new(
                MetricRollup::new(rollup.metrics.clone())?,
                rollup.metrics.interval,
                now,
            ))
        } else {
            None
        };
        let spans = if rollup.traces.enabled {
            Some(Interval::new(
                SpanRollup::new(&rollup.traces)?,
                rollup.traces.interval,
                now,
            ))
        } else {
            None
        };
        Ok(Settler {
            span_exemplars: exemplars_per_point(&rollup.traces),
            span_metrics: rollup
                .traces
                .enabled
                .then(|| SpanMetricsBuilder::new(&rollup.traces)),
            storage,
            queues,
            clock,
            store,
            correlate: correlation.enabled,
            kept: Mutex::new(kept),
            broadcaster: links.broadcaster,
            router: links.router,
            rollups: Mutex::new(Rollups {
                logs,
                metrics,
                spans,
            }),
            max_pending_bytes: rollup.max_pending_bytes,
        })
    }

    /// Whether items are held for correlation (else they settle at once, to summary).
    pub fn correlates(&self) -> bool {
        self.correlate
    }

    /// The settler's clock, unix nanoseconds.
    pub fn now(&self) -> u64 {
        self.clock.unix_nanos()
    }

    /// Re-indexes what the hold store kept across a restart and folds the summary inputs
    /// of the interval the restart cut short back into the rollups, then closes that
    /// interval at once. Inputs of a rollup turned off since are queued unchanged.
    /// Returns (held groups, summary inputs).
    pub fn recover(&self, now: u64) -> Result<(usize, usize), SettleError> {
        let held = self.store.recover(now)?;
        let replayed = self.recover_rollups(now)?;
        if replayed > 0 {
            self.flush(now, true)?;
        }
        Ok((held, replayed))
    }

    /// Stages holding one resource's logs (arrived at `now`) in `batch`.
    pub fn hold_logs(&self, batch: &mut WriteBatch, rl: &ResourceLogs, now: u64) {
        self.hold_encoded_logs(batch, &rl.encode_to_vec(), now);
    }

    /// [`Settler::hold_logs`] for a `ResourceLogs` already encoded (as buffered with a
    /// trace), without decoding it again.
    pub fn hold_encoded_logs(&self, batch: &mut WriteBatch, encoded: &[u8], now: u64) {
        self.store.hold(batch, HeldKind::Logs, encoded, now);
    }

    /// Stages holding one resource's metrics (arrived at `now`) in `batch`.
    pub fn hold_metrics(&self, batch: &mut WriteBatch, rm: &ResourceMetrics, now: u64) {
        self.store
            .hold(batch, HeldKind::Metrics, &rm.encode_to_vec(), now);
    }

    /// Whether span metrics read span attributes (extra dimensions are configured).
    pub fn span_metrics_read_attributes(&self) -> bool {
        self.span_metrics
            .as_ref()
            .is_some_and(SpanMetricsBuilder::reads_attributes)
    }

    /// The span-metric points of a request's spans (`rollup.traces`), or `None` when span
    /// metrics are off. Pure: nothing is written until [`Settler::hold_span_metrics`].
    pub fn span_metrics(
        &self,
        request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        now: u64,
    ) -> Option<SpanPoints> {
        self.span_metrics
            .as_ref()
            .map(|builder| builder.aggregate(request, now))
    }

    /// Stages holding span-metric points (arrived at `now`) in `batch`: the batch that
    /// buffers the spans they count, so each span is counted exactly when it is stored.
    /// All of a request's resources are one held item: settling reads, decodes and forgets
    /// per item, and a request's spans come under several resources.
    pub fn hold_span_metrics(&self, batch: &mut WriteBatch, points: &SpanPoints, now: u64) {
        if points.resources.is_empty() {
            return;
        }
        let mut value = Vec::new();
        for rm in &points.resources {
            prost::encoding::message::encode(1, rm, &mut value);
        }
        self.store
            .hold(batch, HeldKind::SpanMetricsRequest, &value, now);
    }

    /// Holds logs another sampler settled to the summary path and forwarded here, their
    /// rollup's owner; written before returning, settled on the next pass.
    pub fn hold_summary_logs(
        &self,
        request: &ExportLogsServiceRequest,
    ) -> Result<(), StorageError> {
        let groups = request.resource_logs.iter().map(Message::encode_to_vec);
        self.hold_summary(HeldKind::SummaryLogs, groups)
    }

    /// Holds metric points another sampler settled to the summary path and forwarded
    /// here; see [`Settler::hold_summary_logs`].
    pub fn hold_summary_metrics(
        &self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<(), StorageError> {
        let groups = request.resource_metrics.iter().map(Message::encode_to_vec);
        self.hold_summary(HeldKind::SummaryMetrics, groups)
    }

    fn hold_summary(
        &self,
        kind: HeldKind,
        groups: impl Iterator<Item = Vec<u8>>,
    ) -> Result<(), StorageError> {
        let now = self.now();
        let mut batch = WriteBatch::default();
        for group in groups {
            self.store.hold(&mut batch, kind, &group, now);
        }
        self.storage.write(batch)
    }

    /// Makes this node's kept traces matchable here and on every other sampler.
    pub fn publish(&self, notices: Vec<DecisionNotice>, now: u64) {
        if !self.correlate || notices.is_empty() {
            return;
        }
        {
            let mut kept = self.kept();
            for notice in &notices {
                kept.insert(notice, now);
            }
        }
        if let Some(broadcaster) = &self.broadcaster {
            for notice in notices {
                broadcaster.push(notice);
            }
        }
    }

    /// Settles every held group whose window has passed (or that is over a hold bound),
    /// then closes rollup intervals that have ended.
    pub fn settle_due(&self, now: u64) -> Result<Settled, SettleError> {
        let mut total = Settled::default();
        self.kept().expire(now);
        loop {
            let pass = self.settle_pass(now, now)?;
            if pass.groups == 0 {
                break;
            }
            total.add(pass);
        }
        events::hold_sizes(&self.store.stats(), self.kept().len());
        self.flush(now, false)?;
        Ok(total)
    }

    /// Settles everything held now, whatever its window, and closes the open rollup
    /// intervals: a sampler leaving the cluster for good (scale-in) hands its traces off,
    /// and its held data should leave with the export queue flush rather than wait on a
    /// volume nobody may mount again. Items settle with what is known at this moment.
    pub fn settle_all(&self, now: u64) -> Result<Settled, SettleError> {
        let mut total = Settled::default();
        loop {
            let pass = self.settle_pass(now, u64::MAX)?;
            if pass.groups == 0 {
                break;
            }
            total.add(pass);
        }
        self.flush(now, true)?;
        Ok(total)
    }

    /// Settles up to [`SETTLE_BATCH`] groups due by `due_by` in one write.
    fn settle_pass(&self, now: u64, due_by: u64) -> Result<Settled, SettleError> {
        let released = self.store.release_due(due_by, SETTLE_BATCH)?;
        if released.is_empty() {
            return Ok(Settled::default());
        }
        events::released_early(released.iter().filter(|i| i.early).count() as u64);
        let mut classified = Classified::default();
        {
            let kept = self.kept();
            for item in &released {
                if let Err(error) = classified.add(item, &kept, self.correlate) {
                    let mut value = Vec::with_capacity(item.bytes.len() + 1);
                    value.push(item.kind as u8);
                    value.extend_from_slice(&item.bytes);
                    self.storage
                        .quarantine(Store::Hold, &item.key.to_bytes(), &value, &error)?;
                }
            }
        }
        let Classified {
            mut logs,
            mut metrics,
            spans,
            mut movable_logs,
            mut movable_metrics,
            movable_spans,
        } = classified;
        let mut movable_spans = combine_span_points(movable_spans, self.span_exemplars);
        let mut spans = combine_span_points(spans, self.span_exemplars);
        self.send_to_owners(&mut movable_logs, &mut movable_metrics, &mut movable_spans);
        logs.extend(movable_logs);
        metrics.extend(movable_metrics);
        spans.extend(movable_spans);
        let keys: Vec<_> = released.iter().map(|i| i.key).collect();
        let mut pass = self.write_settled(
            Summaries {
                logs,
                metrics,
                spans,
            },
            |batch| self.store.forget(batch, &keys),
            now,
        )?;
        pass.groups = released.len();
        Ok(pass)
    }

    /// Writes `batch` together with queueing every non-empty request of `exports`, then
    /// wakes the exporters: one atomic step of the summary path.
    fn write_with_exports(
        &self,
        mut batch: WriteBatch,
        exports: Vec<ExportRequest>,
    ) -> Result<(), StorageError> {
        let staged: Vec<_> = exports
            .iter()
            .filter(|request| !request.is_empty())
            .map(|request| self.queues.stage(&mut batch, request))
            .collect();
        self.storage.write(batch)?;
        for s in staged {
            self.queues.committed(s);
        }
        Ok(())
    }

    /// Statistics of the hold, for logs and tests.
    pub fn held(&self) -> crate::correlation::store::HoldStats {
        self.store.stats()
    }

    fn kept(&self) -> MutexGuard<'_, KeptIndex> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rollups(&self) -> MutexGuard<'_, Rollups> {
        self.rollups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Released groups sorted by what may happen to their summary part.
#[derive(Default)]
struct Classified {
    /// Settled here for good.
    logs: Vec<Split<ResourceLogs>>,
    metrics: Vec<Split<ResourceMetrics>>,
    spans: Vec<Split<ResourceMetrics>>,
    /// Summary parts that may belong to another sampler's rollup; those a peer settled
    /// already (`HeldKind::Summary*`) stay here, so nothing travels twice.
    movable_logs: Vec<Split<ResourceLogs>>,
    movable_metrics: Vec<Split<ResourceMetrics>>,
    movable_spans: Vec<Split<ResourceMetrics>>,
}

impl Classified {
    /// Decodes one released group and classifies it against the kept index (or sends it
    /// whole down the summary path when correlation is off or a peer settled it).
    fn add(
        &mut self,
        item: &HeldItem,
        kept: &KeptIndex,
        correlate: bool,
    ) -> Result<(), prost::DecodeError> {
        let bytes = item.bytes.as_slice();
        match item.kind {
            HeldKind::Logs => {
                let rl = ResourceLogs::decode(bytes)?;
                self.movable_logs.push(if correlate {
                    classify::classify_logs(rl, kept)
                } else {
                    classify::all_summary_logs(rl)
                });
            }
            HeldKind::Metrics => {
                let rm = ResourceMetrics::decode(bytes)?;
                self.movable_metrics.push(if correlate {
                    classify::classify_metrics(rm, kept)
                } else {
                    classify::all_summary_metrics(rm)
                });
            }
            HeldKind::SummaryLogs => self
                .logs
                .push(classify::all_summary_logs(ResourceLogs::decode(bytes)?)),
            HeldKind::SummaryMetrics => {
                let (spans, metrics) = split_span_metrics(ResourceMetrics::decode(bytes)?);
                self.spans.extend(spans.map(classify::all_summary_metrics));
                self.metrics
                    .extend(metrics.map(classify::all_summary_metrics));
            }
            HeldKind::SpanMetrics => {
                let mut rm = ResourceMetrics::decode(bytes)?;
                retain_kept_exemplars(&mut rm, kept);
                self.movable_spans.push(classify::all_summary_metrics(rm));
            }
            HeldKind::SpanMetricsRequest => {
                let request = ExportMetricsServiceRequest::decode(bytes)?;
                for mut rm in request.resource_metrics {
                    retain_kept_exemplars(&mut rm, kept);
                    self.movable_spans.push(classify::all_summary_metrics(rm));
                }
            }
        }
        Ok(())
    }
}

/// The span-metric splits of one settle pass with their summary points summed series by
/// series ([`combine`]): dozens of requests' points per series become one to store, send
/// and fold. The summary item count stays the sum of the parts' (items released, not points
/// made). Splits with raw parts are left as they are.
fn combine_span_points(
    splits: Vec<Split<ResourceMetrics>>,
    max_exemplars: usize,
) -> Vec<Split<ResourceMetrics>> {
    let (mut out, summaries): (Vec<_>, Vec<_>) =
        splits.into_iter().partition(|split| split.raw.is_some());
    let mut items: u64 = summaries.iter().map(|split| split.summary_items).sum();
    let parts = summaries.into_iter().filter_map(|split| split.summary);
    out.extend(
        combine(parts.collect(), max_exemplars)
            .into_iter()
            .map(|rm| Split {
                raw: None,
                summary: Some(rm),
                raw_items: [0; 3],
                summary_items: std::mem::take(&mut items),
            }),
    );
    out
}

/// Splits a resource's metrics forwarded by a peer into span-metric points (for the span
/// rollup) and the rest (for the metric rollup).
fn split_span_metrics(rm: ResourceMetrics) -> (Option<ResourceMetrics>, Option<ResourceMetrics>) {
    let (spans, rest): (Vec<_>, Vec<_>) = rm
        .scope_metrics
        .into_iter()
        .partition(|sm| is_span_metrics_scope(sm.scope.as_ref()));
    let part = |scope_metrics: Vec<_>| {
        (!scope_metrics.is_empty()).then(|| ResourceMetrics {
            resource: rm.resource.clone(),
            scope_metrics,
            schema_url: rm.schema_url.clone(),
        })
    };
    (part(spans), part(rest))
}

/// Removes the exemplar candidates of span-metric points whose trace was not kept (as far
/// as the kept index knows once the window has passed), so every exemplar resolves.
fn retain_kept_exemplars(rm: &mut ResourceMetrics, kept: &KeptIndex) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    for m in rm.scope_metrics.iter_mut().flat_map(|sm| &mut sm.metrics) {
        match &mut m.data {
            Some(Data::Histogram(h)) => {
                for p in &mut h.data_points {
                    kept.retain_kept_exemplars(&mut p.exemplars);
                }
            }
            Some(Data::ExponentialHistogram(h)) => {
                for p in &mut h.data_points {
                    kept.retain_kept_exemplars(&mut p.exemplars);
                }
            }
            _ => {}
        }
    }
}

impl NoticeSink for Settler {
    /// Notices from other samplers join the local index.
    fn accept(&self, received: Received) {
        if !self.correlate {
            return;
        }
        let now = self.now();
        let mut kept = self.kept();
        for notice in &received.notices {
            kept.insert(notice, now);
        }
    }
}
