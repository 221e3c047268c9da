//! `otel-tail-sampler`: a tail-sampling node, standalone or in a cluster. See the crate
//! library for the design; this file only declares the flags and prints the start-up banner
//! (`otel_tail_shared::launch` does the rest).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use otel_tail_shared::launch::{Flags, launch, shutdown_signal};

/// jemalloc for every allocation of the process, RocksDB's included (it also replaces
/// `malloc`): decoding OTLP allocates many small strings and vectors, and glibc's allocator
/// was a fifth of the sampler's CPU in profiles; jemalloc's background thread returns freed
/// pages to the system about a second after they are freed (`.cargo/config.toml`), where
/// glibc kept RocksDB's memtable peaks and mimalloc the index's outgrown tables resident.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let flags = Flags {
        binary: "otel-tail-sampler",
        config: cli.config.as_deref(),
        print_config: cli.print_config,
        check_config: cli.check_config,
        print_prefix: "",
    };
    let config_path = cli.config.clone();
    launch(
        flags,
        // Policies compile at load, so an OTTL syntax error, unknown path or unknown
        // function is a configuration error (exit 2, `--check-config` included).
        |config| {
            otel_tail_sampler::policy::PolicyEngine::new(
                &config.sampler.policies,
                config.sampler.sample_on_first_match,
            )
            .map(|_| ())
            .map_err(|e| format!("invalid config at `sampler.policies`: {e}"))
        },
        |config, metrics| {
            let storage_dir = config.sampler.storage_dir.clone();
            otel_tail_sampler::run(
                config,
                config_path,
                metrics,
                move |listening, exporters| print_banner(listening, exporters, &storage_dir),
                shutdown_signal(),
            )
        },
    )
}

/// Prints where the sampler listens and exports, in one block on stdout.
fn print_banner(
    listening: &otel_tail_sampler::Listening,
    exporters: &[String],
    storage_dir: &Path,
) {
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
    for exporter in exporters {
        banner.push_str(&format!("  export     {exporter}\n"));
    }
    print!("{banner}");
    let _ = std::io::stdout().flush();
}
