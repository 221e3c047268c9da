//! `rollup.metrics` configuration and the compiled attribute-reduction rules.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Errors in a `rollup.metrics` configuration, found when the aggregator is built.
#[derive(Debug, thiserror::Error)]
pub enum MetricRollupError {
    /// A rule's `metric` or attribute pattern is not a valid regex (or glob).
    #[error("rollup.metrics.rules: invalid pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// Why the regex engine rejected it.
        source: regex::Error,
    },
    /// `interval` must be positive: it is the length of every rolled-up point.
    #[error("rollup.metrics.interval must be greater than zero")]
    ZeroInterval,
    /// `cardinality_limit` must allow at least one series besides the overflow series.
    #[error("rollup.metrics.cardinality_limit must be at least 1")]
    ZeroCardinalityLimit,
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

/// Metric rollup settings (`rollup.metrics.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricRollupConfig {
    /// Length of one rollup interval: every output point covers exactly one.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Attribute-reduction rules; the first rule whose `metric` pattern matches applies.
    /// A metric no rule matches keeps all its attributes (the cardinality limit still holds).
    pub rules: Vec<Rule>,
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
            interval: Duration::from_secs(60),
            rules: Vec::new(),
            cardinality_limit: 2000,
            temporality: Temporality::Delta,
            gauge_stats: false,
        }
    }
}

/// One attribute-reduction rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Metric name: exact, a glob (`*`, `?`), or a regex between slashes (`/^http\..*/`).
    pub metric: String,
    /// When set, only these point attributes are kept (same pattern syntax as `metric`).
    #[serde(default)]
    pub keep_attributes: Option<Vec<String>>,
    /// Point attributes removed (after `keep_attributes`; same pattern syntax).
    #[serde(default)]
    pub drop_attributes: Vec<String>,
}

/// A compiled name pattern: exact string, glob or `/regex/`.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Regex(Regex),
}

impl Pattern {
    fn compile(pattern: &str) -> Result<Pattern, MetricRollupError> {
        let regex = if pattern.len() >= 2 && pattern.starts_with('/') && pattern.ends_with('/') {
            pattern[1..pattern.len() - 1].to_owned()
        } else if pattern.contains(['*', '?']) {
            let mut re = String::from("^");
            for c in pattern.chars() {
                match c {
                    '*' => re.push_str(".*"),
                    '?' => re.push('.'),
                    c => re.push_str(&regex::escape(&c.to_string())),
                }
            }
            re.push('$');
            re
        } else {
            return Ok(Pattern::Exact(pattern.to_owned()));
        };
        Regex::new(&regex)
            .map(Pattern::Regex)
            .map_err(|source| MetricRollupError::Pattern {
                pattern: pattern.to_owned(),
                source,
            })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == name,
            Pattern::Regex(r) => r.is_match(name),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    metric: Pattern,
    keep: Option<Vec<Pattern>>,
    drop: Vec<Pattern>,
}

/// The compiled rules: reduces a point's attributes for a metric. Public so the router can
/// compute the same output-series identity as the sampler (see [`super::series_key`]).
#[derive(Debug, Clone, Default)]
pub struct AttributeRules {
    rules: Vec<CompiledRule>,
}

impl AttributeRules {
    /// Compiles the rules; fails on an invalid pattern.
    pub fn new(rules: &[Rule]) -> Result<AttributeRules, MetricRollupError> {
        let compile_all = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| Pattern::compile(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let rules = rules
            .iter()
            .map(|r| {
                Ok(CompiledRule {
                    metric: Pattern::compile(&r.metric)?,
                    keep: r.keep_attributes.as_deref().map(compile_all).transpose()?,
                    drop: compile_all(&r.drop_attributes)?,
                })
            })
            .collect::<Result<Vec<_>, MetricRollupError>>()?;
        Ok(AttributeRules { rules })
    }

    /// The attributes kept for `metric`, sorted by key (the canonical order of an output
    /// series); duplicate keys keep their last value, as OTLP consumers do.
    pub fn reduce(&self, metric: &str, attributes: &[KeyValue]) -> Vec<KeyValue> {
        let rule = self.rules.iter().find(|r| r.metric.matches(metric));
        let mut kept: Vec<KeyValue> = attributes
            .iter()
            .filter(|kv| match rule {
                None => true,
                Some(rule) => {
                    rule.keep
                        .as_ref()
                        .is_none_or(|keep| keep.iter().any(|p| p.matches(&kv.key)))
                        && !rule.drop.iter().any(|p| p.matches(&kv.key))
                }
            })
            .cloned()
            .collect();
        canonicalize(&mut kept);
        kept
    }
}

/// Sorts attributes by key and removes duplicate keys (the last occurrence wins).
pub(crate) fn canonicalize(attributes: &mut Vec<KeyValue>) {
    attributes.reverse();
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    attributes.dedup_by(|later, earlier| later.key == earlier.key);
}
