//! The `otel-tail-sampler` library: durable trace buffer, tail-sampling policies,
//! decisions and the export queue. The binary in `main.rs` is a thin shell over [`run`].
//!
//! Data path: receivers (`otel_tail_shared::receiver`) → [`engine::Engine`] (groups spans by
//! trace, appends them to RocksDB with the WAL on, updates the [`buffer`] index and running
//! [`policy`] state) → decider task (decides due traces, caches decisions in [`decision`])
//! → [`export_queue`] (disk-backed, retried) → exporters.
//!
//! With `cluster.seeds` or `cluster.dns_seed` set, [`cluster`] puts a ring in front of the
//! engine: data owned by another sampler is forwarded to it, and traces move between
//! samplers when the ring changes.
//!
//! [`rollup`] turns what is not kept into compact summaries with exact totals.
//! [`correlation`] decides which held logs and metric points belong to a kept trace.

pub mod buffer;
pub mod cluster;
pub mod correlation;
pub mod decision;
pub mod engine;
pub mod export_queue;
pub mod policy;
pub mod rollup;
pub mod settle;
pub mod storage;
mod unary;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_shared::config::Config;
use otel_tail_shared::exporter::Exporter;
use otel_tail_shared::receiver::{self, Accepted, BoundAddrs, Ingest, IngestError};
use otel_tail_shared::telemetry::{self, Health};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::export_queue::ExportQueues;
use crate::storage::Storage;

/// Longest time spent flushing the export queue after receivers stop on shutdown; what is
/// left stays on disk for the next start.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(20);
/// Longest pause of the decider between passes.
const DECIDER_TICK: Duration = Duration::from_millis(100);
/// Longest pause of the settle loop between passes (also how late a rollup interval may
/// close).
const SETTLE_TICK: Duration = Duration::from_millis(100);

/// The receivers' view of the engine: runs each request on a blocking thread, since it
/// writes to RocksDB before acknowledging.
struct SamplerIngest(Arc<Engine>);

impl SamplerIngest {
    async fn blocking<T: Send + 'static>(
        &self,
        request: T,
        f: fn(&Engine, T) -> Result<Accepted, IngestError>,
    ) -> Result<Accepted, IngestError> {
        let engine = self.0.clone();
        tokio::task::spawn_blocking(move || f(&engine, request))
            .await
            .map_err(|e| IngestError::Unavailable(format!("ingest task failed: {e}")))?
    }
}

impl Ingest for SamplerIngest {
    async fn traces(&self, request: ExportTraceServiceRequest) -> Result<Accepted, IngestError> {
        self.blocking(request, Engine::ingest_traces).await
    }

    async fn logs(&self, request: ExportLogsServiceRequest) -> Result<Accepted, IngestError> {
        self.blocking(request, Engine::ingest_logs).await
    }

    async fn metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, IngestError> {
        self.blocking(request, Engine::ingest_metrics).await
    }
}

/// Where the running sampler listens, for the start-up banner.
#[derive(Debug, Clone)]
pub struct Listening {
    /// OTLP receivers.
    pub receivers: BoundAddrs,
    /// Admin endpoint.
    pub admin: SocketAddr,
    /// Cluster endpoints; `None` when standalone.
    pub cluster: Option<ClusterAddrs>,
}

/// A cluster node's identity and internal endpoints.
#[derive(Debug, Clone)]
pub struct ClusterAddrs {
    /// Node id on the ring.
    pub node_id: String,
    /// Forward endpoint as advertised to peers (OTLP/gRPC and handoff).
    pub forward: SocketAddr,
    /// Bound gossip (UDP) address.
    pub gossip: SocketAddr,
}

/// The running decider and settle tasks.
pub(crate) struct Decider {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    settle: tokio::task::JoinHandle<()>,
}

impl Decider {
    fn start(engine: Arc<Engine>) -> Decider {
        let (stop, stop_rx) = watch::channel(false);
        Decider {
            stop,
            settle: tokio::spawn(settle_loop(engine.settler().clone(), stop_rx.clone())),
            task: tokio::spawn(decide_loop(engine, stop_rx)),
        }
    }

    /// Stops deciding and settling (a pass in progress completes) and waits for both.
    /// Held items and open rollup intervals stay on disk for the next start.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = self.settle.await;
    }
}

/// Runs a sampler until `shutdown` completes, then stops receiving, decides nothing more,
/// flushes the export queue and returns. Standalone, the flush takes at most
/// [`SHUTDOWN_DRAIN`] and what is undecided stays buffered on disk; in a cluster the node
/// first leaves and hands its undecided traces to their new owners (see
/// [`cluster::SHUTDOWN_BUDGET`]). `on_ready` gets the bound addresses and the exporter
/// descriptions once everything listens.
pub async fn run(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    on_ready: impl FnOnce(&Listening, &[String]) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    register_metrics();
    let storage_dir = config.sampler.storage_dir.clone();
    let storage = Arc::new(
        Storage::open(&storage_dir, config.sampler.sync_writes)
            .with_context(|| format!("opening storage in {}", storage_dir.display()))?,
    );
    let exporters = Exporter::from_config(&config.exporter, &storage_dir.join("export.jsonl"))
        .context("configuring exporters")?;
    let queues = ExportQueues::open(storage.clone(), exporters, &config.exporter)
        .context("opening export queue")?;
    let engine =
        Arc::new(Engine::new(&config, storage, queues.clone()).context("building policies")?);
    let recovered = engine
        .recover()
        .context("rebuilding the trace index from storage")?;
    if recovered > 0 {
        tracing::info!(traces = recovered, "resumed buffered traces from storage");
    }
    engine.refresh_storage_bytes();

    let health = Health::default();
    let admin_listener = tokio::net::TcpListener::bind(config.telemetry.admin_endpoint)
        .await
        .with_context(|| format!("binding admin endpoint {}", config.telemetry.admin_endpoint))?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = tokio::spawn(telemetry::admin::serve(
        admin_listener,
        metrics,
        health.clone(),
        stopped(stop_rx.clone()),
    ));
    let (queue_stop_tx, queue_stop_rx) = watch::channel(false);
    let standalone = config.cluster.is_standalone();
    let drain = if standalone {
        SHUTDOWN_DRAIN
    } else {
        cluster::QUEUE_DRAIN
    };
    let sender = tokio::spawn(queues.clone().run(stopped(queue_stop_rx), drain));
    let decider = Decider::start(engine.clone());

    if !standalone {
        let core = cluster::Core {
            engine: engine.clone(),
            queues: queues.clone(),
            health: health.clone(),
            admin: admin_addr,
            decider,
        };
        let served = cluster::serve(&config, core, on_ready, shutdown).await;
        if config.sampler.drop_pending_traces_on_shutdown {
            drop_pending(&engine);
        }
        let _ = queue_stop_tx.send(true);
        let _ = sender.await;
        let _ = stop_tx.send(true);
        let _ = admin.await;
        tracing::info!(
            buffered_traces = engine.active_traces(),
            "stopped; traces not handed off stay buffered on disk"
        );
        return served;
    }

    let descriptions = queues.describe();
    let ready_health = health.clone();
    let served = receiver::serve(
        &config.receiver,
        Arc::new(SamplerIngest(engine.clone())),
        move |receivers| {
            let listening = Listening {
                receivers,
                admin: admin_addr,
                cluster: None,
            };
            on_ready(&listening, &descriptions);
            ready_health.set_ready(true);
        },
        shutdown,
    )
    .await;
    health.set_ready(false);
    tracing::info!("receivers stopped; flushing decided data");
    decider.stop().await;
    if config.sampler.drop_pending_traces_on_shutdown {
        drop_pending(&engine);
    }
    let _ = stop_tx.send(true);
    let _ = queue_stop_tx.send(true);
    let _ = sender.await;
    let _ = admin.await;
    tracing::info!(
        buffered_traces = engine.active_traces(),
        "stopped; undecided traces stay buffered on disk"
    );
    served.context("serving OTLP receivers")
}

/// `drop_pending_traces_on_shutdown`: forgets what is still undecided (once nothing more is
/// received or decided).
fn drop_pending(engine: &Engine) {
    match engine.drop_pending() {
        Ok(dropped) => tracing::info!(dropped, "dropped pending traces on shutdown"),
        Err(e) => tracing::warn!(error = %e, "could not drop pending traces on shutdown"),
    }
}

/// Makes the main counters visible on `/metrics` from the start, at zero, so dashboards and
/// alerts see a series before the first event.
fn register_metrics() {
    use metrics::counter;
    use otel_tail_shared::telemetry::names;
    for name in [
        names::SPANS_RECEIVED,
        names::SPANS_KEPT,
        names::SPANS_DROPPED,
        names::TRACES_EVICTED,
        names::LOGS_RECEIVED,
        names::DATA_POINTS_RECEIVED,
    ] {
        counter!(name).increment(0);
    }
    for decision in ["sampled", "not_sampled"] {
        counter!(names::LATE_SPANS, "decision" => decision).increment(0);
    }
    counter!(names::SPANS_REJECTED, "reason" => "invalid_id").increment(0);
    counter!(names::HOLD_RELEASED_EARLY).increment(0);
    for signal in ["logs", "metrics"] {
        counter!(names::SUMMARY_ITEMS, "signal" => signal).increment(0);
        counter!(names::ROLLUP_IN, "signal" => signal).increment(0);
        counter!(names::ROLLUP_OUT, "signal" => signal).increment(0);
        for reason in correlation::classify::REASONS {
            counter!(names::CORRELATED_ITEMS, "signal" => signal, "reason" => reason.as_str())
                .increment(0);
        }
    }
    counter!(correlation::broadcast::names::DECISIONS_BROADCAST, "outcome" => "ok").increment(0);
    metrics::gauge!(names::HELD_ITEMS).set(0.0);
}

pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Settles held logs and metric points as their windows pass and closes rollup intervals,
/// until stopped.
async fn settle_loop(settler: Arc<settle::Settler>, mut stop: watch::Receiver<bool>) {
    loop {
        let now = settle::unix_now();
        let pause = settler
            .next_due()
            .map_or(SETTLE_TICK, |due| {
                Duration::from_nanos(due.saturating_sub(now)).min(SETTLE_TICK)
            })
            .max(Duration::from_millis(5));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let s = settler.clone();
        match tokio::task::spawn_blocking(move || s.settle_due(settle::unix_now())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "settling held data failed; will retry"),
            Err(e) => tracing::error!(error = %e, "settle task failed"),
        }
    }
}

/// Decides due traces until stopped; also refreshes the storage-size figure once a second.
async fn decide_loop(engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let mut last_refresh = tokio::time::Instant::now();
    loop {
        let pause = engine
            .next_due_in(DECIDER_TICK)
            .max(Duration::from_millis(5));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let e = engine.clone();
        let refresh = last_refresh.elapsed() >= Duration::from_secs(1);
        if refresh {
            last_refresh = tokio::time::Instant::now();
        }
        let result = tokio::task::spawn_blocking(move || {
            if refresh {
                e.refresh_storage_bytes();
            }
            e.decide_due()
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "deciding traces failed; will retry"),
            Err(e) => tracing::error!(error = %e, "decider task failed"),
        }
    }
}
