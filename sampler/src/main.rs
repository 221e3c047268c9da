//! `otel-tail-sampler`: a standalone tail-sampling node. See the crate library for the
//! design; this file only parses flags, loads the config and wires signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use otel_tail_shared::config::Config;
use otel_tail_shared::telemetry;

/// mimalloc instead of glibc malloc: decoding OTLP allocates many small strings and vectors,
/// and glibc's allocator showed up as a fifth of the sampler's CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tail-sampling node for OpenTelemetry: OTLP in, durable RocksDB buffer, policies, OTLP out.
#[derive(Parser, Debug)]
#[command(name = "otel-tail-sampler", version)]
struct Cli {
    /// YAML configuration file; every key has a default, so none is needed to start.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Validate the configuration and exit (non-zero with a message naming the key on error).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::from_yaml("", &|name| std::env::var(name).ok()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otel-tail-sampler: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_yaml());
        return ExitCode::SUCCESS;
    }
    if cli.check_config {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    telemetry::init_logging(&config.telemetry.log_level);
    let metrics = match telemetry::install_metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("otel-tail-sampler: cannot install metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otel-tail-sampler: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let storage_dir = config.sampler.storage_dir.clone();
    let result = runtime.block_on(otel_tail_sampler::run(
        config,
        metrics,
        move |listening, exporters| {
            let mut banner = format!(
                "otel-tail-sampler {} started\n  OTLP/gRPC  listening on {}\n  OTLP/HTTP  listening on {}\n  admin      listening on {}  (/metrics /healthz /readyz)\n  buffer     {}\n",
                env!("CARGO_PKG_VERSION"),
                listening.receivers.grpc,
                listening.receivers.http,
                listening.admin,
                storage_dir.display(),
            );
            if let Some(cluster) = &listening.cluster {
                banner.push_str(&format!(
                    "  forward    listening on {}\n  gossip     listening on {}  (node {})\n",
                    cluster.forward, cluster.gossip, cluster.node_id,
                ));
            }
            for e in exporters {
                banner.push_str(&format!("  export     {e}\n"));
            }
            print!("{banner}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otel-tail-sampler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
