//! Span-level conditions: "does any span (or its resource) of the trace match?".
//!
//! These are the only policy inputs that depend on span contents, so they are folded into one
//! bit each of [`super::PolicyState`] as spans arrive; a decision then needs no read-back.

use std::collections::HashSet;

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use regex::Regex;

/// How a string attribute value is compared.
#[derive(Debug)]
pub(crate) enum StringMatcher {
    /// One of these exact values (empty strings never match, as in the Collector).
    Exact(HashSet<String>),
    /// Any of these regular expressions finds a match (unanchored, like Go's `MatchString`).
    Regex(Vec<Regex>),
}

impl StringMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(values) => values.contains(value),
            StringMatcher::Regex(regexes) => regexes.iter().any(|r| r.is_match(value)),
        }
    }
}

/// One span-level condition.
#[derive(Debug)]
pub(crate) enum Predicate {
    /// An integer attribute within `[min, max]`, on the resource or the span.
    Numeric { key: String, min: i64, max: i64 },
    /// A string attribute matching, on the resource or the span.
    String { key: String, matcher: StringMatcher },
    /// A boolean attribute equal to `value`, on the resource or the span.
    Boolean { key: String, value: bool },
    /// The span's status code is in this set (bit `1 << code`).
    StatusCode { codes: u8 },
    /// The span's tracestate has `key` with one of `values`.
    TraceState {
        key: String,
        values: HashSet<String>,
    },
    /// The span's W3C `sampled` flag is set.
    TraceFlagsSampled,
}

/// The W3C trace-flags `sampled` bit as carried in `Span.flags`.
const SAMPLED_FLAG: u32 = 0x01;

impl Predicate {
    /// Whether the condition reads span or resource attributes.
    pub(crate) fn reads_attributes(&self) -> bool {
        matches!(
            self,
            Predicate::Numeric { .. } | Predicate::String { .. } | Predicate::Boolean { .. }
        )
    }

    /// Whether this span (with its resource) satisfies the condition.
    pub(crate) fn matches(&self, resource: Option<&Resource>, span: &Span) -> bool {
        match self {
            Predicate::Numeric { key, min, max } => {
                let hit = |v: &any_value::Value| matches!(v, any_value::Value::IntValue(i) if min <= i && i <= max);
                any_attribute(resource, span, key, hit, hit)
            }
            Predicate::String { key, matcher } => {
                let on_resource = |v: &any_value::Value| matches!(v, any_value::Value::StringValue(s) if matcher.matches(s));
                let on_span = |v: &any_value::Value| matches!(v, any_value::Value::StringValue(s) if !s.is_empty() && matcher.matches(s));
                any_attribute(resource, span, key, on_resource, on_span)
            }
            Predicate::Boolean { key, value } => {
                let hit = |v: &any_value::Value| matches!(v, any_value::Value::BoolValue(b) if b == value);
                any_attribute(resource, span, key, hit, hit)
            }
            Predicate::StatusCode { codes } => {
                let code = span
                    .status
                    .as_ref()
                    .map_or(StatusCode::Unset as i32, |s| s.code);
                (0..8).contains(&code) && codes & (1 << code) != 0
            }
            Predicate::TraceState { key, values } => span
                .trace_state
                .split(',')
                .filter_map(|member| member.trim().split_once('='))
                .any(|(k, v)| k == key && values.contains(v)),
            Predicate::TraceFlagsSampled => span.flags & SAMPLED_FLAG != 0,
        }
    }
}

/// Whether the resource's attribute `key` satisfies `on_resource` or the span's satisfies
/// `on_span`.
fn any_attribute(
    resource: Option<&Resource>,
    span: &Span,
    key: &str,
    on_resource: impl Fn(&any_value::Value) -> bool,
    on_span: impl Fn(&any_value::Value) -> bool,
) -> bool {
    let resource_hit =
        resource.is_some_and(|r| attribute(&r.attributes, key).is_some_and(&on_resource));
    resource_hit || attribute(&span.attributes, key).is_some_and(on_span)
}

/// The value of attribute `key`, if present and set.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}
