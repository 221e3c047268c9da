//! What the engine reports: one function per event, metric names from
//! [`otel_tail_shared::telemetry::names`].

use std::sync::Arc;

use metrics::{counter, gauge, histogram};
use otel_tail_shared::telemetry::names;

use crate::decision::Kept;

/// Spans that arrived after their trace was dropped (they are dropped too).
pub(super) fn late_spans_dropped(spans: u64) {
    if spans > 0 {
        counter!(names::LATE_SPANS, "decision" => "not_sampled").increment(spans);
        counter!(names::SPANS_DROPPED).increment(spans);
    }
}

/// Spans that arrived after their trace was kept (they are exported at once).
pub(super) fn late_spans_kept(spans: u64) {
    counter!(names::LATE_SPANS, "decision" => "sampled").increment(spans);
    counter!(names::SPANS_KEPT).increment(spans);
}

/// Spans counted into span metrics, in the write that stored them.
pub(super) fn span_metrics_counted(spans: u64) {
    counter!(names::SPAN_METRICS_SPANS).increment(spans);
}

/// Free bytes on the storage filesystem.
pub(super) fn disk_free(bytes: u64) {
    gauge!(names::DISK_FREE_BYTES).set(bytes as f64);
}

/// Traces decided before going quiet because they reached a per-trace bound (`limit`:
/// `max_spans`, `max_age`, or `max_size`: dropped over `maximum_trace_size_bytes`).
pub(super) fn traces_limited(limit: &'static str, traces: usize) {
    if traces > 0 {
        counter!(names::TRACES_LIMITED, "limit" => limit).increment(traces as u64);
    }
}

/// Span times of kept traces clamped before they set a correlation window.
pub(super) fn span_times_clamped(times: u64) {
    if times > 0 {
        counter!(names::SPAN_TIMES_CLAMPED).increment(times);
    }
}

/// Traces decided early because the index was full.
pub(super) fn traces_evicted(traces: usize) {
    counter!(names::TRACES_EVICTED).increment(traces as u64);
}

/// Times from traces' deadlines to their decisions, milliseconds (one histogram lookup for
/// all of them).
pub(super) fn decision_latencies(ms: impl Iterator<Item = u64>) {
    let latency = histogram!(names::DECISION_LATENCY);
    for ms in ms {
        latency.record(ms as f64 / 1000.0);
    }
}

/// Traces decided together: one counter update per decision and policy instead of one
/// registry lookup (and label allocation) per trace.
pub(super) fn traces_decided<'a>(kept: impl Iterator<Item = Option<&'a Kept>>) {
    let mut dropped = 0u64;
    let mut by_policy: Vec<(&'a Arc<str>, u64)> = Vec::new();
    for kept in kept {
        match kept {
            None => dropped += 1,
            Some(k) => match by_policy.iter_mut().find(|(p, _)| **p == k.policy) {
                Some((_, n)) => *n += 1,
                None => by_policy.push((&k.policy, 1)),
            },
        }
    }
    if dropped > 0 {
        counter!(names::TRACES_DECIDED, "decision" => "not_sampled", "policy" => "")
            .increment(dropped);
    }
    for (policy, n) in by_policy {
        counter!(names::TRACES_DECIDED, "decision" => "sampled", "policy" => policy.to_string())
            .increment(n);
    }
}

/// Buffered spans that left with their trace's decision.
pub(super) fn spans_finished(kept: u64, dropped: u64) {
    counter!(names::SPANS_KEPT).increment(kept);
    counter!(names::SPANS_DROPPED).increment(dropped);
}

/// Repeated spans of kept traces removed before export (client retries).
pub(super) fn spans_deduplicated(spans: u64) {
    if spans > 0 {
        counter!(names::SPANS_DEDUPLICATED).increment(spans);
    }
}

/// Traces in the index.
pub(super) fn active_traces(traces: usize) {
    gauge!(names::TRACES_ACTIVE).set(traces as f64);
}

/// Storage on disk and in memory, and the index's heap.
pub(super) fn storage_sizes(storage: u64, storage_memory: u64, index: usize) {
    gauge!(names::STORAGE_BYTES).set(storage as f64);
    gauge!(names::STORAGE_MEMORY_BYTES).set(storage_memory as f64);
    gauge!(names::TRACE_INDEX_BYTES).set(index as f64);
}

/// Makes the engine's series visible on `/metrics` from the start, at zero.
pub(crate) fn register() {
    for name in [
        names::SPANS_RECEIVED,
        names::SPANS_KEPT,
        names::SPANS_DROPPED,
        names::TRACES_EVICTED,
        names::SPANS_DEDUPLICATED,
        names::SPAN_METRICS_SPANS,
        names::SPAN_TIMES_CLAMPED,
        names::LOGS_RECEIVED,
        names::DATA_POINTS_RECEIVED,
    ] {
        counter!(name).increment(0);
    }
    for limit in ["max_spans", "max_age", "max_size"] {
        counter!(names::TRACES_LIMITED, "limit" => limit).increment(0);
    }
    for decision in ["sampled", "not_sampled"] {
        counter!(names::LATE_SPANS, "decision" => decision).increment(0);
    }
    counter!(names::SPANS_REJECTED, "reason" => "invalid_id").increment(0);
}
