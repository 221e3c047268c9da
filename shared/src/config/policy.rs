//! The tail-sampling policy syntax of the OpenTelemetry Collector's `tail_sampling` processor.
//!
//! A policy list pasted from a Collector's `processors.tail_sampling.policies` loads unchanged:
//! the same `type` names, the same per-type blocks and the same field names. Each policy is one
//! flat struct with a `name`, a `type` and one optional block per type (as the Collector's
//! `PolicyCfg` is), because serde cannot combine an internally tagged enum with
//! `deny_unknown_fields`; [`PolicyConfig::validate`] then checks that exactly the block named by
//! `type` is present. Compound policies (`and`, `not`, `drop`, `composite`) nest the same struct.
//!
//! Deliberate differences from the Collector, all of them stricter checks of configurations that
//! would silently misbehave there:
//! - a block for another type than `type` is an error (the Collector ignores it);
//! - `sampling_percentage` below 0 is an error; above 100 it means "sample all", as in the
//!   Collector;
//! - `rate_limiting.spans_per_second`, `bytes_limiting.bytes_per_second` and
//!   `composite.max_total_spans_per_second` must be positive;
//! - `rate_allocation` entries must name a `composite_sub_policy` and sum to at most 100%;
//! - `drop` is accepted only as a top-level policy (its "drop" verdict means nothing nested);
//! - `ottl_condition` needs at least one non-empty condition (the conditions themselves are
//!   parsed when the sampler builds its policies).
//!
//! Beside the Collector's types sit our dynamic sampling types (`ema_dynamic`,
//! `ema_throughput`, `windowed_throughput`, Refinery's samplers), configured in [`dynamic`].

use serde::{Deserialize, Serialize};

use super::ConfigError;

pub mod dynamic;

pub use dynamic::{EmaDynamicConfig, EmaThroughputConfig, WindowedThroughputConfig};

/// One tail-sampling policy (top level, or a sub-policy of `and`, `not`, `drop`, `composite`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name used in metrics, logs and the `tailsampling.policy` span attribute.
    #[serde(default)]
    pub name: String,
    /// Which kind of policy this is; selects the block below that configures it.
    #[serde(rename = "type")]
    pub policy_type: PolicyType,
    /// Keep logs and metrics correlated with traces this policy keeps (our extension; top
    /// level only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlate: Option<bool>,
    /// `latency`: trace duration bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyConfig>,
    /// `numeric_attribute`: integer attribute range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric_attribute: Option<NumericAttributeConfig>,
    /// `probabilistic`: hash-based percentage of trace ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilistic: Option<ProbabilisticConfig>,
    /// `status_code`: span status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<StatusCodeConfig>,
    /// `string_attribute`: exact or regex string attribute match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_attribute: Option<StringAttributeConfig>,
    /// `boolean_attribute`: boolean attribute match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean_attribute: Option<BooleanAttributeConfig>,
    /// `span_count`: number of spans in the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_count: Option<SpanCountConfig>,
    /// `trace_state`: W3C tracestate values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_state: Option<TraceStateConfig>,
    /// `rate_limiting`: spans per second budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiting: Option<RateLimitingConfig>,
    /// `bytes_limiting`: bytes per second token bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_limiting: Option<BytesLimitingConfig>,
    /// `and`: every sub-policy must sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and: Option<AndConfig>,
    /// `not`: inverts one sub-policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<NotConfig>,
    /// `drop`: drops the trace when every sub-policy samples it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropConfig>,
    /// `composite`: ordered sub-policies sharing a spans-per-second budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<CompositeConfig>,
    /// `ema_dynamic` (our extension): Refinery's EMA dynamic sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_dynamic: Option<EmaDynamicConfig>,
    /// `ema_throughput` (our extension): Refinery's EMA throughput sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema_throughput: Option<EmaThroughputConfig>,
    /// `windowed_throughput` (our extension): Refinery's windowed throughput sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windowed_throughput: Option<WindowedThroughputConfig>,
    /// `ottl_condition`: OTTL boolean conditions over spans and span events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ottl_condition: Option<OttlConditionConfig>,
}

/// The policy types of the Collector's `tail_sampling` processor that this sampler implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    /// Samples every trace.
    AlwaysSample,
    /// Samples traces whose duration (earliest start to latest end) is within bounds.
    Latency,
    /// Samples traces with an integer attribute in a range.
    NumericAttribute,
    /// Samples a percentage of traces, deterministically on the trace id.
    Probabilistic,
    /// Samples traces with a span whose status code is listed.
    StatusCode,
    /// Samples traces with a string attribute equal to (or matching) a listed value.
    StringAttribute,
    /// Samples traces with a boolean attribute of the given value.
    BooleanAttribute,
    /// Samples traces whose span count is within bounds.
    SpanCount,
    /// Samples traces with a span whose tracestate has a listed value under a key.
    TraceState,
    /// Samples traces with a span whose W3C `sampled` flag is set.
    TraceFlags,
    /// Samples traces while a spans-per-second budget lasts.
    RateLimiting,
    /// Samples traces while a bytes-per-second token bucket lasts.
    BytesLimiting,
    /// Samples when every sub-policy samples.
    And,
    /// Samples when its sub-policy does not, and the other way round.
    Not,
    /// Drops the trace (over every other policy) when every sub-policy samples.
    Drop,
    /// Ordered sub-policies with per-policy shares of a spans-per-second budget.
    Composite,
    /// Per-key sample rates aiming at an average rate (Refinery's `EMADynamicSampler`).
    EmaDynamic,
    /// Per-key sample rates aiming at kept spans per second (Refinery's `EMAThroughputSampler`).
    EmaThroughput,
    /// Kept spans per second split equally between keys (Refinery's
    /// `WindowedThroughputSampler`).
    WindowedThroughput,
    /// Samples traces with a span or span event for which an OTTL condition is true.
    OttlCondition,
}

impl PolicyType {
    /// The name used in YAML (`always_sample`, ...), which is also the name of the type's block.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::AlwaysSample => "always_sample",
            PolicyType::Latency => "latency",
            PolicyType::NumericAttribute => "numeric_attribute",
            PolicyType::Probabilistic => "probabilistic",
            PolicyType::StatusCode => "status_code",
            PolicyType::StringAttribute => "string_attribute",
            PolicyType::BooleanAttribute => "boolean_attribute",
            PolicyType::SpanCount => "span_count",
            PolicyType::TraceState => "trace_state",
            PolicyType::TraceFlags => "trace_flags",
            PolicyType::RateLimiting => "rate_limiting",
            PolicyType::BytesLimiting => "bytes_limiting",
            PolicyType::And => "and",
            PolicyType::Not => "not",
            PolicyType::Drop => "drop",
            PolicyType::Composite => "composite",
            PolicyType::EmaDynamic => "ema_dynamic",
            PolicyType::EmaThroughput => "ema_throughput",
            PolicyType::WindowedThroughput => "windowed_throughput",
            PolicyType::OttlCondition => "ottl_condition",
        }
    }

    /// Whether this type takes a configuration block of its own name.
    fn has_block(self) -> bool {
        !matches!(self, PolicyType::AlwaysSample | PolicyType::TraceFlags)
    }
}

/// `latency` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Lower bound in milliseconds: inclusive without an upper bound, exclusive with one
    /// (the Collector's rule).
    pub threshold_ms: i64,
    /// Inclusive upper bound in milliseconds; 0 means none.
    pub upper_threshold_ms: i64,
}

/// `numeric_attribute` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumericAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// Inclusive minimum; none means unbounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value: Option<i64>,
    /// Inclusive maximum; none means unbounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value: Option<i64>,
    /// Sample traces where no resource or span has the value in range.
    pub invert_match: bool,
}

/// `probabilistic` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbabilisticConfig {
    /// Salt hashed with the trace id; layers sampling at different rates should use different
    /// salts. Empty means the Collector's default salt.
    pub hash_salt: String,
    /// Percentage of traces to sample, 0 to 100 (larger values sample everything).
    pub sampling_percentage: f64,
}

/// A span status code name, as the Collector spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusCodeName {
    /// `STATUS_CODE_OK`.
    #[serde(rename = "OK")]
    Ok,
    /// `STATUS_CODE_ERROR`.
    #[serde(rename = "ERROR")]
    Error,
    /// `STATUS_CODE_UNSET`.
    #[serde(rename = "UNSET")]
    Unset,
}

/// `status_code` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusCodeConfig {
    /// Codes that sample the trace when any span has one of them.
    pub status_codes: Vec<StatusCodeName>,
}

/// `string_attribute` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StringAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// Exact values, or regular expressions (unanchored, like Go's `MatchString`) when
    /// `enabled_regex_matching` is set.
    pub values: Vec<String>,
    /// Treat `values` as regular expressions.
    pub enabled_regex_matching: bool,
    /// Accepted for Collector compatibility (its regex result cache size); matching here needs
    /// no cache.
    pub cache_max_size: usize,
    /// Sample traces where no resource or span has a matching value.
    pub invert_match: bool,
}

/// `boolean_attribute` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BooleanAttributeConfig {
    /// Attribute key, looked up on resources and spans.
    pub key: String,
    /// The value that matches.
    pub value: bool,
    /// Sample traces where no resource or span has the value.
    pub invert_match: bool,
}

/// `span_count` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanCountConfig {
    /// Inclusive minimum number of spans.
    pub min_spans: i32,
    /// Inclusive maximum number of spans; 0 means none.
    pub max_spans: i32,
}

/// `trace_state` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceStateConfig {
    /// tracestate list-member key.
    pub key: String,
    /// Values that match.
    pub values: Vec<String>,
}

/// `rate_limiting` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitingConfig {
    /// Sustained spans per second of sampled traces (bursts up to twice that, as in the
    /// Collector's token bucket).
    pub spans_per_second: i64,
}

/// `bytes_limiting` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BytesLimitingConfig {
    /// Sustained bytes per second of sampled traces.
    pub bytes_per_second: i64,
    /// Token bucket size in bytes; 0 means twice `bytes_per_second`. A trace larger than this
    /// never passes.
    pub burst_capacity: i64,
}

/// `and` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AndConfig {
    /// Sub-policies that must all sample.
    pub and_sub_policy: Vec<PolicyConfig>,
}

/// `not` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotConfig {
    /// The single sub-policy whose decision is inverted.
    pub not_sub_policy: Box<PolicyConfig>,
}

/// `drop` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropConfig {
    /// Sub-policies that must all sample for the trace to be dropped.
    pub drop_sub_policy: Vec<PolicyConfig>,
}

/// `composite` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompositeConfig {
    /// Budget of sampled spans per second across all sub-policies.
    pub max_total_spans_per_second: i64,
    /// Accepted for Collector compatibility; sub-policies are evaluated in the order of
    /// `composite_sub_policy`, as in the Collector.
    pub policy_order: Vec<String>,
    /// The sub-policies, evaluated in order; the first that samples spends its budget.
    pub composite_sub_policy: Vec<PolicyConfig>,
    /// Shares of the budget per sub-policy; sub-policies not listed share what is left equally.
    pub rate_allocation: Vec<RateAllocationConfig>,
}

/// What an `ottl_condition` policy does when evaluating a condition fails (a converter given a
/// value it cannot handle, say), as OTTL's `error_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OttlErrorMode {
    /// The condition counts as false and the error is logged.
    Ignore,
    /// The condition counts as false, without a log.
    Silent,
    /// The policy errors for the trace: it takes no part in the decision (the Collector's
    /// default).
    #[default]
    Propagate,
}

/// `ottl_condition` block: conditions in the OpenTelemetry Transformation Language. The trace
/// is sampled when any condition is true for any of its spans (`span`) or span events
/// (`spanevent`). The conditions are parsed when the sampler builds its policies; a syntax
/// error, an unknown path or an unknown function stops start-up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OttlConditionConfig {
    /// What an evaluation error does.
    pub error_mode: OttlErrorMode,
    /// Conditions in the span context (`name`, `attributes["k"]`, `status.code`, ...).
    pub span: Vec<String>,
    /// Conditions in the span event context (`name`, `attributes["k"]`, `span.name`, ...).
    pub spanevent: Vec<String>,
}

/// One `composite.rate_allocation` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateAllocationConfig {
    /// Name of a `composite_sub_policy`.
    pub policy: String,
    /// Percent of `max_total_spans_per_second` given to it.
    pub percent: i64,
}

/// Where a policy sits, which decides the types and keys it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Nested,
}

impl PolicyConfig {
    /// Whether traces this policy keeps correlate by resource and time window: the
    /// `correlate` flag, else true for `status_code` and `latency` (errors and slow
    /// requests are what logs and fine-grained metrics explain) and false for every other
    /// type (a baseline or attribute match would keep whole pods' logs for no reason).
    pub fn correlates(&self) -> bool {
        self.correlate.unwrap_or(matches!(
            self.policy_type,
            PolicyType::StatusCode | PolicyType::Latency
        ))
    }

    /// The first type in this policy (itself or a sub-policy) whose outcome depends on earlier
    /// decisions (`rate_limiting`, `bytes_limiting`, `composite`), if any.
    pub fn stateful_type(&self) -> Option<PolicyType> {
        match self.policy_type {
            PolicyType::RateLimiting | PolicyType::BytesLimiting | PolicyType::Composite => {
                Some(self.policy_type)
            }
            _ => {
                let subs: Vec<&PolicyConfig> = match (&self.and, &self.drop, &self.not) {
                    (Some(c), _, _) => c.and_sub_policy.iter().collect(),
                    (_, Some(c), _) => c.drop_sub_policy.iter().collect(),
                    (_, _, Some(c)) => vec![&*c.not_sub_policy],
                    _ => Vec::new(),
                };
                subs.into_iter().find_map(PolicyConfig::stateful_type)
            }
        }
    }

    /// Checks values; `path` names this policy (`sampler.policies[2]`) so errors name the key
    /// (`sampler.policies[2].probabilistic.sampling_percentage`).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.validate_at(path, Level::Top)
    }

    /// The configuration blocks present, by the name of their type.
    fn present_blocks(&self) -> Vec<PolicyType> {
        let blocks = [
            (PolicyType::Latency, self.latency.is_some()),
            (
                PolicyType::NumericAttribute,
                self.numeric_attribute.is_some(),
            ),
            (PolicyType::Probabilistic, self.probabilistic.is_some()),
            (PolicyType::StatusCode, self.status_code.is_some()),
            (PolicyType::StringAttribute, self.string_attribute.is_some()),
            (
                PolicyType::BooleanAttribute,
                self.boolean_attribute.is_some(),
            ),
            (PolicyType::SpanCount, self.span_count.is_some()),
            (PolicyType::TraceState, self.trace_state.is_some()),
            (PolicyType::RateLimiting, self.rate_limiting.is_some()),
            (PolicyType::BytesLimiting, self.bytes_limiting.is_some()),
            (PolicyType::And, self.and.is_some()),
            (PolicyType::Not, self.not.is_some()),
            (PolicyType::Drop, self.drop.is_some()),
            (PolicyType::Composite, self.composite.is_some()),
            (PolicyType::EmaDynamic, self.ema_dynamic.is_some()),
            (PolicyType::EmaThroughput, self.ema_throughput.is_some()),
            (
                PolicyType::WindowedThroughput,
                self.windowed_throughput.is_some(),
            ),
            (PolicyType::OttlCondition, self.ottl_condition.is_some()),
        ];
        blocks
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(t, _)| t)
            .collect()
    }

    fn validate_at(&self, path: &str, level: Level) -> Result<(), ConfigError> {
        let ty = self.policy_type;
        if level == Level::Top && self.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        if level == Level::Nested && self.correlate.is_some() {
            return Err(ConfigError::invalid(
                format!("{path}.correlate"),
                "is only allowed on top-level policies",
            ));
        }
        if level == Level::Nested && ty == PolicyType::Drop {
            return Err(ConfigError::invalid(
                format!("{path}.type"),
                "`drop` is only allowed as a top-level policy",
            ));
        }
        for block in self.present_blocks() {
            if block != ty {
                return Err(ConfigError::invalid(
                    format!("{path}.{}", block.as_str()),
                    format!(
                        "is not used by a policy of type `{}`; remove it",
                        ty.as_str()
                    ),
                ));
            }
        }
        if ty.has_block() && !self.present_blocks().contains(&ty) {
            return Err(ConfigError::invalid(
                format!("{path}.{}", ty.as_str()),
                format!("is required for a policy of type `{}`", ty.as_str()),
            ));
        }
        let block = format!("{path}.{}", ty.as_str());
        match ty {
            PolicyType::AlwaysSample | PolicyType::TraceFlags => Ok(()),
            PolicyType::Latency => validate_latency(self.latency.as_ref(), &block),
            PolicyType::NumericAttribute => {
                validate_numeric(self.numeric_attribute.as_ref(), &block)
            }
            PolicyType::Probabilistic => {
                validate_probabilistic(self.probabilistic.as_ref(), &block)
            }
            PolicyType::StatusCode => validate_status_code(self.status_code.as_ref(), &block),
            PolicyType::StringAttribute => validate_string(self.string_attribute.as_ref(), &block),
            PolicyType::BooleanAttribute => match &self.boolean_attribute {
                Some(c) => require_key(&c.key, &block),
                None => Ok(()),
            },
            PolicyType::SpanCount => validate_span_count(self.span_count.as_ref(), &block),
            PolicyType::TraceState => validate_trace_state(self.trace_state.as_ref(), &block),
            PolicyType::RateLimiting => match &self.rate_limiting {
                Some(c) => {
                    require_positive(c.spans_per_second, &format!("{block}.spans_per_second"))
                }
                None => Ok(()),
            },
            PolicyType::BytesLimiting => validate_bytes(self.bytes_limiting.as_ref(), &block),
            PolicyType::And => match &self.and {
                Some(c) => validate_subs(&c.and_sub_policy, &format!("{block}.and_sub_policy")),
                None => Ok(()),
            },
            PolicyType::Drop => match &self.drop {
                Some(c) => {
                    let path = format!("{block}.drop_sub_policy");
                    validate_subs(&c.drop_sub_policy, &path)?;
                    let subs: Vec<_> = c.drop_sub_policy.iter().collect();
                    dynamic::refuse_dynamic_below(&subs, &path, ty)
                }
                None => Ok(()),
            },
            PolicyType::Not => match &self.not {
                Some(c) => {
                    let path = format!("{block}.not_sub_policy");
                    c.not_sub_policy.validate_at(&path, Level::Nested)?;
                    dynamic::refuse_dynamic_below(&[&c.not_sub_policy], &path, ty)
                }
                None => Ok(()),
            },
            PolicyType::Composite => validate_composite(self.composite.as_ref(), &block),
            PolicyType::EmaDynamic => {
                dynamic::validate_ema_dynamic(self.ema_dynamic.as_ref(), &block)
            }
            PolicyType::EmaThroughput => {
                dynamic::validate_ema_throughput(self.ema_throughput.as_ref(), &block)
            }
            PolicyType::WindowedThroughput => {
                dynamic::validate_windowed(self.windowed_throughput.as_ref(), &block)
            }
            PolicyType::OttlCondition => validate_ottl(self.ottl_condition.as_ref(), &block),
        }
    }
}

fn require_key(key: &str, block: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::invalid(
            format!("{block}.key"),
            "must not be empty",
        ));
    }
    Ok(())
}

fn require_positive(value: i64, path: &str) -> Result<(), ConfigError> {
    if value <= 0 {
        return Err(ConfigError::invalid(
            path,
            format!("must be greater than 0, got {value}"),
        ));
    }
    Ok(())
}

fn validate_latency(cfg: Option<&LatencyConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    if c.threshold_ms < 0 {
        return Err(ConfigError::invalid(
            format!("{block}.threshold_ms"),
            "must not be negative",
        ));
    }
    if c.upper_threshold_ms != 0 && c.upper_threshold_ms < c.threshold_ms {
        return Err(ConfigError::invalid(
            format!("{block}.upper_threshold_ms"),
            "must be 0 (no upper bound) or at least threshold_ms",
        ));
    }
    Ok(())
}

fn validate_numeric(cfg: Option<&NumericAttributeConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    require_key(&c.key, block)?;
    match (c.min_value, c.max_value) {
        (None, None) => Err(ConfigError::invalid(
            format!("{block}.min_value"),
            "at least one of min_value and max_value must be set",
        )),
        (Some(min), Some(max)) if max < min => Err(ConfigError::invalid(
            format!("{block}.max_value"),
            format!("must be at least min_value ({min}), got {max}"),
        )),
        _ => Ok(()),
    }
}

fn validate_probabilistic(
    cfg: Option<&ProbabilisticConfig>,
    block: &str,
) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    if !c.sampling_percentage.is_finite() || c.sampling_percentage < 0.0 {
        return Err(ConfigError::invalid(
            format!("{block}.sampling_percentage"),
            format!(
                "must be a number from 0 to 100 (values above 100 sample everything), got {}",
                c.sampling_percentage
            ),
        ));
    }
    Ok(())
}

fn validate_status_code(cfg: Option<&StatusCodeConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    if c.status_codes.is_empty() {
        return Err(ConfigError::invalid(
            format!("{block}.status_codes"),
            "must list at least one of OK, ERROR, UNSET",
        ));
    }
    Ok(())
}

fn validate_string(cfg: Option<&StringAttributeConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    require_key(&c.key, block)?;
    if c.values.is_empty() {
        return Err(ConfigError::invalid(
            format!("{block}.values"),
            "must not be empty",
        ));
    }
    if c.enabled_regex_matching {
        for (i, value) in c.values.iter().enumerate() {
            if let Err(e) = regex::Regex::new(value) {
                return Err(ConfigError::invalid(
                    format!("{block}.values[{i}]"),
                    format!("invalid regular expression: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_span_count(cfg: Option<&SpanCountConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    if c.min_spans < 0 {
        return Err(ConfigError::invalid(
            format!("{block}.min_spans"),
            "must not be negative",
        ));
    }
    if c.max_spans != 0 && c.max_spans < c.min_spans {
        return Err(ConfigError::invalid(
            format!("{block}.max_spans"),
            "must be 0 (no maximum) or at least min_spans",
        ));
    }
    Ok(())
}

fn validate_trace_state(cfg: Option<&TraceStateConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    require_key(&c.key, block)?;
    if c.values.is_empty() {
        return Err(ConfigError::invalid(
            format!("{block}.values"),
            "must not be empty",
        ));
    }
    Ok(())
}

fn validate_bytes(cfg: Option<&BytesLimitingConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    require_positive(c.bytes_per_second, &format!("{block}.bytes_per_second"))?;
    if c.burst_capacity < 0 {
        return Err(ConfigError::invalid(
            format!("{block}.burst_capacity"),
            "must not be negative (0 means twice bytes_per_second)",
        ));
    }
    Ok(())
}

fn validate_ottl(cfg: Option<&OttlConditionConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    if c.span.is_empty() && c.spanevent.is_empty() {
        return Err(ConfigError::invalid(
            block,
            "at least one condition is required in `span` or `spanevent`",
        ));
    }
    for (list, conditions) in [("span", &c.span), ("spanevent", &c.spanevent)] {
        for (i, condition) in conditions.iter().enumerate() {
            if condition.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{block}.{list}[{i}]"),
                    "must not be empty",
                ));
            }
        }
    }
    Ok(())
}

fn validate_subs(subs: &[PolicyConfig], path: &str) -> Result<(), ConfigError> {
    if subs.is_empty() {
        return Err(ConfigError::invalid(
            path,
            "must list at least one sub-policy",
        ));
    }
    for (i, sub) in subs.iter().enumerate() {
        sub.validate_at(&format!("{path}[{i}]"), Level::Nested)?;
    }
    Ok(())
}

fn validate_composite(cfg: Option<&CompositeConfig>, block: &str) -> Result<(), ConfigError> {
    let Some(c) = cfg else { return Ok(()) };
    require_positive(
        c.max_total_spans_per_second,
        &format!("{block}.max_total_spans_per_second"),
    )?;
    let subs_path = format!("{block}.composite_sub_policy");
    validate_subs(&c.composite_sub_policy, &subs_path)?;
    for (i, sub) in c.composite_sub_policy.iter().enumerate() {
        if sub.name.trim().is_empty() {
            return Err(ConfigError::invalid(
                format!("{subs_path}[{i}].name"),
                "must not be empty (rate_allocation refers to sub-policies by name)",
            ));
        }
    }
    let mut total = 0i64;
    for (i, alloc) in c.rate_allocation.iter().enumerate() {
        let path = format!("{block}.rate_allocation[{i}]");
        if !c
            .composite_sub_policy
            .iter()
            .any(|s| s.name == alloc.policy)
        {
            return Err(ConfigError::invalid(
                format!("{path}.policy"),
                format!(
                    "`{}` is not the name of a composite_sub_policy",
                    alloc.policy
                ),
            ));
        }
        if !(0..=100).contains(&alloc.percent) {
            return Err(ConfigError::invalid(
                format!("{path}.percent"),
                format!("must be from 0 to 100, got {}", alloc.percent),
            ));
        }
        total += alloc.percent;
    }
    if total > 100 {
        return Err(ConfigError::invalid(
            format!("{block}.rate_allocation"),
            format!("percentages add up to {total}, more than 100"),
        ));
    }
    Ok(())
}
