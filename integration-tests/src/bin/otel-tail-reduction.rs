//! `otel-tail-reduction`: how much correlated retention and rollups reduce a realistic
//! workload, and how fast the rollups run.
//!
//! Part 1 starts one standalone `otel-tail-sampler` (file exporter, policies: errors + a
//! `--baseline-percent` (default 1%) probabilistic baseline; `decision_wait` 1s,
//! `correlation.window` 3s, `correlation.before`/`after` as the sampler's defaults unless
//! `--before-ms`/`--after-ms`; log and metric rollups every `--rollup-interval` seconds,
//! default 60 as in the sampler, with attribute rules dropping the per-user and per-request ids, and a
//! cardinality limit of 100 series that bounds the one metric left without a rule) and
//! sends it the synthetic estate of [`otel_tail_integration_tests::reduction`] over
//! OTLP/gRPC for `--seconds`: 50 services × 4 pods, traces with 1.5% failures, logs from a
//! few hundred templates with and without trace ids, metrics with high-cardinality
//! attributes and exemplars. It waits for every decision, hold window and rollup interval to close, reads
//! the exported file and prints, per signal, items and protobuf bytes in and out, the raw
//! items kept per correlation reason, and the totals. It exits non-zero, saying why, when
//! the byte reduction of logs and metrics is below `--min-reduction`, when a total does
//! not add up, or when a log record of a kept trace or a data point with an exemplar of a
//! kept trace is not in the raw output.
//!
//! Part 2 measures the rollups in-process (no sampler), one thread, on the same data:
//! log lines/s through the template miner and through `LogRollup::add_record`, data
//! points/s through `MetricRollup::add`.
//!
//! ```text
//! cargo run --release -p otel-tail-integration-tests --bin otel-tail-reduction -- [--seconds N]
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::future::join_all;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_integration_tests::export::{attribute_str, data_points};
use otel_tail_integration_tests::load::{connect, is_throttle, retry_delay, unix_nanos_now};
use otel_tail_integration_tests::reduction::report::{report, with_thousands};
use otel_tail_integration_tests::reduction::{
    InputLedger, Output, Workload, WorkloadConfig, check, metric_rules,
};
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{SamplerProcess, procfs};
use otel_tail_sampler::rollup::logs::{LogRollup, LogRollupOptions, MinerConfig, TemplateMiner};
use otel_tail_sampler::rollup::metrics::{MetricRollup, MetricRollupConfig};
use serde_json::json;
use tonic::Status;

/// The allocator the sampler binary runs with, so in-process figures match it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command-line options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "otel-tail-reduction",
    about = "Reduction and rollup throughput benchmark of otel-tail-sampler"
)]
struct Args {
    /// Seconds of steady load.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Services (at most 50).
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Pods per service.
    #[arg(long, default_value_t = 4)]
    pods_per_service: usize,
    /// Traces per second over the estate.
    #[arg(long, default_value_t = 200.0)]
    traces_per_sec: f64,
    /// Share of traces with a failing span.
    #[arg(long, default_value_t = 0.015)]
    error_share: f64,
    /// Background log lines (no trace id) per pod per second.
    #[arg(long, default_value_t = 10.0)]
    background_logs: f64,
    /// `rollup.logs.interval` and `rollup.metrics.interval`, seconds (the sampler's default).
    #[arg(long, default_value_t = 60)]
    rollup_interval: u64,
    /// `correlation.window`, seconds.
    #[arg(long, default_value_t = 3)]
    window: u64,
    /// `correlation.before` in milliseconds (the sampler's default when absent).
    #[arg(long)]
    before_ms: Option<u64>,
    /// `correlation.after` in milliseconds (the sampler's default when absent).
    #[arg(long)]
    after_ms: Option<u64>,
    /// Policies: errors plus a probabilistic baseline of this percentage (the chart's
    /// default baseline is 1%; the sampler's built-in default policies use 10%).
    #[arg(long, default_value_t = 1.0)]
    baseline_percent: f64,
    /// `rollup.metrics.cardinality_limit`.
    #[arg(long, default_value_t = 100)]
    cardinality_limit: usize,
    /// Required byte reduction of logs and metrics together, percent.
    #[arg(long, default_value_t = 90.0)]
    min_reduction: f64,
    /// Seconds each in-process throughput measurement runs for.
    #[arg(long, default_value_t = 3.0)]
    throughput_seconds: f64,
    /// Copy the sampler's export file (OTLP JSON lines) here before it is removed.
    #[arg(long)]
    export_copy: Option<std::path::PathBuf>,
}

impl Args {
    fn workload(&self) -> WorkloadConfig {
        WorkloadConfig {
            seed: self.seed,
            services: self.services,
            pods_per_service: self.pods_per_service,
            traces_per_sec: self.traces_per_sec,
            error_share: self.error_share,
            background_logs_per_pod_per_sec: self.background_logs,
            ..WorkloadConfig::default()
        }
    }

    fn metric_rollup(&self) -> MetricRollupConfig {
        MetricRollupConfig {
            interval: Duration::from_secs(self.rollup_interval),
            rules: metric_rules(),
            cardinality_limit: self.cardinality_limit,
            ..MetricRollupConfig::default()
        }
    }

    fn sampler_config(&self) -> serde_json::Value {
        let mut correlation = json!({"window": format!("{}s", self.window)});
        if let Some(ms) = self.before_ms {
            correlation["before"] = json!(format!("{ms}ms"));
        }
        if let Some(ms) = self.after_ms {
            correlation["after"] = json!(format!("{ms}ms"));
        }
        let interval = format!("{}s", self.rollup_interval);
        let percent = self.baseline_percent;
        let sampler = json!({"decision_wait": "1s", "policies": [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": percent}},
        ]});
        json!({
            "sampler": sampler,
            "correlation": correlation,
            "rollup": {
                "logs": {"interval": interval},
                "traces": {"interval": interval},
                "metrics": {
                    "interval": interval,
                    "cardinality_limit": self.cardinality_limit,
                    "rules": serde_json::to_value(metric_rules()).expect("rules serialise"),
                },
            },
            "telemetry": {"log_level": "warn"},
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let failures = reduction(&args).await?;
    throughput(&args);
    if failures.is_empty() {
        println!("\nresult: PASS");
        Ok(())
    } else {
        println!("\nresult: FAIL");
        for f in &failures {
            println!("  - {f}");
        }
        std::process::exit(1);
    }
}

/// Send counters.
#[derive(Debug, Default)]
struct SendStats {
    throttled: u64,
    failed: u64,
    rejected: u64,
}

/// Sends one request until acknowledged, retrying while the sampler throttles (for at most
/// 30 s); returns whether it was accepted in full.
async fn send<F, Fut>(mut attempt: F) -> (bool, SendStats)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, Status>>,
{
    let mut stats = SendStats::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(0) => return (true, stats),
            Ok(rejected) => {
                stats.rejected += rejected;
                return (false, stats);
            }
            Err(status) if is_throttle(&status) && Instant::now() < deadline => {
                stats.throttled += 1;
                tokio::time::sleep(retry_delay(&status)).await;
            }
            Err(status) => {
                eprintln!("request failed: {status}");
                stats.failed += 1;
                return (false, stats);
            }
        }
    }
}

async fn reduction(args: &Args) -> anyhow::Result<Vec<String>> {
    let config = args.sampler_config();
    let mut workload = Workload::new(args.workload());
    println!(
        "otel-tail-reduction: {} services × {} pods ({} resources), {} log templates, \
         {} traces/s with {:.1}% failing, {} background lines/s per pod, {} s of load, \
         {} cores visible",
        workload.service_count(),
        args.pods_per_service,
        workload.pod_count(),
        workload.template_count(),
        args.traces_per_sec,
        args.error_share * 100.0,
        args.background_logs,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!(
        "sampler config: {}",
        serde_json::to_string(&config).unwrap_or_default()
    );
    let sampler = SamplerProcess::start(config).await?;
    let pid = sampler
        .pid()
        .ok_or_else(|| anyhow::anyhow!("sampler not running"))?;
    let channel = connect(&sampler.grpc_endpoint()).await?;
    let traces = TraceServiceClient::new(channel.clone()).max_encoding_message_size(256 << 20);
    let logs = LogsServiceClient::new(channel.clone()).max_encoding_message_size(256 << 20);
    let metrics = MetricsServiceClient::new(channel).max_encoding_message_size(256 << 20);

    let mut ledger = InputLedger::default();
    let mut stats = SendStats::default();
    let cpu_before = procfs::cpu_seconds(pid)?;
    let started = Instant::now();
    let mut tick_start = unix_nanos_now().saturating_sub(1_000_000_000);
    for second in 1..=args.seconds {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let tick_end = unix_nanos_now();
        let tick = workload.tick(tick_start, tick_end);
        tick_start = tick_end;
        let (t, l, m) = tokio::join!(
            join_all(tick.traces.iter().map(|request| {
                let client = traces.clone();
                send(move || {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move {
                        let answer = client.export(request).await?.into_inner();
                        Ok(answer
                            .partial_success
                            .map_or(0, |p| p.rejected_spans.max(0) as u64))
                    }
                })
            })),
            join_all(tick.logs.iter().map(|request| {
                let client = logs.clone();
                send(move || {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move {
                        let answer = client.export(request).await?.into_inner();
                        Ok(answer
                            .partial_success
                            .map_or(0, |p| p.rejected_log_records.max(0) as u64))
                    }
                })
            })),
            join_all(tick.metrics.iter().map(|request| {
                let client = metrics.clone();
                send(move || {
                    let (mut client, request) = (client.clone(), request.clone());
                    async move {
                        let answer = client.export(request).await?.into_inner();
                        Ok(answer
                            .partial_success
                            .map_or(0, |p| p.rejected_data_points.max(0) as u64))
                    }
                })
            })),
        );
        let mut count = |s: &SendStats| {
            stats.throttled += s.throttled;
            stats.failed += s.failed;
            stats.rejected += s.rejected;
        };
        for ((ok, s), request) in t.iter().zip(&tick.traces) {
            count(s);
            if *ok {
                ledger.traces_sent(request);
            }
        }
        for ((ok, s), request) in l.iter().zip(&tick.logs) {
            count(s);
            if *ok {
                ledger.logs_sent(request);
            }
        }
        for ((ok, s), request) in m.iter().zip(&tick.metrics) {
            count(s);
            if *ok {
                ledger.metrics_sent(request);
            }
        }
        ledger.trace_count += tick.trace_count as u64;
        ledger.error_traces += tick.error_traces as u64;
        if second.is_multiple_of(10) || second == args.seconds {
            println!(
                "  {second:>4}s: sent {} spans, {} log records, {} data points",
                ledger.traces.items, ledger.logs.items, ledger.metrics.items
            );
        }
    }
    let sent_for = started.elapsed();
    let cpu_load = procfs::cpu_seconds(pid)? - cpu_before;
    println!(
        "load: {:.1} s; {} traces ({} failing); sampler CPU {:.1} s ({:.0}% of one core); \
         throttled {}, failed {}, rejected items {}",
        sent_for.as_secs_f64(),
        ledger.trace_count,
        ledger.error_traces,
        cpu_load,
        100.0 * cpu_load / sent_for.as_secs_f64(),
        stats.throttled,
        stats.failed,
        stats.rejected
    );

    let exported = drain(&sampler, args).await?;
    if let (Some(to), Some(from)) = (&args.export_copy, sampler.export_path()) {
        std::fs::copy(from, to)?;
        println!("export file copied to {}", to.display());
    }
    let self_metrics = sampler.metrics().await?;
    let cpu_total = procfs::cpu_seconds(pid)? - cpu_before;
    drop(sampler);
    let output = Output::of(&exported);
    print!("{}", report(&ledger, &output));
    println!("\nsampler self-metrics:");
    for (signal, reasons) in [
        ("logs", &["trace_id", "window"][..]),
        ("metrics", &["exemplar", "window"][..]),
    ] {
        let raw: Vec<String> = reasons
            .iter()
            .map(|r| {
                format!(
                    "{r} {}",
                    self_metrics.sum(
                        "otel_tail_correlated_items_total",
                        &[("signal", signal), ("reason", r)]
                    )
                )
            })
            .collect();
        println!(
            "  {signal:<8} held-then-raw: {}; summary path {}; rollup in {}, out {}",
            raw.join(", "),
            self_metrics.sum("otel_tail_summary_items_total", &[("signal", signal)]),
            self_metrics.sum("otel_tail_rollup_in_total", &[("signal", signal)]),
            self_metrics.sum("otel_tail_rollup_out_total", &[("signal", signal)]),
        );
    }
    println!(
        "  hold released early: {}; traces decided: kept {}, dropped {}; sampler CPU over the whole run {:.1} s",
        self_metrics.sum("otel_tail_hold_released_early_total", &[]),
        self_metrics.sum("otel_tail_traces_decided_total", &[("decision", "sampled")]),
        self_metrics.sum(
            "otel_tail_traces_decided_total",
            &[("decision", "not_sampled")]
        ),
        cpu_total,
    );
    if stats.failed > 0 || stats.rejected > 0 {
        println!(
            "note: {} requests failed and {} items were rejected; they are not in the input figures",
            stats.failed, stats.rejected
        );
    }
    Ok(check(&ledger, &output, args.min_reduction))
}

/// Waits until everything sent has left the sampler: every trace decided, every held item
/// settled, the rollup interval open then closed, and the export file idle.
async fn drain(
    sampler: &SamplerProcess,
    args: &Args,
) -> anyhow::Result<otel_tail_integration_tests::ExportedData> {
    let waited = Instant::now();
    poll_until(
        "every trace to be decided",
        Duration::from_secs(120),
        || async {
            let m = sampler.metrics().await?;
            Ok((m.sum("otel_tail_traces_active", &[]) == 0.0).then_some(()))
        },
    )
    .await?;
    // Logs of dropped traces enter the hold when their trace is decided.
    tokio::time::sleep(Duration::from_secs(args.window) + Duration::from_millis(500)).await;
    poll_until("the hold to empty", Duration::from_secs(120), || async {
        let m = sampler.metrics().await?;
        Ok((m.sum("otel_tail_held_items", &[]) == 0.0).then_some(()))
    })
    .await?;
    let interval = u128::from(args.rollup_interval.max(1)) * 1_000_000_000;
    let now = u128::from(unix_nanos_now());
    let until_end = (now / interval + 1) * interval - now;
    tokio::time::sleep(Duration::from_nanos(until_end as u64) + Duration::from_millis(1500)).await;
    let data = sampler.settle(Duration::from_secs(60)).await?;
    println!(
        "drained in {:.1} s after the load",
        waited.elapsed().as_secs_f64()
    );
    Ok(data)
}

/// One measured rate.
struct Rate {
    items: u64,
    wall: f64,
    cpu: f64,
}

impl Rate {
    /// Prints the rate; the per-CPU-second figure only for runs long enough for the
    /// kernel's CPU accounting (10 ms ticks) to resolve it.
    fn print(&self, name: &str, unit: &str) {
        let per_cpu = if self.wall >= 0.5 {
            with_thousands((self.items as f64 / self.cpu.max(1e-9)) as u64)
        } else {
            "-".to_owned()
        };
        println!(
            "  {name:<36} {:>10} {unit}/s wall, {per_cpu:>10} {unit}/s per CPU-second ({} {unit} in {:.2} s)",
            with_thousands((self.items as f64 / self.wall) as u64),
            with_thousands(self.items),
            self.wall
        );
    }
}

/// Runs `pass` (which returns the items it handled) once, then again until `seconds`
/// have passed; process CPU time stands for the thread's, as nothing else runs meanwhile.
fn measure(seconds: f64, mut pass: impl FnMut() -> u64) -> Rate {
    let pid = std::process::id();
    let cpu_before = procfs::cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut items = pass();
    while started.elapsed().as_secs_f64() < seconds {
        items += pass();
    }
    Rate {
        items,
        wall: started.elapsed().as_secs_f64(),
        cpu: procfs::cpu_seconds(pid).unwrap_or(0.0) - cpu_before,
    }
}

/// Part 2: the rollups in-process on the same generated data, one thread.
fn throughput(args: &Args) {
    const SIMULATED_SECONDS: u64 = 20;
    let mut workload = Workload::new(args.workload());
    let base = 1_700_000_000 * 1_000_000_000u64;
    let mut log_groups: Vec<(Resource, Vec<LogRecord>)> = Vec::new();
    let mut metric_groups: Vec<(Resource, InstrumentationScope, Vec<Metric>)> = Vec::new();
    for s in 0..SIMULATED_SECONDS {
        let tick = workload.tick(base + s * 1_000_000_000, base + (s + 1) * 1_000_000_000);
        for rl in tick.logs.into_iter().flat_map(|r| r.resource_logs) {
            let records = rl
                .scope_logs
                .into_iter()
                .flat_map(|sl| sl.log_records)
                .collect();
            log_groups.push((rl.resource.unwrap_or_default(), records));
        }
        for rm in tick.metrics.into_iter().flat_map(|r| r.resource_metrics) {
            for sm in rm.scope_metrics {
                metric_groups.push((
                    rm.resource.clone().unwrap_or_default(),
                    sm.scope.unwrap_or_default(),
                    sm.metrics,
                ));
            }
        }
    }
    // The miner alone: one miner per pod, as the rollup keeps them.
    let mut pods: HashMap<String, usize> = HashMap::new();
    let mut bodies: Vec<(usize, String)> = Vec::new();
    for (resource, records) in &log_groups {
        let id = attribute_str(&resource.attributes, "service.instance.id").unwrap_or_default();
        let next = pods.len();
        let pod = *pods.entry(id).or_insert(next);
        for record in records {
            if let Some(any_value::Value::StringValue(body)) =
                record.body.as_ref().and_then(|b| b.value.as_ref())
            {
                bodies.push((pod, body.clone()));
            }
        }
    }
    let lines = bodies.len() as u64;
    let points: u64 = metric_groups
        .iter()
        .flat_map(|(_, _, metrics)| metrics)
        .map(|m| data_points(m) as u64)
        .sum();
    println!(
        "\n== rollup throughput: in-process, one thread, no sampler ({} s of the workload \
         replayed: {} log lines, {} data points) ==",
        SIMULATED_SECONDS,
        with_thousands(lines),
        with_thousands(points)
    );

    let mut miners: Vec<TemplateMiner> = (0..pods.len())
        .map(|_| TemplateMiner::new(MinerConfig::default()))
        .collect();
    let mine = |miners: &mut Vec<TemplateMiner>| {
        for (pod, body) in &bodies {
            std::hint::black_box(miners[*pod].add(body).id);
        }
        lines
    };
    let cold = measure(0.0, || mine(&mut miners));
    let warm = measure(args.throughput_seconds, || mine(&mut miners));
    let templates: usize = miners.iter().map(TemplateMiner::len).sum();

    let mut rollup = LogRollup::new(LogRollupOptions::default());
    let mut interval = 0u64;
    let mut add_records = |rollup: &mut LogRollup| {
        for (resource, records) in &log_groups {
            for record in records {
                std::hint::black_box(rollup.add_record(Some(resource), record));
            }
        }
        // One interval per pass.
        interval += 1;
        std::hint::black_box(rollup.flush(interval, interval + 1).lines);
        lines
    };
    let rollup_cold = measure(0.0, || add_records(&mut rollup));
    let rollup_warm = measure(args.throughput_seconds, || add_records(&mut rollup));

    let mut metric_rollup =
        MetricRollup::new(args.metric_rollup()).expect("the benchmark's metric rollup config");
    let mut flushes = 0u64;
    let metric_pass = measure(args.throughput_seconds, || {
        let now = base + flushes * 5_000_000_000;
        for (resource, scope, metrics) in &metric_groups {
            for metric in metrics {
                metric_rollup.add(Some(resource), Some(scope), metric, now);
            }
        }
        flushes += 1;
        std::hint::black_box(metric_rollup.flush(now, now + 5_000_000_000));
        points
    });

    println!(
        "  log lines (per pod: {} miners, {templates} templates learned)",
        pods.len()
    );
    cold.print("TemplateMiner::add, first pass", "lines");
    warm.print("TemplateMiner::add, warm", "lines");
    rollup_cold.print("LogRollup::add_record, first pass", "lines");
    rollup_warm.print("LogRollup::add_record + flush, warm", "lines");
    println!("  data points");
    metric_pass.print("MetricRollup::add + flush", "points");
    let per_core = |r: &Rate| r.items as f64 / r.cpu.max(1e-9);
    println!(
        "  aim ≥ 1,000,000 log lines/s per core for template matching: miner {}, add_record {}",
        if per_core(&warm) >= 1e6 {
            "met"
        } else {
            "NOT met"
        },
        if per_core(&rollup_warm) >= 1e6 {
            "met"
        } else {
            "NOT met"
        },
    );
}
