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
//!   [`CF_ROLLUP`] (or queued, in pass-through), and the held group is deleted;
//! - flush: at the end of a rollup interval the summaries are queued and every summary
//!   input of the interval is deleted from [`CF_ROLLUP`].
//!
//! A crash between steps leaves each item in exactly one place; on restart
//! [`Settler::recover`] re-indexes the hold and folds [`CF_ROLLUP`] back into the rollups,
//! so no item is lost and none is exported twice. The metric flush also stores the last
//! point of every cumulative input stream; recovery primes the rollup with it before the
//! replay, so cumulative inputs convert to exact deltas across a restart too. Rollup state lives in memory only for
//! the current interval; what it summarises is on disk until the summary is queued.
//!
//! Settling, rollups and flushes run on one thread (the settle loop), so a flush never
//! races with a summary input being written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use otel_tail_shared::config::{CorrelationConfig, RollupConfig, SamplerConfig};
use otel_tail_shared::exporter::ExportRequest;
use otel_tail_shared::otlp;
use otel_tail_shared::telemetry::names;
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch};

use crate::correlation::broadcast::{NoticeBroadcaster, NoticeSink, Received};
use crate::correlation::classify::{self, REASONS, Split};
use crate::correlation::store::{HeldKind, HoldError, HoldStore};
use crate::correlation::{DecisionNotice, HoldLimits, KeptIndex, KeptIndexConfig};
use crate::export_queue::ExportQueues;
use crate::rollup::logs::{LogRollup, LogRollupConfig, MinerConfig};
use crate::rollup::metrics::{MetricRollup, MetricRollupError};
use crate::storage::{CF_ROLLUP, Storage, StorageError};

/// Most held groups settled per RocksDB write.
const SETTLE_BATCH: usize = 1024;

pub use otel_tail_shared::otlp::unix_now;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why the settler could not be built.
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

/// One signal's rollup and its open interval.
struct Interval<R> {
    rollup: R,
    length: u64,
    start: u64,
    /// Bytes of summary inputs written to [`CF_ROLLUP`] this interval.
    pending_bytes: u64,
}

impl<R> Interval<R> {
    fn new(rollup: R, length: Duration, now: u64) -> Interval<R> {
        let length = nanos(length).max(1);
        Interval {
            rollup,
            length,
            start: now - now % length,
            pending_bytes: 0,
        }
    }

    fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }

    /// Whether the interval closes at `now`: it has ended, its inputs are over
    /// `max_pending_bytes`, or the caller forces it.
    fn due(&self, now: u64, force: bool, max_pending_bytes: u64) -> bool {
        force || now >= self.end() || self.pending_bytes > max_pending_bytes
    }

    /// The end of the interval closed at `now` (earlier than its nominal end when closed
    /// early).
    fn close_at(&self, now: u64) -> u64 {
        now.min(self.end()).max(self.start)
    }

    /// Opens the interval containing `now`.
    fn restart(&mut self, now: u64) {
        self.start = now - now % self.length;
        self.pending_bytes = 0;
    }
}

/// Rollup state, touched by the settle loop only (the mutex makes that checkable).
struct Rollups {
    logs: Option<Interval<LogRollup>>,
    metrics: Option<Interval<MetricRollup>>,
}

/// The hold, the kept-trace index and the summary path of one sampler.
pub struct Settler {
    storage: Arc<Storage>,
    queues: Arc<ExportQueues>,
    store: HoldStore,
    correlate: bool,
    kept: Mutex<KeptIndex>,
    broadcaster: OnceLock<Arc<NoticeBroadcaster>>,
    router: OnceLock<Arc<dyn SummaryRouter>>,
    rollups: Mutex<Rollups>,
    max_pending_bytes: u64,
}

/// Where summary parts belong in a cluster, and the calls that hand them over. Sending
/// blocks the settle thread for at most the implementation's timeout.
pub trait SummaryRouter: Send + Sync {
    /// The sampler owning the log rollup of this resource, when it is another one.
    fn owner_of_logs(&self, rl: &ResourceLogs) -> Option<SocketAddr>;
    /// Splits one resource's metrics by the sampler owning each metric's rollup (`None`:
    /// this one).
    fn split_metrics(&self, rm: ResourceMetrics) -> Vec<(Option<SocketAddr>, ResourceMetrics)>;
    /// Hands summary logs to `owner`; `Ok` once it holds them durably.
    fn send_logs(&self, owner: SocketAddr, request: ExportLogsServiceRequest)
    -> Result<(), String>;
    /// Hands summary metric points to `owner`; `Ok` once it holds them durably.
    fn send_metrics(
        &self,
        owner: SocketAddr,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), String>;
}

/// One resource's metrics again from parts split off it (they share the resource).
fn merge_local(parts: Vec<ResourceMetrics>) -> Option<ResourceMetrics> {
    let mut merged = otlp::merge_metrics(parts);
    debug_assert!(merged.len() <= 1, "parts of one resource merge into one");
    merged.pop()
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

impl Settler {
    /// Builds the settler over opened storage; call [`Settler::recover`] next.
    pub fn new(
        sampler: &SamplerConfig,
        correlation: &CorrelationConfig,
        rollup: &RollupConfig,
        storage: Arc<Storage>,
        queues: Arc<ExportQueues>,
    ) -> Result<Settler, SettleError> {
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
        let now = unix_now();
        let logs = rollup.logs.enabled.then(|| {
            Interval::new(
                LogRollup::new(LogRollupConfig {
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
        Ok(Settler {
            storage,
            queues,
            store,
            correlate: correlation.enabled,
            kept: Mutex::new(kept),
            broadcaster: OnceLock::new(),
            router: OnceLock::new(),
            rollups: Mutex::new(Rollups { logs, metrics }),
            max_pending_bytes: rollup.max_pending_bytes,
        })
    }

    /// Whether items are held for correlation (else they settle at once, to summary).
    pub fn correlates(&self) -> bool {
        self.correlate
    }

    /// Sends this node's notices to the other samplers from now on (cluster mode).
    pub fn set_broadcaster(&self, broadcaster: Arc<NoticeBroadcaster>) {
        let _ = self.broadcaster.set(broadcaster);
    }

    /// Re-indexes what the hold store kept across a restart and folds the summary inputs
    /// of the interval the restart cut short back into the rollups, then closes that
    /// interval at once. Inputs of a rollup turned off since are queued unchanged.
    /// Returns (held groups, summary inputs).
    pub fn recover(&self, now: u64) -> Result<(usize, usize), SettleError> {
        let held = self.store.recover(now)?;
        let mut replayed = 0;
        let mut unrolled_logs = Vec::new();
        let mut unrolled_metrics = Vec::new();
        let mut rollups = self.rollups();
        let db = self.storage.db();
        if let Some(interval) = rollups.metrics.as_mut()
            && let Some(state) = db.get_cf(self.storage.cf(CF_ROLLUP), CUMULATIVE_STATE_KEY)?
        {
            match ExportMetricsServiceRequest::decode(state.as_slice()) {
                Ok(state) => interval.rollup.prime(&state, now),
                Err(e) => corrupt("cumulative stream state", &e),
            }
        }
        for entry in db.iterator_cf(self.storage.cf(CF_ROLLUP), IteratorMode::Start) {
            let (key, value) = entry?;
            match key.first().copied() {
                Some(k) if k == HeldKind::Logs as u8 => match ResourceLogs::decode(&*value) {
                    Ok(rl) => {
                        replayed += 1;
                        match rollups.logs.as_mut() {
                            Some(interval) => fold_logs(interval, &rl, value.len()),
                            None => unrolled_logs.push(rl),
                        }
                    }
                    Err(e) => corrupt("logs", &e),
                },
                Some(k) if k == HeldKind::Metrics as u8 => match ResourceMetrics::decode(&*value) {
                    Ok(rm) => {
                        replayed += 1;
                        match rollups.metrics.as_mut() {
                            Some(interval) => fold_metrics(interval, &rm, value.len(), now),
                            None => unrolled_metrics.push(rm),
                        }
                    }
                    Err(e) => corrupt("metrics", &e),
                },
                Some(STATE_TAG) => {}
                _ => counter!(names::HELD_CORRUPT).increment(1),
            }
        }
        drop(rollups);
        if !unrolled_logs.is_empty() || !unrolled_metrics.is_empty() {
            let mut batch = WriteBatch::default();
            let cf = self.storage.cf(CF_ROLLUP);
            let upto = self.storage.next_seq();
            // Only the signals whose rollup is off: the others were folded in and stay on
            // disk until their flush below.
            if !unrolled_logs.is_empty() {
                stage_clear(&mut batch, cf, HeldKind::Logs, upto);
            }
            if !unrolled_metrics.is_empty() {
                stage_clear(&mut batch, cf, HeldKind::Metrics, upto);
            }
            self.write_with_exports(
                batch,
                vec![
                    ExportRequest::Logs(ExportLogsServiceRequest {
                        resource_logs: unrolled_logs,
                    }),
                    ExportRequest::Metrics(ExportMetricsServiceRequest {
                        resource_metrics: unrolled_metrics,
                    }),
                ],
            )?;
        }
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

    /// Holds logs another sampler settled to the summary path and forwarded here, their
    /// rollup's owner; written before returning, settled on the next pass.
    pub fn hold_summary_logs(
        &self,
        request: &ExportLogsServiceRequest,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for rl in &request.resource_logs {
            self.store.hold(
                &mut batch,
                HeldKind::SummaryLogs,
                &rl.encode_to_vec(),
                unix_now(),
            );
        }
        self.storage.write(batch)
    }

    /// Holds metric points another sampler settled to the summary path and forwarded
    /// here; see [`Settler::hold_summary_logs`].
    pub fn hold_summary_metrics(
        &self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for rm in &request.resource_metrics {
            self.store.hold(
                &mut batch,
                HeldKind::SummaryMetrics,
                &rm.encode_to_vec(),
                unix_now(),
            );
        }
        self.storage.write(batch)
    }

    /// Sends summary parts owned by other samplers to them from now on (cluster mode).
    pub fn set_router(&self, router: Arc<dyn SummaryRouter>) {
        let _ = self.router.set(router);
    }

    /// Stages holding one resource's metrics (arrived at `now`) in `batch`.
    pub fn hold_metrics(&self, batch: &mut WriteBatch, rm: &ResourceMetrics, now: u64) {
        self.store
            .hold(batch, HeldKind::Metrics, &rm.encode_to_vec(), now);
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
        if let Some(broadcaster) = self.broadcaster.get() {
            for notice in notices {
                broadcaster.push(notice);
            }
        }
    }

    /// When the next held group falls due, unix nanoseconds.
    pub fn next_due(&self) -> Option<u64> {
        self.store.next_due()
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
            total.groups += pass.groups;
            total.raw += pass.raw;
            total.summary += pass.summary;
        }
        let stats = self.store.stats();
        gauge!(names::HELD_ITEMS).set(stats.held_items as f64);
        gauge!(names::HELD_BYTES).set(stats.held_bytes as f64);
        gauge!(names::KEPT_TRACES_INDEXED).set(self.kept().len() as f64);
        self.flush(now, false)?;
        Ok(total)
    }

    /// Settles up to [`SETTLE_BATCH`] groups due by `due_by` in one write.
    fn settle_pass(&self, now: u64, due_by: u64) -> Result<Settled, SettleError> {
        let released = self.store.release_due(due_by, SETTLE_BATCH)?;
        if released.is_empty() {
            return Ok(Settled::default());
        }
        let early = released.iter().filter(|i| i.early).count() as u64;
        if early > 0 {
            counter!(names::HOLD_RELEASED_EARLY).increment(early);
        }
        let mut logs = Vec::new();
        let mut metrics = Vec::new();
        // Summary parts that may belong to another sampler's rollup; those settled here
        // by a peer already (`HeldKind::Summary*`) stay here, so nothing travels twice.
        let mut movable_logs = Vec::new();
        let mut movable_metrics = Vec::new();
        {
            let kept = self.kept();
            for item in &released {
                match item.kind {
                    HeldKind::Logs => match ResourceLogs::decode(item.bytes.as_slice()) {
                        Ok(rl) if self.correlate => {
                            movable_logs.push(classify::split_logs(rl, &kept))
                        }
                        Ok(rl) => movable_logs.push(classify::all_summary_logs(rl)),
                        Err(e) => corrupt("logs", &e),
                    },
                    HeldKind::Metrics => match ResourceMetrics::decode(item.bytes.as_slice()) {
                        Ok(rm) if self.correlate => {
                            movable_metrics.push(classify::split_metrics(rm, &kept))
                        }
                        Ok(rm) => movable_metrics.push(classify::all_summary_metrics(rm)),
                        Err(e) => corrupt("metrics", &e),
                    },
                    HeldKind::SummaryLogs => match ResourceLogs::decode(item.bytes.as_slice()) {
                        Ok(rl) => logs.push(classify::all_summary_logs(rl)),
                        Err(e) => corrupt("logs", &e),
                    },
                    HeldKind::SummaryMetrics => {
                        match ResourceMetrics::decode(item.bytes.as_slice()) {
                            Ok(rm) => metrics.push(classify::all_summary_metrics(rm)),
                            Err(e) => corrupt("metrics", &e),
                        }
                    }
                }
            }
        }
        self.send_to_owners(&mut movable_logs, &mut movable_metrics);
        logs.extend(movable_logs);
        metrics.extend(movable_metrics);
        let keys: Vec<_> = released.iter().map(|i| i.key).collect();
        let mut pass = self.route(logs, metrics, |batch| self.store.forget(batch, &keys), now)?;
        pass.groups = released.len();
        Ok(pass)
    }

    /// Hands the summary parts whose rollup another sampler owns to that sampler (a
    /// dropped trace's logs were held on the trace's owner; a ring change moved an
    /// owner), so each rolled-up series has one writer. A part its owner did not take
    /// stays here and is rolled up here. Only with a cluster router and the rollup on.
    fn send_to_owners(
        &self,
        logs: &mut [Split<ResourceLogs>],
        metrics: &mut [Split<ResourceMetrics>],
    ) {
        let Some(router) = self.router.get() else {
            return;
        };
        let (roll_logs, roll_metrics) = {
            let rollups = self.rollups();
            (rollups.logs.is_some(), rollups.metrics.is_some())
        };
        if roll_logs {
            let mut by_owner: HashMap<SocketAddr, Vec<(usize, ResourceLogs)>> = HashMap::new();
            for (i, split) in logs.iter_mut().enumerate() {
                if let Some(owner) = split
                    .summary
                    .as_ref()
                    .and_then(|rl| router.owner_of_logs(rl))
                    && let Some(rl) = split.summary.take()
                {
                    by_owner.entry(owner).or_default().push((i, rl));
                }
            }
            for (owner, parts) in by_owner {
                let request = ExportLogsServiceRequest {
                    resource_logs: parts.iter().map(|(_, rl)| rl.clone()).collect(),
                };
                if let Err(error) = router.send_logs(owner, request) {
                    tracing::debug!(%owner, %error, "summary logs stay here: owner did not take them");
                    for (i, rl) in parts {
                        logs[i].summary = Some(rl);
                    }
                } else {
                    counter!(names::SUMMARY_FORWARDED, "signal" => "logs")
                        .increment(parts.len() as u64);
                }
            }
        }
        if roll_metrics {
            let mut by_owner: HashMap<SocketAddr, Vec<(usize, ResourceMetrics)>> = HashMap::new();
            for (i, split) in metrics.iter_mut().enumerate() {
                let Some(rm) = split.summary.take() else {
                    continue;
                };
                let mut local = Vec::new();
                for (owner, part) in router.split_metrics(rm) {
                    match owner {
                        Some(owner) => by_owner.entry(owner).or_default().push((i, part)),
                        None => local.push(part),
                    }
                }
                split.summary = merge_local(local);
            }
            for (owner, parts) in by_owner {
                let request = ExportMetricsServiceRequest {
                    resource_metrics: parts.iter().map(|(_, rm)| rm.clone()).collect(),
                };
                if let Err(error) = router.send_metrics(owner, request) {
                    tracing::debug!(%owner, %error, "summary metrics stay here: owner did not take them");
                    for (i, rm) in parts {
                        let mine = metrics[i].summary.take().into_iter().chain([rm]);
                        metrics[i].summary = merge_local(mine.collect());
                    }
                } else {
                    counter!(names::SUMMARY_FORWARDED, "signal" => "metrics")
                        .increment(parts.len() as u64);
                }
            }
        }
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
            total.groups += pass.groups;
            total.raw += pass.raw;
            total.summary += pass.summary;
        }
        self.flush(now, true)?;
        Ok(total)
    }

    /// Writes one settle step: raw parts queued, summary parts pending for their rollup
    /// (or queued, in pass-through), `stage_more` (the hold deletions) in the same batch;
    /// then folds the summary parts into the rollups.
    fn route(
        &self,
        logs: Vec<Split<ResourceLogs>>,
        metrics: Vec<Split<ResourceMetrics>>,
        stage_more: impl FnOnce(&mut WriteBatch),
        now: u64,
    ) -> Result<Settled, SettleError> {
        let mut rollups = self.rollups();
        let mut batch = WriteBatch::default();
        let mut out = Settled::default();
        let cf = self.storage.cf(CF_ROLLUP);
        let mut raw_logs = Vec::new();
        let mut pass_logs = Vec::new();
        let mut fold_l = Vec::new();
        for split in logs {
            count_split("logs", &split, &mut out);
            raw_logs.extend(split.raw);
            if let Some(summary) = split.summary {
                if rollups.logs.is_some() {
                    let bytes = summary.encode_to_vec();
                    batch.put_cf(
                        cf,
                        pending_key(HeldKind::Logs, self.storage.next_seq()),
                        &bytes,
                    );
                    fold_l.push((summary, bytes.len()));
                } else {
                    pass_logs.push(summary);
                }
            }
        }
        let mut raw_metrics = Vec::new();
        let mut pass_metrics = Vec::new();
        let mut fold_m = Vec::new();
        for split in metrics {
            count_split("metrics", &split, &mut out);
            raw_metrics.extend(split.raw);
            if let Some(summary) = split.summary {
                if rollups.metrics.is_some() {
                    let bytes = summary.encode_to_vec();
                    batch.put_cf(
                        cf,
                        pending_key(HeldKind::Metrics, self.storage.next_seq()),
                        &bytes,
                    );
                    fold_m.push((summary, bytes.len()));
                } else {
                    pass_metrics.push(summary);
                }
            }
        }
        raw_logs.extend(pass_logs);
        raw_metrics.extend(pass_metrics);
        stage_more(&mut batch);
        self.write_with_exports(
            batch,
            vec![
                ExportRequest::Logs(ExportLogsServiceRequest {
                    resource_logs: otlp::merge_logs(raw_logs),
                }),
                ExportRequest::Metrics(ExportMetricsServiceRequest {
                    resource_metrics: otlp::merge_metrics(raw_metrics),
                }),
            ],
        )?;
        if let Some(interval) = rollups.logs.as_mut() {
            for (rl, bytes) in &fold_l {
                fold_logs(interval, rl, *bytes);
            }
        }
        if let Some(interval) = rollups.metrics.as_mut() {
            for (rm, bytes) in &fold_m {
                fold_metrics(interval, rm, *bytes, now);
            }
        }
        Ok(out)
    }

    /// Closes every rollup interval that has ended by `now`, or that holds more than
    /// `rollup.max_pending_bytes` of inputs (or all of them, with `force`): its summaries
    /// are queued and its inputs deleted, in one write per signal.
    pub fn flush(&self, now: u64, force: bool) -> Result<(), SettleError> {
        let mut rollups = self.rollups();
        let cf = self.storage.cf(CF_ROLLUP);
        if let Some(interval) = rollups.logs.as_mut()
            && interval.due(now, force, self.max_pending_bytes)
        {
            let output = interval
                .rollup
                .flush(interval.start, interval.close_at(now));
            let mut batch = WriteBatch::default();
            stage_clear(&mut batch, cf, HeldKind::Logs, self.storage.next_seq());
            self.write_with_exports(
                batch,
                vec![
                    ExportRequest::Logs(output.logs),
                    ExportRequest::Metrics(output.metrics),
                ],
            )?;
            counter!(names::ROLLUP_OUT, "signal" => "logs").increment(output.summaries as u64);
            interval.restart(now);
        }
        if let Some(interval) = rollups.metrics.as_mut()
            && interval.due(now, force, self.max_pending_bytes)
        {
            let request = interval
                .rollup
                .flush(interval.start, interval.close_at(now));
            let points = otlp::data_point_count(&request) as u64;
            let mut batch = WriteBatch::default();
            stage_clear(&mut batch, cf, HeldKind::Metrics, self.storage.next_seq());
            batch.put_cf(
                cf,
                CUMULATIVE_STATE_KEY,
                interval.rollup.cumulative_state().encode_to_vec(),
            );
            self.write_with_exports(batch, vec![ExportRequest::Metrics(request)])?;
            counter!(names::ROLLUP_OUT, "signal" => "metrics").increment(points);
            interval.restart(now);
        }
        Ok(())
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

impl NoticeSink for Settler {
    /// Notices from other samplers join the local index.
    fn accept(&self, received: Received) {
        if !self.correlate {
            return;
        }
        let now = unix_now();
        let mut kept = self.kept();
        for notice in &received.notices {
            kept.insert(notice, now);
        }
    }
}

/// First key byte of the metric rollup's cumulative stream state in [`CF_ROLLUP`].
const STATE_TAG: u8 = 3;
/// Where the last point of every cumulative input stream is kept, as of the last metric
/// flush, so a restarted rollup converts the next points to exact deltas.
const CUMULATIVE_STATE_KEY: [u8; 1] = [STATE_TAG];

/// Key of a summary input in [`CF_ROLLUP`]: signal byte, then a sequence number.
fn pending_key(kind: HeldKind, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind as u8;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Stages deleting every summary input of `kind` written before sequence `upto`.
fn stage_clear(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, kind: HeldKind, upto: u64) {
    batch.delete_range_cf(cf, pending_key(kind, 0), pending_key(kind, upto));
}

fn fold_logs(interval: &mut Interval<LogRollup>, rl: &ResourceLogs, bytes: usize) {
    let mut n = 0u64;
    for sl in &rl.scope_logs {
        for record in &sl.log_records {
            interval.rollup.add_record(rl.resource.as_ref(), record);
            n += 1;
        }
    }
    interval.pending_bytes += bytes as u64;
    counter!(names::ROLLUP_IN, "signal" => "logs").increment(n);
}

fn fold_metrics(
    interval: &mut Interval<MetricRollup>,
    rm: &ResourceMetrics,
    bytes: usize,
    now: u64,
) {
    for sm in &rm.scope_metrics {
        for metric in &sm.metrics {
            interval
                .rollup
                .add(rm.resource.as_ref(), sm.scope.as_ref(), metric, now);
        }
    }
    let n = otlp::resource_data_points(rm) as u64;
    interval.pending_bytes += bytes as u64;
    counter!(names::ROLLUP_IN, "signal" => "metrics").increment(n);
}

fn count_split<T>(signal: &'static str, split: &Split<T>, out: &mut Settled) {
    for (reason, n) in REASONS.iter().zip(split.raw_items) {
        if n > 0 {
            counter!(names::CORRELATED_ITEMS, "signal" => signal, "reason" => reason.as_str())
                .increment(n);
            out.raw += n;
        }
    }
    if split.summary_items > 0 {
        counter!(names::SUMMARY_ITEMS, "signal" => signal).increment(split.summary_items);
        out.summary += split.summary_items;
    }
}

fn corrupt(what: &str, error: &prost::DecodeError) {
    counter!(names::HELD_CORRUPT).increment(1);
    tracing::error!(%error, what, "a held group could not be decoded; skipped");
}

#[cfg(test)]
mod tests;
