//! `otel-tail-fuzz`: feeds arbitrary and mutated bytes to every decoder of untrusted input
//! (see `otel_tail_integration_tests::fuzz`) and prints, per decoder, the cases run, how
//! many were accepted and refused, the largest allocation one input caused, and the rate.
//! Exits non-zero on the first panic or unbounded allocation, naming the seed and case.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use otel_tail_integration_tests::fuzz::{self, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Fuzz every decoder of untrusted input.
#[derive(Parser)]
struct Args {
    /// Inputs per decoder.
    #[arg(long, default_value_t = 100_000)]
    cases: u64,
    /// Run seed (a failure reports the seed and case that reproduce it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only the decoders whose name contains this.
    #[arg(long)]
    target: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Panics are caught and reported per input; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for mut target in fuzz::targets() {
        if args
            .target
            .as_deref()
            .is_some_and(|wanted| !target.name.contains(wanted))
        {
            continue;
        }
        let started = Instant::now();
        match target.run(args.cases, args.seed) {
            Ok(report) => println!(
                "{:<22} cases={} accepted={} refused={} max_case_alloc_bytes={} (input {} B) cases_per_s={:.0}",
                report.name,
                report.cases,
                report.accepted,
                report.refused,
                report.max_case_allocation,
                report.max_case_input_len,
                report.cases as f64 / started.elapsed().as_secs_f64()
            ),
            Err(failure) => {
                println!("FAILED {failure}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
