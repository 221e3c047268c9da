//! `otel-tail-router`: parses flags, loads the config and wires signals; the work is in
//! the library ([`otel_tail_router::run`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use otel_tail_router::cluster::check_router_config;
use otel_tail_shared::config::Config;
use otel_tail_shared::telemetry;

/// Note printed above `--print-config` output.
const IGNORED_SECTIONS: &str = "# otel-tail-router reads `receiver`, `cluster` and `telemetry`; \
`sampler` and `exporter` configure otel-tail-sampler and are ignored here.\n";

/// Stateless OTLP router for OTEL Tail Sampler: receives OTLP and forwards each trace to the
/// sampler that owns it on the cluster's consistent-hash ring.
#[derive(Parser, Debug)]
#[command(name = "otel-tail-router", version)]
struct Cli {
    /// YAML configuration file, the same format as otel-tail-sampler's. A router needs
    /// `cluster.seeds` or `cluster.dns_seed` to find samplers.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit. The router uses the `receiver`,
    /// `cluster` and `telemetry` sections; `sampler` and `exporter` are ignored.
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
        Ok(config) => config,
        Err(error) => {
            eprintln!("otel-tail-router: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{IGNORED_SECTIONS}{}", config.to_yaml());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = check_router_config(&config) {
        eprintln!("otel-tail-router: {error}");
        return ExitCode::from(2);
    }
    if cli.check_config {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    telemetry::init_logging(&config.telemetry.log_level);
    let metrics = match telemetry::install_metrics() {
        Ok(metrics) => metrics,
        Err(error) => {
            eprintln!("otel-tail-router: cannot install metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("otel-tail-router: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(otel_tail_router::run(
        config,
        metrics,
        |listening| {
            print!(
                "otel-tail-router {} started\n  OTLP/gRPC  listening on {}\n  OTLP/HTTP  listening on {}\n  admin      listening on {}  (/metrics /healthz /readyz)\n  gossip     listening on {}\n",
                env!("CARGO_PKG_VERSION"),
                listening.receivers.grpc,
                listening.receivers.http,
                listening.admin,
                listening.gossip,
            );
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("otel-tail-router: {error:#}");
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
                Ok(term) => term,
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
