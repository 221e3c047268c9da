//! `otel-tail-router`: parses flags, loads the config and wires signals; the work is in
//! the library ([`otel_tail_router::run`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use otel_tail_router::cluster::check_router_config;
use otel_tail_shared::launch::{Flags, launch, shutdown_signal};

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
    let flags = Flags {
        binary: "otel-tail-router",
        config: cli.config.as_deref(),
        print_config: cli.print_config,
        check_config: cli.check_config,
        print_prefix: IGNORED_SECTIONS,
    };
    launch(
        flags,
        |config| check_router_config(config).map_err(|e| e.to_string()),
        |config, metrics| otel_tail_router::run(config, metrics, print_banner, shutdown_signal()),
    )
}

/// Prints where the router listens, in one block on stdout.
fn print_banner(listening: &otel_tail_router::Listening) {
    print!(
        "otel-tail-router {} started\n  OTLP/gRPC  listening on {}\n  OTLP/HTTP  listening on {}\n  admin      listening on {}  (/metrics /healthz /readyz)\n  gossip     listening on {}\n",
        env!("CARGO_PKG_VERSION"),
        listening.receivers.grpc,
        listening.receivers.http,
        listening.admin,
        listening.gossip,
    );
    let _ = std::io::stdout().flush();
}
