//! `correlation.*` and `rollup.*`: what happens to logs and metric points that are not part
//! of a buffered trace. They are held for `correlation.window`, then kept raw when they
//! correlate with a kept trace, or otherwise rolled up (`rollup.logs`, `rollup.metrics`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Extra hold beyond `sampler.decision_wait` in the default `correlation.window`: time
/// for a decision to be made after the trace goes quiet and to reach every sampler.
pub const DEFAULT_WINDOW_MARGIN: Duration = Duration::from_secs(5);

/// Correlated retention (`correlation.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationConfig {
    /// Hold logs without a trace id and metric points, and keep those that correlate with
    /// a kept trace. Off: they go straight down the summary path.
    pub enabled: bool,
    /// How long an item is held before its fate is settled. Absent:
    /// `sampler.decision_wait` + 5s, long enough for the decisions of the traces it
    /// belongs to and their broadcast.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// Window correlation starts this long before a kept trace's first span. A margin for
    /// clock skew and buffered logging, not a search radius: on a busy pod every extra
    /// second keeps that second's logs of every request raw.
    #[serde(with = "humantime_serde")]
    pub before: Duration,
    /// Window correlation ends this long after a kept trace's last span.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Kept traces remembered for matching; past it the one closest to expiry goes first.
    pub max_traces: usize,
    /// Items (one resource's logs or metrics of one request) held at once; past it the
    /// oldest are settled early and counted.
    pub max_held_items: usize,
    /// Encoded bytes held at once; past it the oldest are settled early and counted.
    pub max_held_bytes: u64,
}

impl Default for CorrelationConfig {
    fn default() -> Self {
        CorrelationConfig {
            enabled: true,
            window: None,
            before: Duration::from_millis(100),
            after: Duration::from_millis(100),
            max_traces: 200_000,
            max_held_items: 1_000_000,
            max_held_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl CorrelationConfig {
    /// The effective hold window for a given `sampler.decision_wait`.
    pub fn effective_window(&self, decision_wait: Duration) -> Duration {
        self.window
            .unwrap_or_else(|| decision_wait.saturating_add(DEFAULT_WINDOW_MARGIN))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::invalid(
                "correlation.window",
                "must be greater than 0 (set correlation.enabled: false to not hold)",
            ));
        }
        for (key, value) in [
            ("correlation.max_traces", self.max_traces as u64),
            ("correlation.max_held_items", self.max_held_items as u64),
            ("correlation.max_held_bytes", self.max_held_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// The summary path (`rollup.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// Log records not kept become counted template summaries.
    pub logs: LogRollupConfig,
    /// Metric points not kept are aggregated per interval.
    pub metrics: MetricRollupConfig,
    /// Span metrics of every span received, kept or not (`traces.span.metrics.*`).
    pub traces: SpanMetricsConfig,
    /// Summary inputs waiting on disk for their interval to close; past it the interval
    /// closes early, so the bound on disk and memory holds under any input rate.
    pub max_pending_bytes: u64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            logs: LogRollupConfig::default(),
            metrics: MetricRollupConfig::default(),
            traces: SpanMetricsConfig::default(),
            max_pending_bytes: 512 * 1024 * 1024,
        }
    }
}

/// `rollup.logs.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogRollupConfig {
    /// Roll logs up. Off: logs that are not kept pass through unchanged.
    pub enabled: bool,
    /// One summary per (resource, severity, template) per interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Example bodies kept per summary.
    pub samples_per_template: usize,
    /// Templates remembered per resource (LRU); past it lines count under `<overflow>`.
    pub max_templates: usize,
    /// Resources with templates of their own; further resources share one template set.
    pub max_resources: usize,
}

impl Default for LogRollupConfig {
    fn default() -> Self {
        LogRollupConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            samples_per_template: 1,
            max_templates: 1000,
            max_resources: 1000,
        }
    }
}

/// Temporality of the rolled-up sums and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Each point covers one interval (the default; adds across intervals and nodes).
    #[default]
    Delta,
    /// Each point is the running total since the output series first appeared.
    Cumulative,
}

/// `rollup.metrics.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricRollupConfig {
    /// Roll metrics up. Off: points that are not kept pass through unchanged.
    pub enabled: bool,
    /// Length of one rollup interval: every output point covers exactly one.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Attribute-reduction rules; the first rule whose `metric` pattern matches applies.
    /// A metric no rule matches keeps all its attributes (the cardinality limit still holds).
    pub rules: Vec<MetricRuleConfig>,
    /// Distinct output series per metric (per reduced resource and scope) per interval;
    /// points of further series go to one series marked `otel.metric.overflow=true`.
    pub cardinality_limit: usize,
    /// Temporality of the output sums, histograms and summaries.
    pub temporality: Temporality,
    /// Also emit `<name>.min` / `<name>.max` gauges and a `<name>.count` sum per gauge series.
    pub gauge_stats: bool,
}

impl Default for MetricRollupConfig {
    fn default() -> Self {
        MetricRollupConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            rules: Vec::new(),
            cardinality_limit: 2000,
            temporality: Temporality::Delta,
            gauge_stats: false,
        }
    }
}

/// `rollup.traces.*`: span metrics, named and shaped like the Collector `spanmetrics`
/// connector's output, computed from every span at arrival (before the decision), so the
/// request rates, error rates and latency of dropped traces survive sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    /// Count every span received. Off: no span metrics.
    pub enabled: bool,
    /// Length of one output interval (every point covers exactly one).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Dimensions beyond `service.name`, `span.name`, `span.kind` and `status.code`: a span
    /// attribute of that name, else a resource attribute, else `default` (no `default`:
    /// the dimension is left out of that series).
    pub dimensions: Vec<SpanDimensionConfig>,
    /// The `traces.span.metrics.duration` histogram.
    pub histogram: SpanHistogramConfig,
    /// Exemplars on the duration histogram, pointing at kept traces only.
    pub exemplars: SpanExemplarsConfig,
    /// Distinct series per metric per service per interval; the rest are counted in one
    /// series marked `otel.metric.overflow=true` (as in `rollup.metrics`).
    pub cardinality_limit: usize,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        SpanMetricsConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            dimensions: Vec::new(),
            histogram: SpanHistogramConfig::default(),
            exemplars: SpanExemplarsConfig::default(),
            cardinality_limit: 2000,
        }
    }
}

/// One extra span-metrics dimension (`rollup.traces.dimensions[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanDimensionConfig {
    /// Attribute name, looked up on the span, then on its resource.
    pub name: String,
    /// Value used when neither has the attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Unit of the duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurationUnit {
    /// Milliseconds (the Collector's default).
    #[default]
    Ms,
    /// Seconds.
    S,
}

impl DurationUnit {
    /// The OTLP unit string.
    pub fn as_str(self) -> &'static str {
        match self {
            DurationUnit::Ms => "ms",
            DurationUnit::S => "s",
        }
    }

    /// Nanoseconds per unit.
    pub fn nanos(self) -> f64 {
        match self {
            DurationUnit::Ms => 1e6,
            DurationUnit::S => 1e9,
        }
    }
}

/// `rollup.traces.histogram`: explicit buckets (default) or, with `exponential` set, an
/// exponential histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanHistogramConfig {
    /// Unit of the recorded durations: `ms` or `s`.
    pub unit: DurationUnit,
    /// Explicit bucket bounds.
    pub explicit: ExplicitBucketsConfig,
    /// When set, an exponential histogram instead of explicit buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential: Option<ExponentialBucketsConfig>,
}

impl Default for SpanHistogramConfig {
    fn default() -> Self {
        SpanHistogramConfig {
            unit: DurationUnit::Ms,
            explicit: ExplicitBucketsConfig::default(),
            exponential: None,
        }
    }
}

/// `rollup.traces.histogram.explicit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExplicitBucketsConfig {
    /// Upper bounds, as durations (`2ms`, `1s`), strictly increasing.
    #[serde(with = "humantime_list")]
    pub buckets: Vec<Duration>,
}

impl Default for ExplicitBucketsConfig {
    /// The Collector spanmetrics connector's default bounds.
    fn default() -> Self {
        let ms = Duration::from_millis;
        ExplicitBucketsConfig {
            buckets: vec![
                ms(2),
                ms(4),
                ms(6),
                ms(8),
                ms(10),
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1400),
                ms(2000),
                ms(5000),
                ms(10_000),
                ms(15_000),
            ],
        }
    }
}

/// `rollup.traces.histogram.exponential`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExponentialBucketsConfig {
    /// Most buckets per sign; the scale drops as needed to fit.
    pub max_size: usize,
}

impl Default for ExponentialBucketsConfig {
    fn default() -> Self {
        ExponentialBucketsConfig { max_size: 160 }
    }
}

/// `rollup.traces.exemplars`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanExemplarsConfig {
    /// Attach exemplars (needs `correlation.enabled`: kept traces are known from its index).
    pub enabled: bool,
    /// Most exemplars per output point.
    pub max_per_data_point: usize,
}

impl Default for SpanExemplarsConfig {
    fn default() -> Self {
        SpanExemplarsConfig {
            enabled: true,
            max_per_data_point: 5,
        }
    }
}

/// Serde for a list of humantime durations.
mod humantime_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|d| humantime::format_duration(*d).to_string()),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// One attribute-reduction rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRuleConfig {
    /// Metric name: exact, a glob (`*`, `?`), or a regex between slashes (`/^http\..*/`).
    pub metric: String,
    /// When set, only these point attributes are kept (same pattern syntax as `metric`).
    #[serde(default)]
    pub keep_attributes: Option<Vec<String>>,
    /// Point attributes removed (after `keep_attributes`; same pattern syntax).
    #[serde(default)]
    pub drop_attributes: Vec<String>,
}

impl RollupConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.logs.interval.is_zero() {
            return Err(ConfigError::invalid(
                "rollup.logs.interval",
                "must be greater than 0",
            ));
        }
        if self.metrics.interval.is_zero() {
            return Err(ConfigError::invalid(
                "rollup.metrics.interval",
                "must be greater than 0",
            ));
        }
        for (key, value) in [
            ("rollup.logs.max_templates", self.logs.max_templates),
            ("rollup.logs.max_resources", self.logs.max_resources),
            (
                "rollup.metrics.cardinality_limit",
                self.metrics.cardinality_limit,
            ),
            ("rollup.max_pending_bytes", self.max_pending_bytes as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        self.traces.validate()?;
        for (i, rule) in self.metrics.rules.iter().enumerate() {
            let patterns = std::iter::once(&rule.metric)
                .chain(rule.keep_attributes.iter().flatten())
                .chain(&rule.drop_attributes);
            for pattern in patterns {
                if let Some(inner) = pattern
                    .strip_prefix('/')
                    .and_then(|p| p.strip_suffix('/'))
                    .filter(|_| pattern.len() >= 2)
                    && let Err(e) = regex::Regex::new(inner)
                {
                    return Err(ConfigError::invalid(
                        format!("rollup.metrics.rules[{i}]"),
                        format!("invalid pattern {pattern:?}: {e}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl SpanMetricsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::invalid(
                "rollup.traces.interval",
                "must be greater than 0",
            ));
        }
        if self.cardinality_limit == 0 {
            return Err(ConfigError::invalid(
                "rollup.traces.cardinality_limit",
                "must be greater than 0",
            ));
        }
        let buckets = &self.histogram.explicit.buckets;
        if buckets.is_empty() {
            return Err(ConfigError::invalid(
                "rollup.traces.histogram.explicit.buckets",
                "must list at least one bound",
            ));
        }
        if buckets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ConfigError::invalid(
                "rollup.traces.histogram.explicit.buckets",
                "bounds must be strictly increasing",
            ));
        }
        if let Some(e) = &self.histogram.exponential
            && !(2..=16384).contains(&e.max_size)
        {
            return Err(ConfigError::invalid(
                "rollup.traces.histogram.exponential.max_size",
                "must be between 2 and 16384",
            ));
        }
        for (i, d) in self.dimensions.iter().enumerate() {
            if d.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("rollup.traces.dimensions[{i}].name"),
                    "must not be empty",
                ));
            }
            if DEFAULT_DIMENSIONS.contains(&d.name.as_str())
                || self.dimensions[..i].iter().any(|o| o.name == d.name)
            {
                return Err(ConfigError::invalid(
                    format!("rollup.traces.dimensions[{i}].name"),
                    format!("`{}` is already a dimension", d.name),
                ));
            }
        }
        Ok(())
    }
}

/// The dimensions every span-metrics series has, in the Collector's naming.
pub const DEFAULT_DIMENSIONS: [&str; 4] = ["service.name", "span.name", "span.kind", "status.code"];
