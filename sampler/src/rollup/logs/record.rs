//! OTLP log records as rollup input: the resource identity a record is counted under, and
//! its body as the text the miner sees.

use std::borrow::Cow;
use std::fmt::{self, Write};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_shared::otlp::kv_str;

/// Resource attributes that identify where a log line came from, in output order. Summaries
/// are kept per distinct combination of their values and the rolled-up output carries them
/// as its resource, so a summary can be traced back to its service and instance.
pub const RESOURCE_IDENTITY_ATTRIBUTES: [&str; 7] = [
    "service.name",
    "service.namespace",
    "service.instance.id",
    "k8s.pod.name",
    "host.name",
    "deployment.environment",
    "deployment.environment.name",
];

/// Index of `service.name` in [`RESOURCE_IDENTITY_ATTRIBUTES`].
pub(super) const SERVICE_NAME: usize = 0;

/// The values of [`RESOURCE_IDENTITY_ATTRIBUTES`] in `resource`. Only the first attribute
/// with a given key counts (the OTLP data model forbids duplicates); a value that is not a
/// string, or is empty, counts as absent, so equal keys always mean equal attributes.
pub(super) fn identity_values(resource: Option<&Resource>) -> [Option<&str>; 7] {
    let mut values = [None; 7];
    let mut seen = [false; 7];
    for kv in resource.iter().flat_map(|r| &r.attributes) {
        let Some(i) = RESOURCE_IDENTITY_ATTRIBUTES
            .iter()
            .position(|k| *k == kv.key)
        else {
            continue;
        };
        if seen[i] {
            continue;
        }
        seen[i] = true;
        values[i] = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        };
    }
    values
}

/// Writes the resource key of `values` into `out`, replacing its contents: each value
/// length-prefixed (absent = empty), so distinct value lists never share a key.
pub(super) fn resource_key(values: &[Option<&str>; 7], out: &mut Vec<u8>) {
    out.clear();
    for value in values {
        let bytes = value.unwrap_or_default().as_bytes();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
}

/// The present identity attributes as string attributes, in
/// [`RESOURCE_IDENTITY_ATTRIBUTES`] order.
pub(super) fn resource_attributes(values: &[Option<&str>; 7]) -> Vec<KeyValue> {
    RESOURCE_IDENTITY_ATTRIBUTES
        .iter()
        .zip(values)
        .filter_map(|(key, value)| value.map(|v| kv_str(key, v)))
        .collect()
}

/// The text of a log body: a string body as is, an empty body as `""`, and any other kind
/// rendered deterministically — numbers and booleans by `to_string`, bytes as lowercase
/// hex, arrays and key-value lists as compact JSON-like text (`[1,"a"]`, `{"k":true}`) — so
/// equal bodies always mine into the same template.
pub(super) fn body_text(body: Option<&AnyValue>) -> Cow<'_, str> {
    let mut out = String::new();
    let written = match body.and_then(|b| b.value.as_ref()) {
        None => return Cow::Borrowed(""),
        Some(Value::StringValue(s)) => return Cow::Borrowed(s),
        Some(Value::BytesValue(b)) => push_hex(b, &mut out),
        Some(value) => render(value, &mut out),
    };
    written.expect("writing to a String cannot fail");
    Cow::Owned(out)
}

/// Renders a value nested in (or, for scalars, standing in for) an array or key-value list.
fn render(value: &Value, out: &mut String) -> fmt::Result {
    match value {
        Value::StringValue(s) => push_quoted(s, out),
        Value::BoolValue(b) => write!(out, "{b}"),
        Value::IntValue(i) => write!(out, "{i}"),
        Value::DoubleValue(d) => write!(out, "{d}"),
        Value::StringValueStrindex(i) => write!(out, "{i}"),
        Value::BytesValue(b) => {
            out.push('"');
            push_hex(b, out)?;
            out.push('"');
            Ok(())
        }
        Value::ArrayValue(array) => {
            out.push('[');
            for (i, item) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_optional(item.value.as_ref(), out)?;
            }
            out.push(']');
            Ok(())
        }
        Value::KvlistValue(list) => {
            out.push('{');
            for (i, kv) in list.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_quoted(&kv.key, out)?;
                out.push(':');
                render_optional(kv.value.as_ref().and_then(|v| v.value.as_ref()), out)?;
            }
            out.push('}');
            Ok(())
        }
    }
}

/// Renders a value that may be unset (`null`).
fn render_optional(value: Option<&Value>, out: &mut String) -> fmt::Result {
    match value {
        Some(value) => render(value, out),
        None => {
            out.push_str("null");
            Ok(())
        }
    }
}

/// Appends `s` as a JSON string literal.
fn push_quoted(s: &str, out: &mut String) -> fmt::Result {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => write!(out, "\\u{:04x}", u32::from(c))?,
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

/// Appends `bytes` as lowercase hex.
fn push_hex(bytes: &[u8], out: &mut String) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(out, "{b:02x}"))
}
