//! External tools some end-to-end tests need — the OpenTelemetry Python SDK and `helm` —
//! and whether this machine has them.
//!
//! A test whose tool is missing must not pass as if it had run. The build script
//! (`integration-tests/build.rs`, which compiles this file too) probes once per build and
//! sets the cfgs [`PYTHON_SDK_CFG`] and [`HELM_CFG`]; the tests that need a tool are
//! `#[cfg_attr(not(<cfg>), ignore = "...")]`, so `cargo test` reports them as ignored, and a
//! guard test per tool ([`guard`]) fails when the `CI` environment variable is set and the
//! tool is missing, or when the probe at build time and at test time disagree (a tool
//! installed or removed since the last build).
//!
//! Standard library only: the build script includes this file with `#[path]`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// cfg set by the build script when [`python_sdk_missing`] finds nothing missing.
pub const PYTHON_SDK_CFG: &str = "python_sdk";
/// cfg set by the build script when [`helm_missing`] finds nothing missing.
pub const HELM_CFG: &str = "helm";
/// Cfg set when this machine lets the tests mount a size-limited tmpfs (root, or a user
/// namespace with mount rights).
pub const TMPFS_CFG: &str = "tmpfs_mount";
/// Environment variable naming a helm binary to use instead of the cached one.
pub const HELM_BIN_ENV: &str = "OTEL_TAIL_HELM_BIN";
/// Environment variables the probes read, besides `PATH` and `HOME`: the build script
/// reruns when any of them changes.
pub const PROBED_ENV: [&str; 6] = [
    "CI",
    HELM_BIN_ENV,
    "PYENV_VERSION",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
];

/// Python modules the SDK tests import: the SDK and both OTLP trace exporters.
const PYTHON_MODULES: &str = "opentelemetry.sdk.trace, \
     opentelemetry.exporter.otlp.proto.http.trace_exporter, \
     opentelemetry.exporter.otlp.proto.grpc.trace_exporter";

/// Why the Python SDK tests cannot run here, or `None` when `python3` imports the SDK and
/// both OTLP exporters.
pub fn python_sdk_missing() -> Option<String> {
    let imported = Command::new("python3")
        .args(["-c", &format!("import {PYTHON_MODULES}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!imported).then(|| {
        "python3 with the OpenTelemetry SDK and OTLP exporters is not installed \
         (pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http \
         opentelemetry-exporter-otlp-proto-grpc)"
            .to_owned()
    })
}

/// Cfg set when a container runtime base image is available to build the Dockerfile on
/// (see [`container_base_missing`]).
pub const CONTAINER_CFG: &str = "container_base";
/// Names the local base image `.ci/base-image.sh` made (CI sets it).
pub const BASE_IMAGE_ENV: &str = "OTEL_TAIL_BASE_IMAGE";

/// Why the container image cannot be built here, or `None` when `$OTEL_TAIL_BASE_IMAGE`
/// names an image podman has.
pub fn container_base_missing() -> Option<String> {
    let Some(image) = std::env::var_os(BASE_IMAGE_ENV) else {
        return Some(format!(
            "no container base image: run `export {BASE_IMAGE_ENV}=$(.ci/base-image.sh)` (needs podman and debootstrap)"
        ));
    };
    let exists = Command::new("podman")
        .args(["image", "exists"])
        .arg(&image)
        .status()
        .is_ok_and(|s| s.success());
    (!exists).then(|| format!("podman has no image {}", image.to_string_lossy()))
}

/// Why a tmpfs cannot be mounted here (the disk-full test needs a small filesystem), or
/// `None` when mounting and unmounting one works.
pub fn tmpfs_missing() -> Option<String> {
    let dir = std::env::temp_dir().join(format!("otel-tail-tmpfs-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let _ = Command::new("umount").arg(&dir).status();
    }
    let _ = std::fs::remove_dir(&dir);
    (!mounted).then(|| "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)".to_owned())
}

/// Where `helm/otel-tail-sampler/ci/check.sh` installs helm:
/// `$HOME/.cache/otel-tail-sampler/go-bin/helm` (`None` without `HOME`).
pub fn cached_helm() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/otel-tail-sampler/go-bin/helm"))
}

/// Why helm cannot be had here, or `None` when `$OTEL_TAIL_HELM_BIN` is set, the cached
/// helm exists, or `go` is on `PATH` to install it.
pub fn helm_missing() -> Option<String> {
    if std::env::var_os(HELM_BIN_ENV).is_some() || cached_helm().is_some_and(|p| p.is_file()) {
        return None;
    }
    (!go_on_path()).then(|| {
        format!(
            "helm is not installed (no ${HELM_BIN_ENV}, no {}) and go, needed to install it, \
             is not on PATH (run helm/otel-tail-sampler/ci/check.sh --install-only)",
            cached_helm().map_or_else(|| "$HOME".to_owned(), |p| p.display().to_string())
        )
    })
}

/// Whether `go version` runs: `go install` can build helm.
pub fn go_on_path() -> bool {
    Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The verdict of a guard test on one tool: `Err` with the reason the test must fail, when
/// `ci` (the `CI` variable is set and not empty) and the tool is `missing_now`, or when the
/// build-time probe (`built_with`: the tool's cfg was set) disagrees with the probe now.
pub fn guard(
    tool: &str,
    cfg: &str,
    built_with: bool,
    missing_now: Option<String>,
    ci: bool,
) -> Result<(), String> {
    match (built_with, missing_now) {
        (_, Some(reason)) if ci => Err(format!(
            "CI is set but the {tool} tests cannot run: {reason}"
        )),
        (true, Some(reason)) => Err(format!(
            "the {tool} tests were built to run (cfg {cfg}) but now cannot: {reason}; \
             `touch integration-tests/build.rs` to probe again"
        )),
        (false, None) => Err(format!(
            "{tool} is available now but the tests were built without it (cfg {cfg} unset), \
             so they are ignored; `touch integration-tests/build.rs` to probe again"
        )),
        _ => Ok(()),
    }
}

/// Whether the `CI` environment variable is set and not empty.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::guard;

    fn missing() -> Option<String> {
        Some("not installed".to_owned())
    }

    #[test]
    fn outside_ci_a_missing_tool_is_fine_when_the_build_knew() {
        assert_eq!(guard("x", "x", false, missing(), false), Ok(()));
        assert_eq!(guard("x", "x", true, None, false), Ok(()));
        assert_eq!(guard("x", "x", true, None, true), Ok(()));
    }

    #[test]
    fn under_ci_a_missing_tool_fails_whatever_the_build_said() {
        for built_with in [false, true] {
            let error = guard("helm", "helm", built_with, missing(), true).unwrap_err();
            assert!(error.contains("CI is set"), "{error}");
            assert!(error.contains("not installed"), "{error}");
        }
    }

    #[test]
    fn a_stale_probe_fails_both_ways() {
        let installed_since = guard("x", "x", false, None, false).unwrap_err();
        assert!(
            installed_since.contains("built without it"),
            "{installed_since}"
        );
        let removed_since = guard("x", "x", true, missing(), false).unwrap_err();
        assert!(removed_since.contains("now cannot"), "{removed_since}");
    }
}
