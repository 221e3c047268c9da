//! CPU time and resident memory of a process from Linux `/proc`, for the benchmark.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;

use crate::HarnessError;

/// Kernel clock ticks per second (`getconf CLK_TCK`, usually 100).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds the process has used so far (`/proc/<pid>/stat`
/// fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> Result<f64, HarnessError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| HarnessError::io(format!("reading /proc/{pid}/stat"), e))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / clock_ticks())
        .ok_or_else(|| HarnessError::Proc {
            pid,
            message: "no utime/stime in stat".into(),
        })
}

/// `utime + stime` in ticks from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may contain spaces, so fields are counted after its closing `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds by thread kind of the process's live threads (`/proc/<pid>/task/*`): the
/// thread name less trailing digits (`rocksdb:high0` counts as `rocksdb:high`). Threads that
/// already ended are not listed; their time is in [`cpu_seconds`] only.
pub fn cpu_seconds_by_thread(pid: u32) -> Result<BTreeMap<String, f64>, HarnessError> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| HarnessError::io(format!("listing /proc/{pid}/task"), e))?;
    let mut by_kind = BTreeMap::new();
    for task in tasks.flatten() {
        // A thread may end between the listing and the read: it is simply left out.
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue;
        };
        if let Some(ticks) = parse_cpu_ticks(&stat) {
            *by_kind.entry(thread_kind(&name)).or_insert(0.0) += ticks as f64 / clock_ticks();
        }
    }
    Ok(by_kind)
}

/// A thread's name without its trailing number (and newline).
pub fn thread_kind(name: &str) -> String {
    name.trim_end()
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_string()
}

/// Resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64, HarnessError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| HarnessError::io(format!("reading /proc/{pid}/status"), e))?;
    parse_vm_rss(&status).ok_or_else(|| HarnessError::Proc {
        pid,
        message: "no VmRSS line in status".into(),
    })
}

/// `VmRSS` in bytes from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_command_name() {
        let stat = "4242 (otel tail) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("rss") > 0);
        assert!(cpu_seconds(pid).expect("cpu") >= 0.0);
    }

    #[test]
    fn thread_kinds_drop_the_number_of_the_thread() {
        assert_eq!(thread_kind("rocksdb:high0\n"), "rocksdb:high");
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio-rt-worker");
    }

    #[test]
    fn threads_of_own_process_are_listed_with_their_time() {
        let spinner = std::thread::Builder::new()
            .name("spinner7".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut x = 0u64;
                while started.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                x
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(250));
        let by_kind = cpu_seconds_by_thread(std::process::id()).expect("threads");
        spinner.join().expect("join");
        assert!(
            by_kind.get("spinner").is_some_and(|secs| *secs > 0.0),
            "the spinning thread's time is listed under its kind: {by_kind:?}"
        );
    }
}
