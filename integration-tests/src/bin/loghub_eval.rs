//! `loghub-eval DIR`: scores the sampler's log template miner on Loghub-style data and
//! measures the whole log rollup's throughput.
//!
//! DIR holds `<System>/<System>_2k.log_structured.csv` for any systems. For each one the
//! `Content` column (or, with `--raw`, the raw lines of `<System>_2k.log`) is mined with
//! `MinerConfig::default()` — the very miner and settings the log rollup uses — and scored
//! against `EventId` by grouping accuracy (a line is correct when the set of lines in its
//! predicted group equals exactly the set of lines of its ground-truth event). Systems are
//! split into a development half (`--dev`, default [`DEFAULT_DEV`]) and a held-out half,
//! because the miner's rules were designed looking at one half at a time (see
//! docs/log-templates.md). Matching speed is measured by running the lines through fresh
//! miners repeatedly.
//!
//! Prints, per half, `  SYSTEM GA=0.xxxx lines_per_s=N` per system and
//! `<half> mean GA=0.xxxx`; then `mean GA=0.xxxx` over all systems; then
//! `rollup lines_per_cpu_s=N cpu_s=S`: all lines as OTLP log records through
//! `LogRollup::add_record`, flushed to OTLP every 10,000 records, per CPU second of this
//! (single-threaded) process.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_integration_tests::procfs;
use otel_tail_sampler::rollup::logs::{
    LogRollup, LogRollupOptions, MinerConfig, TemplateId, TemplateMiner,
};

/// The allocator the sampler binary runs with, so in-process figures match it.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Grouping accuracy and speed of the log template miner on Loghub data")]
struct Args {
    /// Directory with `<System>/<System>_2k.log_structured.csv` files.
    dir: PathBuf,
    /// Least time spent measuring speed per system.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    speed_time: Duration,
    /// Also list the ground-truth events that were grouped wrongly, with the templates
    /// their lines went to (to study the miner's mistakes).
    #[arg(long)]
    errors: bool,
    /// Comma-separated systems of the development half; the others are held out. Default:
    /// the split documented in docs/log-templates.md (those of its systems present).
    #[arg(long)]
    dev: Option<String>,
    /// Mine the raw lines of `<System>_2k.log` (headers with timestamps, levels, hosts and
    /// components included, as a body is when no collector parsed the line) instead of the
    /// `Content` column; scored against the same events.
    #[arg(long)]
    raw: bool,
    /// Least CPU time spent measuring the whole log rollup's throughput.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    rollup_time: Duration,
}

/// The development half of the default split: the four application (Java) logs. The
/// system logs BGL, HPC, Thunderbird and Windows are held out.
const DEFAULT_DEV: &str = "HDFS,Hadoop,Spark,Zookeeper";

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
enum EvalError {
    #[error("reading directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadRaw {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path} has no `{column}` column")]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("no `<System>/<System>_2k.log_structured.csv` file under {0}")]
    NoSystems(PathBuf),
    #[error("{path} has {lines} lines but its structured file has {rows} rows")]
    RawLines {
        path: PathBuf,
        lines: usize,
        rows: usize,
    },
    #[error("--dev names {0}, which has no `{0}/{0}_2k.log_structured.csv` file")]
    UnknownSystem(String),
}

/// One system's labelled lines.
struct Dataset {
    contents: Vec<String>,
    events: Vec<String>,
    /// The `Level` column, empty where the system has none.
    levels: Vec<String>,
}

/// Grouping accuracy: the share of lines whose predicted group holds exactly the lines of
/// their ground-truth group.
fn grouping_accuracy<P: Eq + Hash, T: Eq + Hash>(predicted: &[P], truth: &[T]) -> f64 {
    assert_eq!(predicted.len(), truth.len(), "one label per line");
    if truth.is_empty() {
        return 1.0;
    }
    let mut truth_size: HashMap<&T, usize> = HashMap::new();
    let mut predicted_size: HashMap<&P, usize> = HashMap::new();
    let mut pair_size: HashMap<(&P, &T), usize> = HashMap::new();
    for (p, t) in predicted.iter().zip(truth) {
        *truth_size.entry(t).or_default() += 1;
        *predicted_size.entry(p).or_default() += 1;
        *pair_size.entry((p, t)).or_default() += 1;
    }
    // A predicted group is exact when all of it is one truth group and all of that.
    let correct: usize = pair_size
        .iter()
        .filter(|&(&(p, t), &n)| predicted_size[p] == n && truth_size[t] == n)
        .map(|(_, &n)| n)
        .sum();
    correct as f64 / truth.len() as f64
}

fn read_dataset(path: &Path) -> Result<Dataset, EvalError> {
    let csv_error = |source| EvalError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
    let headers = reader.headers().map_err(csv_error)?.clone();
    let column = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(EvalError::MissingColumn {
                path: path.to_owned(),
                column: name,
            })
    };
    let (content, event) = (column("Content")?, column("EventId")?);
    let level = column("Level").ok();
    let mut dataset = Dataset {
        contents: Vec::new(),
        events: Vec::new(),
        levels: Vec::new(),
    };
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        dataset
            .contents
            .push(record.get(content).unwrap_or_default().to_owned());
        dataset
            .events
            .push(record.get(event).unwrap_or_default().to_owned());
        dataset.levels.push(
            level
                .and_then(|l| record.get(l))
                .unwrap_or_default()
                .to_owned(),
        );
    }
    Ok(dataset)
}

/// Replaces the contents of `dataset` (read from `structured`) with the raw lines of the
/// system's `<System>_2k.log` beside it, which must be as many.
fn use_raw_lines(structured: &Path, dataset: &mut Dataset) -> Result<(), EvalError> {
    let name = structured.to_string_lossy();
    let path = PathBuf::from(name.trim_end_matches("_structured.csv"));
    let text = std::fs::read_to_string(&path).map_err(|source| EvalError::ReadRaw {
        path: path.clone(),
        source,
    })?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.len() != dataset.contents.len() {
        return Err(EvalError::RawLines {
            path,
            lines: lines.len(),
            rows: dataset.contents.len(),
        });
    }
    dataset.contents = lines;
    Ok(())
}

/// Systems under `dir`, sorted by name.
fn discover(dir: &Path) -> Result<Vec<(String, PathBuf)>, EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EvalError::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut systems: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join(format!("{name}_2k.log_structured.csv"));
            file.is_file().then_some((name, file))
        })
        .collect();
    systems.sort();
    if systems.is_empty() {
        return Err(EvalError::NoSystems(dir.to_owned()));
    }
    Ok(systems)
}

/// Template ids of the lines, mined in order by one fresh miner, and the miner.
fn mine(contents: &[String]) -> (Vec<TemplateId>, TemplateMiner) {
    let mut miner = TemplateMiner::new(MinerConfig::default());
    let ids = contents.iter().map(|line| miner.add(line).id).collect();
    (ids, miner)
}

/// Prints each wrongly grouped ground-truth event: its size, one line, and the templates
/// (with their line counts) its lines went to.
fn print_errors(dataset: &Dataset, predicted: &[TemplateId], miner: &TemplateMiner) {
    let mut by_event: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut predicted_size: HashMap<TemplateId, usize> = HashMap::new();
    for (i, (event, id)) in dataset.events.iter().zip(predicted).enumerate() {
        by_event.entry(event).or_default().push(i);
        *predicted_size.entry(*id).or_default() += 1;
    }
    let mut events: Vec<_> = by_event.into_iter().collect();
    events.sort();
    for (event, lines) in events {
        let first = predicted[lines[0]];
        if lines.iter().all(|&i| predicted[i] == first) && predicted_size[&first] == lines.len() {
            continue;
        }
        println!(
            "  {event} ({} lines) e.g. {:?}",
            lines.len(),
            dataset.contents[lines[0]]
        );
        let mut ids: Vec<TemplateId> = lines.iter().map(|&i| predicted[i]).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            let here = lines.iter().filter(|&&i| predicted[i] == id).count();
            println!(
                "    {here}/{} -> {:?}",
                predicted_size[&id],
                miner.template(id).unwrap_or("?")
            );
        }
    }
}

/// Lines per second through fresh miners, over at least `budget`.
fn speed(contents: &[String], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut lines = 0u64;
    let mut checksum = 0u64;
    while lines == 0 || start.elapsed() < budget {
        let mut miner = TemplateMiner::new(MinerConfig::default());
        for line in contents {
            checksum ^= miner.add(line).id.0;
        }
        lines += contents.len() as u64;
    }
    std::hint::black_box(checksum);
    lines as f64 / start.elapsed().as_secs_f64()
}

/// Ground-truth systems split in two halves: the miner's rules are designed looking at the
/// development half only and checked on the held-out half (see docs/log-templates.md).
struct Split {
    development: Vec<(String, PathBuf)>,
    held_out: Vec<(String, PathBuf)>,
}

/// Splits `systems` by the `--dev` list: the named systems are the development half, the
/// rest held out. An explicit list must name systems that exist; the default list only
/// takes those of its systems that are present.
fn split(
    systems: Vec<(String, PathBuf)>,
    dev: &[String],
    explicit: bool,
) -> Result<Split, EvalError> {
    if explicit && let Some(missing) = dev.iter().find(|d| !systems.iter().any(|(s, _)| s == *d)) {
        return Err(EvalError::UnknownSystem(missing.clone()));
    }
    let (development, held_out) = systems
        .into_iter()
        .partition(|(system, _)| dev.contains(system));
    Ok(Split {
        development,
        held_out,
    })
}

/// Maps a Loghub `Level` column value to an OTLP severity number (0 when unknown).
fn severity_number(level: &str) -> i32 {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" | "WARNING" => 13,
        "ERROR" | "SEVERE" => 17,
        "FATAL" | "FAILURE" => 21,
        _ => 0,
    }
}

/// The lines of every system as OTLP records, each under a resource named after its system.
fn otlp_records(datasets: &[(String, Dataset)]) -> Vec<(Resource, Vec<LogRecord>)> {
    datasets
        .iter()
        .map(|(system, dataset)| {
            let resource = Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(system.clone())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let records = dataset
                .contents
                .iter()
                .zip(&dataset.levels)
                .enumerate()
                .map(|(i, (content, level))| LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                    severity_number: severity_number(level),
                    severity_text: level.clone(),
                    body: Some(AnyValue {
                        value: Some(Value::StringValue(content.clone())),
                    }),
                    ..Default::default()
                })
                .collect();
            (resource, records)
        })
        .collect()
}

/// Lines per CPU second of the whole log rollup: every record through
/// [`LogRollup::add_record`] of one long-lived rollup (one miner per system, as in the
/// sampler), with a [`LogRollup::flush`] to OTLP every [`FLUSH_EVERY`] records, repeated
/// for at least `budget` of CPU time. Returns the rate and the CPU seconds it is based on.
fn rollup_speed(
    inputs: &[(Resource, Vec<LogRecord>)],
    budget: Duration,
) -> anyhow::Result<(f64, f64)> {
    let pid = std::process::id();
    let mut rollup = LogRollup::new(LogRollupOptions::default());
    let cpu_start = procfs::cpu_seconds(pid)?;
    let mut lines = 0u64;
    let mut since_flush = 0usize;
    let mut checksum = 0u64;
    loop {
        for (resource, records) in inputs {
            for record in records {
                checksum ^= rollup.add_record(Some(resource), record).0;
                since_flush += 1;
                if since_flush == FLUSH_EVERY {
                    checksum ^= rollup.flush(0, 1).lines;
                    since_flush = 0;
                }
            }
            lines += records.len() as u64;
        }
        let cpu = procfs::cpu_seconds(pid)? - cpu_start;
        if cpu >= budget.as_secs_f64() {
            checksum ^= rollup.flush(0, 1).lines;
            std::hint::black_box(checksum);
            // The kernel counts CPU time in ticks: never divide by zero on a tiny budget.
            return Ok((lines as f64 / cpu.max(0.01), cpu));
        }
    }
}

/// Records between two flushes in [`rollup_speed`]: an interval of a busy service.
const FLUSH_EVERY: usize = 10_000;

/// Scores one half, printing a line per system and the half's mean; returns the accuracies.
fn evaluate(
    label: &str,
    systems: &[(String, PathBuf)],
    args: &Args,
    datasets: &mut Vec<(String, Dataset)>,
) -> Result<Vec<f64>, EvalError> {
    println!("{label}:");
    let mut accuracies = Vec::new();
    for (system, path) in systems {
        let mut dataset = read_dataset(path)?;
        if args.raw {
            use_raw_lines(path, &mut dataset)?;
        }
        let (predicted, miner) = mine(&dataset.contents);
        let ga = grouping_accuracy(&predicted, &dataset.events);
        let lines_per_s = speed(&dataset.contents, args.speed_time);
        println!("  {system} GA={ga:.4} lines_per_s={lines_per_s:.0}");
        if args.errors {
            print_errors(&dataset, &predicted, &miner);
        }
        accuracies.push(ga);
        datasets.push((system.clone(), dataset));
    }
    if !accuracies.is_empty() {
        println!("{label} mean GA={:.4}", mean(&accuracies));
    }
    Ok(accuracies)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let explicit = args.dev.is_some();
    let dev: Vec<String> = args
        .dev
        .as_deref()
        .unwrap_or(DEFAULT_DEV)
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let split = split(discover(&args.dir)?, &dev, explicit)?;
    let mut datasets = Vec::new();
    let mut all = evaluate("development", &split.development, &args, &mut datasets)?;
    all.extend(evaluate("held-out", &split.held_out, &args, &mut datasets)?);
    println!("mean GA={:.4}", mean(&all));
    let (rate, cpu) = rollup_speed(&otlp_records(&datasets), args.rollup_time)?;
    println!("rollup lines_per_cpu_s={rate:.0} cpu_s={cpu:.2}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::grouping_accuracy;

    #[test]
    fn exact_groups_score_one_whatever_the_labels() {
        assert_eq!(grouping_accuracy(&[7, 7, 9], &["a", "a", "b"]), 1.0);
    }

    #[test]
    fn merged_and_split_groups_count_as_wrong() {
        // Predicted group 1 merges truths a and b; truth c is split into 2 and 3.
        let predicted = [1, 1, 1, 2, 3, 4];
        let truth = ["a", "a", "b", "c", "c", "d"];
        assert!((grouping_accuracy(&predicted, &truth) - 1.0 / 6.0).abs() < 1e-12);
    }
}
