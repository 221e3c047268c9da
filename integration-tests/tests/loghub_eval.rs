//! Runs the real `loghub-eval` binary: on tiny synthetic Loghub-layout datasets with known
//! grouping accuracies, and on the Loghub samples in `../shared/loghub` (beside the
//! repository) against the accuracy the miner reaches there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Writes `<dir>/<system>/<system>_2k.log_structured.csv` with the given rows.
fn write_system(dir: &Path, system: &str, rows: &[(&str, &str)]) {
    let folder = dir.join(system);
    std::fs::create_dir_all(&folder).unwrap();
    let mut csv = String::from("LineId,Level,Content,EventId,EventTemplate\n");
    for (i, (content, event)) in rows.iter().enumerate() {
        let quoted = content.replace('"', "\"\"");
        csv.push_str(&format!("{},INFO,\"{quoted}\",{event},-\n", i + 1));
    }
    std::fs::write(folder.join(format!("{system}_2k.log_structured.csv")), csv).unwrap();
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loghub-eval"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `SYSTEM -> GA` of the lines `  SYSTEM GA=… lines_per_s=…`.
fn accuracies(stdout: &str) -> HashMap<String, f64> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("  ")?;
            let (system, rest) = rest.split_once(" GA=")?;
            let ga = rest.split_whitespace().next()?.parse().ok()?;
            Some((system.to_owned(), ga))
        })
        .collect()
}

/// The value of the line `<label>=<value>`.
fn value(stdout: &str, label: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in {stdout}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn prints_accuracy_per_half_and_system_and_the_rollup_throughput() {
    let dir = tempfile::tempdir().unwrap();
    // Every event is recovered exactly: GA 1.
    write_system(
        dir.path(),
        "Alpha",
        &[
            (
                "Received block blk_1 of size 100, from /10.0.0.1:50010",
                "E1",
            ),
            (
                "Received block blk_-22 of size 7, from /10.0.0.2:50010",
                "E1",
            ),
            ("Deleting block blk_3 file /data/current/blk_3", "E2"),
            ("Deleting block blk_4 file /data/current/blk_4", "E2"),
        ],
    );
    // The truth splits one template into two events, which the miner merges: those four
    // lines are wrong, the other two right. GA = 2/6.
    write_system(
        dir.path(),
        "Beta",
        &[
            ("worker 1 started in 5 ms", "E1"),
            ("worker 2 started in 6 ms", "E1"),
            ("worker 3 started in 7 ms", "E2"),
            ("worker 4 started in 8 ms", "E2"),
            ("Connection reset by \"peer\"", "E3"),
            ("Connection reset by \"peer\"", "E3"),
        ],
    );
    // Not a system: no matching CSV inside.
    std::fs::create_dir_all(dir.path().join("Gamma")).unwrap();

    let dir_arg = dir.path().to_str().unwrap();
    let stdout = stdout_of(eval(&[
        dir_arg,
        "--dev",
        "Beta",
        "--speed-time",
        "10ms",
        "--rollup-time",
        "10ms",
    ]));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    assert_eq!(lines[0], "development:");
    assert!(
        lines[1].starts_with("  Beta GA=0.3333 lines_per_s="),
        "{stdout}"
    );
    assert_eq!(lines[2], "development mean GA=0.3333");
    assert_eq!(lines[3], "held-out:");
    assert!(
        lines[4].starts_with("  Alpha GA=1.0000 lines_per_s="),
        "{stdout}"
    );
    assert_eq!(lines[5], "held-out mean GA=1.0000");
    assert_eq!(lines[6], "mean GA=0.6667");
    let speed: f64 = lines[1].rsplit('=').next().unwrap().parse().unwrap();
    assert!(speed > 0.0);
    assert!(value(&stdout, "rollup lines_per_cpu_s=") > 0.0, "{stdout}");

    // Without --dev none of the default split's systems is present: all are held out.
    let stdout = stdout_of(eval(&[
        dir_arg,
        "--speed-time",
        "0ms",
        "--rollup-time",
        "0ms",
    ]));
    assert!(stdout.starts_with("development:\nheld-out:\n"), "{stdout}");
    assert_eq!(value(&stdout, "mean GA="), 0.6667);
}

#[test]
fn fails_clearly_without_systems_or_with_an_unknown_dev_system() {
    let dir = tempfile::tempdir().unwrap();
    let output = eval(&[dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no `<System>/<System>_2k.log_structured.csv` file")
    );

    write_system(dir.path(), "Alpha", &[("hello 1", "E1")]);
    let output = eval(&[dir.path().to_str().unwrap(), "--dev", "Alpha,Omega"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--dev names Omega, which has no `Omega/Omega_2k.log_structured.csv`"),
        "{stderr}"
    );
}

/// The Loghub samples beside the repository (`shared/loghub`), if present.
fn loghub() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/loghub");
    dir.join("HDFS/HDFS_2k.log_structured.csv")
        .is_file()
        .then_some(dir)
}

/// The eight systems of `shared/loghub`, by half of the default split.
const DEVELOPMENT: [&str; 4] = ["HDFS", "Hadoop", "Spark", "Zookeeper"];
const HELD_OUT: [&str; 4] = ["BGL", "HPC", "Thunderbird", "Windows"];

#[test]
fn miner_reaches_its_accuracy_on_the_loghub_samples() {
    let Some(dir) = loghub() else {
        eprintln!("skipped: no shared/loghub beside the repository");
        return;
    };
    let dir = dir.to_str().unwrap();
    let quick = ["--speed-time", "0ms", "--rollup-time", "0ms"];
    let stdout = stdout_of(eval(&[&[dir][..], &quick].concat()));
    let ga = accuracies(&stdout);
    assert_eq!(ga.len(), 8, "{stdout}");
    // Measured with the default settings (docs/log-templates.md): every system at least
    // 0.93 (HPC 0.9325; the others 0.98 and more), the mean 0.9861. The floors leave a
    // little room; a change that costs more than that is a regression to look at.
    for system in DEVELOPMENT.iter().chain(&HELD_OUT) {
        let floor = if *system == "HPC" { 0.92 } else { 0.97 };
        assert!(ga[*system] >= floor, "{system}: {stdout}");
    }
    assert!(value(&stdout, "development mean GA=") >= 0.99, "{stdout}");
    assert!(value(&stdout, "held-out mean GA=") >= 0.97, "{stdout}");
    assert!(value(&stdout, "mean GA=") >= 0.98, "{stdout}");

    // Raw lines, headers included, as when no collector parsed them.
    let stdout = stdout_of(eval(&[&[dir, "--raw"][..], &quick].concat()));
    let ga = accuracies(&stdout);
    assert_eq!(ga.len(), 8, "{stdout}");
    assert!(ga.values().all(|&g| g >= 0.65), "{stdout}");
    assert!(value(&stdout, "mean GA=") >= 0.91, "{stdout}");
}
