//! What both binaries do around their `run`: load the configuration (or the defaults),
//! answer `--print-config` / `--check-config`, set up logs and the metrics recorder, start
//! the runtime, and turn SIGTERM / Ctrl-C into a shutdown future. Keeping it here keeps the
//! two `main.rs` files to their flags and start-up banners.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::telemetry;

/// The flags both binaries share.
#[derive(Debug, Clone, Copy)]
pub struct Flags<'a> {
    /// Binary name, prefixed to error messages.
    pub binary: &'a str,
    /// `--config PATH`; `None` runs with defaults (and `${env:…}` needs no file).
    pub config: Option<&'a Path>,
    /// `--print-config`: print the effective configuration and exit.
    pub print_config: bool,
    /// `--check-config`: validate and exit.
    pub check_config: bool,
    /// Printed before the YAML of `--print-config` (e.g. which sections a binary ignores).
    pub print_prefix: &'a str,
}

/// Runs a binary: configuration, checks (`check` adds the binary's own rules; its error is
/// reported like a config error, exit code 2), logging, metrics, a multi-threaded runtime,
/// then `run` until it returns. Exit codes: 0 success, 2 bad configuration, 1 other failure.
pub fn launch<Fut, E>(
    flags: Flags<'_>,
    check: impl FnOnce(&Config) -> Result<(), String>,
    run: impl FnOnce(Config, PrometheusHandle) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let binary = flags.binary;
    let loaded = match flags.config {
        Some(path) => Config::load(path),
        None => Config::from_yaml("", &|name| std::env::var(name).ok()),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{binary}: {error}");
            return ExitCode::from(2);
        }
    };
    if flags.print_config {
        print!("{}{}", flags.print_prefix, config.to_yaml());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = check(&config) {
        eprintln!("{binary}: {error}");
        return ExitCode::from(2);
    }
    if flags.check_config {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    telemetry::init_logging(&config.telemetry.log_level);
    let metrics = match telemetry::install_metrics() {
        Ok(metrics) => metrics,
        Err(error) => {
            eprintln!("{binary}: cannot install metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
