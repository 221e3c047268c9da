//! Runtime values of OTTL expressions and OTTL's comparison rules.
//!
//! Values borrow from the span being evaluated where they can, so reading an attribute costs
//! no allocation. Comparison follows OTTL: `nil` equals only `nil`; integers and floats compare
//! numerically with each other; strings and byte strings compare lexically; booleans, maps and
//! lists support only `==` and `!=`; values of different kinds are never equal, and an ordering
//! between them is false (never an error).

use std::borrow::Cow;
use std::cmp::Ordering;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use super::lexer::CompareOp;

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    /// A map of attributes (`attributes`, or a kvlist attribute value).
    Map(&'a [KeyValue]),
    List(Vec<Value<'a>>),
}

impl<'a> Value<'a> {
    /// The value of an OTLP attribute (`None` or an unset value is `nil`).
    pub(crate) fn from_any(value: Option<&'a AnyValue>) -> Value<'a> {
        match value.and_then(|v| v.value.as_ref()) {
            None => Value::Nil,
            Some(any_value::Value::StringValue(s)) => Value::Str(Cow::Borrowed(s)),
            Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
            Some(any_value::Value::IntValue(i)) => Value::Int(*i),
            Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
            Some(any_value::Value::BytesValue(b)) => Value::Bytes(Cow::Borrowed(b)),
            Some(any_value::Value::ArrayValue(a)) => {
                Value::List(a.values.iter().map(|v| Value::from_any(Some(v))).collect())
            }
            Some(any_value::Value::KvlistValue(kv)) => Value::Map(&kv.values),
            // An index into a profiles string table, which spans do not carry.
            Some(any_value::Value::StringValueStrindex(_)) => Value::Nil,
        }
    }

    /// The kind of value, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Double(_) => "double",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Map(_) => "map",
            Value::List(_) => "list",
        }
    }

    /// The string form used by converters that accept "string-like" values (`IsMatch`,
    /// `String`, `Concat`): numbers and booleans as text, bytes as lower-case hex, maps and
    /// lists as JSON; `None` for `nil`.
    pub(crate) fn to_string_like(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Nil => return None,
            Value::Str(s) => Cow::Borrowed(s.as_ref()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Double(d) => Cow::Owned(format_double(*d)),
            Value::Bytes(b) => Cow::Owned(hex(b)),
            Value::Map(_) | Value::List(_) => Cow::Owned(self.to_json().to_string()),
        })
    }

    /// The value as JSON (maps and lists are rendered this way as strings).
    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Double(d) => serde_json::Value::from(*d),
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::Bytes(b) => serde_json::Value::String(hex(b)),
            Value::Map(kvs) => serde_json::Value::Object(
                kvs.iter()
                    .map(|kv| (kv.key.clone(), Value::from_any(kv.value.as_ref()).to_json()))
                    .collect(),
            ),
            Value::List(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
        }
    }
}

/// Lower-case hex of `bytes` (how trace and span ids are written).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A double as Go's `strconv.FormatFloat(d, 'f', -1, 64)` writes it: shortest exact digits,
/// never an exponent.
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_owned();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    format!("{d}")
}

/// Evaluates `left op right` with OTTL's rules.
pub(crate) fn compare(left: &Value<'_>, op: CompareOp, right: &Value<'_>) -> bool {
    use Value::*;
    let ordering = match (left, right) {
        (Nil, Nil) => Some(Ordering::Equal),
        (Int(a), Int(b)) => Some(a.cmp(b)),
        (Int(a), Double(b)) => (*a as f64).partial_cmp(b),
        (Double(a), Int(b)) => a.partial_cmp(&(*b as f64)),
        (Double(a), Double(b)) => a.partial_cmp(b),
        (Str(a), Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (Bytes(a), Bytes(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (Bool(_), Bool(_)) | (Map(_), Map(_)) | (List(_), List(_)) => {
            // Equality only.
            let equal = equal(left, right);
            return match op {
                CompareOp::Eq => equal,
                CompareOp::Ne => !equal,
                _ => false,
            };
        }
        _ => None,
    };
    match (ordering, op) {
        (Some(o), CompareOp::Eq) => o == Ordering::Equal,
        (Some(o), CompareOp::Ne) => o != Ordering::Equal,
        (Some(o), CompareOp::Lt) => o == Ordering::Less,
        (Some(o), CompareOp::Le) => o != Ordering::Greater,
        (Some(o), CompareOp::Gt) => o == Ordering::Greater,
        (Some(o), CompareOp::Ge) => o != Ordering::Less,
        // Different kinds (or NaN): never equal, never ordered.
        (None, CompareOp::Ne) => true,
        (None, _) => false,
    }
}

/// OTTL equality (`==`).
pub(crate) fn equal(left: &Value<'_>, right: &Value<'_>) -> bool {
    match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Map(a), Value::Map(b)) => {
            a.len() == b.len()
                && a.iter().all(|kv| {
                    b.iter().any(|other| {
                        other.key == kv.key
                            && equal(
                                &Value::from_any(kv.value.as_ref()),
                                &Value::from_any(other.value.as_ref()),
                            )
                    })
                })
        }
        (Value::List(a), Value::List(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        _ => compare(left, CompareOp::Eq, right),
    }
}
