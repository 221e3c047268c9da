//! The span and span event contexts: which paths exist, checked when a condition is compiled,
//! and how each reads the span, its event, scope and resource.
//!
//! Paths follow the OTTL span and span event contexts of the Collector: the fields of the
//! OTLP messages by their proto names (`name`, `kind`, `status.code`, `attributes["k"]`,
//! `start_time_unix_nano`, ...), the ids as bytes or `.string` hex, `resource.*` and
//! `instrumentation_scope.*`. A path may carry its context's name as a prefix (`span.name`); in
//! the span event context `span.*` reads the event's span. There is no `duration` path in OTTL:
//! write `end_time_unix_nano - start_time_unix_nano`.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::Event;

use super::ParseError;
use super::parser::{Key, Path};
use super::value::{Value, hex};

/// Which telemetry a condition runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextKind {
    /// Once per span (`ottl_condition.span`).
    Span,
    /// Once per span event (`ottl_condition.spanevent`).
    SpanEvent,
}

/// What one evaluation sees.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Data<'a> {
    pub(crate) resource: Option<&'a Resource>,
    pub(crate) scope: Option<&'a InstrumentationScope>,
    pub(crate) span: &'a Span,
    /// The event, in the span event context.
    pub(crate) event: Option<&'a Event>,
}

/// A field a path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SpanName,
    SpanKind,
    SpanKindString,
    SpanKindDeprecatedString,
    StatusCode,
    StatusMessage,
    SpanAttributes,
    SpanDroppedAttributes,
    SpanDroppedEvents,
    SpanDroppedLinks,
    TraceId,
    TraceIdString,
    SpanId,
    SpanIdString,
    ParentSpanId,
    ParentSpanIdString,
    TraceState,
    Flags,
    StartTime,
    EndTime,
    ResourceAttributes,
    ResourceDroppedAttributes,
    ScopeName,
    ScopeVersion,
    ScopeAttributes,
    ScopeDroppedAttributes,
    EventName,
    EventTime,
    EventAttributes,
    EventDroppedAttributes,
}

impl Field {
    /// Whether `[key]` indexes apply (maps, and the tracestate by list-member key).
    fn indexable(self) -> bool {
        matches!(
            self,
            Field::SpanAttributes
                | Field::ResourceAttributes
                | Field::ScopeAttributes
                | Field::EventAttributes
                | Field::TraceState
        )
    }
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accessor {
    field: Field,
    keys: Vec<Key>,
}

/// Resolves a path in `context`, or says why it does not exist (with its column).
pub(crate) fn resolve(path: &Path, context: ContextKind) -> Result<Accessor, ParseError> {
    let names: Vec<&str> = path.names.iter().map(String::as_str).collect();
    let field = field(&names, context).ok_or_else(|| {
        let context_name = match context {
            ContextKind::Span => "span",
            ContextKind::SpanEvent => "spanevent",
        };
        ParseError::new(
            path.column,
            format!(
                "unknown path `{}` in the {context_name} context",
                path.names.join(".")
            ),
        )
    })?;
    if !path.keys.is_empty() {
        if !field.indexable() {
            return Err(ParseError::new(
                path.column,
                format!("path `{}` cannot be indexed", path.names.join(".")),
            ));
        }
        if field == Field::TraceState
            && (path.keys.len() != 1 || !matches!(path.keys[0], Key::Str(_)))
        {
            return Err(ParseError::new(
                path.column,
                "`trace_state` takes exactly one string key",
            ));
        }
        if !matches!(path.keys[0], Key::Str(_)) {
            return Err(ParseError::new(
                path.column,
                "the first key of a map path must be a string",
            ));
        }
    }
    Ok(Accessor {
        field,
        keys: path.keys.clone(),
    })
}

/// The field named by `names` in `context`.
fn field(names: &[&str], context: ContextKind) -> Option<Field> {
    match (context, names) {
        (_, ["resource", rest @ ..]) => match rest {
            ["attributes"] => Some(Field::ResourceAttributes),
            ["dropped_attributes_count"] => Some(Field::ResourceDroppedAttributes),
            _ => None,
        },
        (_, ["instrumentation_scope" | "scope", rest @ ..]) => match rest {
            ["name"] => Some(Field::ScopeName),
            ["version"] => Some(Field::ScopeVersion),
            ["attributes"] => Some(Field::ScopeAttributes),
            ["dropped_attributes_count"] => Some(Field::ScopeDroppedAttributes),
            _ => None,
        },
        (ContextKind::Span, ["span", rest @ ..]) => span_field(rest),
        (ContextKind::Span, rest) => span_field(rest),
        (ContextKind::SpanEvent, ["span", rest @ ..]) => span_field(rest),
        (ContextKind::SpanEvent, ["spanevent", rest @ ..]) => event_field(rest),
        (ContextKind::SpanEvent, rest) => event_field(rest),
    }
}

fn span_field(names: &[&str]) -> Option<Field> {
    Some(match names {
        ["name"] => Field::SpanName,
        ["kind"] => Field::SpanKind,
        ["kind", "string"] => Field::SpanKindString,
        ["kind", "deprecated_string"] => Field::SpanKindDeprecatedString,
        ["status", "code"] => Field::StatusCode,
        ["status", "message"] => Field::StatusMessage,
        ["attributes"] => Field::SpanAttributes,
        ["dropped_attributes_count"] => Field::SpanDroppedAttributes,
        ["dropped_events_count"] => Field::SpanDroppedEvents,
        ["dropped_links_count"] => Field::SpanDroppedLinks,
        ["trace_id"] => Field::TraceId,
        ["trace_id", "string"] => Field::TraceIdString,
        ["span_id"] => Field::SpanId,
        ["span_id", "string"] => Field::SpanIdString,
        ["parent_span_id"] => Field::ParentSpanId,
        ["parent_span_id", "string"] => Field::ParentSpanIdString,
        ["trace_state"] => Field::TraceState,
        ["flags"] => Field::Flags,
        ["start_time_unix_nano"] => Field::StartTime,
        ["end_time_unix_nano"] => Field::EndTime,
        _ => return None,
    })
}

fn event_field(names: &[&str]) -> Option<Field> {
    Some(match names {
        ["name"] => Field::EventName,
        ["time_unix_nano"] => Field::EventTime,
        ["attributes"] => Field::EventAttributes,
        ["dropped_attributes_count"] => Field::EventDroppedAttributes,
        _ => return None,
    })
}

/// Why reading a path failed at run time.
pub(crate) type ReadError = String;

impl Accessor {
    /// Reads the path from `data`.
    pub(crate) fn read<'a>(&self, data: &Data<'a>) -> Result<Value<'a>, ReadError> {
        let span = data.span;
        let status = span.status.as_ref();
        let borrowed = |s: &'a str| Value::Str(Cow::Borrowed(s));
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let base = match self.field {
            Field::SpanName => borrowed(&span.name),
            Field::SpanKind => Value::Int(i64::from(span.kind)),
            Field::SpanKindString => borrowed(kind_name(span.kind)),
            Field::SpanKindDeprecatedString => borrowed(kind_symbol(span.kind)),
            Field::StatusCode => Value::Int(status.map_or(0, |s| i64::from(s.code))),
            Field::StatusMessage => borrowed(status.map_or("", |s| s.message.as_str())),
            Field::SpanAttributes => Value::Map(&span.attributes),
            Field::SpanDroppedAttributes => int(u64::from(span.dropped_attributes_count)),
            Field::SpanDroppedEvents => int(u64::from(span.dropped_events_count)),
            Field::SpanDroppedLinks => int(u64::from(span.dropped_links_count)),
            Field::TraceId => Value::Bytes(Cow::Borrowed(&span.trace_id)),
            Field::TraceIdString => Value::Str(Cow::Owned(hex(&span.trace_id))),
            Field::SpanId => Value::Bytes(Cow::Borrowed(&span.span_id)),
            Field::SpanIdString => Value::Str(Cow::Owned(hex(&span.span_id))),
            Field::ParentSpanId => Value::Bytes(Cow::Borrowed(&span.parent_span_id)),
            Field::ParentSpanIdString => Value::Str(Cow::Owned(hex(&span.parent_span_id))),
            Field::TraceState => {
                if let Some(Key::Str(member)) = self.keys.first() {
                    return Ok(
                        trace_state_member(&span.trace_state, member).map_or(Value::Nil, borrowed)
                    );
                }
                borrowed(&span.trace_state)
            }
            Field::Flags => Value::Int(i64::from(span.flags)),
            Field::StartTime => int(span.start_time_unix_nano),
            Field::EndTime => int(span.end_time_unix_nano),
            Field::ResourceAttributes => Value::Map(
                data.resource
                    .map_or(&[] as &[KeyValue], |r| r.attributes.as_slice()),
            ),
            Field::ResourceDroppedAttributes => int(u64::from(
                data.resource.map_or(0, |r| r.dropped_attributes_count),
            )),
            Field::ScopeName => borrowed(data.scope.map_or("", |s| s.name.as_str())),
            Field::ScopeVersion => borrowed(data.scope.map_or("", |s| s.version.as_str())),
            Field::ScopeAttributes => Value::Map(
                data.scope
                    .map_or(&[] as &[KeyValue], |s| s.attributes.as_slice()),
            ),
            Field::ScopeDroppedAttributes => int(u64::from(
                data.scope.map_or(0, |s| s.dropped_attributes_count),
            )),
            Field::EventName => borrowed(data.event.map_or("", |e| e.name.as_str())),
            Field::EventTime => int(data.event.map_or(0, |e| e.time_unix_nano)),
            Field::EventAttributes => Value::Map(
                data.event
                    .map_or(&[] as &[KeyValue], |e| e.attributes.as_slice()),
            ),
            Field::EventDroppedAttributes => int(u64::from(
                data.event.map_or(0, |e| e.dropped_attributes_count),
            )),
        };
        index(base, &self.keys)
    }
}

/// Applies `keys` to `value`: string keys look up a map entry, integer keys a list item. A
/// missing entry is `nil`, and so is any key applied to `nil`.
pub(crate) fn index<'a>(mut value: Value<'a>, keys: &[Key]) -> Result<Value<'a>, ReadError> {
    for key in keys {
        value = match (value, key) {
            (Value::Nil, _) => Value::Nil,
            (Value::Map(kvs), Key::Str(k)) => kvs
                .iter()
                .find(|kv| &kv.key == k)
                .map_or(Value::Nil, |kv| Value::from_any(kv.value.as_ref())),
            (Value::List(mut items), Key::Int(i)) => {
                let len = items.len();
                let at = usize::try_from(*i)
                    .ok()
                    .filter(|at| *at < len)
                    .ok_or_else(|| format!("index {i} out of bounds for a list of {len}"))?;
                items.swap_remove(at)
            }
            (Value::Map(_), Key::Int(i)) => return Err(format!("a map cannot be indexed by {i}")),
            (Value::List(_), Key::Str(k)) => {
                return Err(format!("a list cannot be indexed by \"{k}\""));
            }
            (other, _) => return Err(format!("a {} value cannot be indexed", other.kind())),
        };
    }
    Ok(value)
}

/// The value of list member `key` in a W3C tracestate.
fn trace_state_member<'a>(trace_state: &'a str, key: &str) -> Option<&'a str> {
    trace_state
        .split(',')
        .filter_map(|member| member.trim().split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `kind.string`: the kind's short name.
fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        _ => "Unspecified",
    }
}

/// `kind.deprecated_string`: the kind's proto symbol.
fn kind_symbol(kind: i32) -> &'static str {
    match kind {
        1 => "SPAN_KIND_INTERNAL",
        2 => "SPAN_KIND_SERVER",
        3 => "SPAN_KIND_CLIENT",
        4 => "SPAN_KIND_PRODUCER",
        5 => "SPAN_KIND_CONSUMER",
        _ => "SPAN_KIND_UNSPECIFIED",
    }
}

/// The value of an enum symbol of the span contexts.
pub(crate) fn enum_value(name: &str) -> Option<i64> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}
