//! `loghub-eval DIR`: scores the sampler's log template miner on Loghub-style data.
//!
//! DIR holds `<System>/<System>_2k.log_structured.csv` for any systems. For each one the
//! `Content` column is mined with `MinerConfig::default()` — the very miner and settings
//! the log rollup uses — and scored against `EventId` by grouping accuracy (a line is
//! correct when the set of lines in its predicted group equals exactly the set of lines of
//! its ground-truth event). Matching speed is measured by running the lines through fresh
//! miners repeatedly. Prints `SYSTEM GA=0.xxxx lines_per_s=N` per system, then
//! `mean GA=0.xxxx`.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use otel_tail_sampler::rollup::logs::{MinerConfig, TemplateId, TemplateMiner};

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
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
enum EvalError {
    #[error("reading directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path} has no `{column}` column")]
    MissingColumn { path: PathBuf, column: &'static str },
    #[error("no `<System>/<System>_2k.log_structured.csv` file under {0}")]
    NoSystems(PathBuf),
}

/// One system's labelled lines.
struct Dataset {
    contents: Vec<String>,
    events: Vec<String>,
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
    let mut dataset = Dataset {
        contents: Vec::new(),
        events: Vec::new(),
    };
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        dataset
            .contents
            .push(record.get(content).unwrap_or_default().to_owned());
        dataset
            .events
            .push(record.get(event).unwrap_or_default().to_owned());
    }
    Ok(dataset)
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut accuracies = Vec::new();
    for (system, path) in discover(&args.dir)? {
        let dataset = read_dataset(&path)?;
        let (predicted, miner) = mine(&dataset.contents);
        let ga = grouping_accuracy(&predicted, &dataset.events);
        let lines_per_s = speed(&dataset.contents, args.speed_time);
        println!("{system} GA={ga:.4} lines_per_s={lines_per_s:.0}");
        if args.errors {
            print_errors(&dataset, &predicted, &miner);
        }
        accuracies.push(ga);
    }
    let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    println!("mean GA={mean:.4}");
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
