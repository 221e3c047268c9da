//! `otel-tail-router`: the stateless front tier. Not built yet: the cluster work adds
//! membership, the trace-id ring and forwarding. Until then it says so and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "otel-tail-router {}: not built yet — run a standalone `otel-tail-sampler` instead",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
