//! Live reload of the configuration file: on SIGHUP, or when
//! `sampler.config_watch_interval` finds the file changed.
//!
//! The new file is loaded and validated exactly as at start (same key-path errors); an
//! invalid file is refused and everything stays as it was. A valid file's policy set
//! (`sampler.policies`, `sampler.sample_on_first_match`) replaces the running one
//! atomically for traces decided from then on. Every other key needs a restart: keys that
//! changed are named in a warning, and the running values stay. Each attempt is counted in
//! `otel_tail_config_reloads_total{outcome}` (`applied`, `unchanged`, `rejected`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use otel_tail_shared::config::Config;
use otel_tail_shared::telemetry::names;
use serde_json::Value;
use tokio::sync::watch;

use crate::engine::Engine;

/// Keys a reload applies; any other change needs a restart.
pub const RELOADABLE: [&str; 2] = ["sampler.policies", "sampler.sample_on_first_match"];

/// How one reload attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The policy set changed and was applied; `restart_needed` lists other keys that
    /// changed and were not applied.
    Applied {
        /// Changed keys that need a restart.
        restart_needed: Vec<String>,
    },
    /// The policy set did not change; `restart_needed` as for `Applied`.
    Unchanged {
        /// Changed keys that need a restart.
        restart_needed: Vec<String>,
    },
    /// The file could not be read, or is invalid; nothing changed.
    Rejected {
        /// Why, naming the key as a start-up error would.
        reason: String,
    },
}

impl Outcome {
    /// The `outcome` label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "applied",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Rejected { .. } => "rejected",
        }
    }
}

/// The leaf key paths (`section.key[.sub]`) whose values differ between `old` and `new`.
/// Lists count as one value: `sampler.policies` changed, not `sampler.policies[2].name`.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff("", &old, &new, &mut out);
    out
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&child, x, y, out),
                    _ => out.push(child),
                }
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

/// One reload of `path` over `current` (the configuration in force, updated in place
/// when the policy set is applied).
pub fn reload_once(path: &Path, current: &mut Config, engine: &Engine) -> Outcome {
    let outcome = match Config::load(path) {
        Err(error) => Outcome::Rejected {
            reason: error.to_string(),
        },
        Ok(new) => apply(current, new, engine),
    };
    metrics::counter!(names::CONFIG_RELOADS, "outcome" => outcome.label()).increment(1);
    match &outcome {
        Outcome::Rejected { reason } => {
            tracing::error!(%reason, "config reload refused; the running configuration stays")
        }
        Outcome::Applied { restart_needed } | Outcome::Unchanged { restart_needed } => {
            if !restart_needed.is_empty() {
                tracing::warn!(
                    keys = ?restart_needed,
                    "config reload: these keys changed but only take effect after a restart"
                );
            }
            if let Outcome::Applied { .. } = outcome {
                tracing::info!(
                    "config reload: new policy set applies to traces decided from now on"
                );
            }
        }
    }
    outcome
}

fn apply(current: &mut Config, new: Config, engine: &Engine) -> Outcome {
    let changed = changed_keys(current, &new);
    let policies_changed = changed.iter().any(|k| RELOADABLE.contains(&k.as_str()));
    let restart_needed: Vec<String> = changed
        .into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()))
        .collect();
    if !policies_changed {
        return Outcome::Unchanged { restart_needed };
    }
    if let Err(error) =
        engine.replace_policies(&new.sampler.policies, new.sampler.sample_on_first_match)
    {
        return Outcome::Rejected {
            reason: format!("sampler.policies: {error}"),
        };
    }
    current.sampler.policies = new.sampler.policies;
    current.sampler.sample_on_first_match = new.sampler.sample_on_first_match;
    Outcome::Applied { restart_needed }
}

/// Reloads `path` on SIGHUP, and every `watch_interval` (unless zero) when the file's
/// content changed, until `stop` reads `true`.
pub(crate) async fn reload_loop(
    path: PathBuf,
    mut current: Config,
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
) {
    let watch_interval = current.sampler.config_watch_interval;
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; config reload only by file watch");
            None
        }
    };
    let mut last_seen = std::fs::read(&path).ok();
    let tick = if watch_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        watch_interval
    };
    loop {
        let by_signal = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            () = tokio::time::sleep(tick) => false,
        };
        if !by_signal {
            if watch_interval.is_zero() {
                continue;
            }
            let content = std::fs::read(&path).ok();
            if content == last_seen {
                continue;
            }
            last_seen = content;
        } else {
            last_seen = std::fs::read(&path).ok();
        }
        let engine_ref = engine.clone();
        let path_ref = path.clone();
        let mut config = current.clone();
        let reloaded = tokio::task::spawn_blocking(move || {
            let outcome = reload_once(&path_ref, &mut config, &engine_ref);
            (outcome, config)
        })
        .await;
        if let Ok((_, config)) = reloaded {
            current = config;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, &|_| None).unwrap()
    }

    #[test]
    fn changed_keys_name_leaves_and_whole_lists() {
        let old = config(
            "sampler: {decision_wait: 1s, policies: [{name: a, type: always_sample}]}\nreceiver: {max_request_bytes: 1000}\n",
        );
        let new = config(
            "sampler: {decision_wait: 2s, policies: [{name: b, type: always_sample}]}\nreceiver: {max_request_bytes: 1000}\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "sampler.decision_wait".to_string(),
                "sampler.policies".to_string()
            ]
        );
        assert!(changed_keys(&old, &old.clone()).is_empty());
    }
}
