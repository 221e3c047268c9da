//! Telemetry of the sampler as events: each concern reports through its own small
//! module (`engine::events`, `settle::events`, `cluster::events`) whose functions name
//! what happened; metric names live in [`otel_tail_shared::telemetry::names`]. This module
//! holds the events of storage itself and registers every series at start.

use metrics::counter;
use otel_tail_shared::telemetry::names;

use crate::storage::Store;

/// A stored record failed to decode and was quarantined.
pub(crate) fn corrupt_record(store: Store, error: &dyn std::fmt::Display) {
    counter!(names::CORRUPT_RECORDS, "store" => store.as_str()).increment(1);
    tracing::error!(
        store = store.as_str(),
        %error,
        "a stored record could not be decoded; moved to quarantine and skipped"
    );
}

/// Makes the main series visible on `/metrics` from the start, at zero, so dashboards and
/// alerts see a series before the first event.
pub(crate) fn register() {
    crate::engine::register_metrics();
    crate::settle::register_metrics();
    for store in [Store::Buffer, Store::Hold, Store::Rollup, Store::Queue] {
        counter!(names::CORRUPT_RECORDS, "store" => store.as_str()).increment(0);
    }
    counter!(crate::correlation::fanout::names::DECISIONS_BROADCAST, "outcome" => "ok")
        .increment(0);
    for outcome in ["applied", "unchanged", "rejected"] {
        counter!(names::CONFIG_RELOADS, "outcome" => outcome).increment(0);
    }
}
