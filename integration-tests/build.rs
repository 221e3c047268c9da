//! Probes the external tools some end-to-end tests need and sets a cfg for each one found,
//! so tests without their tool are reported as ignored rather than passed. See
//! `src/prerequisites.rs`.

#[path = "src/prerequisites.rs"]
#[allow(dead_code)]
mod prerequisites;

use prerequisites::{
    BASE_IMAGE_ENV, CONTAINER_CFG, HELM_CFG, PROBED_ENV, PYTHON_SDK_CFG, TMPFS_CFG, cached_helm,
    container_base_missing, helm_missing, python_sdk_missing, tmpfs_missing,
};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/prerequisites.rs");
    for var in PROBED_ENV.iter().chain(&["PATH", "HOME", BASE_IMAGE_ENV]) {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // Only an existing file: a missing one would rerun this script (and rebuild the crate)
    // on every build.
    if let Some(helm) = cached_helm().filter(|p| p.is_file()) {
        println!("cargo::rerun-if-changed={}", helm.display());
    }
    for (cfg, missing) in [
        (PYTHON_SDK_CFG, python_sdk_missing()),
        (HELM_CFG, helm_missing()),
        (TMPFS_CFG, tmpfs_missing()),
        (CONTAINER_CFG, container_base_missing()),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if missing.is_none() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
