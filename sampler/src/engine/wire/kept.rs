//! Kept traces spliced into their export request from the bytes they were stored as.
//!
//! A kept trace's items hold the original bytes of its resources, scopes and spans
//! ([`super::Parsed::encode_rest`]). Decoding them whole to add the attributes the sampler
//! sets, merging the groups by resource and encoding the export request again took ~4 % of
//! a loaded sampler's CPU for the ~2 % of spans it keeps. Here each span is read only for
//! what exporting needs (span id, times, trace state, whether it carries an attribute the
//! sampler sets) and leaves as its stored bytes followed by the fields the sampler adds. A
//! protobuf decoder appends the later entries of a repeated field (attributes) to the
//! earlier ones and takes the last value of a singular string (the trace state), so what a
//! decoder reads is what the decoded path builds: the `tailsampling.policy` attribute
//! after the span's own, then `SampleRate`, and the rewritten trace state.
//!
//! A trace this cannot serve as exactly takes the decoded path: a span that already
//! carries `tailsampling.policy` (replaced there), or `SampleRate` when the policy sets a
//! probability (multiplied there), a span id seen before (removed there), a resource or
//! scope given twice in one container (merged by a decoder), or bytes that do not read.

use std::collections::HashMap;

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len};

use super::{Fields, Value, field_len, non_empty, put_field};
use crate::decision::Kept;
use crate::policy::{SAMPLE_RATE_ATTRIBUTE, apply_sampling_probability};
use crate::storage::BufferedKind;

/// The span attribute naming the policy that kept a trace.
const POLICY_ATTRIBUTE: &[u8] = crate::engine::POLICY_ATTRIBUTE.as_bytes();

/// One span of a kept trace, as stored.
#[derive(Debug)]
struct SpanBytes<'a> {
    bytes: &'a [u8],
    /// The span id (the last one given, as a decoder reads it).
    id: &'a [u8],
    start: u64,
    end: u64,
    /// The trace state (the last one given).
    trace_state: &'a [u8],
}

/// A `ScopeSpans` of a kept trace: its scope, schema URL and spans.
#[derive(Debug)]
struct ScopeBytes<'a> {
    scope: Option<&'a [u8]>,
    schema_url: &'a [u8],
    spans: Vec<SpanBytes<'a>>,
}

/// A `ResourceSpans` of a kept trace.
#[derive(Debug)]
pub struct GroupBytes<'a> {
    resource: Option<&'a [u8]>,
    schema_url: &'a [u8],
    scopes: Vec<ScopeBytes<'a>>,
}

impl<'a> GroupBytes<'a> {
    /// The `Resource` message bytes, if the group has one.
    pub fn resource(&self) -> Option<&'a [u8]> {
        self.resource
    }

    /// Start and end time of each of the group's spans.
    pub fn span_times(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.scopes
            .iter()
            .flat_map(|scope| &scope.spans)
            .map(|span| (span.start, span.end))
    }
}

/// The spans of one kept trace read from their stored items without decoding them.
#[derive(Debug)]
pub struct KeptSpans<'a> {
    groups: Vec<GroupBytes<'a>>,
    /// Whether a span carries the `SampleRate` attribute.
    has_sample_rate: bool,
}

impl<'a> KeptSpans<'a> {
    /// Reads a trace's span items (of kind `Spans`: a `ResourceSpans`; `TraceSpans`: an
    /// `ExportTraceServiceRequest`); `None` when the trace must take the decoded path
    /// (see the module docs).
    pub fn read(items: impl IntoIterator<Item = (BufferedKind, &'a [u8])>) -> Option<Self> {
        let mut trace = KeptSpans {
            groups: Vec::new(),
            has_sample_rate: false,
        };
        for (kind, payload) in items {
            match kind {
                BufferedKind::Spans => trace.read_group(payload)?,
                BufferedKind::TraceSpans => {
                    let mut fields = Fields::new(payload);
                    while let Some((number, value)) = fields.next().ok()? {
                        match (number, value) {
                            (1, Value::Bytes(group)) => trace.read_group(group)?,
                            (1, Value::Number(_)) => return None,
                            _ => {}
                        }
                    }
                }
                BufferedKind::Logs => {}
            }
        }
        Some(trace)
    }

    /// Whether the trace can leave spliced when kept as `kept`: a probability rewrites
    /// `SampleRate`, which only the decoded path multiplies by a rate already there.
    pub fn fits(&self, kept: &Kept) -> bool {
        kept.probability.is_none() || !self.has_sample_rate
    }

    /// The trace's groups, in stored order.
    pub fn groups(&self) -> &[GroupBytes<'a>] {
        &self.groups
    }

    /// The span ids, in stored order.
    pub fn span_ids(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.groups
            .iter()
            .flat_map(|group| &group.scopes)
            .flat_map(|scope| &scope.spans)
            .map(|span| span.id)
    }

    fn read_group(&mut self, bytes: &'a [u8]) -> Option<()> {
        let mut scopes = Vec::new();
        let (resource, schema_url) = read_container(bytes, |scope| {
            let mut spans = Vec::new();
            let (head, schema_url) = read_container(scope, |span| {
                spans.push(self.read_span(span)?);
                Some(())
            })?;
            if !spans.is_empty() {
                scopes.push(ScopeBytes {
                    scope: head,
                    schema_url,
                    spans,
                });
            }
            Some(())
        })?;
        self.groups.push(GroupBytes {
            resource,
            schema_url,
            scopes,
        });
        Some(())
    }

    fn read_span(&mut self, bytes: &'a [u8]) -> Option<SpanBytes<'a>> {
        let mut span = SpanBytes {
            bytes,
            id: &[],
            start: 0,
            end: 0,
            trace_state: &[],
        };
        let mut fields = Fields::new(bytes);
        while let Some((number, value)) = fields.next().ok()? {
            match (number, value) {
                (2, Value::Bytes(id)) => span.id = id,
                (3, Value::Bytes(state)) => span.trace_state = state,
                (7, Value::Number(at)) => span.start = at,
                (8, Value::Number(at)) => span.end = at,
                (9, Value::Bytes(attribute)) => match attribute_key(attribute)? {
                    POLICY_ATTRIBUTE => return None,
                    key if key == SAMPLE_RATE_ATTRIBUTE.as_bytes() => self.has_sample_rate = true,
                    _ => {}
                },
                (2 | 3 | 9, Value::Number(_)) | (7 | 8, Value::Bytes(_)) => return None,
                _ => {}
            }
        }
        Some(span)
    }
}

/// Reads a `ResourceSpans` or a `ScopeSpans` (the same shape: field 1 its resource or
/// scope, 2 its entries, 3 its schema URL), handing each entry to `entry`; the head and
/// the schema URL (the last one given). `None` for a head given twice (a decoder would
/// merge the two) or a field of the wrong wire type.
fn read_container<'a>(
    bytes: &'a [u8],
    mut entry: impl FnMut(&'a [u8]) -> Option<()>,
) -> Option<(Option<&'a [u8]>, &'a [u8])> {
    let (mut head, mut schema_url): (Option<&[u8]>, &[u8]) = (None, &[]);
    let mut fields = Fields::new(bytes);
    while let Some((number, value)) = fields.next().ok()? {
        match (number, value) {
            (1, Value::Bytes(_)) if head.is_some() => return None,
            (1, Value::Bytes(bytes)) => head = Some(bytes),
            (2, Value::Bytes(bytes)) => entry(bytes)?,
            (3, Value::Bytes(url)) => schema_url = url,
            (1..=3, Value::Number(_)) => return None,
            _ => {}
        }
    }
    Some((head, schema_url))
}

/// The key of an encoded `KeyValue` (the last one given).
fn attribute_key(bytes: &[u8]) -> Option<&[u8]> {
    let mut key: &[u8] = &[];
    let mut fields = Fields::new(bytes);
    while let Some((number, value)) = fields.next().ok()? {
        match (number, value) {
            (1, Value::Bytes(k)) => key = k,
            (1, Value::Number(_)) => return None,
            _ => {}
        }
    }
    Some(key)
}

/// A span of the request: its stored bytes and the bytes appended to them.
#[derive(Debug)]
struct SplicedSpan<'a> {
    bytes: &'a [u8],
    /// Range in [`SplicedRequest::suffixes`].
    suffix: (usize, usize),
}

impl SplicedSpan<'_> {
    fn len(&self) -> usize {
        self.bytes.len() + self.suffix.1 - self.suffix.0
    }
}

#[derive(Debug)]
struct SplicedScope<'a> {
    scope: Option<&'a [u8]>,
    schema_url: &'a [u8],
    spans: Vec<SplicedSpan<'a>>,
}

#[derive(Debug)]
struct SplicedGroup<'a> {
    resource: Option<&'a [u8]>,
    schema_url: &'a [u8],
    scopes: Vec<SplicedScope<'a>>,
}

/// The spans of kept traces gathered into one export request, each resource and, inside
/// it, each scope once (by their stored bytes and schema URLs, as
/// [`otel_tail_shared::otlp::merge_spans`] merges decoded groups by their encoding).
#[derive(Debug, Default)]
pub struct SplicedRequest<'a> {
    groups: Vec<SplicedGroup<'a>>,
    by_resource: HashMap<(&'a [u8], &'a [u8]), usize>,
    by_scope: HashMap<(usize, &'a [u8], &'a [u8]), usize>,
    /// The fields appended to spans.
    suffixes: Vec<u8>,
    spans: u64,
}

impl<'a> SplicedRequest<'a> {
    /// Adds the spans of `trace`, kept as `kept` (see [`KeptSpans::fits`]); returns how
    /// many.
    pub fn add(&mut self, trace: KeptSpans<'a>, kept: &Kept) -> u64 {
        let policy = self.suffixes.len();
        put_string_attribute(POLICY_ATTRIBUTE, kept.policy.as_bytes(), &mut self.suffixes);
        let policy = (policy, self.suffixes.len());
        // Spans of a trace nearly always share their trace state: the last one's
        // suffix serves the next span with the same.
        let mut last: Option<(&[u8], (usize, usize))> = None;
        let mut added = 0;
        for group in trace.groups {
            let resource = group.resource.unwrap_or_default();
            let at = *self
                .by_resource
                .entry((resource, group.schema_url))
                .or_insert_with(|| {
                    self.groups.push(SplicedGroup {
                        resource: group.resource,
                        schema_url: group.schema_url,
                        scopes: Vec::new(),
                    });
                    self.groups.len() - 1
                });
            for scope in group.scopes {
                let key = (at, scope.scope.unwrap_or_default(), scope.schema_url);
                let scopes = &mut self.groups[at].scopes;
                let into = *self.by_scope.entry(key).or_insert_with(|| {
                    scopes.push(SplicedScope {
                        scope: scope.scope,
                        schema_url: scope.schema_url,
                        spans: Vec::new(),
                    });
                    scopes.len() - 1
                });
                for span in scope.spans {
                    let suffix = match (kept.probability, last) {
                        (None, _) => policy,
                        (Some(_), Some((state, suffix))) if state == span.trace_state => suffix,
                        (Some(probability), _) => {
                            let suffix = probability_suffix(
                                &mut self.suffixes,
                                policy,
                                span.trace_state,
                                probability,
                            );
                            last = Some((span.trace_state, suffix));
                            suffix
                        }
                    };
                    scopes[into].spans.push(SplicedSpan {
                        bytes: span.bytes,
                        suffix,
                    });
                    added += 1;
                }
            }
        }
        self.spans += added;
        added
    }

    /// Spans added.
    pub fn span_count(&self) -> u64 {
        self.spans
    }

    /// Appends the request's fields (its `ResourceSpans`) to `out`: an
    /// `ExportTraceServiceRequest`, or its continuation after another one's fields.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for group in &self.groups {
            let scope_lens: Vec<usize> = group.scopes.iter().map(scope_len).collect();
            let len = field_len(1, group.resource)
                + scope_lens
                    .iter()
                    .map(|len| key_len(2) + encoded_len_varint(*len as u64) + len)
                    .sum::<usize>()
                + field_len(3, non_empty(group.schema_url));
            out.reserve(key_len(1) + encoded_len_varint(len as u64) + len);
            encode_key(1, prost::encoding::WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
            put_field(1, group.resource, out);
            for (scope, len) in group.scopes.iter().zip(scope_lens) {
                encode_key(2, prost::encoding::WireType::LengthDelimited, out);
                encode_varint(len as u64, out);
                put_field(1, scope.scope, out);
                for span in &scope.spans {
                    encode_key(2, prost::encoding::WireType::LengthDelimited, out);
                    encode_varint(span.len() as u64, out);
                    out.extend_from_slice(span.bytes);
                    out.extend_from_slice(&self.suffixes[span.suffix.0..span.suffix.1]);
                }
                put_field(3, non_empty(scope.schema_url), out);
            }
            put_field(3, non_empty(group.schema_url), out);
        }
    }
}

/// Appends to `suffixes` the policy attribute (already at `policy`), the sample rate and the trace
/// state `probability` makes of `trace_state`; their range.
fn probability_suffix(
    suffixes: &mut Vec<u8>,
    policy: (usize, usize),
    trace_state: &[u8],
    probability: f64,
) -> (usize, usize) {
    let start = suffixes.len();
    suffixes.extend_from_within(policy.0..policy.1);
    if !probability.is_nan() && probability > 0.0 {
        let rate = (1.0 / probability.min(1.0))
            .round()
            .clamp(1.0, i64::MAX as f64) as i64;
        put_int_attribute(SAMPLE_RATE_ATTRIBUTE.as_bytes(), rate, suffixes);
    }
    let state = apply_sampling_probability(&String::from_utf8_lossy(trace_state), probability);
    put_field(3, Some(state.as_bytes()), suffixes);
    (start, suffixes.len())
}

fn scope_len(scope: &SplicedScope<'_>) -> usize {
    field_len(1, scope.scope)
        + scope
            .spans
            .iter()
            .map(|span| key_len(2) + encoded_len_varint(span.len() as u64) + span.len())
            .sum::<usize>()
        + field_len(3, non_empty(scope.schema_url))
}

/// Appends span field 9 holding `KeyValue { key, value: AnyValue { string_value } }`.
fn put_string_attribute(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let any = field_len(1, Some(value));
    put_attribute(key, any, out, |out| put_field(1, Some(value), out));
}

/// Appends span field 9 holding `KeyValue { key, value: AnyValue { int_value } }`.
fn put_int_attribute(key: &[u8], value: i64, out: &mut Vec<u8>) {
    let any = key_len(3) + encoded_len_varint(value as u64);
    put_attribute(key, any, out, |out| {
        encode_key(3, prost::encoding::WireType::Varint, out);
        encode_varint(value as u64, out);
    });
}

fn put_attribute(key: &[u8], any_len: usize, out: &mut Vec<u8>, any: impl FnOnce(&mut Vec<u8>)) {
    let len = field_len(1, Some(key)) + key_len(2) + encoded_len_varint(any_len as u64) + any_len;
    encode_key(9, prost::encoding::WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    put_field(1, Some(key), out);
    encode_key(2, prost::encoding::WireType::LengthDelimited, out);
    encode_varint(any_len as u64, out);
    any(out);
}

#[cfg(test)]
mod tests;
