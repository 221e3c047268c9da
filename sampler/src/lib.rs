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
pub mod clock;
pub mod cluster;
pub mod correlation;
pub mod decision;
pub mod dedup;
pub mod engine;
mod events;
pub mod export_queue;
pub mod policy;
pub mod reload;
pub mod rollup;
pub mod settle;
pub mod storage;
mod unary;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_shared::config::Config;
use otel_tail_shared::exporter::Exporter;
use otel_tail_shared::otlp::Signal;
use otel_tail_shared::receiver::raw::RawIngest;
use otel_tail_shared::receiver::{self, Accepted, BoundAddrs, Ingest, IngestError};
use otel_tail_shared::telemetry::{self, Health};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::engine::{Engine, Wiring};
use crate::export_queue::ExportQueues;
use crate::storage::Storage;

/// Longest time spent flushing the export queue after receivers stop on shutdown; what is
/// left stays on disk for the next start.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(20);
/// Longest pause of the decider between passes.
const DECIDER_TICK: Duration = Duration::from_millis(100);
/// Shortest pause of the decider between passes: under load some trace is always due
/// within milliseconds, and a pass every few milliseconds paid its write, its export
/// request and its notices for a handful of traces. A trace may be decided this much
/// after its deadline.
const DECIDER_MIN_PAUSE: Duration = Duration::from_millis(20);
/// Pause of the settle loop between passes: how late a held item may settle after its
/// window and a rollup interval may close. Under load some held item is always due, and
/// a pass every few milliseconds settled one or two requests' items at a time, each
/// pass with its own write and its own call to every summary owner; a pass per tick
/// settles (and combines) everything that came due in it.
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
            .map_err(|e| IngestError::unavailable("ingest task failed", e))?
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

/// The standalone receivers hand over encoded requests: spans are read from the wire
/// ([`Engine::ingest_encoded_traces`]) instead of decoded whole; logs and metrics are decoded
/// and take the same path as through [`Ingest`].
impl RawIngest for SamplerIngest {
    async fn traces(&self, body: Bytes) -> Result<Accepted, IngestError> {
        let engine = self.0.clone();
        let took = tokio::task::spawn_blocking(move || engine.ingest_encoded_traces(body))
            .await
            .map_err(|e| IngestError::unavailable("ingest task failed", e))??;
        receiver::count_spans(
            took.spans,
            u64::try_from(took.refused.rejected).unwrap_or(0),
        );
        Ok(took.refused)
    }

    async fn logs(&self, body: Bytes) -> Result<Accepted, IngestError> {
        receiver::accept_encoded_logs(self, body).await
    }

    async fn metrics(&self, body: Bytes) -> Result<Accepted, IngestError> {
        receiver::accept_encoded_metrics(self, body).await
    }

    fn reads(&self, signal: Signal) -> receiver::Reads {
        self.0.reads(signal)
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
/// descriptions once everything listens. With `config_path`, the file is reloaded on
/// SIGHUP (and on change, see `sampler.config_watch_interval`); see [`reload`].
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    on_ready: impl FnOnce(&Listening, &[String]) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    events::register();
    let storage_dir = config.sampler.storage_dir.clone();
    let storage = Arc::new(
        Storage::open_with(
            &storage_dir,
            config.sampler.sync_writes,
            config.sampler.buffer_memory_bytes,
        )
        .with_context(|| format!("opening storage in {}", storage_dir.display()))?,
    );
    let exporters = Exporter::from_config(&config.exporter, &storage_dir.join("export.jsonl"))
        .context("configuring exporters")?;
    let queues = ExportQueues::open(storage.clone(), exporters, &config.exporter)
        .context("opening export queue")?;
    let standalone = config.cluster.is_standalone();
    let node = if standalone {
        None
    } else {
        Some(cluster::Node::prepare(&config).await?)
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let wiring = Wiring {
        clock,
        links: node
            .as_ref()
            .map(cluster::Node::settle_links)
            .unwrap_or_default(),
    };
    let engine = Arc::new(
        Engine::new(&config, storage, queues.clone(), wiring).context("building policies")?,
    );
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
    let drain = if standalone {
        SHUTDOWN_DRAIN
    } else {
        cluster::QUEUE_DRAIN
    };
    let sender = tokio::spawn(queues.clone().run(stopped(queue_stop_rx), drain));
    let decider = Decider::start(engine.clone());
    if let Some(path) = config_path {
        tokio::spawn(reload::reload_loop(
            path,
            config.clone(),
            engine.clone(),
            stop_rx.clone(),
        ));
    }

    if let Some(node) = node {
        let core = cluster::Core {
            engine: engine.clone(),
            queues: queues.clone(),
            health: health.clone(),
            admin: admin_addr,
            decider,
        };
        let served = cluster::serve(&config, node, core, on_ready, shutdown).await;
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
    let served = receiver::raw::serve(
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

/// Resolves once `rx` reads `true` (or its sender is gone).
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Settles held logs and metric points as their windows pass and closes rollup intervals,
/// until stopped.
async fn settle_loop(settler: Arc<settle::Settler>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(SETTLE_TICK) => {}
        }
        let s = settler.clone();
        match tokio::task::spawn_blocking(move || s.settle_due(s.now())).await {
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
        let pause = engine.next_due_in(DECIDER_TICK).max(DECIDER_MIN_PAUSE);
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
