//! A short pass of each benchmark binary: the long runs behind `docs/performance.md` are
//! run by hand, but every figure they promise must come out of a real run here (real
//! sampler, router and load generator processes on 127.0.0.1, debug build, seconds of load).

use std::process::Command;

/// Runs `bin` with `args` (bounded by the bench's own phases) and returns its standard
/// output, failing with both outputs if it did not succeed.
fn run(bin: &str, args: &[&str]) -> String {
    let output = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{bin} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The number after `label` on the first line holding it (after the label's own digits).
fn figure(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|line| line.contains(label))
        .unwrap_or_else(|| panic!("no line with {label:?} in:\n{out}"));
    let rest = &line[line.find(label).unwrap() + label.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line:?}"))
}

#[test]
fn the_bench_prints_throughput_per_cpu_second_latency_and_memory() {
    let out = run(
        env!("CARGO_BIN_EXE_otel-tail-bench"),
        &[
            "--pin",
            "--seconds",
            "2",
            "--latency-seconds",
            "2",
            "--traces",
            "2000",
        ],
    );
    assert!(figure(&out, "spans_per_cpu_s") > 0.0, "{out}");
    assert!(figure(&out, "sustained accepted") > 0.0, "{out}");
    assert!(
        figure(&out, "cores used during load  sampler") > 0.0,
        "{out}"
    );
    let p99 = figure(&out, "p99");
    assert!(
        p99 >= 5000.0,
        "kept traces leave after decision_wait (5 s): {out}"
    );
    assert!(figure(&out, "RAM per active trace") > 0.0, "{out}");
    assert_eq!(figure(&out, "active traces"), 1000.0, "{out}");
}

#[test]
fn the_scaling_bench_prints_the_pinned_and_unpinned_rates_and_their_ratio() {
    let out = run(
        env!("CARGO_BIN_EXE_otel-tail-bench"),
        &["--scaling", "--seconds", "2"],
    );
    let pinned = figure(&out, "pinned    accepted");
    let unpinned = figure(&out, "unpinned  accepted");
    assert!(pinned > 0.0 && unpinned > 0.0, "{out}");
    let ratio = figure(&out, "scaling  ");
    assert!(
        (ratio - unpinned / pinned).abs() < 0.01,
        "the ratio is of the two rates printed: {out}"
    );
    assert!(
        figure(&out, "the load generator left the sampler") > 0.0,
        "{out}"
    );
}

#[test]
fn the_cluster_bench_prints_spans_per_cpu_second_of_all_servers() {
    let out = run(
        env!("CARGO_BIN_EXE_otel-tail-cluster-bench"),
        &["--seconds", "2"],
    );
    assert!(figure(&out, "end to end") > 0.0, "{out}");
    assert!(figure(&out, "whole cluster") > 0.0, "{out}");
}
