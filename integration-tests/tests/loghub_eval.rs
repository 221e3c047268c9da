//! Runs the real `loghub-eval` binary on a tiny synthetic Loghub-layout dataset with a
//! known grouping accuracy.

use std::process::Command;

/// Writes `<dir>/<system>/<system>_2k.log_structured.csv` with the given rows.
fn write_system(dir: &std::path::Path, system: &str, rows: &[(&str, &str)]) {
    let folder = dir.join(system);
    std::fs::create_dir_all(&folder).unwrap();
    let mut csv = String::from("LineId,Level,Content,EventId,EventTemplate\n");
    for (i, (content, event)) in rows.iter().enumerate() {
        let quoted = content.replace('"', "\"\"");
        csv.push_str(&format!("{},INFO,\"{quoted}\",{event},-\n", i + 1));
    }
    std::fs::write(folder.join(format!("{system}_2k.log_structured.csv")), csv).unwrap();
}

#[test]
fn prints_grouping_accuracy_per_system_and_the_mean() {
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

    let output = Command::new(env!("CARGO_BIN_EXE_loghub-eval"))
        .arg(dir.path())
        .args(["--speed-time", "10ms"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("Alpha GA=1.0000 lines_per_s="),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("Beta GA=0.3333 lines_per_s="),
        "{stdout}"
    );
    let speed: f64 = lines[1].rsplit('=').next().unwrap().parse().unwrap();
    assert!(speed > 0.0);
    assert_eq!(lines[2], "mean GA=0.6667");
}

#[test]
fn fails_clearly_without_systems() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_loghub-eval"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no `<System>/<System>_2k.log_structured.csv` file")
    );
}
