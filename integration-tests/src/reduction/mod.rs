//! The reduction benchmark's workload and accounting: a realistic synthetic estate of many
//! services and pods ([`Workload`]), what was sent ([`InputLedger`]), what the sampler
//! exported ([`Output`]), and whether the two agree ([`check`]).
//!
//! The estate: services named after ten business domains in five roles (gateway, api,
//! worker, db-proxy, cache), several pods each, every pod a Kubernetes-style resource.
//! Each tick the gateways receive traces that fan out over the other services (HTTP server
//! and client spans, database calls); a share of them fail. Logs come from a catalogue of a
//! few hundred templates whose variable parts are numbers, ids, IPs, hex, UUIDs and user
//! ids: request logs carry their span's trace id, background logs carry none. Metrics are
//! what SDKs export every tick per pod: a delta counter with one point per request
//! (`user.id`, `request.id` attributes, value 1), a duration histogram with exemplars, a
//! database operation counter by user, page views by user on the gateways, and a memory
//! gauge. Deterministic for a seed; time is a parameter.
//!
//! Accounting identifies items without adding anything to them: a log record by its trace
//! id, span id, time and body; a data point by its metric, pod, time and attributes.
//!
//! Layout: [`catalogue`] (domains, roles, log templates), [`workload`] (the generator),
//! [`ledger`] (input and output accounting), [`report`] (the checks and the printed figures).

pub mod catalogue;
pub mod ledger;
pub mod report;
#[cfg(test)]
mod tests;
pub mod workload;

pub use ledger::{
    ByReason, InputLedger, Output, PART_LOG_RECORDS, PART_RAW_LOGS, PART_RAW_POINTS,
    PART_ROLLED_POINTS, PART_SUMMARIES, PART_UNMARKED_LOGS, PART_UNMARKED_POINTS, Volume, log_key,
    point_key,
};
pub use report::{check, expected_raw, logs_and_metrics_reduction};
pub use workload::{Tick, Workload, WorkloadConfig, metric_rules};

/// The delta counter with one point of value 1 per request handled, carrying `user.id`
/// and `request.id`: its total is checked end to end.
pub const REQUESTS_METRIC: &str = "app.requests";
/// Request duration histogram; its points carry an exemplar of the latest request.
pub const DURATION_METRIC: &str = "http.server.request.duration";
/// Database operations by operation, collection and user.
pub const DB_METRIC: &str = "db.client.operations";
/// Page views by page and user on the gateways; no rule reduces it, so the rollup's
/// cardinality limit does.
pub const PAGE_VIEWS_METRIC: &str = "frontend.page_views";
/// Memory gauge per pod.
pub const MEMORY_METRIC: &str = "process.memory.usage";
/// The metric the log rollup emits next to its summaries.
pub const LOG_RECORDS_METRIC: &str = "log.records";
/// Name prefix of the span metrics (`rollup.traces`).
pub const SPAN_METRICS_PREFIX: &str = "traces.span.metrics.";
/// The span metrics' calls sum.
pub const SPAN_CALLS_METRIC: &str = "traces.span.metrics.calls";
/// Attribute marking raw items kept by correlated retention (value: the reason).
pub const CORRELATED_ATTRIBUTE: &str = "otel_tail.correlated";
/// Attribute marking rolled-up output.
pub const ROLLUP_ATTRIBUTE: &str = "otel_tail.rollup";
/// Attribute of the metric series that takes points beyond the cardinality limit.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";
/// Attribute of a log summary: how many records it stands for.
pub const LOG_COUNT_ATTRIBUTE: &str = "log.count";
/// Attribute of a log summary: its template's id.
pub const TEMPLATE_ID_ATTRIBUTE: &str = "log.template.id";
