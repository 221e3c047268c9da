//! `otel-tail-cluster-bench`: one router in front of two samplers (release builds, on
//! 127.0.0.1), the load generator sending at maximum rate into the router. Prints
//! end-to-end throughput, the router's spans/s per core (split + forward, CPU from
//! `/proc/<pid>/stat`) and each sampler's CPU; asserts nothing.
//!
//! End to end means acknowledged by the router, which acknowledges only once the owning
//! samplers persisted their parts. Policies keep roughly 2% of traces (errors + a 1%
//! baseline), exported to an in-process counting OTLP/gRPC sink.
//!
//! ```text
//! cargo run --release -p otel-tail-integration-tests --bin otel-tail-cluster-bench -- [--seconds N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use otel_tail_integration_tests::cluster::{Cluster, ClusterSpec};
use otel_tail_integration_tests::load::{LoadConfig, LoadStats, run_load};
use otel_tail_integration_tests::{SinkMode, procfs};
use serde_json::json;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "otel-tail-cluster-bench",
    about = "End-to-end benchmark of 1 otel-tail-router + 2 otel-tail-sampler"
)]
struct Args {
    /// Seconds of maximum-rate load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Spans per trace.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// Concurrent gRPC senders.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 1000)]
    batch_spans: usize,
}

/// CPU seconds of one process between two readings.
struct CpuMeter {
    pid: u32,
    start: f64,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> anyhow::Result<Self> {
        let pid = pid.ok_or_else(|| anyhow::anyhow!("process not running"))?;
        Ok(CpuMeter {
            pid,
            start: procfs::cpu_seconds(pid)?,
        })
    }

    fn used(&self) -> anyhow::Result<f64> {
        Ok(procfs::cpu_seconds(self.pid)? - self.start)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "otel-tail-cluster-bench: {} cores visible, 1 router + 2 samplers, {} spans/trace, {} senders, {} spans/request",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.spans_per_trace,
        args.concurrency,
        args.batch_spans
    );
    let cluster = Cluster::start(ClusterSpec {
        samplers: 2,
        routers: 1,
        decision_wait: Duration::from_secs(2),
        policies: json!([
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 1}}
        ]),
        log_level: "warn".into(),
        sampler_extra: json!({"num_traces": 1_000_000}),
        sink_mode: SinkMode::Count,
        ..ClusterSpec::default()
    })
    .await?;
    let router = &cluster.routers()[0];
    let router_cpu = CpuMeter::start(router.pid())?;
    let sampler_cpu = cluster
        .samplers()
        .iter()
        .map(|s| CpuMeter::start(s.process.pid()))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!("\n== {}s at maximum rate into the router ==", args.seconds);
    let config = LoadConfig::max_rate_spans(
        router.grpc_endpoint(),
        Duration::from_secs(args.seconds),
        args.spans_per_trace,
        args.concurrency,
        args.batch_spans,
    );
    let (load, elapsed) = run_load(&config, Arc::new(LoadStats::default())).await?;
    let secs = elapsed.as_secs_f64();
    let router_used = router_cpu.used()?;
    let samplers_used = sampler_cpu
        .iter()
        .map(CpuMeter::used)
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Let the samplers decide and export what they hold, for the kept count.
    let drain_started = Instant::now();
    let mut cluster = cluster;
    let drained = cluster
        .settle(Duration::from_millis(1500), Duration::from_secs(120))
        .await;

    println!("load duration           {secs:.1} s");
    println!(
        "spans sent / accepted   {} / {} (rejected {}, throttled requests {}, failed requests {})",
        load.sent_spans, load.accepted_spans, load.rejected_spans, load.throttled, load.errors
    );
    println!(
        "end to end              {:.0} spans/s accepted by the router (owners persisted them)",
        load.accepted_spans as f64 / secs
    );
    println!(
        "router CPU              {router_used:.1} s ({:.2} cores busy)",
        router_used / secs
    );
    println!(
        "router spans/s per core {:.0} (accepted spans / router CPU seconds: split + forward)",
        load.accepted_spans as f64 / router_used.max(f64::EPSILON)
    );
    for (sampler, used) in cluster.samplers().iter().zip(&samplers_used) {
        println!(
            "sampler {} CPU         {used:.1} s during load ({:.2} cores busy)",
            sampler.node_id,
            used / secs
        );
    }
    let total_cpu = router_used + samplers_used.iter().sum::<f64>();
    println!(
        "whole cluster           {:.0} spans/s per core (accepted spans / CPU seconds of all three processes)",
        load.accepted_spans as f64 / total_cpu.max(f64::EPSILON)
    );
    println!(
        "kept spans exported     {} ({:.2}% of accepted){}, drain {:.1} s",
        cluster.sink().counts().spans,
        100.0 * cluster.sink().counts().spans as f64 / load.accepted_spans.max(1) as f64,
        if drained.is_err() {
            "  [traces still active after 120 s]"
        } else {
            ""
        },
        drain_started.elapsed().as_secs_f64()
    );
    Ok(())
}
