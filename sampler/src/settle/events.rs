//! What the settle path reports: one function per event, metric names from
//! [`otel_tail_shared::telemetry::names`].

use metrics::{counter, gauge};
use otel_tail_shared::telemetry::names;

use crate::correlation::Reason;
use crate::correlation::store::HoldStats;

/// Held groups settled before their window ended because the hold was over a bound.
pub(super) fn released_early(groups: u64) {
    if groups > 0 {
        counter!(names::HOLD_RELEASED_EARLY).increment(groups);
    }
}

/// Items of `signal` kept raw for `reason`.
pub(super) fn correlated(signal: &'static str, reason: Reason, items: u64) {
    counter!(names::CORRELATED_ITEMS, "signal" => signal, "reason" => reason.as_str())
        .increment(items);
}

/// Items of `signal` sent down the summary path.
pub(super) fn summary_items(signal: &'static str, items: u64) {
    counter!(names::SUMMARY_ITEMS, "signal" => signal).increment(items);
}

/// Summary parts of `signal` handed to the sampler owning their rollup.
pub(super) fn summary_forwarded(signal: &'static str, parts: usize) {
    counter!(names::SUMMARY_FORWARDED, "signal" => signal).increment(parts as u64);
}

/// Items of `signal` folded into a rollup.
pub(super) fn rollup_in(signal: &'static str, items: u64) {
    counter!(names::ROLLUP_IN, "signal" => signal).increment(items);
}

/// Summaries or rolled-up points of `signal` emitted by an interval flush.
pub(super) fn rollup_out(signal: &'static str, items: u64) {
    counter!(names::ROLLUP_OUT, "signal" => signal).increment(items);
}

/// The hold's size and the kept-trace index after a settle pass.
pub(super) fn hold_sizes(stats: &HoldStats, kept_traces: usize) {
    gauge!(names::HELD_ITEMS).set(stats.held_items as f64);
    gauge!(names::HELD_BYTES).set(stats.held_bytes as f64);
    gauge!(names::KEPT_TRACES_INDEXED).set(kept_traces as f64);
}

/// Makes the settle path's series visible on `/metrics` from the start, at zero.
pub(crate) fn register() {
    counter!(names::HOLD_RELEASED_EARLY).increment(0);
    for signal in ["logs", "metrics", "spans"] {
        counter!(names::SUMMARY_ITEMS, "signal" => signal).increment(0);
        counter!(names::ROLLUP_IN, "signal" => signal).increment(0);
        counter!(names::ROLLUP_OUT, "signal" => signal).increment(0);
        for reason in crate::correlation::classify::REASONS {
            counter!(names::CORRELATED_ITEMS, "signal" => signal, "reason" => reason.as_str())
                .increment(0);
        }
    }
    gauge!(names::HELD_ITEMS).set(0.0);
}
