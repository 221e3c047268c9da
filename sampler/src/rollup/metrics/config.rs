//! `rollup.metrics` configuration and the compiled attribute-reduction rules.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use regex::Regex;

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

pub use otel_tail_shared::config::rollup::{MetricRollupConfig, MetricRuleConfig, Temporality};

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
    pub fn new(rules: &[MetricRuleConfig]) -> Result<AttributeRules, MetricRollupError> {
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
