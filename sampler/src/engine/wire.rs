//! Reading an encoded `ExportTraceServiceRequest` for buffering without decoding it whole.
//!
//! A sampler drops most of what it buffers, so a full prost decode of every span (a dozen
//! allocations each: ids, name, every attribute key and value), regrouping the decoded spans
//! per trace and encoding each group again was most of its CPU. Here the request is walked
//! once:
//!
//! - containers (`ResourceSpans`, `ScopeSpans`) are read as byte ranges of the request
//!   (zero-copy `Bytes`); resources and scopes are decoded once each;
//! - each span is read for what deciding needs — ids, name, kind, times, status, flags,
//!   tracestate, and its attributes only when a policy or a span-metrics dimension reads
//!   them — into a slim [`Span`]; every string in it (nested attribute values, events and
//!   links included) is checked to be UTF-8 on the way, so a request a full decode would
//!   refuse is refused here too;
//! - each trace's spans are written into the buffer from the original bytes of its
//!   resource, scopes and spans ([`Parsed::resource`], [`Parsed::encode_rest`]), never
//!   re-encoded.
//!
//! Spans with an invalid trace or span id are left out and counted exactly as
//! [`otlp::sanitize_traces`] does.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otel_tail_shared::otlp::{self, TraceId};
use otel_tail_shared::receiver::Accepted;
use prost::Message;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len};
use smallvec::SmallVec;

use crate::buffer::TraceMap;

pub mod kept;

/// `ExportTraceServiceRequest` with its resource containers as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct WireRequest {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    resource_spans: Vec<Bytes>,
}

/// `ResourceSpans` with its resource and scope containers as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct WireResourceSpans {
    #[prost(bytes = "bytes", optional, tag = "1")]
    resource: Option<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    scope_spans: Vec<Bytes>,
    #[prost(bytes = "bytes", tag = "3")]
    schema_url: Bytes,
}

/// A `ScopeSpans` of the request: its scope and schema URL, its bytes, and where each valid
/// span lies in them (no reference-counted handle per span).
#[derive(Debug)]
struct WireScope {
    container: Container,
    bytes: Bytes,
    /// Byte ranges (start, end) of the valid spans in `bytes`.
    spans: Vec<(u32, u32)>,
}

impl WireScope {
    fn span(&self, index: usize) -> &[u8] {
        let (start, end) = self.spans[index];
        &self.bytes[start as usize..end as usize]
    }
}

/// Reads a `ScopeSpans`: its scope, its schema URL (a repeated singular field: the last one
/// counts, as in a full decode) and the byte ranges of all its spans.
fn read_scope(bytes: Bytes) -> Result<WireScope, String> {
    let mut scope = None;
    let mut spans = Vec::new();
    let mut schema_url = Bytes::new();
    let mut fields = Fields::new(&bytes);
    while let Some((number, value)) = fields.next()? {
        match (number, value) {
            (1, Value::Bytes(b)) => scope = Some(bytes.slice_ref(b)),
            (2, Value::Bytes(b)) => {
                let end = u32::try_from(fields.at)
                    .map_err(|_| "invalid protobuf: a ScopeSpans of 4 GiB or more".to_string())?;
                spans.push((end - b.len() as u32, end));
            }
            (3, Value::Bytes(b)) => schema_url = bytes.slice_ref(b),
            (1..=3, Value::Number(_)) => {
                return Err(format!(
                    "invalid protobuf: ScopeSpans field {number} has the wrong wire type"
                ));
            }
            _ => {}
        }
    }
    Ok(WireScope {
        container: Container {
            head: scope,
            schema_url,
        },
        bytes,
        spans,
    })
}

/// What of a span deciding reads besides the fixed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanNeeds {
    /// Ids, name, kind, times, status, flags and tracestate.
    Fixed,
    /// Those and the span's attributes.
    Attributes,
    /// Everything (events and links too): the span is decoded whole.
    Everything,
}

/// A resource or scope container of the request, for writing groups.
#[derive(Debug)]
struct Container {
    /// The `resource` / `scope` field's message bytes, when present.
    head: Option<Bytes>,
    schema_url: Bytes,
}

/// The spans of one trace under one resource: indexes into [`Parsed::slim`] (resource
/// `resource`, then per span its scope and position) and the span bytes.
#[derive(Debug)]
pub struct TraceGroup {
    /// The trace.
    pub trace: TraceId,
    /// Index of its resource in [`Parsed::slim`].
    pub resource: usize,
    /// Per span: scope index within the resource, span index within the scope (inline
    /// for a few spans: most groups are small, and growing a vector per group per request
    /// was a visible share of the allocator's time).
    pub spans: SmallVec<[(usize, usize); 6]>,
}

/// Per scope a group touches, its index and encoded `ScopeSpans` length.
pub type ScopeLens = SmallVec<[(usize, usize); 2]>;

/// An encoded request read for buffering.
#[derive(Debug)]
pub struct Parsed {
    /// The valid spans, slim (see the module docs), in the request's structure.
    pub slim: ExportTraceServiceRequest,
    /// Per (trace, resource), in order of first appearance.
    pub groups: Vec<TraceGroup>,
    /// Spans left out for invalid ids, as `partial_success` reports them.
    pub refused: Accepted,
    resources: Vec<Container>,
    /// Per resource, per scope: the container and the valid spans' bytes.
    scopes: Vec<Vec<WireScope>>,
}

impl Parsed {
    /// Spans accepted.
    pub fn span_count(&self) -> usize {
        self.scopes
            .iter()
            .flatten()
            .map(|scope| scope.spans.len())
            .sum()
    }

    /// The `Resource` message bytes of `group`'s resource, if it has one.
    pub fn resource(&self, group: &TraceGroup) -> Option<&[u8]> {
        self.resources[group.resource].head.as_deref()
    }

    /// Lengths of the request's resources (`Resource` message bytes), each once.
    pub fn resource_lens(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.resources
            .iter()
            .map(|r| r.head.as_ref().map_or(0, Bytes::len))
    }

    /// Encoded length of `group` as a `ResourceSpans`, given its [`Parsed::rest_len`].
    pub fn encoded_len(&self, group: &TraceGroup, rest_len: usize) -> usize {
        field_len(1, self.resource(group)) + rest_len
    }

    /// Encoded length of `group`'s `ResourceSpans` fields after its resource (scopes and
    /// schema URL), given its [`Parsed::scope_lens`].
    pub fn rest_len(&self, group: &TraceGroup, scope_lens: &[(usize, usize)]) -> usize {
        let resource = &self.resources[group.resource];
        scope_lens
            .iter()
            .map(|(_, len)| key_len(2) + encoded_len_varint(*len as u64) + len)
            .sum::<usize>()
            + field_len(3, non_empty(&resource.schema_url))
    }

    /// Writes `group`'s `ResourceSpans` fields after its resource, of the original bytes of
    /// its scopes and spans, given its [`Parsed::scope_lens`]: with the resource field in
    /// front, the group as a `ResourceSpans`.
    pub fn encode_rest(
        &self,
        group: &TraceGroup,
        scope_lens: &[(usize, usize)],
        buf: &mut impl BufMut,
    ) {
        let resource = &self.resources[group.resource];
        let scopes = &self.scopes[group.resource];
        let mut at = 0;
        for &(scope, len) in scope_lens {
            encode_key(2, prost::encoding::WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
            let wire = &scopes[scope];
            let container = &wire.container;
            put_field(1, container.head.as_deref(), buf);
            while at < group.spans.len() && group.spans[at].0 == scope {
                put_field(2, Some(wire.span(group.spans[at].1)), buf);
                at += 1;
            }
            put_field(3, non_empty(&container.schema_url), buf);
        }
        put_field(3, non_empty(&resource.schema_url), buf);
    }

    /// Per scope `group` touches (in order), that `ScopeSpans`' encoded length. Spans of a
    /// group are in (scope, span) order.
    pub fn scope_lens(&self, group: &TraceGroup) -> ScopeLens {
        let scopes = &self.scopes[group.resource];
        let mut out = ScopeLens::new();
        for &(scope, span) in &group.spans {
            let wire = &scopes[scope];
            if out.last().is_none_or(|(s, _)| *s != scope) {
                out.push((
                    scope,
                    field_len(1, wire.container.head.as_deref())
                        + field_len(3, non_empty(&wire.container.schema_url)),
                ));
            }
            let bytes = wire.span(span);
            out.last_mut().expect("pushed").1 +=
                key_len(2) + encoded_len_varint(bytes.len() as u64) + bytes.len();
        }
        out
    }
}

fn non_empty(bytes: &[u8]) -> Option<&[u8]> {
    (!bytes.is_empty()).then_some(bytes)
}

fn field_len(tag: u32, bytes: Option<&[u8]>) -> usize {
    bytes.map_or(0, |b| {
        key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
    })
}

fn put_field(tag: u32, bytes: Option<&[u8]>, buf: &mut impl BufMut) {
    if let Some(bytes) = bytes {
        encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
        encode_varint(bytes.len() as u64, buf);
        buf.put_slice(bytes);
    }
}

/// Reads `body` (an encoded `ExportTraceServiceRequest`); `Err` names what is malformed.
pub fn parse(body: Bytes, needs: SpanNeeds) -> Result<Parsed, String> {
    let request = WireRequest::decode(body).map_err(|e| format!("invalid protobuf: {e}"))?;
    let mut parsed = Parsed {
        slim: ExportTraceServiceRequest::default(),
        groups: SPARE_GROUPS.with(|spare| std::mem::take(&mut *spare.borrow_mut())),
        refused: Accepted::default(),
        resources: Vec::with_capacity(request.resource_spans.len()),
        scopes: Vec::with_capacity(request.resource_spans.len()),
    };
    let (mut bad_trace, mut bad_span) = (0i64, 0i64);
    // Room for the traces of a typical request without rehashing.
    let mut by_trace: TraceMap<usize> = TraceMap::with_capacity_and_hasher(256, Default::default());
    for rs_bytes in request.resource_spans {
        let rs =
            WireResourceSpans::decode(rs_bytes).map_err(|e| format!("invalid protobuf: {e}"))?;
        check_utf8(&rs.schema_url, "ResourceSpans.schema_url")?;
        let resource = rs
            .resource
            .as_ref()
            .map(|b| Resource::decode(b.clone()))
            .transpose()
            .map_err(|e| format!("invalid protobuf: {e}"))?;
        let resource_index = parsed.slim.resource_spans.len();
        by_trace.clear();
        // The group of the span read last: SDKs write a trace's spans under a resource
        // next to each other, so most spans find their group without a lookup.
        let mut last: Option<(TraceId, usize)> = None;
        let mut slim_scopes = Vec::with_capacity(rs.scope_spans.len());
        let mut wire_scopes = Vec::with_capacity(rs.scope_spans.len());
        for ss_bytes in rs.scope_spans {
            let mut wire = read_scope(ss_bytes)?;
            check_utf8(&wire.container.schema_url, "ScopeSpans.schema_url")?;
            let scope = wire
                .container
                .head
                .as_ref()
                .map(|b| InstrumentationScope::decode(b.clone()))
                .transpose()
                .map_err(|e| format!("invalid protobuf: {e}"))?;
            let scope_index = slim_scopes.len();
            // Spans of an earlier request, refilled in place: their ids and names keep
            // their allocations (see [`recycle`]).
            let mut slim_spans = spare_spans();
            let mut used = 0;
            let mut kept = Vec::with_capacity(wire.spans.len());
            for &(start, end) in &wire.spans {
                let span_bytes = &wire.bytes[start as usize..end as usize];
                if used == slim_spans.len() {
                    slim_spans.push(Span::default());
                }
                let span = &mut slim_spans[used];
                read_span(span, span_bytes, needs)?;
                let Some(trace) = otlp::trace_id(&span.trace_id) else {
                    bad_trace += 1;
                    continue;
                };
                if span.span_id.len() != 8 || span.span_id == [0; 8] {
                    bad_span += 1;
                    continue;
                }
                let group = match last {
                    Some((previous, group)) if previous == trace => group,
                    _ => *by_trace.entry(trace).or_insert_with(|| {
                        parsed.groups.push(TraceGroup {
                            trace,
                            resource: resource_index,
                            spans: SmallVec::new(),
                        });
                        parsed.groups.len() - 1
                    }),
                };
                last = Some((trace, group));
                parsed.groups[group].spans.push((scope_index, used));
                used += 1;
                kept.push((start, end));
            }
            slim_spans.truncate(used);
            slim_scopes.push(ScopeSpans {
                scope,
                spans: slim_spans,
                schema_url: utf8(&wire.container.schema_url),
            });
            wire.spans = kept;
            wire_scopes.push(wire);
        }
        parsed.slim.resource_spans.push(ResourceSpans {
            resource,
            scope_spans: slim_scopes,
            schema_url: utf8(&rs.schema_url),
        });
        parsed.resources.push(Container {
            head: rs.resource,
            schema_url: rs.schema_url,
        });
        parsed.scopes.push(wire_scopes);
    }
    if bad_trace > 0 {
        parsed.refused.merge(Accepted {
            rejected: bad_trace,
            message: format!("{bad_trace} span(s) with an all-zero or non-16-byte trace_id"),
        });
    }
    if bad_span > 0 {
        parsed.refused.merge(Accepted {
            rejected: bad_span,
            message: format!("{bad_span} span(s) with an all-zero or non-8-byte span_id"),
        });
    }
    Ok(parsed)
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_utf8(bytes: &[u8], what: &str) -> Result<(), String> {
    // Nearly every string is short ASCII, which `is_ascii` checks a word at a time;
    // `from_utf8` walks short strings byte by byte.
    if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
        return Ok(());
    }
    Err(format!("invalid protobuf: {what} is not valid UTF-8"))
}

/// Messages inside a span whose strings are checked, and where their nested messages are.
#[derive(Debug, Clone, Copy)]
enum Shape {
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    Event,
    Link,
}

/// Field `number` of `shape`: a nested message's shape, a string (`None` inside), or
/// neither (outer `None`).
fn field_of(shape: Shape, number: u32) -> Option<Option<Shape>> {
    use Shape::*;
    match (shape, number) {
        (KeyValue, 1) | (AnyValue, 1) | (Event, 2) | (Link, 3) => Some(None),
        (KeyValueList, 1) | (Event, 3) | (Link, 4) => Some(Some(KeyValue)),
        (KeyValue, 2) | (ArrayValue, 1) => Some(Some(AnyValue)),
        (AnyValue, 5) => Some(Some(ArrayValue)),
        (AnyValue, 6) => Some(Some(KeyValueList)),
        _ => None,
    }
}

/// Deepest nesting checked, as prost's own recursion limit.
const MAX_DEPTH: u32 = 100;

/// A protobuf wire reader over one message's bytes.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

/// One field: number and its value (varint or fixed as `u64`, or the bytes of a
/// length-delimited one).
enum Value<'a> {
    Number(u64),
    Bytes(&'a [u8]),
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, at: 0 }
    }

    /// A varint: most here (keys, kinds, short lengths) are one byte, read inline.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, &'static str> {
        if let Some(&byte) = self.buf.get(self.at)
            && byte < 0x80
        {
            self.at += 1;
            return Ok(u64::from(byte));
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.at)
                .ok_or("invalid protobuf: truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("invalid protobuf: varint longer than 10 bytes")
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or("invalid protobuf: field runs past its message")?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// The next field, `None` at the end. Errors are static text: a `Result` of a few
    /// words comes back in registers, and this runs for every field of every span.
    #[inline(always)]
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, &'static str> {
        if self.at >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0)
            .ok_or("invalid protobuf: bad field number in a key")?;
        let value = match key & 7 {
            0 => Value::Number(self.varint()?),
            1 => Value::Number(u64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| "invalid protobuf: length too large")?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Number(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4"),
            ))),
            _ => return Err("invalid protobuf: unsupported wire type"),
        };
        Ok(Some((number, value)))
    }
}

/// Checks one span attribute as [`check_message`] does. Nearly every attribute is a short
/// ASCII key with a short ASCII string, a bool, an int or a double; that layout is
/// recognised in one pass ([`is_plain_key_value`]), anything else takes the general walk,
/// so what is refused does not change.
fn check_key_value(buf: &[u8]) -> Result<(), String> {
    if is_plain_key_value(buf) {
        return Ok(());
    }
    check_message(Shape::KeyValue, buf, 1)
}

/// Whether `buf` is exactly a `key` (field 1: under 128 bytes, ASCII) then a `value`
/// (field 2: under 128 bytes) holding one string (under 128 bytes, ASCII), bool, int or
/// double — a `KeyValue` [`check_message`] accepts.
fn is_plain_key_value(buf: &[u8]) -> bool {
    let [0x0a, key_len, rest @ ..] = buf else {
        return false;
    };
    let key_len = usize::from(*key_len);
    if key_len >= 0x80 || rest.len() < key_len || !rest[..key_len].is_ascii() {
        return false;
    }
    let [0x12, value_len, value @ ..] = &rest[key_len..] else {
        return false;
    };
    if *value_len >= 0x80 || usize::from(*value_len) != value.len() {
        return false;
    }
    match value {
        [0x0a, len, text @ ..] => *len < 0x80 && usize::from(*len) == text.len() && text.is_ascii(),
        [0x10 | 0x18, varint @ ..] => is_one_varint(varint),
        [0x21, double @ ..] => double.len() == 8,
        _ => false,
    }
}

/// Whether `bytes` is one whole varint of at most 10 bytes.
fn is_one_varint(bytes: &[u8]) -> bool {
    bytes.split_last().is_some_and(|(last, init)| {
        *last < 0x80 && init.len() < 10 && init.iter().all(|b| *b >= 0x80)
    })
}

/// Checks every string inside a `shape` message is UTF-8 and its framing is sound.
fn check_message(shape: Shape, buf: &[u8], depth: u32) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("invalid protobuf: recursion limit reached".into());
    }
    let mut fields = Fields::new(buf);
    while let Some((number, value)) = fields.next()? {
        match (field_of(shape, number), value) {
            (Some(None), Value::Bytes(bytes)) => check_utf8(bytes, "a string field")?,
            (Some(Some(inner)), Value::Bytes(bytes)) => check_message(inner, bytes, depth + 1)?,
            (Some(_), Value::Number(_)) => {
                return Err(format!(
                    "invalid protobuf: field {number} of {shape:?} has the wrong wire type"
                ));
            }
            (None, _) => {}
        }
    }
    Ok(())
}

/// The slim span of `bytes` (see the module docs), after checking all of its strings.
/// Reads `bytes` into `span` (a spare one: whatever it held is cleared first, its buffers
/// reused).
fn read_span(span: &mut Span, bytes: &[u8], needs: SpanNeeds) -> Result<(), String> {
    if needs == SpanNeeds::Everything {
        *span = Span::decode(bytes).map_err(|e| format!("invalid protobuf: {e}"))?;
        return Ok(());
    }
    clear(span);
    let mut fields = Fields::new(bytes);
    while let Some((number, value)) = fields.next()? {
        match (number, value) {
            (1, Value::Bytes(b)) => span.trace_id.extend_from_slice(b),
            (2, Value::Bytes(b)) => span.span_id.extend_from_slice(b),
            (3, Value::Bytes(b)) => span.trace_state.push_str(
                std::str::from_utf8(b)
                    .map_err(|_| "invalid protobuf: Span.trace_state is not valid UTF-8")?,
            ),
            (4, Value::Bytes(b)) => span.parent_span_id.extend_from_slice(b),
            (5, Value::Bytes(b)) => span.name.push_str(
                std::str::from_utf8(b)
                    .map_err(|_| "invalid protobuf: Span.name is not valid UTF-8")?,
            ),
            (6, Value::Number(n)) => span.kind = n as i32,
            (7, Value::Number(n)) => span.start_time_unix_nano = n,
            (8, Value::Number(n)) => span.end_time_unix_nano = n,
            (9, Value::Bytes(b)) => {
                if needs == SpanNeeds::Attributes {
                    span.attributes
                        .push(KeyValue::decode(b).map_err(|e| format!("invalid protobuf: {e}"))?);
                } else {
                    check_key_value(b)?;
                }
            }
            (11, Value::Bytes(b)) => check_message(Shape::Event, b, 1)?,
            (13, Value::Bytes(b)) => check_message(Shape::Link, b, 1)?,
            (15, Value::Bytes(b)) => {
                span.status = Some(Status::decode(b).map_err(|e| format!("invalid protobuf: {e}"))?)
            }
            (16, Value::Number(n)) => span.flags = n as u32,
            (1..=9 | 11 | 13 | 15 | 16, _) => {
                return Err(format!(
                    "invalid protobuf: Span field {number} has the wrong wire type"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Empties `span`, keeping the buffers of its ids, names and lists. Every field is named,
/// so a field added to `Span` cannot keep a value from an earlier request unnoticed.
fn clear(span: &mut Span) {
    let Span {
        trace_id,
        span_id,
        trace_state,
        parent_span_id,
        flags,
        name,
        kind,
        start_time_unix_nano,
        end_time_unix_nano,
        attributes,
        dropped_attributes_count,
        events,
        dropped_events_count,
        links,
        dropped_links_count,
        status,
    } = span;
    trace_id.clear();
    span_id.clear();
    trace_state.clear();
    parent_span_id.clear();
    *flags = 0;
    name.clear();
    *kind = 0;
    *start_time_unix_nano = 0;
    *end_time_unix_nano = 0;
    attributes.clear();
    *dropped_attributes_count = 0;
    events.clear();
    *dropped_events_count = 0;
    links.clear();
    *dropped_links_count = 0;
    *status = None;
}

/// Most scopes' span vectors a thread keeps for [`parse`] to refill.
const SPARE_SCOPES: usize = 64;
/// Most spans (vector capacity) a thread keeps: ~3 MiB with their ids and names, however
/// large the requests were.
const SPARE_SPANS: usize = 8192;

thread_local! {
    /// Span vectors of requests already handled, per thread (requests are parsed on the
    /// thread that handles them): refilling them spares four allocations and frees per span
    /// (ids and name), which were a tenth of the wire read's time.
    static SPARE: std::cell::RefCell<Vec<Vec<Span>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The group vector of the request handled last on this thread, emptied: a request
    /// has hundreds of groups of ~128 bytes, and growing the vector by doubling for each
    /// request reallocated and copied it eight or nine times.
    static SPARE_GROUPS: std::cell::RefCell<Vec<TraceGroup>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most groups (vector capacity) a thread keeps: ~128 KiB.
const SPARE_GROUPS_CAPACITY: usize = 1024;

/// A spare span vector (empty when there is none).
fn spare_spans() -> Vec<Span> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_default()
}

/// Hands the span and group vectors of a request that was handled back for the next
/// request's [`parse`] on this thread.
pub fn recycle(parsed: Parsed) {
    let Parsed {
        slim, mut groups, ..
    } = parsed;
    if groups.capacity() <= SPARE_GROUPS_CAPACITY {
        groups.clear();
        SPARE_GROUPS.with(|spare| *spare.borrow_mut() = groups);
    }
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        let mut held: usize = spare.iter().map(Vec::capacity).sum();
        for ss in slim
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
        {
            if spare.len() == SPARE_SCOPES {
                return;
            }
            if held + ss.spans.capacity() <= SPARE_SPANS {
                held += ss.spans.capacity();
                spare.push(ss.spans);
            }
        }
    });
}

#[cfg(test)]
mod tests;
