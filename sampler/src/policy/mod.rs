//! The tail-sampling policy engine: the OpenTelemetry Collector `tail_sampling` processor's
//! policies and final-decision rules, evaluated incrementally.
//!
//! Every policy input that depends on span contents (attribute, status code, tracestate,
//! trace-flag and OTTL conditions: "does any span or its resource match?") is compiled to one bit
//! of [`PolicyState`] (an `ottl_condition` with `error_mode: propagate` takes a second bit that
//! records an evaluation error); [`PolicyEngine::observe_span`] sets the bits as spans arrive. The other
//! inputs are trace-level facts the buffer keeps anyway ([`TraceStats`]) or the trace id. So
//! [`PolicyEngine::decide`] never needs the spans again, and a trace costs 8 bytes of
//! condition bits (plus a pointer to its key values, see below).
//!
//! The engine is pure logic: the caller passes the time, which drives the `rate_limiting`,
//! `bytes_limiting` and `composite` budgets and the dynamic samplers' intervals.
//!
//! Our extension, the dynamic sampling types (`ema_dynamic`, `ema_throughput`,
//! `windowed_throughput`), lives in `dynamic.rs`: they need the values of their key fields, which
//! are folded into [`PolicyState`] as spans arrive too (a null pointer when no such policy is
//! configured).
//!
//! Semantics follow the Collector (`internal/sampling/*.go`, `processor.go`):
//! - policies yield Sampled, NotSampled or Dropped (`drop`), or fail (an `ottl_condition` with
//!   `error_mode: propagate` whose evaluation errored; the failure propagates through `and`,
//!   `not`, `drop` and `composite`); the final decision is: any Dropped → not sampled; else any
//!   Sampled → sampled; else not. A failed policy takes no part in it;
//! - `invert_match` (string, numeric and boolean attribute policies) samples when no resource or
//!   span matches and vetoes nothing: the v0.161 Collector's plain decision, not the removed
//!   InvertNotSampled of older releases (see docs/decisions.md);
//! - `sample_on_first_match` stops at the first Sampled;
//! - `probabilistic` samples when FNV-1a-64(salt ‖ trace id) ≤ percentage/100 · 2^64
//!   (percentages above 100 sample everything);
//! - `latency` compares `max_end - min_start` of the whole trace, truncated to milliseconds;
//! - `rate_limiting` / `bytes_limiting` are token buckets (rate per second, burst twice that or
//!   `burst_capacity`), starting full;
//! - `composite` spends per-second budgets: the first sub-policy that samples keeps the trace if
//!   its own share and the total still have room, otherwise the composite does not sample.
//!
//! Where this differs from the Collector, on purpose:
//! - a `composite_sub_policy` not named in `rate_allocation` shares what the listed ones leave
//!   (the Collector gives it no budget at all, contradicting its own README), and the total
//!   budget counts spans across all sub-policies;
//! - the reported probability is that of the first sampling policy in config order, and only
//!   when every policy that sampled the trace defines one (a trace also kept by, say, an error
//!   policy would have been kept anyway, so it carries no adjusted count).

mod dynamic;
mod limiter;
pub mod ottl;
mod predicate;
#[cfg(test)]
mod tests;
mod tracestate;

use std::collections::HashSet;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use otel_tail_shared::config::PolicyConfig;
use otel_tail_shared::config::policy::{PolicyType, StatusCodeName};
use otel_tail_shared::otlp::TraceId;
use regex::Regex;

pub use tracestate::{SAMPLE_RATE_ATTRIBUTE, apply_sample_rate, apply_sampling_probability};

use limiter::{SecondWindow, TokenBucket};
use ottl::{OttlCondition, SpanOutcome};
use predicate::{Predicate, StringMatcher};

/// Most span-level condition bits a policy set may use (one per condition, two for an
/// `ottl_condition` with `error_mode: propagate`): the bits of [`PolicyState`].
pub const MAX_SPAN_CONDITIONS: usize = 64;

/// The Collector's salt for `probabilistic` when `hash_salt` is empty.
const DEFAULT_HASH_SALT: &str = "default-hash-seed";

/// Running, per-trace policy state: which span-level conditions some span has met so far,
/// and the values the dynamic policies' key fields took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PolicyState {
    /// Bit `i` set: the span-level condition owning bit `i` matched a span or its resource (or,
    /// for an OTTL error bit, failed on one).
    matched: u64,
    /// Distinct key-field values seen (empty without dynamic policies).
    key_values: dynamic::KeyValues,
}

impl PolicyState {
    /// Folds in the state of more spans of the same trace (for example one request's spans,
    /// observed before the trace's entry was locked).
    pub fn merge(&mut self, other: &PolicyState) {
        self.matched |= other.matched;
        self.key_values.merge(&other.key_values);
    }

    /// The condition bits, to persist or hand a trace's state to another node running the
    /// same policies (bits mean nothing under a different policy list). Key-field values are
    /// not included: they are rebuilt from the spans, as handoff and recovery do.
    pub fn to_bits(&self) -> u64 {
        self.matched
    }

    /// A state from [`PolicyState::to_bits`].
    pub fn from_bits(bits: u64) -> Self {
        PolicyState {
            matched: bits,
            key_values: Default::default(),
        }
    }
}

/// Trace-level facts maintained by the buffer for every trace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceStats {
    /// Spans received for the trace.
    pub span_count: u32,
    /// Encoded size of the trace's spans (saturating; 4 bytes keep the index entry small).
    pub bytes: u32,
    /// Earliest span start; `u64::MAX` when no span yet.
    pub min_start_unix_nano: u64,
    /// Latest span end.
    pub max_end_unix_nano: u64,
}

/// The outcome for one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Keep (export) the trace.
    pub sampled: bool,
    /// Name of the top-level policy that decided to keep (None if dropped).
    pub policy: Option<Arc<str>>,
    /// Effective sampling probability, when the deciding policy defines one (`probabilistic`,
    /// and `1 / rate` for the dynamic types).
    pub probability: Option<f64>,
    /// The deciding policy correlates logs and metric points by resource and time window
    /// (see `PolicyConfig::correlates`).
    pub correlate: bool,
}

/// Why a policy set cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// More span-level conditions than [`PolicyState`] has bits.
    #[error(
        "the policies use {found} span-level conditions (attribute, status_code, trace_state, \
         trace_flags policies, including sub-policies); at most {MAX_SPAN_CONDITIONS} are supported"
    )]
    TooManySpanConditions {
        /// How many the configuration needs.
        found: usize,
    },
    /// A policy lacks the block its `type` needs (the config was not validated).
    #[error("policy `{policy}` of type `{policy_type}` has no `{policy_type}` block")]
    MissingBlock {
        /// The policy's name.
        policy: String,
        /// Its type.
        policy_type: &'static str,
    },
    /// A `string_attribute` regular expression does not compile.
    #[error("policy `{policy}`: invalid regular expression `{pattern}`: {source}")]
    Regex {
        /// The policy's name.
        policy: String,
        /// The expression.
        pattern: String,
        /// The compiler's complaint.
        source: regex::Error,
    },
    /// A `drop` policy below the top level.
    #[error("policy `{policy}`: `drop` is only allowed as a top-level policy")]
    NestedDrop {
        /// The policy's name.
        policy: String,
    },
    /// More distinct `key_fields` across the dynamic policies than a key value can index.
    #[error(
        "the dynamic policies use {found} distinct key_fields; at most {} are supported",
        dynamic::MAX_KEY_FIELDS
    )]
    TooManyKeyFields {
        /// How many the configuration needs.
        found: usize,
    },
    /// An `ottl_condition` condition does not parse or names an unknown path or function.
    #[error("policy `{policy}`: {source}")]
    Ottl {
        /// The policy's name.
        policy: String,
        /// Which condition, the column and the problem.
        source: ottl::ConditionError,
    },
}

/// What one policy says about a trace (the Collector's `Decision`, with its evaluation error as
/// `Failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Sampled,
    NotSampled,
    Dropped,
    Failed,
}

impl Verdict {
    const COUNT: usize = 4;

    fn index(self) -> usize {
        self as usize
    }
}

/// A verdict with the sampling probability it implies, if any.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    verdict: Verdict,
    probability: Option<f64>,
}

impl Outcome {
    fn of(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            probability: None,
        }
    }

    fn sampled_if(hit: bool) -> Self {
        Outcome::of(if hit {
            Verdict::Sampled
        } else {
            Verdict::NotSampled
        })
    }
}

/// The inputs of one decision.
struct Facts<'a> {
    trace_id: &'a TraceId,
    state: &'a PolicyState,
    stats: &'a TraceStats,
    now_unix_nano: u64,
}

/// A compiled policy.
#[derive(Debug)]
enum Node {
    AlwaysSample,
    Latency {
        lower_ms: i64,
        upper_ms: i64,
    },
    Probabilistic {
        salt: Vec<u8>,
        threshold: Option<u64>,
        probability: f64,
    },
    SpanCondition {
        bit: u32,
        invert: bool,
    },
    /// An `ottl_condition`: sampled when its bit is set; failed when its error bit (propagate
    /// mode only) is set and no span matched.
    Ottl {
        bit: u32,
        error_bit: Option<u32>,
    },
    SpanCount {
        min: i64,
        max: i64,
    },
    RateLimiting(TokenBucket),
    BytesLimiting(TokenBucket),
    And(Vec<Node>),
    Not(Box<Node>),
    Drop(Vec<Node>),
    Composite(Composite),
    Dynamic(Box<dynamic::DynamicPolicy>),
}

/// A compiled `composite` policy and its per-second counters.
#[derive(Debug)]
struct Composite {
    max_total: i64,
    window: SecondWindow,
    total_in_window: i64,
    subs: Vec<CompositeSub>,
}

#[derive(Debug)]
struct CompositeSub {
    node: Node,
    allocated: i64,
    sampled_in_window: i64,
}

/// One top-level policy.
#[derive(Debug)]
struct TopPolicy {
    name: Arc<str>,
    correlate: bool,
    node: Node,
}

/// A span-level condition and the bits of [`PolicyState`] it owns.
#[derive(Debug)]
enum SpanCheck {
    /// A built-in predicate, setting `bit` on a match.
    Predicate { bit: u32, predicate: Predicate },
    /// OTTL conditions, setting `bit` on a match and `error_bit` (propagate mode) on a failure.
    Ottl {
        bit: u32,
        error_bit: Option<u32>,
        condition: OttlCondition,
    },
}

/// The span-level conditions of a policy set, as they are compiled.
#[derive(Debug, Default)]
struct Conditions {
    checks: Vec<SpanCheck>,
    bits: u32,
}

impl Conditions {
    fn next_bit(&mut self) -> u32 {
        self.bits += 1;
        self.bits - 1
    }

    fn predicate(&mut self, predicate: Predicate, invert: bool) -> Node {
        let bit = self.next_bit();
        self.checks.push(SpanCheck::Predicate { bit, predicate });
        Node::SpanCondition { bit, invert }
    }

    fn ottl(&mut self, condition: OttlCondition) -> Node {
        let bit = self.next_bit();
        let error_bit = condition.propagates_errors().then(|| self.next_bit());
        self.checks.push(SpanCheck::Ottl {
            bit,
            error_bit,
            condition,
        });
        Node::Ottl { bit, error_bit }
    }
}

/// Evaluates a policy set: folds spans into [`PolicyState`] and decides traces.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: Vec<TopPolicy>,
    observer: Arc<SpanObserver>,
    sample_on_first_match: bool,
}

/// What a policy set reads of each span as it arrives. It never changes once compiled, so
/// it is shared ([`PolicyEngine::observer`]) and spans are observed without waiting for
/// decisions, which change the policies' budgets.
#[derive(Debug)]
pub struct SpanObserver {
    conditions: Vec<SpanCheck>,
    /// Key fields of the dynamic policies, read from every span.
    key_fields: dynamic::KeyFields,
}

impl PolicyEngine {
    /// Compiles `policies` (already validated by the config loader; structural problems are
    /// still reported rather than trusted).
    pub fn new(
        policies: &[PolicyConfig],
        sample_on_first_match: bool,
    ) -> Result<Self, PolicyError> {
        let mut conditions = Conditions::default();
        let mut compiled = policies
            .iter()
            .map(|cfg| {
                Ok(TopPolicy {
                    name: Arc::from(cfg.name.as_str()),
                    correlate: cfg.correlates(),
                    node: compile(cfg, &mut conditions, true)?,
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        if conditions.bits as usize > MAX_SPAN_CONDITIONS {
            return Err(PolicyError::TooManySpanConditions {
                found: conditions.bits as usize,
            });
        }
        let key_fields = dynamic::register_fields(compiled.iter_mut().map(|p| &mut p.node))?;
        Ok(PolicyEngine {
            policies: compiled,
            observer: Arc::new(SpanObserver {
                conditions: conditions.checks,
                key_fields,
            }),
            sample_on_first_match,
        })
    }

    /// The set's span observer, to observe spans with apart from the engine.
    pub fn observer(&self) -> Arc<SpanObserver> {
        Arc::clone(&self.observer)
    }

    /// Tells the dynamic throughput policies this node's share of the cluster's traffic
    /// (`1 / samplers on the ring`; 1 standalone), which their goals are scaled by.
    pub fn set_share(&mut self, share: f64) {
        let share = if share.is_finite() && share > 0.0 {
            share.min(1.0)
        } else {
            1.0
        };
        for policy in &mut self.policies {
            dynamic::for_each_dynamic(&mut policy.node, &mut |d| d.set_share(share));
        }
    }

    /// Folds one span (with its resource) into the trace's state. Called once per span as it
    /// arrives.
    pub fn observe_span(&self, state: &mut PolicyState, resource: Option<&Resource>, span: &Span) {
        self.observer
            .observe_scoped_span(state, resource, None, span);
    }

    /// Decides a trace. `now_unix_nano` drives the rate_limiting/bytes_limiting/composite
    /// budgets.
    pub fn decide(
        &mut self,
        trace_id: &TraceId,
        state: &PolicyState,
        stats: &TraceStats,
        now_unix_nano: u64,
    ) -> Decision {
        let facts = Facts {
            trace_id,
            state,
            stats,
            now_unix_nano,
        };
        // First policy (index) and its probability for each verdict.
        let mut first: [Option<(usize, Option<f64>)>; Verdict::COUNT] = [None; Verdict::COUNT];
        let mut sampled_without_probability = false;
        for (i, policy) in self.policies.iter_mut().enumerate() {
            let outcome = evaluate(&mut policy.node, &facts);
            if outcome.verdict == Verdict::Failed {
                tracing::debug!(policy = %policy.name, "sampling policy failed to evaluate; it takes no part in the decision");
                continue;
            }
            let slot = &mut first[outcome.verdict.index()];
            if slot.is_none() {
                *slot = Some((i, outcome.probability));
            }
            if outcome.verdict == Verdict::Sampled && outcome.probability.is_none() {
                sampled_without_probability = true;
            }
            if self.sample_on_first_match && outcome.verdict == Verdict::Sampled {
                break;
            }
        }
        let not_sampled = Decision {
            sampled: false,
            policy: None,
            probability: None,
            correlate: false,
        };
        if first[Verdict::Dropped.index()].is_some() {
            return not_sampled;
        }
        if let Some((i, probability)) = first[Verdict::Sampled.index()] {
            return Decision {
                sampled: true,
                policy: Some(self.policies[i].name.clone()),
                probability: probability.filter(|_| !sampled_without_probability),
                correlate: self.policies[i].correlate,
            };
        }
        not_sampled
    }

    /// Policy names, for metric labels.
    pub fn policy_names(&self) -> Vec<Arc<str>> {
        self.policies.iter().map(|p| p.name.clone()).collect()
    }
}

impl SpanObserver {
    /// What [`SpanObserver::observe_scoped_span`] reads of a span: attributes only for the
    /// attribute predicates and the dynamic policies' key fields, everything for OTTL.
    pub fn span_needs(&self) -> crate::engine::SpanNeeds {
        use crate::engine::SpanNeeds;
        let mut needs = if self.key_fields.is_empty() {
            SpanNeeds::Fixed
        } else {
            SpanNeeds::Attributes
        };
        for check in &self.conditions {
            match check {
                SpanCheck::Ottl { .. } => return SpanNeeds::Everything,
                SpanCheck::Predicate { predicate, .. } if predicate.reads_attributes() => {
                    needs = SpanNeeds::Attributes
                }
                SpanCheck::Predicate { .. } => {}
            }
        }
        needs
    }

    /// Folds one span (with its resource and instrumentation scope, which OTTL conditions
    /// can read as `instrumentation_scope.name`) into the trace's state. Called once per
    /// span as it arrives.
    pub fn observe_scoped_span(
        &self,
        state: &mut PolicyState,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) {
        for check in &self.conditions {
            match check {
                SpanCheck::Predicate { bit, predicate } => {
                    let bit = 1u64 << bit;
                    if state.matched & bit == 0 && predicate.matches(resource, span) {
                        state.matched |= bit;
                    }
                }
                SpanCheck::Ottl {
                    bit,
                    error_bit,
                    condition,
                } => {
                    let bit = 1u64 << bit;
                    if state.matched & bit != 0 {
                        continue;
                    }
                    match condition.evaluate(resource, scope, span) {
                        SpanOutcome::Matched => state.matched |= bit,
                        SpanOutcome::NotMatched => {}
                        SpanOutcome::Failed(error) => {
                            if let Some(error_bit) = error_bit {
                                if state.matched & (1u64 << error_bit) == 0 {
                                    tracing::debug!(%error, "OTTL condition failed on a span");
                                }
                                state.matched |= 1u64 << error_bit;
                            }
                        }
                    }
                }
            }
        }
        if !self.key_fields.is_empty() {
            self.key_fields
                .observe(&mut state.key_values, resource, span);
        }
    }
}

/// Compiles one policy, registering its span-level conditions in `conditions`.
fn compile(
    cfg: &PolicyConfig,
    conditions: &mut Conditions,
    top: bool,
) -> Result<Node, PolicyError> {
    let ty = cfg.policy_type;
    let missing = || PolicyError::MissingBlock {
        policy: cfg.name.clone(),
        policy_type: ty.as_str(),
    };
    let mut condition =
        |predicate: Predicate, invert: bool| conditions.predicate(predicate, invert);
    Ok(match ty {
        PolicyType::AlwaysSample => Node::AlwaysSample,
        PolicyType::Latency => {
            let c = cfg.latency.as_ref().ok_or_else(missing)?;
            Node::Latency {
                lower_ms: c.threshold_ms,
                upper_ms: c.upper_threshold_ms,
            }
        }
        PolicyType::NumericAttribute => {
            let c = cfg.numeric_attribute.as_ref().ok_or_else(missing)?;
            let predicate = Predicate::Numeric {
                key: c.key.clone(),
                min: c.min_value.unwrap_or(i64::MIN),
                max: c.max_value.unwrap_or(i64::MAX),
            };
            condition(predicate, c.invert_match)
        }
        PolicyType::Probabilistic => {
            let c = cfg.probabilistic.as_ref().ok_or_else(missing)?;
            let ratio = (c.sampling_percentage / 100.0).clamp(0.0, 1.0);
            let salt = if c.hash_salt.is_empty() {
                DEFAULT_HASH_SALT
            } else {
                c.hash_salt.as_str()
            };
            Node::Probabilistic {
                salt: salt.as_bytes().to_vec(),
                // None: never samples. `as` saturates, so ratio 1 gives u64::MAX.
                threshold: (ratio > 0.0).then_some((ratio * 18_446_744_073_709_551_616.0) as u64),
                probability: ratio,
            }
        }
        PolicyType::StatusCode => {
            let c = cfg.status_code.as_ref().ok_or_else(missing)?;
            let codes = c.status_codes.iter().fold(0u8, |mask, code| {
                let code = match code {
                    StatusCodeName::Unset => 0,
                    StatusCodeName::Ok => 1,
                    StatusCodeName::Error => 2,
                };
                mask | 1 << code
            });
            condition(Predicate::StatusCode { codes }, false)
        }
        PolicyType::StringAttribute => {
            let c = cfg.string_attribute.as_ref().ok_or_else(missing)?;
            let matcher = if c.enabled_regex_matching {
                let regexes = c
                    .values
                    .iter()
                    .map(|pattern| {
                        Regex::new(pattern).map_err(|source| PolicyError::Regex {
                            policy: cfg.name.clone(),
                            pattern: pattern.clone(),
                            source,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                StringMatcher::Regex(regexes)
            } else {
                StringMatcher::Exact(c.values.iter().filter(|v| !v.is_empty()).cloned().collect())
            };
            condition(
                Predicate::String {
                    key: c.key.clone(),
                    matcher,
                },
                c.invert_match,
            )
        }
        PolicyType::BooleanAttribute => {
            let c = cfg.boolean_attribute.as_ref().ok_or_else(missing)?;
            let predicate = Predicate::Boolean {
                key: c.key.clone(),
                value: c.value,
            };
            condition(predicate, c.invert_match)
        }
        PolicyType::SpanCount => {
            let c = cfg.span_count.as_ref().ok_or_else(missing)?;
            Node::SpanCount {
                min: i64::from(c.min_spans),
                max: i64::from(c.max_spans),
            }
        }
        PolicyType::TraceState => {
            let c = cfg.trace_state.as_ref().ok_or_else(missing)?;
            let values: HashSet<String> = c
                .values
                .iter()
                .filter(|v| !v.is_empty() && c.key.len() + v.len() < 256)
                .cloned()
                .collect();
            condition(
                Predicate::TraceState {
                    key: c.key.clone(),
                    values,
                },
                false,
            )
        }
        PolicyType::TraceFlags => condition(Predicate::TraceFlagsSampled, false),
        PolicyType::OttlCondition => {
            let c = cfg.ottl_condition.as_ref().ok_or_else(missing)?;
            let compiled =
                OttlCondition::compile(&cfg.name, c).map_err(|source| PolicyError::Ottl {
                    policy: cfg.name.clone(),
                    source,
                })?;
            conditions.ottl(compiled)
        }
        PolicyType::RateLimiting => {
            let c = cfg.rate_limiting.as_ref().ok_or_else(missing)?;
            let rate = c.spans_per_second as f64;
            Node::RateLimiting(TokenBucket::new(rate, 2.0 * rate))
        }
        PolicyType::BytesLimiting => {
            let c = cfg.bytes_limiting.as_ref().ok_or_else(missing)?;
            let rate = c.bytes_per_second as f64;
            let burst = if c.burst_capacity > 0 {
                c.burst_capacity as f64
            } else {
                2.0 * rate
            };
            Node::BytesLimiting(TokenBucket::new(rate, burst))
        }
        PolicyType::And => {
            let c = cfg.and.as_ref().ok_or_else(missing)?;
            Node::And(compile_all(&c.and_sub_policy, conditions)?)
        }
        PolicyType::Not => {
            let c = cfg.not.as_ref().ok_or_else(missing)?;
            Node::Not(Box::new(compile(&c.not_sub_policy, conditions, false)?))
        }
        PolicyType::Drop => {
            if !top {
                return Err(PolicyError::NestedDrop {
                    policy: cfg.name.clone(),
                });
            }
            let c = cfg.drop.as_ref().ok_or_else(missing)?;
            Node::Drop(compile_all(&c.drop_sub_policy, conditions)?)
        }
        PolicyType::Composite => {
            let c = cfg.composite.as_ref().ok_or_else(missing)?;
            let max_total = c.max_total_spans_per_second;
            let subs_len = c.composite_sub_policy.len().max(1) as i64;
            let listed_percent: i64 = c.rate_allocation.iter().map(|a| a.percent.max(0)).sum();
            let unlisted = c
                .composite_sub_policy
                .iter()
                .filter(|s| !c.rate_allocation.iter().any(|a| a.policy == s.name))
                .count()
                .max(1) as i64;
            let leftover_share = max_total * (100 - listed_percent).max(0) / 100 / unlisted;
            let subs = c
                .composite_sub_policy
                .iter()
                .map(|sub| {
                    let allocated = match c.rate_allocation.iter().find(|a| a.policy == sub.name) {
                        Some(a) if a.percent > 0 => max_total * a.percent / 100,
                        Some(_) => max_total / subs_len,
                        None => leftover_share,
                    };
                    Ok(CompositeSub {
                        node: compile(sub, conditions, false)?,
                        allocated,
                        sampled_in_window: 0,
                    })
                })
                .collect::<Result<Vec<_>, PolicyError>>()?;
            Node::Composite(Composite {
                max_total,
                window: SecondWindow::new(),
                total_in_window: 0,
                subs,
            })
        }
        PolicyType::EmaDynamic | PolicyType::EmaThroughput | PolicyType::WindowedThroughput => {
            Node::Dynamic(Box::new(dynamic::DynamicPolicy::compile(cfg)?))
        }
    })
}

fn compile_all(
    subs: &[PolicyConfig],
    conditions: &mut Conditions,
) -> Result<Vec<Node>, PolicyError> {
    subs.iter()
        .map(|sub| compile(sub, conditions, false))
        .collect()
}

/// Evaluates one compiled policy.
fn evaluate(node: &mut Node, facts: &Facts<'_>) -> Outcome {
    match node {
        Node::AlwaysSample => Outcome::of(Verdict::Sampled),
        Node::Latency { lower_ms, upper_ms } => {
            let stats = facts.stats;
            if stats.min_start_unix_nano == u64::MAX {
                return Outcome::of(Verdict::NotSampled);
            }
            let nanos = stats
                .max_end_unix_nano
                .saturating_sub(stats.min_start_unix_nano);
            let ms = i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX);
            let hit = if *upper_ms == 0 {
                ms >= *lower_ms
            } else {
                *lower_ms < ms && ms <= *upper_ms
            };
            Outcome::sampled_if(hit)
        }
        Node::Probabilistic {
            salt,
            threshold,
            probability,
        } => {
            let hit = threshold
                .is_some_and(|t| fnv1a_64(&[salt.as_slice(), facts.trace_id.as_slice()]) <= t);
            Outcome {
                verdict: if hit {
                    Verdict::Sampled
                } else {
                    Verdict::NotSampled
                },
                probability: Some(*probability),
            }
        }
        Node::SpanCondition { bit, invert } => {
            let matched = facts.state.matched & (1u64 << *bit) != 0;
            Outcome::sampled_if(matched != *invert)
        }
        Node::Ottl { bit, error_bit } => {
            let is_set = |b: u32| facts.state.matched & (1u64 << b) != 0;
            if is_set(*bit) {
                Outcome::of(Verdict::Sampled)
            } else if error_bit.is_some_and(is_set) {
                Outcome::of(Verdict::Failed)
            } else {
                Outcome::of(Verdict::NotSampled)
            }
        }
        Node::SpanCount { min, max } => {
            let count = i64::from(facts.stats.span_count);
            Outcome::sampled_if(count >= *min && (*max == 0 || count <= *max))
        }
        Node::RateLimiting(bucket) => {
            let spans = f64::from(facts.stats.span_count);
            Outcome::sampled_if(bucket.try_take(spans, facts.now_unix_nano))
        }
        Node::BytesLimiting(bucket) => {
            let bytes = facts.stats.bytes as f64;
            Outcome::sampled_if(bucket.try_take(bytes, facts.now_unix_nano))
        }
        Node::And(subs) => {
            let mut probability: Option<f64> = None;
            for sub in subs.iter_mut() {
                let outcome = evaluate(sub, facts);
                match outcome.verdict {
                    Verdict::NotSampled => return Outcome::of(Verdict::NotSampled),
                    Verdict::Failed => return Outcome::of(Verdict::Failed),
                    Verdict::Sampled | Verdict::Dropped => {}
                }
                if let Some(p) = outcome.probability {
                    probability = Some(probability.unwrap_or(1.0) * p);
                }
            }
            Outcome {
                verdict: Verdict::Sampled,
                probability,
            }
        }
        Node::Not(sub) => {
            let outcome = evaluate(sub, facts);
            match outcome.verdict {
                Verdict::Sampled => Outcome::of(Verdict::NotSampled),
                Verdict::NotSampled => Outcome::of(Verdict::Sampled),
                other => Outcome::of(other),
            }
        }
        Node::Drop(subs) => {
            for sub in subs.iter_mut() {
                match evaluate(sub, facts).verdict {
                    Verdict::NotSampled => return Outcome::of(Verdict::NotSampled),
                    Verdict::Failed => return Outcome::of(Verdict::Failed),
                    Verdict::Sampled | Verdict::Dropped => {}
                }
            }
            Outcome::of(Verdict::Dropped)
        }
        Node::Composite(composite) => composite.evaluate(facts),
        Node::Dynamic(policy) => policy.evaluate(facts),
    }
}

impl Composite {
    fn evaluate(&mut self, facts: &Facts<'_>) -> Outcome {
        if self.window.advance(facts.now_unix_nano) {
            self.total_in_window = 0;
            for sub in &mut self.subs {
                sub.sampled_in_window = 0;
            }
        }
        let spans = i64::from(facts.stats.span_count);
        for sub in &mut self.subs {
            let outcome = evaluate(&mut sub.node, facts);
            if outcome.verdict == Verdict::Failed {
                return Outcome::of(Verdict::Failed);
            }
            if outcome.verdict == Verdict::Sampled {
                let sub_after = sub.sampled_in_window + spans;
                let total_after = self.total_in_window + spans;
                if sub_after <= sub.allocated && total_after <= self.max_total {
                    sub.sampled_in_window = sub_after;
                    self.total_in_window = total_after;
                    return Outcome {
                        verdict: Verdict::Sampled,
                        probability: outcome.probability,
                    };
                }
                // Over budget: not sampled, and the budget is left for smaller traces.
                return Outcome::of(Verdict::NotSampled);
            }
        }
        Outcome::of(Verdict::NotSampled)
    }
}

/// FNV-1a 64-bit over the concatenation of `parts` (Go's `hash/fnv` `New64a`).
fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}
