//! Locating (and if needed building) the `otel-tail-sampler` and `otel-tail-router`
//! binaries.
//!
//! A test executable lives in `$CARGO_TARGET_DIR/<profile>/deps/`, a binary run with
//! `cargo run` in `$CARGO_TARGET_DIR/<profile>/`; the product binaries of the same
//! profile sit in `$CARGO_TARGET_DIR/<profile>/`. `cargo test -p
//! otel-tail-integration-tests` does not build another package's binary, so the
//! harness runs `cargo build -p <package>` itself, once per process and binary, when
//! the binary is missing or older than the sources it is built from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::HarnessError;

/// Environment variable that points the harness at a prebuilt sampler binary
/// (skips the staleness check and the build).
pub const SAMPLER_BIN_ENV: &str = "OTEL_TAIL_SAMPLER_BIN";

/// Environment variable that points the harness at a prebuilt router binary.
pub const ROUTER_BIN_ENV: &str = "OTEL_TAIL_ROUTER_BIN";

/// One product binary the harness can locate and build.
struct Product {
    /// Cargo package and executable name (they are the same).
    name: &'static str,
    /// Environment variable overriding the path.
    env: &'static str,
    /// Workspace members whose sources end up in the binary.
    source_dirs: &'static [&'static str],
}

const SAMPLER: Product = Product {
    name: "otel-tail-sampler",
    env: SAMPLER_BIN_ENV,
    source_dirs: &["sampler", "shared", "proto"],
};

const ROUTER: Product = Product {
    name: "otel-tail-router",
    env: ROUTER_BIN_ENV,
    source_dirs: &["router", "shared", "proto"],
};

static SAMPLER_BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static ROUTER_BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Returns the path of an up-to-date sampler binary of the current build profile,
/// building it once per process when it is missing or stale.
pub fn sampler_binary() -> Result<PathBuf, HarnessError> {
    SAMPLER_BIN
        .get_or_init(|| locate_or_build(&SAMPLER).map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

/// Returns the path of an up-to-date router binary of the current build profile,
/// building it once per process when it is missing or stale.
pub fn router_binary() -> Result<PathBuf, HarnessError> {
    ROUTER_BIN
        .get_or_init(|| locate_or_build(&ROUTER).map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

/// The workspace root (the parent of this package's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn locate_or_build(product: &Product) -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(product.env) {
        return Ok(PathBuf::from(path));
    }
    let profile_dir = profile_dir()?;
    let binary = profile_dir.join(product.name);
    let root = workspace_root();
    let fresh = match modified(&binary) {
        Some(built) => newest_source(&root, product.source_dirs).is_none_or(|src| src <= built),
        None => false,
    };
    if !fresh {
        build(&root, &profile_dir, product.name)?;
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(HarnessError::Build(format!(
            "cargo build succeeded but {} does not exist",
            binary.display()
        )))
    }
}

/// `$CARGO_TARGET_DIR/<profile>` of the running executable.
fn profile_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::io("locating the current executable", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| HarnessError::Build(format!("{} has no parent", exe.display())))?
        .to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    Ok(dir)
}

fn build(root: &Path, profile_dir: &Path, name: &str) -> Result<(), HarnessError> {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| HarnessError::Build("profile dir has no parent".into()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "-p", name, "--bin", name])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("[harness] building {name}: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| HarnessError::io("running cargo build", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Build(format!("{cmd:?} exited with {status}")))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of any source or manifest a binary is built from.
fn newest_source(root: &Path, source_dirs: &[&str]) -> Option<SystemTime> {
    let mut newest = [root.join("Cargo.toml"), root.join("Cargo.lock")]
        .iter()
        .filter_map(|p| modified(p))
        .max();
    for dir in source_dirs {
        newest = newest.max(newest_in(&root.join(dir)));
    }
    newest
}

fn newest_in(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if entry.file_name() != "target" {
                    stack.push(path);
                }
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}
