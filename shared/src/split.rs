//! Splits an encoded OTLP export request into one encoded request per owner, without
//! decoding it.
//!
//! The router must regroup every request by owning sampler. Decoding with prost and
//! re-encoding costs about as much as the rest of the router together; this module walks
//! the protobuf wire format instead, reads only what routing needs, and copies everything
//! else as bytes:
//!
//! - it descends request → `Resource*` → `Scope*` → item (span, log record, metric), reading
//!   field tags and lengths and skipping values;
//! - per item it reads one routing input: a span's `trace_id` (Span field 1), a log
//!   record's `trace_id` (LogRecord field 9), for log records without one the resource's
//!   instance identity (see [`resource_identity_key`]), and for metrics the resource's
//!   service identity and the metric's name (Metric field 1; see [`metric_series_key`]);
//! - it asks the caller's owner function which owner the item goes to (once per run of
//!   consecutive spans of one trace: the function must answer the same key the same way
//!   within a call), and rebuilds each
//!   owner's request by copying the resource's fields, the scope's fields and the item's
//!   bytes verbatim (unknown fields included) under freshly written container lengths.
//!
//! All three signals share the container shape (`resource` = 1, `scope_*` = 2,
//! `schema_url` = 3 in the resource container; `scope` = 1, items = 2, `schema_url` = 3 in
//! the scope container), so one walker serves them, parameterised by how an item routes.
//!
//! What the output differs in from the input, all invisible to a protobuf decoder: fields
//! of a container are written before its children (protobuf does not order fields);
//! containers left with no item for an owner are not written; spans whose trace id is not
//! 16 bytes or is all zero, and log records whose trace id is neither empty, all zero nor
//! 16 bytes, are left out and counted in [`Split::invalid`]; unknown fields of the request
//! message itself (outside any resource container) are dropped, as they belong to no owner.
//!
//! Malformed framing anywhere on the walked path — a truncated varint, a length running
//! past its message, a bad wire type, a known container or id field with the wrong wire
//! type — fails the whole request with [`SplitError::Malformed`], which names the message
//! and byte offset. Bytes inside an item that routing does not read (span names,
//! attributes, ...) are not validated: the owner decodes them and rejects what is bad.
//!
//! Metrics are split at `Metric` granularity: a metric's data points stay together and
//! route by series key ([`metric_series_key`]): the service-level identity
//! ([`SERVICE_IDENTITY_ATTRIBUTES`]) and the metric name, not the instance. Every pod of a
//! service therefore sends a given metric to the same sampler, which sees every input of
//! each series the metric rollup folds that metric into, so each rolled-up series has one
//! writer. Counts per owner are spans, log records, or data points, matching the units of
//! OTLP `partial_success`.

mod footprint;
mod identity;
mod wire;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use thiserror::Error;

pub use footprint::{Spans, decoded_footprint, json_decoded_footprint};
pub use identity::{SERVICE_IDENTITY_ATTRIBUTES, metric_series_key, resource_identity_key};
pub use wire::Problem;

use crate::otlp::{TraceId, trace_id};
use identity::{append_metric_name, identity_from_wire};
use wire::{Field, Reader, len_field_size, put_len_tag, put_varint};

/// What an item routes by; the argument of the owner function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey<'a> {
    /// A valid trace id (16 bytes, not all zero).
    Trace(TraceId),
    /// A resource's instance identity key or a metric series key; see
    /// [`resource_identity_key`] and [`metric_series_key`].
    Key(&'a [u8]),
}

/// The result of splitting one request among `n` owners.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Per owner, an encoded export request of the same type as the input holding exactly
    /// that owner's items; empty when the owner got nothing.
    pub parts: Vec<Bytes>,
    /// Per owner, the number of spans, log records or metric data points in its part.
    pub counts: Vec<usize>,
    /// Spans or log records left out because their trace id is invalid.
    pub invalid: usize,
}

/// Why a request could not be split.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// The bytes are not a well-formed request of the expected type.
    #[error("malformed {message} at byte {offset}: {problem}")]
    Malformed {
        /// The protobuf message being read, e.g. `ScopeSpans`.
        message: &'static str,
        /// Byte offset in the request where the bad field starts.
        offset: usize,
        /// What was wrong.
        problem: Problem,
    },
    /// The owner function returned an index outside `0..owners`.
    #[error("the owner function returned owner {owner}, but there are only {owners} owners")]
    OwnerOutOfRange {
        /// The index returned.
        owner: usize,
        /// The number of owners the split was asked for.
        owners: usize,
    },
    /// The split was asked for zero owners.
    #[error("cannot split a request among zero owners")]
    NoOwners,
}

/// Splits an encoded `ExportTraceServiceRequest`; spans route by trace id.
///
/// Allocates scratch space per call; a [`Splitter`] kept per worker reuses it.
pub fn wire_traces_by_owner(
    request: &[u8],
    owners: usize,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Result<Split, SplitError> {
    Splitter::new().wire_traces_by_owner(request, owners, owner)
}

/// Splits an encoded `ExportLogsServiceRequest`; log records route by trace id, or by
/// resource identity when they have none.
pub fn wire_logs_by_owner(
    request: &[u8],
    owners: usize,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Result<Split, SplitError> {
    Splitter::new().wire_logs_by_owner(request, owners, owner)
}

/// Splits an encoded `ExportMetricsServiceRequest`; each metric routes whole by its series
/// key.
pub fn wire_metrics_by_owner(
    request: &[u8],
    owners: usize,
    owner: impl FnMut(RouteKey<'_>) -> usize,
) -> Result<Split, SplitError> {
    Splitter::new().wire_metrics_by_owner(request, owners, owner)
}

/// Which signal a request carries: message names for errors and how items route.
#[derive(Debug, Clone, Copy)]
struct Shape {
    request: &'static str,
    resource: &'static str,
    scope: &'static str,
    item: &'static str,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Traces,
    Logs,
    Metrics,
}

const TRACES: Shape = Shape {
    request: "ExportTraceServiceRequest",
    resource: "ResourceSpans",
    scope: "ScopeSpans",
    item: "Span",
    kind: Kind::Traces,
};

const LOGS: Shape = Shape {
    request: "ExportLogsServiceRequest",
    resource: "ResourceLogs",
    scope: "ScopeLogs",
    item: "LogRecord",
    kind: Kind::Logs,
};

const METRICS: Shape = Shape {
    request: "ExportMetricsServiceRequest",
    resource: "ResourceMetrics",
    scope: "ScopeMetrics",
    item: "Metric",
    kind: Kind::Metrics,
};

/// Field numbers shared by the three signals' containers.
const REQUEST_RESOURCES: u32 = 1;
const RESOURCE_RESOURCE: u32 = 1;
const RESOURCE_SCOPES: u32 = 2;
const SCOPE_ITEMS: u32 = 2;
/// Span.trace_id.
const SPAN_TRACE_ID: u32 = 1;
/// LogRecord.trace_id.
const LOG_TRACE_ID: u32 = 9;
/// Metric.name.
const METRIC_NAME: u32 = 1;
/// Metric's `data` oneof: gauge, sum, histogram, exponential_histogram, summary.
const METRIC_DATA: [u32; 5] = [5, 7, 9, 10, 11];
/// `data_points`, field 1 of every metric data message.
const DATA_POINTS: u32 = 1;

/// How one item routes, as read from its bytes.
#[derive(Debug, Clone, Copy)]
enum ItemRoute {
    Trace(TraceId),
    /// By the resource's instance identity (log records without a trace id).
    Resource,
    /// By series key: the resource's service identity and the metric name at
    /// `name.0..name.1`.
    Series {
        name: (usize, usize),
    },
    /// Left out: invalid trace id.
    Invalid,
}

/// One item of the current resource container.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// The item's field bytes, tag and length prefix included.
    start: usize,
    end: usize,
    /// Index of its scope container in `Splitter::scopes`.
    scope: u32,
    /// Spans/records: 1; metrics: data points.
    count: u32,
    route: ItemRoute,
    /// Assigned owner, `u32::MAX` for invalid items.
    owner: u32,
}

/// One scope container of the current resource container.
#[derive(Debug, Clone, Copy)]
struct Scope {
    /// Its non-item fields: `Splitter::scope_fields[fields.0..fields.1]`.
    fields: (usize, usize),
    /// Total bytes of those fields.
    fields_len: usize,
}

/// Reusable scratch space for splitting; keep one per worker to avoid allocating per
/// request. Everything in it is cleared at the start of each resource container.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Non-scope fields of the current resource container, as byte ranges.
    resource_fields: Vec<(usize, usize)>,
    /// Occurrences of its `resource` field, for the identity key.
    resource_messages: Vec<Field>,
    scopes: Vec<Scope>,
    /// Non-item fields of all scopes of the current resource container.
    scope_fields: Vec<(usize, usize)>,
    items: Vec<Item>,
    /// Item indexes grouped by owner (a counting sort of `items`).
    by_owner: Vec<u32>,
    /// Per owner: items in the current resource container, then start offsets in `by_owner`.
    owner_items: Vec<usize>,
    /// Per (scope, owner): bytes of that owner's items in that scope.
    scope_owner_len: Vec<usize>,
    /// Identity key of the current resource container: its instance identity for logs,
    /// its service identity for metrics.
    resource_key: Vec<u8>,
    /// Series key being built.
    series_key: Vec<u8>,
}

impl Splitter {
    /// Empty scratch space.
    pub fn new() -> Self {
        Splitter::default()
    }

    /// See [`wire_traces_by_owner`].
    pub fn wire_traces_by_owner(
        &mut self,
        request: &[u8],
        owners: usize,
        owner: impl FnMut(RouteKey<'_>) -> usize,
    ) -> Result<Split, SplitError> {
        self.split(TRACES, request, owners, owner)
    }

    /// See [`wire_logs_by_owner`].
    pub fn wire_logs_by_owner(
        &mut self,
        request: &[u8],
        owners: usize,
        owner: impl FnMut(RouteKey<'_>) -> usize,
    ) -> Result<Split, SplitError> {
        self.split(LOGS, request, owners, owner)
    }

    /// See [`wire_metrics_by_owner`].
    pub fn wire_metrics_by_owner(
        &mut self,
        request: &[u8],
        owners: usize,
        owner: impl FnMut(RouteKey<'_>) -> usize,
    ) -> Result<Split, SplitError> {
        self.split(METRICS, request, owners, owner)
    }

    fn split(
        &mut self,
        shape: Shape,
        buf: &[u8],
        owners: usize,
        mut owner: impl FnMut(RouteKey<'_>) -> usize,
    ) -> Result<Split, SplitError> {
        if owners == 0 {
            return Err(SplitError::NoOwners);
        }
        let mut out = Output {
            parts: vec![Vec::new(); owners],
            counts: vec![0; owners],
            invalid: 0,
            // An even share falls just short of most parts (trace ids do not split
            // evenly), and growing a part copies it: an eighth more, within the request.
            reserve: (buf.len() / owners + buf.len() / (8 * owners) + 64).min(buf.len()),
        };
        let mut fields = Reader::new(buf, 0, buf.len(), shape.request);
        while let Some(field) = fields.next_field()? {
            if field.number == REQUEST_RESOURCES {
                field.expect_len(shape.request)?;
                self.resource_container(shape, buf, &field, &mut owner, &mut out)?;
            }
        }
        Ok(Split {
            parts: out.parts.into_iter().map(Bytes::from).collect(),
            counts: out.counts,
            invalid: out.invalid,
        })
    }

    /// Reads one resource container, routes its items and appends each owner's share.
    fn resource_container(
        &mut self,
        shape: Shape,
        buf: &[u8],
        container: &Field,
        owner: &mut impl FnMut(RouteKey<'_>) -> usize,
        out: &mut Output,
    ) -> Result<(), SplitError> {
        self.resource_fields.clear();
        self.resource_messages.clear();
        self.scopes.clear();
        self.scope_fields.clear();
        self.items.clear();

        let mut fields = Reader::of(buf, container, shape.resource);
        while let Some(field) = fields.next_field()? {
            match field.number {
                RESOURCE_SCOPES => {
                    field.expect_len(shape.resource)?;
                    self.scope_container(shape, buf, &field)?;
                }
                number => {
                    if number == RESOURCE_RESOURCE {
                        field.expect_len(shape.resource)?;
                        self.resource_messages.push(field);
                    }
                    self.resource_fields.push((field.start, field.end));
                }
            }
        }
        if self.items.is_empty() {
            return Ok(());
        }
        self.assign_owners(buf, owner, out)?;
        self.write(buf, out);
        Ok(())
    }

    /// Reads one scope container: records its fields and classifies its items.
    fn scope_container(
        &mut self,
        shape: Shape,
        buf: &[u8],
        container: &Field,
    ) -> Result<(), SplitError> {
        let scope = u32::try_from(self.scopes.len()).expect("scopes fit in u32");
        let first_field = self.scope_fields.len();
        let mut fields_len = 0;
        let mut fields = Reader::of(buf, container, shape.scope);
        while let Some(field) = fields.next_field()? {
            if field.number == SCOPE_ITEMS {
                field.expect_len(shape.scope)?;
                let (route, count) = classify(shape, buf, &field)?;
                self.items.push(Item {
                    start: field.start,
                    end: field.end,
                    scope,
                    count,
                    route,
                    owner: u32::MAX,
                });
            } else {
                fields_len += field.end - field.start;
                self.scope_fields.push((field.start, field.end));
            }
        }
        self.scopes.push(Scope {
            fields: (first_field, self.scope_fields.len()),
            fields_len,
        });
        Ok(())
    }

    /// Asks the owner function for each item's owner; counts invalid items.
    fn assign_owners(
        &mut self,
        buf: &[u8],
        owner: &mut impl FnMut(RouteKey<'_>) -> usize,
        out: &mut Output,
    ) -> Result<(), SplitError> {
        let owners = out.parts.len();
        let mut resource_owner = None;
        let mut service_key_ready = false;
        // SDKs write a trace's spans next to each other: a span of the trace before it
        // takes that span's owner without asking again (a hash and a ring search).
        let mut last_trace: Option<(TraceId, usize)> = None;
        for item in &mut self.items {
            let chosen = match item.route {
                ItemRoute::Trace(id) => match last_trace {
                    Some((previous, o)) if previous == id => o,
                    _ => {
                        let o = owner(RouteKey::Trace(id));
                        last_trace = Some((id, o));
                        o
                    }
                },
                ItemRoute::Invalid => {
                    out.invalid += item.count as usize;
                    continue;
                }
                ItemRoute::Resource => match resource_owner {
                    Some(o) => o,
                    None => {
                        identity_from_wire(buf, &self.resource_messages)?
                            .write_instance(&mut self.resource_key);
                        let o = owner(RouteKey::Key(&self.resource_key));
                        resource_owner = Some(o);
                        o
                    }
                },
                ItemRoute::Series { name } => {
                    if !service_key_ready {
                        identity_from_wire(buf, &self.resource_messages)?
                            .write_service(&mut self.resource_key);
                        service_key_ready = true;
                    }
                    self.series_key.clear();
                    self.series_key.extend_from_slice(&self.resource_key);
                    append_metric_name(&mut self.series_key, &buf[name.0..name.1]);
                    owner(RouteKey::Key(&self.series_key))
                }
            };
            if chosen >= owners {
                return Err(SplitError::OwnerOutOfRange {
                    owner: chosen,
                    owners,
                });
            }
            item.owner = chosen as u32;
        }
        Ok(())
    }

    /// Appends, for each owner with items in the current resource container, a resource
    /// container holding the resource's fields and, per scope, the scope's fields and that
    /// owner's items.
    fn write(&mut self, buf: &[u8], out: &mut Output) {
        let owners = out.parts.len();
        let scopes = self.scopes.len();

        // Bytes per (scope, owner), and a counting sort of items by owner that keeps their
        // order (hence scope order) within each owner.
        self.scope_owner_len.clear();
        self.scope_owner_len.resize(scopes * owners, 0);
        self.owner_items.clear();
        self.owner_items.resize(owners + 1, 0);
        for item in &self.items {
            if item.owner != u32::MAX {
                let o = item.owner as usize;
                self.scope_owner_len[item.scope as usize * owners + o] += item.end - item.start;
                self.owner_items[o + 1] += 1;
                out.counts[o] += item.count as usize;
            }
        }
        for o in 0..owners {
            self.owner_items[o + 1] += self.owner_items[o];
        }
        let valid = self.owner_items[owners];
        self.by_owner.clear();
        self.by_owner.resize(valid, 0);
        let mut next = self.owner_items.clone();
        for (i, item) in self.items.iter().enumerate() {
            if item.owner != u32::MAX {
                let slot = &mut next[item.owner as usize];
                self.by_owner[*slot] = i as u32;
                *slot += 1;
            }
        }

        let resource_len: usize = self.resource_fields.iter().map(|(s, e)| e - s).sum();
        for o in 0..owners {
            let mine = &self.by_owner[self.owner_items[o]..self.owner_items[o + 1]];
            if mine.is_empty() {
                continue;
            }
            let mut container_len = resource_len;
            for (s, scope) in self.scopes.iter().enumerate() {
                let items_len = self.scope_owner_len[s * owners + o];
                if items_len > 0 {
                    container_len += len_field_size(scope.fields_len + items_len);
                }
            }

            let part = &mut out.parts[o];
            if part.is_empty() {
                part.reserve(out.reserve);
            }
            put_len_tag(part, REQUEST_RESOURCES as u8);
            put_varint(part, container_len as u64);
            for &(s, e) in &self.resource_fields {
                part.extend_from_slice(&buf[s..e]);
            }
            let mut rest = mine;
            while let Some(&first) = rest.first() {
                let s = self.items[first as usize].scope as usize;
                let scope = &self.scopes[s];
                put_len_tag(part, RESOURCE_SCOPES as u8);
                put_varint(
                    part,
                    (scope.fields_len + self.scope_owner_len[s * owners + o]) as u64,
                );
                for &(fs, fe) in &self.scope_fields[scope.fields.0..scope.fields.1] {
                    part.extend_from_slice(&buf[fs..fe]);
                }
                let in_scope = rest
                    .iter()
                    .position(|&i| self.items[i as usize].scope as usize != s)
                    .unwrap_or(rest.len());
                for &i in &rest[..in_scope] {
                    let item = &self.items[i as usize];
                    part.extend_from_slice(&buf[item.start..item.end]);
                }
                rest = &rest[in_scope..];
            }
        }
    }
}

/// Output being built.
struct Output {
    parts: Vec<Vec<u8>>,
    counts: Vec<usize>,
    invalid: usize,
    /// Capacity to give a part when it receives its first bytes.
    reserve: usize,
}

/// Reads what an item routes by, and how many units it counts for.
fn classify(shape: Shape, buf: &[u8], item: &Field) -> Result<(ItemRoute, u32), SplitError> {
    match shape.kind {
        Kind::Traces => {
            let id = last_bytes_field(buf, item, shape.item, SPAN_TRACE_ID)?;
            let route = id
                .and_then(trace_id)
                .map_or(ItemRoute::Invalid, ItemRoute::Trace);
            Ok((route, 1))
        }
        Kind::Logs => {
            let id = last_bytes_field(buf, item, shape.item, LOG_TRACE_ID)?.unwrap_or_default();
            let route = match id.len() {
                0 => ItemRoute::Resource,
                16 => trace_id(id).map_or(ItemRoute::Resource, ItemRoute::Trace),
                _ => ItemRoute::Invalid,
            };
            Ok((route, 1))
        }
        Kind::Metrics => classify_metric(buf, item, shape.item),
    }
}

/// The payload of the last occurrence of bytes field `number` (protobuf: last one wins).
#[inline]
fn last_bytes_field<'a>(
    buf: &'a [u8],
    item: &Field,
    message: &'static str,
    number: u32,
) -> Result<Option<&'a [u8]>, SplitError> {
    let mut found = None;
    let mut fields = Reader::of(buf, item, message);
    while let Some(field) = fields.next_field()? {
        if field.number == number {
            field.expect_len(message)?;
            found = Some(&buf[field.payload..field.end]);
        }
    }
    Ok(found)
}

/// A metric's name and data point count. Occurrences of the `data` oneof follow protobuf
/// merge rules: the same variant again merges (points add up), another variant replaces.
fn classify_metric(
    buf: &[u8],
    item: &Field,
    message: &'static str,
) -> Result<(ItemRoute, u32), SplitError> {
    let mut name = (item.end, item.end);
    let mut variant = 0;
    let mut points = 0u32;
    let mut fields = Reader::of(buf, item, message);
    while let Some(field) = fields.next_field()? {
        if field.number == METRIC_NAME {
            field.expect_len(message)?;
            name = (field.payload, field.end);
        } else if METRIC_DATA.contains(&field.number) {
            field.expect_len(message)?;
            if field.number != variant {
                variant = field.number;
                points = 0;
            }
            let mut data = Reader::of(buf, &field, "metric data");
            while let Some(point) = data.next_field()? {
                if point.number == DATA_POINTS {
                    point.expect_len("metric data")?;
                    points += 1;
                }
            }
        }
    }
    Ok((ItemRoute::Series { name }, points))
}
