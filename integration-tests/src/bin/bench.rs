//! `otel-tail-bench`: measures one sampler (release build) end to end and prints the
//! figures; it asserts nothing.
//!
//! Phase 1, throughput: the sampler receives, persists, decides and exports (to an
//! in-process OTLP/gRPC counting sink) while the load generator sends at maximum
//! rate; policies keep roughly 2% of traces (errors + a 1% baseline). Printed:
//! sustained spans/s accepted, kept spans exported, and spans/s per core (accepted
//! spans divided by the sampler's own CPU seconds from `/proc/<pid>/stat`).
//!
//! Phase 2, decision latency: at half the sustained rate, how long after a kept trace's
//! last span was sent it reaches the sink (p50 / p99).
//!
//! Phase 3, memory: with a decision wait long enough that nothing is decided, load a
//! fixed number of traces and print (RSS after − RSS before) / active traces.
//!
//! `--pin` is the set-up the performance issue compares against the Collector: the
//! sampler pinned to core 1 and this load generator to core 0 (`taskset`), errors +
//! latency 500 ms + probabilistic 1 % policies, `decision_wait` 5 s, the file exporter
//! during the throughput phase; it prints `spans_per_cpu_s` = accepted spans / the
//! sampler's user+sys CPU seconds (`/proc/<pid>/stat`). Without `--pin` both float over
//! every core.
//!
//! `--scaling` runs the throughput phase of that set-up twice, pinned and then over every
//! core, and prints both accepted rates, their ratio and the cores each side used: the
//! load generator runs on the same machine, so the cores it takes bound the unpinned rate.
//!
//! ```text
//! cargo run --release -p otel-tail-integration-tests --bin otel-tail-bench -- [--pin | --scaling] [--seconds N] [--traces N]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use otel_tail_integration_tests::load::{LoadConfig, LoadStats, run_load};
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{OtlpSink, SamplerProcess, SinkMode, procfs};
use serde_json::json;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "otel-tail-bench",
    about = "Throughput and memory benchmark of otel-tail-sampler"
)]
struct Args {
    /// Seconds of maximum-rate load in the throughput phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Traces loaded in the memory phase.
    #[arg(long, default_value_t = 200_000)]
    traces: u64,
    /// Spans per trace in both phases.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// Concurrent gRPC senders.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 1000)]
    batch_spans: usize,
    /// Pin the sampler to core 1 and the load generator to core 0 (the issue's set-up).
    #[arg(long, conflicts_with = "scaling")]
    pin: bool,
    /// The throughput phase of the issue's set-up pinned, then unpinned; prints the ratio
    /// of the accepted rates (skips the latency and memory phases).
    #[arg(long)]
    scaling: bool,
    /// Seconds of the decision-latency phase at half the sustained rate (0: skip).
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
    /// `sampler.buffer_memory_bytes` in MiB for every phase (default: the sampler's).
    #[arg(long)]
    buffer_memory_mib: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "otel-tail-bench: {} cores visible, {} spans/trace, {} senders, {} spans/request",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.spans_per_trace,
        args.concurrency,
        args.batch_spans
    );
    if args.scaling {
        return scaling(&args).await;
    }
    if args.pin {
        pin(std::process::id(), 0)?;
        println!("pinned: load generator to core 0, sampler to core 1");
    }
    let sustained = throughput(&args, args.pin).await?.rate;
    if args.latency_seconds > 0 {
        latency(&args, sustained / 2.0).await?;
    }
    memory(&args).await?;
    Ok(())
}

/// `--scaling`: the issue's set-up pinned, then the same over every core.
async fn scaling(args: &Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    pin(std::process::id(), 0)?;
    println!("pinned: load generator to core 0, sampler to core 1");
    let pinned = throughput(args, true).await?;
    let every_core = format!("0-{}", cores.saturating_sub(1));
    set_affinity(std::process::id(), &every_core)?;
    println!("\nunpinned: load generator and sampler on cores {every_core}");
    let unpinned = throughput(args, false).await?;
    println!("\n== scaling: the same set-up pinned to one core, then over {cores} ==");
    for (name, run) in [("pinned", &pinned), ("unpinned", &unpinned)] {
        println!(
            "{name:<9} accepted {:>9.0} spans/s  sampler {:.2} cores, load generator {:.2}",
            run.rate, run.sampler_cores, run.generator_cores
        );
    }
    let left = cores as f64 - unpinned.generator_cores;
    println!(
        "scaling   {:.2}x the pinned rate ({:.2}x the sampler's cores); the load generator left the sampler {left:.2} cores, so {:.2}x is the most it could reach at the pinned rate per core",
        unpinned.rate / pinned.rate.max(f64::EPSILON),
        unpinned.sampler_cores / pinned.sampler_cores.max(f64::EPSILON),
        left / pinned.sampler_cores.max(f64::EPSILON)
    );
    Ok(())
}

/// Pins every thread of `pid` (and the threads it starts later, which inherit it) to `core`.
fn pin(pid: u32, core: u32) -> anyhow::Result<()> {
    set_affinity(pid, &core.to_string())
}

/// Sets the cores (a `taskset` list) of every thread of `pid` and those it starts later.
fn set_affinity(pid: u32, cores: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-cp", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "taskset -a -cp {cores} {pid} failed: {status}"
    );
    Ok(())
}

/// The issue's set-up (`--pin`'s policies, decision wait and file exporter), which
/// `--scaling` runs pinned and unpinned.
fn issue_setup(args: &Args) -> bool {
    args.pin || args.scaling
}

fn policies(args: &Args) -> serde_json::Value {
    if issue_setup(args) {
        json!([
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "slow", "type": "latency", "latency": {"threshold_ms": 500}},
            {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 1}}
        ])
    } else {
        json!([
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 1}}
        ])
    }
}

fn decision_wait(args: &Args) -> &'static str {
    if issue_setup(args) { "5s" } else { "2s" }
}

/// The sampler for the throughput and latency phases, on core 1 when `pinned`.
async fn start_sampler(
    args: &Args,
    sink: &OtlpSink,
    file_export: bool,
    pinned: bool,
) -> anyhow::Result<(SamplerProcess, u32)> {
    let mut sampler_config = json!({
        "decision_wait": decision_wait(args),
        "num_traces": 1_000_000,
        "policies": policies(args),
    });
    if let Some(mib) = args.buffer_memory_mib {
        sampler_config["buffer_memory_bytes"] = json!(mib * 1024 * 1024);
    }
    let mut config = json!({
        "sampler": sampler_config,
        "telemetry": {"log_level": "warn"},
    });
    // Without an exporter the harness writes the file export into the sampler's own
    // temporary directory (removed with it), not into the working directory.
    if !file_export {
        config["exporter"] =
            json!({"otlp": {"endpoint": sink.endpoint(), "tls": {"insecure": true}}});
    }
    let sampler = SamplerProcess::start(config).await?;
    let pid = sampler
        .pid()
        .ok_or_else(|| anyhow::anyhow!("sampler not running"))?;
    if pinned {
        pin(pid, 1)?;
    }
    Ok((sampler, pid))
}

/// Waits (up to 120 s) until no trace is active: everything sent has been decided.
async fn all_decided(
    sampler: &SamplerProcess,
) -> Result<(), otel_tail_integration_tests::HarnessError> {
    poll_until(
        "active traces to reach 0",
        Duration::from_secs(120),
        || async {
            let m = sampler.metrics().await?;
            Ok((m.sum("otel_tail_traces_active", &[]) == 0.0).then_some(()))
        },
    )
    .await
}

/// Maximum-rate load of whole traces into `sampler`, with the shape `args` asks for.
fn load_config(args: &Args, sampler: &SamplerProcess) -> LoadConfig {
    LoadConfig::max_rate_spans(
        sampler.grpc_endpoint(),
        Duration::from_secs(args.seconds),
        args.spans_per_trace,
        args.concurrency,
        args.batch_spans,
    )
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Decision latency at `rate` spans/s: span sent → kept trace at the sink.
async fn latency(args: &Args, rate: f64) -> anyhow::Result<()> {
    let sink = OtlpSink::start(SinkMode::Count).await?;
    let (sampler, _pid) = start_sampler(args, &sink, false, args.pin).await?;
    println!(
        "\n== decision latency: {}s at {rate:.0} spans/s (half the sustained rate) ==",
        args.latency_seconds
    );
    let config = LoadConfig {
        rate,
        duration: Duration::from_secs(args.latency_seconds),
        seed: 43,
        prepared: 0,
        ..load_config(args, &sampler)
    };
    let (load, _) = run_load(&config, Arc::new(LoadStats::default())).await?;
    let _ = all_decided(&sampler).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut delays = sink.export_delays_ms();
    println!(
        "accepted                {} spans; {} kept traces measured",
        load.accepted_spans,
        delays.len()
    );
    let p50 = quantile(&mut delays, 0.50);
    let p99 = quantile(&mut delays, 0.99);
    println!(
        "decision latency        p50 {p50} ms, p99 {p99} ms (span sent -> exported; decision_wait {})",
        decision_wait(args)
    );
    Ok(())
}

/// Each thread kind's share of `total` CPU seconds between two readings of
/// [`procfs::cpu_seconds_by_thread`], and its CPU per span of the `spans` accepted
/// meanwhile (comparable across runs when the machine's speed is not), largest first;
/// what threads that ended used is `other`.
fn thread_shares(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    total: f64,
    spans: u64,
) -> String {
    let mut used: Vec<(&str, f64)> = after
        .iter()
        .map(|(kind, secs)| (kind.as_str(), secs - before.get(kind).unwrap_or(&0.0)))
        .filter(|(_, secs)| *secs > 0.0)
        .collect();
    let listed: f64 = used.iter().map(|(_, secs)| secs).sum();
    if total - listed > 0.0 {
        used.push(("other", total - listed));
    }
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.iter()
        .map(|(kind, secs)| {
            format!(
                "{kind} {:.0}% {:.3} us/span",
                100.0 * secs / total.max(f64::EPSILON),
                1e6 * secs / spans.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the throughput phase measured.
struct Throughput {
    /// Accepted spans per second of load.
    rate: f64,
    /// The sampler's CPU seconds per second of load.
    sampler_cores: f64,
    /// This process's (load generator and export sink) CPU seconds per second of load.
    generator_cores: f64,
}

/// The throughput phase, the sampler on core 1 when `pinned`.
async fn throughput(args: &Args, pinned: bool) -> anyhow::Result<Throughput> {
    let sink = OtlpSink::start(SinkMode::Count).await?;
    let (sampler, pid) = start_sampler(args, &sink, issue_setup(args), pinned).await?;
    println!("\n== throughput: {}s at maximum rate ==", args.seconds);
    let cpu_before = procfs::cpu_seconds(pid)?;
    let threads_before = procfs::cpu_seconds_by_thread(pid)?;
    let generator_before = procfs::cpu_seconds(std::process::id())?;
    let config = load_config(args, &sampler);
    let stats = Arc::new(LoadStats::default());
    let (load, elapsed) = run_load(&config, Arc::clone(&stats)).await?;
    let cpu_load = procfs::cpu_seconds(pid)? - cpu_before;
    let generator_load = procfs::cpu_seconds(std::process::id())? - generator_before;
    let threads_load = procfs::cpu_seconds_by_thread(pid)?;
    // Let every trace reach its decision and the exports drain.
    let drain_started = Instant::now();
    let drained = all_decided(&sampler).await;
    let exported = |m: &otel_tail_integration_tests::metrics_text::MetricsSnapshot| {
        m.sum("otel_tail_exported_items_total", &[("signal", "traces")])
    };
    let mut last = exported(&sampler.metrics().await?);
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = exported(&sampler.metrics().await?);
        if now == last {
            break;
        }
        last = now;
    }
    let cpu_total = procfs::cpu_seconds(pid)? - cpu_before;
    let metrics = sampler.metrics().await?;
    let secs = elapsed.as_secs_f64();
    let kept = exported(&metrics) as u64;
    println!("load duration           {secs:.1} s");
    println!(
        "spans sent / accepted   {} / {} (rejected {}, throttled requests {}, failed requests {})",
        load.sent_spans, load.accepted_spans, load.rejected_spans, load.throttled, load.errors
    );
    println!(
        "sustained accepted      {:.0} spans/s",
        load.accepted_spans as f64 / secs
    );
    println!(
        "kept spans exported     {kept} ({:.2}% of accepted){}",
        100.0 * kept as f64 / load.accepted_spans.max(1) as f64,
        if drained.is_err() {
            "  [traces still active after 120 s]"
        } else {
            ""
        }
    );
    println!(
        "sampler CPU             {cpu_load:.1} s during load, {cpu_total:.1} s including {:.1} s of drain",
        drain_started.elapsed().as_secs_f64()
    );
    // Unpinned, the sampler's rate is bounded by the cores the load generator leaves it.
    println!(
        "cores used during load  sampler {:.2}, load generator {:.2} ({:.3} us per accepted span; this process, its export sink included)",
        cpu_load / secs,
        generator_load / secs,
        1e6 * generator_load / load.accepted_spans.max(1) as f64
    );
    println!(
        "sampler CPU by thread   {} (share of the load's CPU, CPU per accepted span; RocksDB flushes on rocksdb:high, compacts on rocksdb:low)",
        thread_shares(
            &threads_before,
            &threads_load,
            cpu_load,
            load.accepted_spans
        )
    );
    println!(
        "spans_per_cpu_s         {:.0} (accepted spans / sampler user+sys CPU seconds, drain included{})",
        load.accepted_spans as f64 / cpu_total.max(f64::EPSILON),
        if pinned {
            "; sampler pinned to one core"
        } else {
            ""
        }
    );
    println!(
        "decided traces          {}",
        metrics.sum("otel_tail_traces_decided_total", &[])
    );
    Ok(Throughput {
        rate: load.accepted_spans as f64 / secs,
        sampler_cores: cpu_load / secs,
        generator_cores: generator_load / secs,
    })
}

async fn memory(args: &Args) -> anyhow::Result<()> {
    let mut sampler_config = json!({
        "decision_wait": "30m",
        "num_traces": args.traces * 2,
        "policies": policies(args),
    });
    if let Some(mib) = args.buffer_memory_mib {
        sampler_config["buffer_memory_bytes"] = json!(mib * 1024 * 1024);
    }
    let sampler = SamplerProcess::start(json!({
        "sampler": sampler_config,
        "telemetry": {"log_level": "warn"},
    }))
    .await?;
    let pid = sampler
        .pid()
        .ok_or_else(|| anyhow::anyhow!("sampler not running"))?;
    println!("\n== memory: {} traces held undecided ==", args.traces);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = procfs::rss_bytes(pid)?;
    let rocks_before = rocksdb_memory(&sampler).await?;
    // Two halves with different seeds (distinct trace ids): the second half's RSS
    // growth over its traces is the marginal cost per trace, without fixed costs
    // such as RocksDB's memtables filling up once.
    let half = args.traces / 2;
    let (first_spans, first_active, first_elapsed) = load_traces(&sampler, args, half, 7).await?;
    let rss_half = procfs::rss_bytes(pid)?;
    let rocks_half = rocksdb_memory(&sampler).await?;
    let (second_spans, active, second_elapsed) = load_traces(&sampler, args, half, 8).await?;
    let rss_after = procfs::rss_bytes(pid)?;
    let rocks_after = rocksdb_memory(&sampler).await?;
    let metrics = sampler.metrics().await?;
    println!(
        "loaded                  {} spans in {:.1} s",
        first_spans + second_spans,
        (first_elapsed + second_elapsed).as_secs_f64()
    );
    println!("active traces           {first_active} after the first half, {active} at the end");
    println!(
        "RSS                     {:.1} MiB before, {:.1} MiB at half, {:.1} MiB after",
        mib(rss_before),
        mib(rss_half),
        mib(rss_after)
    );
    println!(
        "storage bytes           {}",
        metrics.sum("otel_tail_storage_bytes", &[])
    );
    println!(
        "RAM per active trace    {:.0} bytes ((RSS after - RSS before) / active traces)",
        rss_after.saturating_sub(rss_before) as f64 / active.max(1.0)
    );
    println!(
        "marginal RAM per trace  {:.0} bytes ((RSS after - RSS at half) / traces added in the second half)",
        rss_after.saturating_sub(rss_half) as f64 / (active - first_active).max(1.0)
    );
    println!(
        "RAM per trace excl. DB  {:.0} bytes (as above, less RocksDB's memtables and cache, which a flush empties: a bounded, configured cost)",
        (rss_after.saturating_sub(rss_before) as f64 - (rocks_after - rocks_before).max(0.0))
            / active.max(1.0)
    );
    println!(
        "RocksDB memory          {:.1} MiB before, {:.1} MiB at half, {:.1} MiB after (memtables + block cache; bounded by config, not per trace)",
        mib(rocks_before as u64),
        mib(rocks_half as u64),
        mib(rocks_after as u64)
    );
    let index_bytes = metrics.sum("otel_tail_trace_index_bytes", &[]);
    println!(
        "index RAM per trace     {:.0} bytes (otel_tail_trace_index_bytes / active traces: hash table + deadline heap)",
        index_bytes / active.max(1.0)
    );
    Ok(())
}

/// RocksDB's in-memory bytes as the sampler reports them (refreshed every second).
async fn rocksdb_memory(sampler: &SamplerProcess) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Ok(sampler
        .metrics()
        .await?
        .sum("otel_tail_storage_memory_bytes", &[]))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Sends `traces` whole traces at maximum rate, then waits (up to 60 s) until the
/// active-trace gauge stops moving. Returns accepted spans, active traces, load time.
async fn load_traces(
    sampler: &SamplerProcess,
    args: &Args,
    traces: u64,
    seed: u64,
) -> anyhow::Result<(u64, f64, Duration)> {
    let config = LoadConfig {
        duration: Duration::from_secs(600),
        seed,
        span_limit: traces * args.spans_per_trace as u64,
        ..load_config(args, sampler)
    };
    let (load, elapsed) = run_load(&config, Arc::new(LoadStats::default())).await?;
    let mut active = -1.0;
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sampler.metrics().await?.sum("otel_tail_traces_active", &[]);
        if now > 0.0 && now == active {
            break;
        }
        active = now;
    }
    Ok((load.accepted_spans, active, elapsed))
}
