//! What the cluster shell reports: one function per event.

use metrics::counter;
use otel_tail_shared::otlp::Signal;

use super::handoff::HANDOFF_TRACES;

/// Traces received from a peer handing them off.
pub(super) fn traces_handed_in(traces: usize) {
    counter!(HANDOFF_TRACES, "direction" => "in").increment(traces as u64);
}

/// Makes the cluster counters visible on `/metrics` from the start, at zero.
pub(super) fn register() {
    use otel_tail_shared::forward::names as fwd;
    for direction in ["in", "out"] {
        counter!(HANDOFF_TRACES, "direction" => direction).increment(0);
    }
    for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
        counter!(fwd::FORWARDED_ITEMS, "signal" => signal.as_str(), "outcome" => fwd::OUTCOME_OK)
            .increment(0);
    }
}
