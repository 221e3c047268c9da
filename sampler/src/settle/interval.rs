//! Rollup intervals: what the summary path folds into, when an interval closes, and how
//! its inputs survive a restart.
//!
//! Summary inputs of the open interval are written to [`CF_ROLLUP`] under
//! [`pending_key`] (signal byte, sequence) before they are folded in memory; a flush
//! queues the interval's summaries and range-deletes its inputs in one write. After a
//! crash, [`Settler::recover_rollups`] folds what is still in [`CF_ROLLUP`] back in.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use otel_tail_shared::exporter::ExportRequest;
use otel_tail_shared::otlp;
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch};

use super::{SettleError, Settler, events};
use crate::correlation::store::HeldKind;
use crate::rollup::logs::LogRollup;
use crate::rollup::metrics::MetricRollup;
use crate::rollup::spans::SpanRollup;
use crate::storage::{CF_ROLLUP, Store};

/// First key byte of the metric rollup's cumulative stream state in [`CF_ROLLUP`].
const STATE_TAG: u8 = 3;
/// Where the last point of every cumulative input stream is kept, as of the last metric
/// flush, so a restarted rollup converts the next points to exact deltas.
const CUMULATIVE_STATE_KEY: [u8; 1] = [STATE_TAG];

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One signal's rollup and its open interval.
pub(super) struct Interval<R> {
    pub(super) rollup: R,
    length: u64,
    start: u64,
    /// Bytes of summary inputs written to [`CF_ROLLUP`] this interval.
    pending_bytes: u64,
}

impl<R> Interval<R> {
    /// The interval of `length` containing `now`.
    pub(super) fn new(rollup: R, length: Duration, now: u64) -> Interval<R> {
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
pub(super) struct Rollups {
    pub(super) logs: Option<Interval<LogRollup>>,
    pub(super) metrics: Option<Interval<MetricRollup>>,
    pub(super) spans: Option<Interval<SpanRollup>>,
}

impl Interval<LogRollup> {
    /// Folds one resource's summary logs (`bytes` as stored) into the interval.
    pub(super) fn fold(&mut self, rl: &ResourceLogs, bytes: usize) {
        let mut n = 0u64;
        for sl in &rl.scope_logs {
            for record in &sl.log_records {
                self.rollup.add_record(rl.resource.as_ref(), record);
                n += 1;
            }
        }
        self.pending_bytes += bytes as u64;
        events::rollup_in("logs", n);
    }
}

impl Interval<MetricRollup> {
    /// Folds one resource's summary metric points (`bytes` as stored) into the interval.
    pub(super) fn fold(&mut self, rm: &ResourceMetrics, bytes: usize, now: u64) {
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                self.rollup
                    .add(rm.resource.as_ref(), sm.scope.as_ref(), metric, now);
            }
        }
        self.pending_bytes += bytes as u64;
        events::rollup_in("metrics", otlp::resource_data_points(rm) as u64);
    }
}

impl Interval<SpanRollup> {
    /// Folds one resource's span-metric points (`bytes` as stored) into the interval.
    pub(super) fn fold(&mut self, rm: &ResourceMetrics, bytes: usize, now: u64) {
        let spans = self.rollup.add(rm, now);
        self.pending_bytes += bytes as u64;
        events::rollup_in("spans", spans);
    }
}

/// Key of a summary input in [`CF_ROLLUP`]: signal byte, then a sequence number.
pub(super) fn pending_key(kind: HeldKind, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind as u8;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Stages deleting every summary input of `kind` written before sequence `upto`.
fn stage_clear(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, kind: HeldKind, upto: u64) {
    batch.delete_range_cf(cf, pending_key(kind, 0), pending_key(kind, upto));
}

/// Summary inputs read back from [`CF_ROLLUP`] whose rollup is off now.
#[derive(Default)]
pub(super) struct Unrolled {
    logs: Vec<ResourceLogs>,
    metrics: Vec<ResourceMetrics>,
    spans: Vec<ResourceMetrics>,
}

impl Settler {
    /// Primes the metric rollup with the cumulative stream state of the last flush, folds
    /// the summary inputs of the interval a restart cut short back into the rollups, and
    /// queues unchanged the inputs of a rollup turned off since. Records that fail to
    /// decode are quarantined. Returns how many inputs were read back.
    pub(super) fn recover_rollups(&self, now: u64) -> Result<usize, SettleError> {
        let mut replayed = 0;
        let mut unrolled = Unrolled::default();
        let mut rollups = self.rollups();
        let db = self.storage.db();
        let cf = self.storage.cf(CF_ROLLUP);
        if let Some(interval) = rollups.metrics.as_mut()
            && let Some(state) = db.get_cf(cf, CUMULATIVE_STATE_KEY)?
        {
            match ExportMetricsServiceRequest::decode(state.as_slice()) {
                Ok(state) => interval.rollup.prime(&state, now),
                Err(e) => {
                    self.storage
                        .quarantine(Store::Rollup, &CUMULATIVE_STATE_KEY, &state, &e)?
                }
            }
        }
        for entry in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = entry?;
            let read = match key.first().copied() {
                Some(STATE_TAG) => continue,
                Some(k) if k == HeldKind::Logs as u8 => ResourceLogs::decode(&*value)
                    .map(|rl| match rollups.logs.as_mut() {
                        Some(interval) => interval.fold(&rl, value.len()),
                        None => unrolled.logs.push(rl),
                    })
                    .map_err(|e| e.to_string()),
                Some(k) if k == HeldKind::Metrics as u8 => ResourceMetrics::decode(&*value)
                    .map(|rm| match rollups.metrics.as_mut() {
                        Some(interval) => interval.fold(&rm, value.len(), now),
                        None => unrolled.metrics.push(rm),
                    })
                    .map_err(|e| e.to_string()),
                Some(k) if k == HeldKind::SpanMetrics as u8 => ResourceMetrics::decode(&*value)
                    .map(|rm| match rollups.spans.as_mut() {
                        Some(interval) => interval.fold(&rm, value.len(), now),
                        None => unrolled.spans.push(rm),
                    })
                    .map_err(|e| e.to_string()),
                _ => Err("unknown summary input tag".to_owned()),
            };
            match read {
                Ok(()) => replayed += 1,
                Err(error) => self
                    .storage
                    .quarantine(Store::Rollup, &key, &value, &error)?,
            }
        }
        drop(rollups);
        self.pass_through_unrolled(unrolled)?;
        Ok(replayed)
    }

    /// Queues summary inputs whose rollup is off now, unchanged, and deletes them from
    /// [`CF_ROLLUP`] in the same write.
    fn pass_through_unrolled(&self, unrolled: Unrolled) -> Result<(), SettleError> {
        if unrolled.logs.is_empty() && unrolled.metrics.is_empty() && unrolled.spans.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let cf = self.storage.cf(CF_ROLLUP);
        let upto = self.storage.next_seq();
        // Only the signals whose rollup is off: the others were folded in and stay on
        // disk until their flush.
        if !unrolled.logs.is_empty() {
            stage_clear(&mut batch, cf, HeldKind::Logs, upto);
        }
        if !unrolled.metrics.is_empty() {
            stage_clear(&mut batch, cf, HeldKind::Metrics, upto);
        }
        if !unrolled.spans.is_empty() {
            stage_clear(&mut batch, cf, HeldKind::SpanMetrics, upto);
        }
        self.write_with_exports(
            batch,
            vec![
                ExportRequest::Logs(ExportLogsServiceRequest {
                    resource_logs: unrolled.logs,
                }),
                ExportRequest::Metrics(ExportMetricsServiceRequest {
                    resource_metrics: unrolled.metrics.into_iter().chain(unrolled.spans).collect(),
                }),
            ],
        )?;
        Ok(())
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
            events::rollup_out("logs", output.summaries as u64);
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
            events::rollup_out("metrics", points);
            interval.restart(now);
        }
        if let Some(interval) = rollups.spans.as_mut()
            && interval.due(now, force, self.max_pending_bytes)
        {
            let request = interval
                .rollup
                .flush(interval.start, interval.close_at(now));
            let points = otlp::data_point_count(&request) as u64;
            let mut batch = WriteBatch::default();
            stage_clear(
                &mut batch,
                cf,
                HeldKind::SpanMetrics,
                self.storage.next_seq(),
            );
            self.write_with_exports(batch, vec![ExportRequest::Metrics(request)])?;
            events::rollup_out("spans", points);
            interval.restart(now);
        }
        Ok(())
    }
}
