//! What decoding an OTLP request will take in memory, found by walking its wire format
//! before it is decoded.
//!
//! Protobuf amplifies: an empty log record is two bytes on the wire and a `LogRecord`
//! struct of about two hundred once decoded, so a request budget counted in wire bytes
//! alone does not bound memory. The receivers charge their byte budget with
//! [`decoded_footprint`] before a request is decoded, and refuse it when that does not fit.
//!
//! The figure is an upper bound on what prost allocates for the request (the fuzz binary
//! checks it against the allocator on mutated inputs), counted as:
//! - every element of a repeated message field: twice its struct's size (a `Vec` grows by
//!   doubling, so its capacity is at most twice its length), four times for the first (a
//!   `Vec`'s first allocation holds four);
//! - every string or bytes value: its length plus an eighth and 16 bytes (allocator size
//!   classes);
//! - every element of a repeated scalar: twice 8 bytes (four times for the first); a packed
//!   run counts one element per byte (a varint takes at least one) or per 8 bytes for
//!   fixed-width values;
//! - the request struct itself.
//!
//! Optional and oneof message fields live inside their parent's struct, so only what they
//! contain is added. Nesting deeper than prost's recursion limit fails as prost does.

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::trace::v1 as trace;

use super::SplitError;
use super::wire::{LEN, Problem, Reader};
use crate::otlp::Signal;

/// How much of a request's spans its reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spans {
    /// Every field, as a full prost decode does.
    Whole,
    /// The span struct, its ids, name, trace state and status, not its attributes,
    /// events or links (the sampler's wire read when no policy reads attributes), with
    /// what that read keeps per span and per request beside it. A span is then counted
    /// from its length alone, without walking its fields.
    Slim,
}

/// Upper bound on the bytes decoding `body`, an encoded export request of `signal`,
/// allocates (see the module docs); `spans` says how spans are read. Fails on framing a
/// decoder would refuse before allocating: truncated or overlong values, bad wire types,
/// nesting beyond prost's recursion limit.
pub fn decoded_footprint(signal: Signal, body: &[u8], spans: Spans) -> Result<usize, SplitError> {
    let (root, own) = match signal {
        Signal::Traces => (Msg::TracesRequest, size_of::<ExportTraceServiceRequest>()),
        Signal::Logs => (Msg::LogsRequest, size_of::<ExportLogsServiceRequest>()),
        Signal::Metrics => (
            Msg::MetricsRequest,
            size_of::<ExportMetricsServiceRequest>(),
        ),
    };
    let walk = Walk { body, spans };
    let beside = if signal == Signal::Traces && spans == Spans::Slim {
        SLIM_REQUEST_EXTRA
    } else {
        0
    };
    Ok(own + beside + walk.message(root, 0, body.len(), 0)?)
}

/// What the sampler's slim read keeps beside each span: the span's bytes handle twice (as
/// decoded and as kept), its place in its trace's group, a share of the group itself, all
/// with `Vec` growth; and allocator rounding of its five strings and ids.
const SLIM_SPAN_EXTRA: usize = 2 * (2 * 32 + 16 + 48) + 5 * 16;

/// What the slim read keeps once per request: its trace-id map and containers.
const SLIM_REQUEST_EXTRA: usize = 16 << 10;

/// Upper bound on the bytes decoding `body`, an OTLP/JSON export request, allocates. JSON
/// has no schema-free framing to walk cheaply, so this counts what could become an
/// allocation: every `{` the largest struct of the schema (twice, for `Vec` growth), every
/// value separator an element or buffered value (serde buffers flattened fields), and four
/// times the text for strings, ids decoded from hex or base64, and numbers.
pub fn json_decoded_footprint(body: &[u8]) -> usize {
    let (mut objects, mut separators) = (0usize, 0usize);
    for byte in body {
        match byte {
            b'{' => objects += 1,
            b',' | b':' | b'[' => separators += 1,
            _ => {}
        }
    }
    body.len() * 4 + objects * 2 * LARGEST_ELEMENT + separators * JSON_VALUE
}

/// The largest struct a repeated field holds: what one JSON object may become.
const LARGEST_ELEMENT: usize = {
    use Msg::*;
    let elements = [
        ResourceSpans,
        ScopeSpans,
        Span,
        Event,
        Link,
        ResourceLogs,
        ScopeLogs,
        LogRecord,
        ResourceMetrics,
        ScopeMetrics,
        Metric,
        NumberDataPoint,
        HistogramDataPoint,
        ExponentialHistogramDataPoint,
        SummaryDataPoint,
        ValueAtQuantile,
        Exemplar,
        EntityRef,
        KeyValue,
        AnyValue,
    ];
    let mut largest = 0;
    let mut i = 0;
    while i < elements.len() {
        if elements[i].size() > largest {
            largest = elements[i].size();
        }
        i += 1;
    }
    largest
};

/// Bytes one buffered JSON value or array element may take beyond its text.
const JSON_VALUE: usize = 64;

/// The messages of the three export requests that hold anything allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    TracesRequest,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    Status,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    NumberPoints,
    HistogramPoints,
    ExponentialPoints,
    SummaryPoints,
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    Buckets,
    SummaryDataPoint,
    ValueAtQuantile,
    Exemplar,
    Resource,
    Scope,
    EntityRef,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a field of a message holds, as far as allocation goes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A message inside the parent's struct (optional or oneof).
    One(Msg),
    /// A repeated message: a `Vec` of its structs.
    Many(Msg),
    /// A repeated scalar of `width` bytes on the wire when fixed-width, else a varint.
    Scalars { fixed: Option<usize> },
    /// A repeated string: a `Vec` of `String`s.
    Strings,
}

/// Deepest nesting decoded, as prost's recursion limit.
const MAX_DEPTH: u32 = 100;

impl Msg {
    /// Size of the struct an element of a repeated field of this message takes.
    const fn size(self) -> usize {
        use Msg::*;
        match self {
            ResourceSpans => size_of::<trace::ResourceSpans>(),
            ScopeSpans => size_of::<trace::ScopeSpans>(),
            Span => size_of::<trace::Span>(),
            Event => size_of::<trace::span::Event>(),
            Link => size_of::<trace::span::Link>(),
            ResourceLogs => size_of::<logs::ResourceLogs>(),
            ScopeLogs => size_of::<logs::ScopeLogs>(),
            LogRecord => size_of::<logs::LogRecord>(),
            ResourceMetrics => size_of::<metrics::ResourceMetrics>(),
            ScopeMetrics => size_of::<metrics::ScopeMetrics>(),
            Metric => size_of::<metrics::Metric>(),
            NumberDataPoint => size_of::<metrics::NumberDataPoint>(),
            HistogramDataPoint => size_of::<metrics::HistogramDataPoint>(),
            ExponentialHistogramDataPoint => size_of::<metrics::ExponentialHistogramDataPoint>(),
            SummaryDataPoint => size_of::<metrics::SummaryDataPoint>(),
            ValueAtQuantile => size_of::<metrics::summary_data_point::ValueAtQuantile>(),
            Exemplar => size_of::<metrics::Exemplar>(),
            EntityRef => size_of::<common::EntityRef>(),
            KeyValue => size_of::<common::KeyValue>(),
            AnyValue => size_of::<common::AnyValue>(),
            // Never an element of a repeated field.
            TracesRequest | LogsRequest | MetricsRequest | Status | NumberPoints
            | HistogramPoints | ExponentialPoints | SummaryPoints | Buckets | Resource | Scope
            | ArrayValue | KeyValueList => 0,
        }
    }

    /// Name for errors.
    fn name(self) -> &'static str {
        use Msg::*;
        match self {
            TracesRequest => "ExportTraceServiceRequest",
            LogsRequest => "ExportLogsServiceRequest",
            MetricsRequest => "ExportMetricsServiceRequest",
            _ => "a message of the request",
        }
    }

    /// What field `number` of this message holds; `None`: a scalar, a string or bytes, or
    /// a field the message does not have.
    fn field(self, number: u32) -> Option<Kind> {
        use Kind::*;
        use Msg::*;
        let kind = match (self, number) {
            (TracesRequest, 1) => Many(ResourceSpans),
            (ResourceSpans, 1) | (ResourceLogs, 1) | (ResourceMetrics, 1) => One(Resource),
            (ResourceSpans, 2) => Many(ScopeSpans),
            (ScopeSpans, 1) | (ScopeLogs, 1) | (ScopeMetrics, 1) => One(Scope),
            (ScopeSpans, 2) => Many(Span),
            (Span, 9) | (Event, 3) | (Link, 4) => Many(KeyValue),
            (Span, 11) => Many(Event),
            (Span, 13) => Many(Link),
            (Span, 15) => One(Status),
            (LogsRequest, 1) => Many(ResourceLogs),
            (ResourceLogs, 2) => Many(ScopeLogs),
            (ScopeLogs, 2) => Many(LogRecord),
            (LogRecord, 5) => One(AnyValue),
            (LogRecord, 6) => Many(KeyValue),
            (MetricsRequest, 1) => Many(ResourceMetrics),
            (ResourceMetrics, 2) => Many(ScopeMetrics),
            (ScopeMetrics, 2) => Many(Metric),
            (Metric, 5 | 7) => One(NumberPoints),
            (Metric, 9) => One(HistogramPoints),
            (Metric, 10) => One(ExponentialPoints),
            (Metric, 11) => One(SummaryPoints),
            (Metric, 12) => Many(KeyValue),
            (NumberPoints, 1) => Many(NumberDataPoint),
            (HistogramPoints, 1) => Many(HistogramDataPoint),
            (ExponentialPoints, 1) => Many(ExponentialHistogramDataPoint),
            (SummaryPoints, 1) => Many(SummaryDataPoint),
            (NumberDataPoint, 7) => Many(KeyValue),
            (NumberDataPoint, 5) => Many(Exemplar),
            (HistogramDataPoint, 9) => Many(KeyValue),
            (HistogramDataPoint, 6 | 7) => Scalars { fixed: Some(8) },
            (HistogramDataPoint, 8) => Many(Exemplar),
            (ExponentialHistogramDataPoint, 1) => Many(KeyValue),
            (ExponentialHistogramDataPoint, 8 | 9) => One(Buckets),
            (ExponentialHistogramDataPoint, 11) => Many(Exemplar),
            (Buckets, 2) => Scalars { fixed: None },
            (SummaryDataPoint, 7) => Many(KeyValue),
            (SummaryDataPoint, 6) => Many(ValueAtQuantile),
            (Exemplar, 7) => Many(KeyValue),
            (Resource, 1) | (Scope, 3) | (KeyValueList, 1) => Many(KeyValue),
            (Resource, 3) => Many(EntityRef),
            (EntityRef, 3 | 4) => Strings,
            (KeyValue, 2) => One(AnyValue),
            (AnyValue, 5) => One(ArrayValue),
            (AnyValue, 6) => One(KeyValueList),
            (ArrayValue, 1) => Many(AnyValue),
            _ => return None,
        };
        Some(kind)
    }
}

/// Bytes a string or bytes value of `len` bytes takes on the heap, at most.
fn heap_bytes(len: usize) -> usize {
    if len == 0 { 0 } else { len + len / 8 + 16 }
}

/// Bytes one more element of `size` bytes adds to the `Vec` of repeated field `number`:
/// twice its size (capacity doubles), and for the first element four times (a `Vec`'s
/// first allocation holds four elements of up to 1 KiB); `started` marks the fields seen.
fn vec_growth(started: &mut u64, number: u32, size: usize) -> usize {
    let bit = 1u64 << (number % 64);
    if *started & bit == 0 {
        *started |= bit;
        4 * size
    } else {
        2 * size
    }
}

/// One walk over a request.
struct Walk<'a> {
    body: &'a [u8],
    spans: Spans,
}

impl Walk<'_> {
    /// What the fields of the `msg` at `start..end` allocate.
    fn message(&self, msg: Msg, start: usize, end: usize, depth: u32) -> Result<usize, SplitError> {
        if depth > MAX_DEPTH {
            return Err(SplitError::Malformed {
                message: msg.name(),
                offset: start,
                problem: Problem::NestedTooDeep,
            });
        }
        let mut reader = Reader::new(self.body, start, end, msg.name());
        let mut total = 0usize;
        // Repeated fields of this message that have their first element.
        let mut started = 0u64;
        while let Some(field) = reader.next_field()? {
            let len = field.end - field.payload;
            let cost = match (msg.field(field.number), field.wire) {
                (Some(Kind::One(inner)), LEN) => {
                    self.message(inner, field.payload, field.end, depth + 1)?
                }
                (Some(Kind::Many(Msg::Span)), LEN) if self.spans == Spans::Slim => {
                    vec_growth(&mut started, field.number, Msg::Span.size())
                        + heap_bytes(len)
                        + SLIM_SPAN_EXTRA
                }
                (Some(Kind::Many(inner)), LEN) => {
                    vec_growth(&mut started, field.number, inner.size())
                        + self.message(inner, field.payload, field.end, depth + 1)?
                }
                (Some(Kind::Scalars { fixed }), LEN) => {
                    vec_growth(&mut started, field.number, 8)
                        + 2 * 8 * fixed.map_or(len, |width| len / width)
                }
                (Some(Kind::Scalars { .. }), _) => vec_growth(&mut started, field.number, 8),
                (Some(Kind::Strings), LEN) => 2 * size_of::<String>() + heap_bytes(len),
                (None, LEN) => heap_bytes(len),
                _ => 0,
            };
            total = total.saturating_add(cost);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests;
