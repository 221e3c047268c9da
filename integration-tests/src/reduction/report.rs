//! The verdict on a run: the byte reduction of logs and metrics, every way the output
//! disagrees with the input ([`check`]), and the figures the benchmark prints ([`report`]).

use super::ledger::{InputLedger, Output, Volume};
use super::{CORRELATED_ATTRIBUTE, LOG_RECORDS_METRIC, REQUESTS_METRIC, ROLLUP_ATTRIBUTE};

/// Byte reduction of logs and metrics together (the log rollup's `log.records` metric
/// counts as output), in percent.
pub fn logs_and_metrics_reduction(input: &InputLedger, output: &Output) -> f64 {
    let mut sent = input.logs;
    sent.add(input.metrics);
    let mut exported = output.logs;
    exported.add(output.log_metrics);
    exported.add(output.metrics);
    exported.reduction_of(&sent)
}

/// Every way the output disagrees with the input or falls short of the target: totals
/// that do not add up, correlated items missing from the raw output, a byte reduction of
/// logs and metrics below `min_reduction_percent`. Empty when all is well.
pub fn check(input: &InputLedger, output: &Output, min_reduction_percent: f64) -> Vec<String> {
    let mut failures = Vec::new();
    let reduction = logs_and_metrics_reduction(input, output);
    if reduction < min_reduction_percent {
        failures.push(format!(
            "logs+metrics byte reduction {reduction:.1}% is below {min_reduction_percent}%"
        ));
    }
    if output.span_metrics_calls != input.traces.items {
        failures.push(format!(
            "span metrics count {} spans, {} were sent",
            output.span_metrics_calls, input.traces.items
        ));
    }
    let lines_out = output.raw_log_count() + output.summarized_lines + output.unmarked_logs;
    if lines_out != input.logs.items {
        failures.push(format!(
            "log lines: {} sent, but raw {} + summarized {} + unmarked {} = {lines_out}",
            input.logs.items,
            output.raw_log_count(),
            output.summarized_lines,
            output.unmarked_logs
        ));
    }
    if output.unmarked_logs > 0 {
        failures.push(format!(
            "{} log records left with neither {CORRELATED_ATTRIBUTE} nor {ROLLUP_ATTRIBUTE} (log rollup is on)",
            output.unmarked_logs
        ));
    }
    if output.unmarked_points > 0 {
        failures.push(format!(
            "{} data points left with neither {CORRELATED_ATTRIBUTE} nor {ROLLUP_ATTRIBUTE} (metric rollup is on)",
            output.unmarked_points
        ));
    }
    if output.log_records_metric_sum != output.summarized_lines as f64 {
        failures.push(format!(
            "{LOG_RECORDS_METRIC} adds up to {} but the summaries count {} lines",
            output.log_records_metric_sum, output.summarized_lines
        ));
    }
    let requests_out =
        output.requests_raw_sum + output.requests_rollup_sum + output.requests_unmarked_sum;
    if requests_out != input.requests_sum {
        failures.push(format!(
            "{REQUESTS_METRIC}: {} sent, but raw {} + rolled up {} + unmarked {} = {requests_out}",
            input.requests_sum,
            output.requests_raw_sum,
            output.requests_rollup_sum,
            output.requests_unmarked_sum
        ));
    }
    let mut expected_logs = 0u64;
    let mut missing_logs = Vec::new();
    for (trace, keys) in &input.trace_logs {
        if !output.kept_traces.contains(trace) {
            continue;
        }
        for key in keys {
            expected_logs += 1;
            if !output.raw_log_keys.contains(key) {
                missing_logs.push(trace.clone());
            }
        }
    }
    if !missing_logs.is_empty() {
        failures.push(format!(
            "{} of {expected_logs} log records of kept traces are not in the raw output (e.g. trace {})",
            missing_logs.len(),
            missing_logs[0]
        ));
    }
    let stray: Vec<&String> = output
        .trace_id_marked
        .iter()
        .filter(|t| !output.kept_traces.contains(*t))
        .collect();
    if !stray.is_empty() {
        failures.push(format!(
            "{} raw log records are marked trace_id but their trace was not exported (e.g. {})",
            stray.len(),
            stray[0]
        ));
    }
    let mut expected_points = 0u64;
    let mut missing_points = 0u64;
    let mut example = None;
    for (key, traces) in &input.exemplar_points {
        if let Some(kept) = traces.iter().find(|t| output.kept_traces.contains(*t)) {
            expected_points += 1;
            if !output.raw_point_keys.contains(key) {
                missing_points += 1;
                example.get_or_insert_with(|| kept.clone());
            }
        }
    }
    if missing_points > 0 {
        failures.push(format!(
            "{missing_points} of {expected_points} data points with an exemplar of a kept trace are not in the raw output (e.g. exemplar trace {})",
            example.unwrap_or_default()
        ));
    }
    failures
}

/// How many of the input's items correlated retention had to keep raw by trace id and
/// by exemplar: (log records of kept traces, points with an exemplar of a kept trace).
pub fn expected_raw(input: &InputLedger, output: &Output) -> (u64, u64) {
    let logs = input
        .trace_logs
        .iter()
        .filter(|(t, _)| output.kept_traces.contains(*t))
        .map(|(_, keys)| keys.len() as u64)
        .sum();
    let points = input
        .exemplar_points
        .iter()
        .filter(|(_, traces)| traces.iter().any(|t| output.kept_traces.contains(t)))
        .count() as u64;
    (logs, points)
}

/// Bytes as megabytes with two decimals.
fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// A count with thousands separators: `1234567` → `1,234,567`.
pub fn with_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One row of the reduction table.
fn row(name: &str, input: Volume, output: Volume) -> String {
    format!(
        "  {name:<22} {:>12} {:>12} {:>12} {:>12} {:>9.1}%",
        with_thousands(input.items),
        mb(input.bytes),
        with_thousands(output.items),
        mb(output.bytes),
        output.reduction_of(&input)
    )
}

/// The figures of a run as printed by the benchmark: bytes and items per signal and their
/// reduction, kept traces, raw items per correlation reason, rollups, and whether the
/// totals add up. One line per figure, each ending in a newline.
pub fn report(input: &InputLedger, output: &Output) -> String {
    let mut lines: Vec<String> = Vec::new();
    lines.push(
        "\n== reduction (protobuf bytes; output re-encoded from the exported OTLP JSON) =="
            .to_owned(),
    );
    lines.push(format!(
        "  {:<22} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "signal", "in items", "in bytes", "out items", "out bytes", "reduction"
    ));
    lines.push(row("traces (spans)", input.traces, output.traces));
    lines.push(row(
        "  + span metrics",
        Volume { items: 0, bytes: 0 },
        output.span_metrics,
    ));
    lines.push(format!(
        "  traces: {} spans in = {} kept raw + {} dropped; span metrics count {} spans \
         ({} points, {}): raw + span metrics {} vs {} in ({:.1}% less)",
        with_thousands(input.traces.items),
        with_thousands(output.traces.items),
        with_thousands(input.traces.items.saturating_sub(output.traces.items)),
        with_thousands(output.span_metrics_calls),
        with_thousands(output.span_metrics.items),
        mb(output.span_metrics.bytes),
        mb(output.traces.bytes + output.span_metrics.bytes),
        mb(input.traces.bytes),
        Volume {
            items: 0,
            bytes: output.traces.bytes + output.span_metrics.bytes,
        }
        .reduction_of(&input.traces),
    ));
    let mut logs_out = output.logs;
    logs_out.add(output.log_metrics);
    lines.push(row("logs (records)", input.logs, logs_out));
    lines.push(format!(
        "  {:<22} {:>12} {:>12} {:>12} {:>12}",
        "  of which log.records",
        "",
        "",
        with_thousands(output.log_metrics.items),
        mb(output.log_metrics.bytes)
    ));
    lines.push(row("metrics (points)", input.metrics, output.metrics));
    let mut lm_in = input.logs;
    lm_in.add(input.metrics);
    let mut lm_out = logs_out;
    lm_out.add(output.metrics);
    lines.push(row("logs + metrics", lm_in, lm_out));
    lines.push(format!(
        "  logs + metrics byte reduction: {:.1}%",
        logs_and_metrics_reduction(input, output)
    ));
    let [traces_merged, logs_merged, metrics_merged] = output.merged_bytes;
    let merged_reduction = |merged: u64, input: Volume| {
        Volume {
            items: 0,
            bytes: merged,
        }
        .reduction_of(&input)
    };
    lines.push(format!(
        "  without repeated framing (each signal as one request, equal resources and scopes \
         merged): traces {} ({:.1}%), logs + metrics {} ({:.1}%)",
        mb(traces_merged),
        merged_reduction(traces_merged, input.traces),
        mb(logs_merged + metrics_merged),
        merged_reduction(logs_merged + metrics_merged, lm_in),
    ));
    lines.push(
        "  log and metric output by kind (bytes of the items alone, without resource and scope):"
            .to_owned(),
    );
    for (part, volume) in &output.parts {
        lines.push(format!(
            "    {part:<24} {:>12} items {:>12}",
            with_thousands(volume.items),
            mb(volume.bytes)
        ));
    }

    let (expected_logs, expected_points) = expected_raw(input, output);
    lines.push("\n== kept traces ==".to_owned());
    lines.push(format!(
        "  {} of {} traces exported ({} failing sent); by root span policy: {:?}",
        with_thousands(output.kept_traces.len() as u64),
        with_thousands(input.trace_count),
        with_thousands(input.error_traces),
        output.kept_by_policy
    ));
    lines.push(
        "\n== correlated retention: raw items per reason (otel_tail.correlated) ==".to_owned(),
    );
    lines.push(format!(
        "  logs:    {:?} — log records of kept traces sent: {}",
        output.raw_logs,
        with_thousands(expected_logs)
    ));
    lines.push(format!(
        "  metrics: {:?} — points with an exemplar of a kept trace sent: {}",
        output.raw_points,
        with_thousands(expected_points)
    ));

    lines.push("\n== rollups ==".to_owned());
    lines.push(format!(
        "  log summaries: {} records standing for {} lines, {} distinct template ids; \
         log.records sums to {}",
        with_thousands(output.summary_records),
        with_thousands(output.summarized_lines),
        output.template_ids.len(),
        output.log_records_metric_sum
    ));
    for (metric, points_in) in &input.points_by_metric {
        lines.push(format!(
            "  {metric:<30} {:>9} points in → {:>6} rolled-up points{}",
            with_thousands(*points_in),
            with_thousands(
                output
                    .rollup_points_by_metric
                    .get(metric)
                    .copied()
                    .unwrap_or(0)
            ),
            match output.overflow_points.get(metric) {
                Some(o) => format!(" ({o} of them overflow series: cardinality limit reached)"),
                None => String::new(),
            }
        ));
    }

    lines.push("\n== totals ==".to_owned());
    let lines_out = output.raw_log_count() + output.summarized_lines + output.unmarked_logs;
    lines.push(format!(
        "  log lines: in {} | raw {} + summarized {} + unmarked {} = {} {}",
        with_thousands(input.logs.items),
        with_thousands(output.raw_log_count()),
        with_thousands(output.summarized_lines),
        with_thousands(output.unmarked_logs),
        with_thousands(lines_out),
        verdict(lines_out == input.logs.items)
    ));
    let requests_out =
        output.requests_raw_sum + output.requests_rollup_sum + output.requests_unmarked_sum;
    lines.push(format!(
        "  app.requests (value 1 per point): in {} | raw {} + rolled up {} + unmarked {} = {} {}",
        input.requests_sum,
        output.requests_raw_sum,
        output.requests_rollup_sum,
        output.requests_unmarked_sum,
        requests_out,
        verdict(requests_out == input.requests_sum)
    ));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `OK` or `MISMATCH`.
fn verdict(ok: bool) -> &'static str {
    if ok { "OK" } else { "MISMATCH" }
}
