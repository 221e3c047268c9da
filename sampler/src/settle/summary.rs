//! The summary path of settled items: parts another sampler's rollup owns are handed to it
//! (single writer per rolled-up series), the rest is written for the local rollup, or
//! queued unchanged when that rollup is off, in the same write that settles the hold.

use std::collections::HashMap;
use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use otel_tail_shared::exporter::ExportRequest;
use otel_tail_shared::forward::ForwardError;
use otel_tail_shared::otlp;
use prost::Message;
use rocksdb::WriteBatch;

use super::interval::pending_key;
use super::{SettleError, Settled, Settler, events};
use crate::correlation::classify::{REASONS, Split};
use crate::correlation::store::HeldKind;
use crate::storage::CF_ROLLUP;

/// Why a peer did not take summary data; the data stays and is rolled up here.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The peer call failed or was refused.
    #[error("handing summary data to {owner} failed")]
    Forward {
        /// The owner it was meant for.
        owner: SocketAddr,
        /// What the call returned.
        #[source]
        source: ForwardError,
    },
}

/// Where summary parts belong in a cluster, and the calls that hand them over. Sending
/// blocks the settle thread for at most the implementation's timeout.
pub trait SummaryRouter: Send + Sync {
    /// The sampler owning the log rollup of this resource, when it is another one.
    fn owner_of_logs(&self, rl: &ResourceLogs) -> Option<SocketAddr>;
    /// Partitions one resource's metrics by the sampler owning each metric's rollup
    /// (`None`: this one).
    fn metrics_by_owner(&self, rm: ResourceMetrics) -> Vec<(Option<SocketAddr>, ResourceMetrics)>;
    /// Hands summary logs to `owner`; `Ok` once it holds them durably.
    fn send_logs(
        &self,
        owner: SocketAddr,
        request: ExportLogsServiceRequest,
    ) -> Result<(), SummaryError>;
    /// Hands summary metric points to `owner`; `Ok` once it holds them durably.
    fn send_metrics(
        &self,
        owner: SocketAddr,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), SummaryError>;
}

/// One resource's metrics again from parts split off it (they share the resource).
fn merge_local(parts: Vec<ResourceMetrics>) -> Option<ResourceMetrics> {
    let mut merged = otlp::merge_metrics(parts);
    debug_assert!(merged.len() <= 1, "parts of one resource merge into one");
    merged.pop()
}

/// What one settle step sends down the summary path, per rollup.
pub(super) struct Summaries {
    /// Logs for the log rollup.
    pub(super) logs: Vec<Split<ResourceLogs>>,
    /// Metric points for the metric rollup.
    pub(super) metrics: Vec<Split<ResourceMetrics>>,
    /// Span-metric points for the span rollup.
    pub(super) spans: Vec<Split<ResourceMetrics>>,
}

/// Summary parts written for a local rollup in the current step, with their stored size.
struct Folded<T> {
    parts: Vec<(T, usize)>,
}

impl Settler {
    /// Hands the summary parts whose rollup another sampler owns to that sampler (a
    /// dropped trace's logs were held on the trace's owner; a ring change moved an
    /// owner), so each rolled-up series has one writer. A part its owner did not take
    /// stays here and is rolled up here. Only with a cluster router and the rollup on.
    pub(super) fn send_to_owners(
        &self,
        logs: &mut [Split<ResourceLogs>],
        metrics: &mut [Split<ResourceMetrics>],
        spans: &mut [Split<ResourceMetrics>],
    ) {
        let Some(router) = self.router.as_deref() else {
            return;
        };
        let (roll_logs, roll_metrics, roll_spans) = {
            let rollups = self.rollups();
            (
                rollups.logs.is_some(),
                rollups.metrics.is_some(),
                rollups.spans.is_some(),
            )
        };
        if roll_logs {
            send_logs_to_owners(router, logs);
        }
        if roll_metrics {
            send_metrics_to_owners(router, metrics);
        }
        if roll_spans {
            send_metrics_to_owners(router, spans);
        }
    }

    /// Writes one settle step: raw parts queued, summary parts pending for their rollup
    /// (or queued, in pass-through), `stage_more` (the hold deletions) in the same batch;
    /// then folds the summary parts into the rollups.
    pub(super) fn write_settled(
        &self,
        summaries: Summaries,
        stage_more: impl FnOnce(&mut WriteBatch),
        now: u64,
    ) -> Result<Settled, SettleError> {
        let Summaries {
            logs,
            metrics,
            spans,
        } = summaries;
        let mut rollups = self.rollups();
        let mut batch = WriteBatch::default();
        let mut out = Settled::default();
        let (raw_logs, fold_logs) = self.stage_summary(
            &mut batch,
            "logs",
            HeldKind::Logs,
            logs,
            rollups.logs.is_some(),
            &mut out,
        );
        let (raw_metrics, fold_metrics) = self.stage_summary(
            &mut batch,
            "metrics",
            HeldKind::Metrics,
            metrics,
            rollups.metrics.is_some(),
            &mut out,
        );
        let (raw_spans, fold_spans) = self.stage_summary(
            &mut batch,
            "spans",
            HeldKind::SpanMetrics,
            spans,
            rollups.spans.is_some(),
            &mut out,
        );
        stage_more(&mut batch);
        self.write_with_exports(
            batch,
            vec![
                ExportRequest::Logs(ExportLogsServiceRequest {
                    resource_logs: otlp::merge_logs(raw_logs),
                }),
                ExportRequest::Metrics(ExportMetricsServiceRequest {
                    resource_metrics: otlp::merge_metrics(
                        raw_metrics.into_iter().chain(raw_spans).collect(),
                    ),
                }),
            ],
        )?;
        if let Some(interval) = rollups.logs.as_mut() {
            for (rl, bytes) in &fold_logs.parts {
                interval.fold(rl, *bytes);
            }
        }
        if let Some(interval) = rollups.metrics.as_mut() {
            for (rm, bytes) in &fold_metrics.parts {
                interval.fold(rm, *bytes, now);
            }
        }
        if let Some(interval) = rollups.spans.as_mut() {
            for (rm, bytes) in &fold_spans.parts {
                interval.fold(rm, *bytes, now);
            }
        }
        Ok(out)
    }

    /// Counts `splits`, stages their summary parts in [`CF_ROLLUP`] when `rolled` (else
    /// they pass through), and returns what leaves raw (raw parts, then pass-through)
    /// and what the rollup folds once the batch is written.
    fn stage_summary<T: Message>(
        &self,
        batch: &mut WriteBatch,
        signal: &'static str,
        kind: HeldKind,
        splits: Vec<Split<T>>,
        rolled: bool,
        out: &mut Settled,
    ) -> (Vec<T>, Folded<T>) {
        let cf = self.storage.cf(CF_ROLLUP);
        let mut raw = Vec::new();
        let mut pass = Vec::new();
        let mut folded = Folded { parts: Vec::new() };
        for split in splits {
            count_split(signal, &split, out);
            raw.extend(split.raw);
            if let Some(summary) = split.summary {
                if rolled {
                    let bytes = summary.encode_to_vec();
                    batch.put_cf(cf, pending_key(kind, self.storage.next_seq()), &bytes);
                    folded.parts.push((summary, bytes.len()));
                } else {
                    pass.push(summary);
                }
            }
        }
        raw.extend(pass);
        (raw, folded)
    }
}

fn send_logs_to_owners(router: &dyn SummaryRouter, logs: &mut [Split<ResourceLogs>]) {
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
        match router.send_logs(owner, request) {
            Ok(()) => events::summary_forwarded("logs", parts.len()),
            Err(error) => {
                tracing::debug!(error = %error, "summary logs stay here: owner did not take them");
                for (i, rl) in parts {
                    logs[i].summary = Some(rl);
                }
            }
        }
    }
}

fn send_metrics_to_owners(router: &dyn SummaryRouter, metrics: &mut [Split<ResourceMetrics>]) {
    let mut by_owner: HashMap<SocketAddr, Vec<(usize, ResourceMetrics)>> = HashMap::new();
    for (i, split) in metrics.iter_mut().enumerate() {
        let Some(rm) = split.summary.take() else {
            continue;
        };
        let mut local = Vec::new();
        for (owner, part) in router.metrics_by_owner(rm) {
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
        match router.send_metrics(owner, request) {
            Ok(()) => events::summary_forwarded("metrics", parts.len()),
            Err(error) => {
                tracing::debug!(error = %error, "summary metrics stay here: owner did not take them");
                for (i, rm) in parts {
                    let mine = metrics[i].summary.take().into_iter().chain([rm]);
                    metrics[i].summary = merge_local(mine.collect());
                }
            }
        }
    }
}

fn count_split<T>(signal: &'static str, split: &Split<T>, out: &mut Settled) {
    for (reason, n) in REASONS.iter().zip(split.raw_items) {
        if n > 0 {
            events::correlated(signal, *reason, n);
            out.raw += n;
        }
    }
    if split.summary_items > 0 {
        events::summary_items(signal, split.summary_items);
        out.summary += split.summary_items;
    }
}
