//! `otel-tail-loadgen`: sends realistic OTLP traces, logs and metrics to a sampler
//! over gRPC at a chosen rate and prints live per-second progress.
//!
//! ```text
//! otel-tail-loadgen --endpoint http://127.0.0.1:4317 --rate 20000 --duration 30s \
//!     --spans-per-trace 8 --error-share 0.02 --logs-per-trace 2 --metric-points-per-sec 500
//! ```

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use otel_tail_integration_tests::generate::TraceShape;
use otel_tail_integration_tests::load::{LoadConfig, LoadSnapshot, LoadStats, run_load};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "otel-tail-loadgen",
    version,
    about = "OTLP load generator for otel-tail-sampler"
)]
struct Args {
    /// OTLP/gRPC endpoint of the sampler (or router).
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// Target spans per second; 0 sends as fast as the server accepts.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// How long to send, e.g. `30s`, `5m`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Spans in each trace.
    #[arg(long, default_value_t = 5)]
    spans_per_trace: usize,
    /// Fraction of traces (0..=1) with one ERROR span.
    #[arg(long, default_value_t = 0.01)]
    error_share: f64,
    /// Log records per trace, carrying its trace id.
    #[arg(long, default_value_t = 0)]
    logs_per_trace: usize,
    /// Metric data points per second.
    #[arg(long, default_value_t = 0)]
    metric_points_per_sec: u64,
    /// Concurrent senders, one gRPC connection each.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 500)]
    batch_spans: usize,
    /// Seed of the data generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_share),
        "--error-share must be between 0 and 1"
    );
    anyhow::ensure!(args.rate >= 0.0, "--rate must not be negative");
    let config = LoadConfig {
        endpoint: args.endpoint,
        rate: args.rate,
        duration: args.duration,
        shape: TraceShape {
            spans_per_trace: args.spans_per_trace.max(1),
            error_share: args.error_share,
            logs_per_trace: args.logs_per_trace,
        },
        metric_points_per_sec: args.metric_points_per_sec,
        concurrency: args.concurrency.max(1),
        batch_spans: args.batch_spans.max(1),
        seed: args.seed,
        span_limit: 0,
        prepared: 0,
    };
    println!(
        "otel-tail-loadgen → {}  rate {}  for {:?}  ({} spans/trace, {:.1}% errors, {} logs/trace, {} points/s, {} senders)",
        config.endpoint,
        if config.rate > 0.0 {
            format!("{} spans/s", config.rate)
        } else {
            "max".into()
        },
        config.duration,
        config.shape.spans_per_trace,
        config.shape.error_share * 100.0,
        config.shape.logs_per_trace,
        config.metric_points_per_sec,
        config.concurrency,
    );
    let stats = Arc::new(LoadStats::default());
    let progress = tokio::spawn(print_progress(Arc::clone(&stats)));
    let result = run_load(&config, stats).await;
    progress.abort();
    let (total, elapsed) = result?;
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "summary: {:.1}s  sent {} spans  accepted {} spans ({:.0}/s)  rejected {}  traces {}  logs {}  points {}  throttled {}  errors {}",
        secs,
        total.sent_spans,
        total.accepted_spans,
        total.accepted_spans as f64 / secs,
        total.rejected_spans,
        total.accepted_traces,
        total.accepted_logs,
        total.accepted_points,
        total.throttled,
        total.errors,
    );
    Ok(())
}

/// One line per second with the deltas of the last second.
async fn print_progress(stats: Arc<LoadStats>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    let mut last = LoadSnapshot::default();
    let mut second = 0u64;
    loop {
        interval.tick().await;
        second += 1;
        let now = stats.snapshot();
        println!(
            "[{second:>4}s] sent {:>8} spans/s  accepted {:>8}  throttled {:>5}  errors {:>5}  logs {:>7}  points {:>6}",
            now.sent_spans - last.sent_spans,
            now.accepted_spans - last.accepted_spans,
            now.throttled - last.throttled,
            now.errors - last.errors,
            now.accepted_logs - last.accepted_logs,
            now.accepted_points - last.accepted_points,
        );
        last = now;
    }
}
