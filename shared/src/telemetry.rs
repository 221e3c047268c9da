//! Self-observability: metric names (one place), logging set-up, and the admin endpoint.
//!
//! Handlers record through the [`metrics`] facade using the names below; the Prometheus
//! recorder installed by [`install_metrics`] renders them on `/metrics`.

pub mod admin;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names. Every self-metric is prefixed `otel_tail_`.
pub mod names {
    /// Spans accepted by a receiver. Counter.
    pub const SPANS_RECEIVED: &str = "otel_tail_spans_received_total";
    /// Spans refused, by `reason`. Counter.
    pub const SPANS_REJECTED: &str = "otel_tail_spans_rejected_total";
    /// Log records accepted by a receiver. Counter.
    pub const LOGS_RECEIVED: &str = "otel_tail_log_records_received_total";
    /// Metric data points accepted by a receiver. Counter.
    pub const DATA_POINTS_RECEIVED: &str = "otel_tail_data_points_received_total";
    /// Items of any signal refused, by `signal` and `reason`. Counter.
    pub const ITEMS_REJECTED: &str = "otel_tail_items_rejected_total";
    /// Requests refused whole, by `signal`, `transport` and `reason`. Counter.
    pub const REQUESTS_REFUSED: &str = "otel_tail_requests_refused_total";
    /// Traces currently buffered. Gauge.
    pub const TRACES_ACTIVE: &str = "otel_tail_traces_active";
    /// Traces decided, by `decision` (`sampled`/`not_sampled`) and `policy`. Counter.
    pub const TRACES_DECIDED: &str = "otel_tail_traces_decided_total";
    /// Traces decided before their deadline because `num_traces` was reached. Counter.
    pub const TRACES_EVICTED: &str = "otel_tail_traces_decided_early_total";
    /// Spans that arrived after their trace was decided, by `decision`. Counter.
    pub const LATE_SPANS: &str = "otel_tail_late_spans_total";
    /// Spans counted into span metrics (`rollup.traces`) where they were buffered: every
    /// span received once, kept or not, so it can be compared with the spans received.
    /// Counter.
    pub const SPAN_METRICS_SPANS: &str = "otel_tail_span_metrics_spans_total";
    /// Calls to the forward endpoint refused for want of a valid cluster credential, by
    /// `reason` (`missing`, `invalid`, `expired`, `replayed`). Counter.
    pub const FORWARD_UNAUTHENTICATED: &str = "otel_tail_forward_unauthenticated_total";
    /// Traces decided while still receiving spans because they reached
    /// `sampler.max_spans_per_trace` or `sampler.max_trace_age`, by `limit`. Counter.
    pub const TRACES_LIMITED: &str = "otel_tail_traces_limited_total";
    /// Span start/end times of kept traces more than an hour from the decision time,
    /// clamped before they set a correlation window. Counter.
    pub const SPAN_TIMES_CLAMPED: &str = "otel_tail_span_times_clamped_total";
    /// Spans dropped because their trace was not sampled. Counter.
    pub const SPANS_DROPPED: &str = "otel_tail_spans_dropped_total";
    /// Spans sent to the export queue because their trace was kept. Counter.
    pub const SPANS_KEPT: &str = "otel_tail_spans_kept_total";
    /// Items handed to an exporter, by `signal`, `exporter` and `outcome`. Counter.
    pub const EXPORTED_ITEMS: &str = "otel_tail_exported_items_total";
    /// Export attempts that failed and will be retried, by `exporter`. Counter.
    pub const EXPORT_RETRIES: &str = "otel_tail_export_retries_total";
    /// Time from a trace's deadline to its decision being made. Histogram, seconds.
    pub const DECISION_LATENCY: &str = "otel_tail_decision_latency_seconds";
    /// Bytes of buffered telemetry in RocksDB (live SST + memtables). Gauge.
    pub const STORAGE_BYTES: &str = "otel_tail_storage_bytes";
    /// Gauge: free bytes on the filesystem of `sampler.storage_dir` (new data is throttled
    /// below `sampler.min_free_disk_bytes`).
    pub const DISK_FREE_BYTES: &str = "otel_tail_storage_disk_free_bytes";
    /// Heap bytes of the in-memory trace index (hash table and deadline heap). Gauge.
    pub const TRACE_INDEX_BYTES: &str = "otel_tail_trace_index_bytes";
    /// Bytes RocksDB holds in memory (memtables and block cache); bounded by its settings. Gauge.
    pub const STORAGE_MEMORY_BYTES: &str = "otel_tail_storage_memory_bytes";
    /// Bytes waiting in the disk-backed export queue, by `exporter`. Gauge.
    pub const EXPORT_QUEUE_BYTES: &str = "otel_tail_export_queue_bytes";
    /// Logs and metric groups held for correlation. Gauge.
    pub const HELD_ITEMS: &str = "otel_tail_held_items";
    /// Encoded bytes held for correlation. Gauge.
    pub const HELD_BYTES: &str = "otel_tail_held_bytes";
    /// Held groups settled before their window ended because the hold was over a bound.
    /// Counter.
    pub const HOLD_RELEASED_EARLY: &str = "otel_tail_hold_released_early_total";
    /// Repeated spans (same span id) of kept traces removed before export. Counter.
    pub const SPANS_DEDUPLICATED: &str = "otel_tail_spans_deduplicated_total";
    /// Config file reloads, by `outcome` (`applied`, `unchanged`, `rejected`). Counter.
    pub const CONFIG_RELOADS: &str = "otel_tail_config_reloads_total";
    /// Stored records that failed to decode, moved to quarantine and skipped, by `store`
    /// (`buffer`, `hold`, `rollup`, `queue`). Counter.
    pub const CORRUPT_RECORDS: &str = "otel_tail_corrupt_records_total";
    /// Kept traces this node can match held items against. Gauge.
    pub const KEPT_TRACES_INDEXED: &str = "otel_tail_kept_traces_indexed";
    /// Log records and data points kept raw, by `signal` and `reason`. Counter.
    pub const CORRELATED_ITEMS: &str = "otel_tail_correlated_items_total";
    /// Log records and data points sent down the summary path, by `signal`. Counter.
    pub const SUMMARY_ITEMS: &str = "otel_tail_summary_items_total";
    /// Log records and data points folded into rollups, by `signal`. Counter.
    pub const ROLLUP_IN: &str = "otel_tail_rollup_in_total";
    /// Held groups settled to the summary path and handed to the sampler owning their
    /// rollup, by `signal`. Counter.
    pub const SUMMARY_FORWARDED: &str = "otel_tail_summary_forwarded_total";
    /// Summary log records and rolled-up data points emitted, by `signal`. Counter.
    pub const ROLLUP_OUT: &str = "otel_tail_rollup_out_total";
}

/// Liveness and readiness shared between the process and its admin endpoint.
#[derive(Debug, Default, Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    /// Marks the process ready (or not) to take traffic.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Installs the global Prometheus recorder and returns the handle that renders it.
/// Decision latency uses buckets suited to seconds-scale waits.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(names::DECISION_LATENCY.to_owned()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Sets up structured logs on stderr. `RUST_LOG` overrides `level` when set.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
