//! Our extension beside the Collector's policy types: Refinery's dynamic samplers
//! (`ema_dynamic`, `ema_throughput`, `windowed_throughput`), with Refinery's field names in
//! snake case and Refinery's defaults, except where noted on a field.
//!
//! Each trace gets a key built from `key_fields` (the distinct values of those fields over the
//! trace's spans); rarer keys get lower sample rates. The sampler records the rate of a kept
//! trace on its spans (`SampleRate`, tracestate `ot=th:`) so counts can be re-weighted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, PolicyConfig, PolicyType};

/// Refinery's cap on distinct keys a dynamic sampler tracks (its `MaxKeys` default).
const DEFAULT_MAX_KEYS: usize = 500;

/// `ema_dynamic` block: Refinery's `EMADynamicSampler`. Aims at an average sample rate across
/// all traffic; per-key rates follow an exponential moving average of each key's count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaDynamicConfig {
    /// Fields whose values make up a trace's key (span or resource attributes, or the derived
    /// fields `name`, `span.kind`, `status.code`, `error`, `meta.span_count`; a `root.` prefix
    /// reads the root span only).
    pub key_fields: Vec<String>,
    /// Add the trace's span count to its key.
    pub use_trace_length: bool,
    /// The average sample rate aimed at (1 in N traces kept); also the rate of every trace
    /// before the first adjustment.
    pub goal_sample_rate: i64,
    /// How often the moving averages and the rates are recomputed.
    #[serde(with = "humantime_serde")]
    pub adjustment_interval: Duration,
    /// Weight of the newest interval in the moving average, in (0, 1]; larger adapts faster.
    pub weight: f64,
    /// Keys whose moving average falls below this are forgotten.
    pub age_out_value: f64,
    /// Recompute at once when an interval's count exceeds this multiple of the averages' sum;
    /// 0 or negative disables burst detection.
    pub burst_multiple: f64,
    /// Intervals after start-up before burst detection begins.
    pub burst_detection_delay: u32,
    /// Most distinct keys counted per interval; further keys share one overflow key.
    pub max_keys: usize,
}

impl Default for EmaDynamicConfig {
    fn default() -> Self {
        EmaDynamicConfig {
            key_fields: Vec::new(),
            use_trace_length: false,
            goal_sample_rate: 10,
            adjustment_interval: Duration::from_secs(15),
            weight: 0.5,
            age_out_value: 0.5,
            burst_multiple: 2.0,
            burst_detection_delay: 3,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// `ema_throughput` block: Refinery's `EMAThroughputSampler`. Aims at a number of kept spans
/// per second; per-key rates follow an exponential moving average of each key's count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaThroughputConfig {
    /// Fields whose values make up a trace's key (as in `ema_dynamic`).
    pub key_fields: Vec<String>,
    /// Add the trace's span count to its key.
    pub use_trace_length: bool,
    /// Kept spans per second aimed at, for the whole cluster (see `use_cluster_size`).
    pub goal_throughput_per_sec: f64,
    /// Divide the goal by the number of samplers on the ring, so the cluster as a whole meets
    /// it. Default true (Refinery's default is false: its goals are per node).
    pub use_cluster_size: bool,
    /// Sample rate of every trace before the first adjustment.
    pub initial_sample_rate: i64,
    /// How often the moving averages and the rates are recomputed.
    #[serde(with = "humantime_serde")]
    pub adjustment_interval: Duration,
    /// Weight of the newest interval in the moving average, in (0, 1].
    pub weight: f64,
    /// Keys whose moving average falls below this are forgotten.
    pub age_out_value: f64,
    /// Recompute at once when an interval's count exceeds this multiple of the averages' sum;
    /// 0 or negative disables burst detection.
    pub burst_multiple: f64,
    /// Intervals after start-up before burst detection begins.
    pub burst_detection_delay: u32,
    /// Most distinct keys counted per interval; further keys share one overflow key.
    pub max_keys: usize,
}

impl Default for EmaThroughputConfig {
    fn default() -> Self {
        EmaThroughputConfig {
            key_fields: Vec::new(),
            use_trace_length: false,
            goal_throughput_per_sec: 100.0,
            use_cluster_size: true,
            initial_sample_rate: 10,
            adjustment_interval: Duration::from_secs(15),
            weight: 0.5,
            age_out_value: 0.5,
            burst_multiple: 2.0,
            burst_detection_delay: 3,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// `windowed_throughput` block: Refinery's `WindowedThroughputSampler`. Aims at a number of
/// kept spans per second, split equally between the keys seen over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowedThroughputConfig {
    /// Fields whose values make up a trace's key (as in `ema_dynamic`).
    pub key_fields: Vec<String>,
    /// Add the trace's span count to its key.
    pub use_trace_length: bool,
    /// Kept spans per second aimed at, for the whole cluster (see `use_cluster_size`).
    pub goal_throughput_per_sec: f64,
    /// Divide the goal by the number of samplers on the ring. Default true.
    pub use_cluster_size: bool,
    /// How often the rates are recomputed.
    #[serde(with = "humantime_serde")]
    pub update_frequency: Duration,
    /// How far back the counts that rates are computed from reach; whole multiples of
    /// `update_frequency` (rounded down).
    #[serde(with = "humantime_serde")]
    pub lookback_frequency: Duration,
    /// Most distinct keys counted over the window; further keys share one overflow key.
    pub max_keys: usize,
}

impl Default for WindowedThroughputConfig {
    fn default() -> Self {
        WindowedThroughputConfig {
            key_fields: Vec::new(),
            use_trace_length: false,
            goal_throughput_per_sec: 100.0,
            use_cluster_size: true,
            update_frequency: Duration::from_secs(1),
            lookback_frequency: Duration::from_secs(30),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Whether `ty` is one of the dynamic sampling types.
pub fn is_dynamic(ty: PolicyType) -> bool {
    matches!(
        ty,
        PolicyType::EmaDynamic | PolicyType::EmaThroughput | PolicyType::WindowedThroughput
    )
}

/// Refuses a dynamic policy anywhere below a `not` or `drop` block at `path`: they would keep
/// the complement of a sample, whose weight no rate describes.
pub(super) fn refuse_dynamic_below(
    subs: &[&PolicyConfig],
    path: &str,
    parent: PolicyType,
) -> Result<(), ConfigError> {
    for sub in subs {
        if is_dynamic(sub.policy_type) {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "a `{}` policy cannot be used inside `{}`: the traces it leaves would \
                     carry no sample rate",
                    sub.policy_type.as_str(),
                    parent.as_str()
                ),
            ));
        }
        refuse_dynamic_below(&children(sub), path, parent)?;
    }
    Ok(())
}

/// The sub-policies nested directly in `cfg`.
fn children(cfg: &PolicyConfig) -> Vec<&PolicyConfig> {
    let mut out: Vec<&PolicyConfig> = Vec::new();
    if let Some(c) = &cfg.and {
        out.extend(&c.and_sub_policy);
    }
    if let Some(c) = &cfg.not {
        out.push(&c.not_sub_policy);
    }
    if let Some(c) = &cfg.drop {
        out.extend(&c.drop_sub_policy);
    }
    if let Some(c) = &cfg.composite {
        out.extend(&c.composite_sub_policy);
    }
    out
}

pub(super) fn validate_ema_dynamic(
    cfg: Option<&EmaDynamicConfig>,
    block: &str,
) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    validate_key_fields(&c.key_fields, block)?;
    require_rate(c.goal_sample_rate, &format!("{block}.goal_sample_rate"))?;
    validate_ema(
        block,
        c.adjustment_interval,
        c.weight,
        c.age_out_value,
        c.burst_multiple,
    )?;
    require_max_keys(c.max_keys, block)
}

pub(super) fn validate_ema_throughput(
    cfg: Option<&EmaThroughputConfig>,
    block: &str,
) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    validate_key_fields(&c.key_fields, block)?;
    require_goal(c.goal_throughput_per_sec, block)?;
    require_rate(
        c.initial_sample_rate,
        &format!("{block}.initial_sample_rate"),
    )?;
    validate_ema(
        block,
        c.adjustment_interval,
        c.weight,
        c.age_out_value,
        c.burst_multiple,
    )?;
    require_max_keys(c.max_keys, block)
}

pub(super) fn validate_windowed(
    cfg: Option<&WindowedThroughputConfig>,
    block: &str,
) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    validate_key_fields(&c.key_fields, block)?;
    require_goal(c.goal_throughput_per_sec, block)?;
    require_interval(c.update_frequency, &format!("{block}.update_frequency"))?;
    if c.lookback_frequency < c.update_frequency {
        return Err(ConfigError::invalid(
            format!("{block}.lookback_frequency"),
            format!(
                "must be at least update_frequency ({})",
                humantime::format_duration(c.update_frequency)
            ),
        ));
    }
    require_max_keys(c.max_keys, block)
}

fn validate_key_fields(fields: &[String], block: &str) -> Result<(), ConfigError> {
    if fields.is_empty() {
        return Err(ConfigError::invalid(
            format!("{block}.key_fields"),
            "must list at least one field",
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        let name = field.strip_prefix("root.").unwrap_or(field);
        if name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{block}.key_fields[{i}]"),
                "must name a field",
            ));
        }
    }
    Ok(())
}

fn require_rate(rate: i64, path: &str) -> Result<(), ConfigError> {
    if rate < 1 {
        return Err(ConfigError::invalid(
            path,
            format!("must be at least 1 (1 keeps every trace), got {rate}"),
        ));
    }
    Ok(())
}

fn require_goal(goal: f64, block: &str) -> Result<(), ConfigError> {
    if !goal.is_finite() || goal <= 0.0 {
        return Err(ConfigError::invalid(
            format!("{block}.goal_throughput_per_sec"),
            format!("must be a number greater than 0, got {goal}"),
        ));
    }
    Ok(())
}

fn require_interval(interval: Duration, path: &str) -> Result<(), ConfigError> {
    if interval < Duration::from_millis(1) {
        return Err(ConfigError::invalid(path, "must be at least 1ms"));
    }
    Ok(())
}

fn require_max_keys(max_keys: usize, block: &str) -> Result<(), ConfigError> {
    if max_keys == 0 {
        return Err(ConfigError::invalid(
            format!("{block}.max_keys"),
            "must be greater than 0",
        ));
    }
    Ok(())
}

fn validate_ema(
    block: &str,
    interval: Duration,
    weight: f64,
    age_out_value: f64,
    burst_multiple: f64,
) -> Result<(), ConfigError> {
    require_interval(interval, &format!("{block}.adjustment_interval"))?;
    if !(weight > 0.0 && weight <= 1.0) {
        return Err(ConfigError::invalid(
            format!("{block}.weight"),
            format!("must be greater than 0 and at most 1, got {weight}"),
        ));
    }
    if !age_out_value.is_finite() || age_out_value < 0.0 {
        return Err(ConfigError::invalid(
            format!("{block}.age_out_value"),
            format!("must be a number of at least 0, got {age_out_value}"),
        ));
    }
    if !burst_multiple.is_finite() || (burst_multiple > 0.0 && burst_multiple < 1.0) {
        return Err(ConfigError::invalid(
            format!("{block}.burst_multiple"),
            format!("must be at least 1, or 0 or less to disable, got {burst_multiple}"),
        ));
    }
    Ok(())
}
