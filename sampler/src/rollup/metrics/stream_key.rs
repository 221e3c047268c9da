//! The byte keys the rollup files its state under, and how stream keys are read back.
//!
//! Every key is a concatenation of length-prefixed parts (4-byte little-endian length, then
//! the bytes), so no two different inputs give the same key:
//! - an output metric: its reduced resource attributes ([`encode_attributes`]) and its
//!   [`metric_identity`];
//! - an output series within it: its attributes; a running total of a cumulative output
//!   series: the metric key and the series key ([`running_key`]);
//! - an input stream, for the conversion of cumulative input to deltas: every resource
//!   attribute, the metric identity and every point attribute ([`stream_key`]). Stream keys
//!   are read back ([`split_stream_key`]) when the stream state is handed over as OTLP
//!   ([`super::MetricRollup::cumulative_state`]);
//! - the routing identity of an output series ([`series_key`]).

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{Kind, config, reduce_resource};

/// Identity of a rolled-up output series, for single-writer routing: the reduced resource
/// ([`super::IDENTITY_ATTRIBUTES`]), the metric name and the reduced point attributes as
/// returned by [`super::AttributeRules::reduce`] (sorted by key). Equal inputs give equal
/// keys on every node.
pub fn series_key(
    resource: Option<&Resource>,
    metric_name: &str,
    reduced_attributes: &[KeyValue],
) -> Vec<u8> {
    let mut key = encode_attributes(&reduce_resource(resource));
    push_str(&mut key, metric_name);
    key.extend_from_slice(&encode_attributes(reduced_attributes));
    key
}

/// The scope's name and version (empty without a scope).
pub(super) fn scope_id(scope: Option<&InstrumentationScope>) -> (String, String) {
    scope.map_or((String::new(), String::new()), |s| {
        (s.name.clone(), s.version.clone())
    })
}

/// A metric's identity within its resource: scope name and version, metric name and unit,
/// kind and monotonic flag.
pub(super) fn metric_identity(
    scope: &(String, String),
    metric: &Metric,
    kind: Kind,
    monotonic: bool,
) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [&scope.0, &scope.1, &metric.name, &metric.unit] {
        push_str(&mut key, part);
    }
    key.extend_from_slice(&[kind as u8, monotonic as u8]);
    key
}

/// The key prefix of a metric's input streams: every resource attribute (in canonical
/// order), then the metric identity.
pub(super) fn stream_prefix(resource: Option<&Resource>, identity: &[u8]) -> Vec<u8> {
    let mut attrs = resource.map(|r| r.attributes.clone()).unwrap_or_default();
    config::canonicalize(&mut attrs);
    let mut key = encode_attributes(&attrs);
    key.extend_from_slice(identity);
    key
}

/// The key of an input stream: its metric's prefix and every point attribute (canonical).
pub(super) fn stream_key(prefix: &[u8], attributes: &[KeyValue]) -> Vec<u8> {
    let mut attrs = attributes.to_vec();
    config::canonicalize(&mut attrs);
    let mut key = prefix.to_vec();
    key.extend_from_slice(&encode_attributes(&attrs));
    key
}

/// The key of a cumulative output series' running total.
pub(super) fn running_key(metric_key: &[u8], series_key: &[u8]) -> Vec<u8> {
    let mut key = metric_key.to_vec();
    push_bytes(&mut key, series_key);
    key
}

/// An unambiguous byte encoding of attributes in the given order.
pub(in crate::rollup) fn encode_attributes(attributes: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(attributes.len() * 24 + 4);
    out.extend_from_slice(&(attributes.len() as u32).to_le_bytes());
    for kv in attributes {
        push_str(&mut out, &kv.key);
        match &kv.value {
            Some(v) => push_bytes(&mut out, &v.encode_to_vec()),
            None => push_bytes(&mut out, &[]),
        }
    }
    out
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_bytes(out, s.as_bytes());
}

/// A stream key cut into its parts (each as encoded), with the point attributes decoded.
pub(super) struct StreamKeyParts<'a> {
    pub(super) resource: &'a [u8],
    pub(super) scope: &'a [u8],
    pub(super) metric: &'a [u8],
    pub(super) attributes: &'a [u8],
    pub(super) decoded_attributes: Vec<KeyValue>,
}

/// Cuts a key made by [`stream_key`] into its parts; `None` if it is not one.
pub(super) fn split_stream_key(key: &[u8]) -> Option<StreamKeyParts<'_>> {
    let mut reader = KeyReader(key);
    let consumed = |reader: &KeyReader| key.len() - reader.0.len();
    reader.skip_attributes()?;
    let resource_end = consumed(&reader);
    reader.bytes()?;
    reader.bytes()?;
    let scope_end = consumed(&reader);
    reader.bytes()?;
    reader.bytes()?;
    reader.take(2)?;
    let metric_end = consumed(&reader);
    let decoded_attributes = reader.attributes()?;
    reader.0.is_empty().then_some(StreamKeyParts {
        resource: &key[..resource_end],
        scope: &key[resource_end..scope_end],
        metric: &key[scope_end..metric_end],
        attributes: &key[metric_end..],
        decoded_attributes,
    })
}

/// Decodes the resource part of a stream key: the resource attributes.
pub(super) fn decode_resource(part: &[u8]) -> Option<Vec<KeyValue>> {
    KeyReader(part).attributes()
}

/// Decodes the scope part of a stream key: scope name and version.
pub(super) fn decode_scope(part: &[u8]) -> Option<(String, String)> {
    let mut reader = KeyReader(part);
    Some((reader.string()?, reader.string()?))
}

/// Decodes a metric identity made by [`metric_identity`] (without the scope): name, unit,
/// kind and monotonic flag.
pub(super) fn decode_metric_identity(part: &[u8]) -> Option<(String, String, Kind, bool)> {
    let mut reader = KeyReader(part);
    let name = reader.string()?;
    let unit = reader.string()?;
    let &[kind, monotonic] = reader.take(2)? else {
        return None;
    };
    if !reader.0.is_empty() || monotonic > 1 {
        return None;
    }
    Some((name, unit, Kind::from_byte(kind)?, monotonic == 1))
}

/// Stream keys are only ever made by [`stream_key`], so decoding one cannot fail; a failure
/// is a bug, caught in debug builds and skipped otherwise.
pub(super) fn decoded<T>(value: Option<T>) -> Option<T> {
    debug_assert!(value.is_some(), "undecodable stream key");
    value
}

/// Reads the encodings of [`push_bytes`], [`push_str`] and [`encode_attributes`] back.
struct KeyReader<'a>(&'a [u8]);

impl<'a> KeyReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn length(&mut self) -> Option<usize> {
        let bytes = self.take(4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.length()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn skip_attributes(&mut self) -> Option<()> {
        for _ in 0..self.length()? {
            self.bytes()?;
            self.bytes()?;
        }
        Some(())
    }

    /// Attributes as [`encode_attributes`] wrote them (an empty value is no value).
    fn attributes(&mut self) -> Option<Vec<KeyValue>> {
        (0..self.length()?)
            .map(|_| {
                let key = self.string()?;
                let value = self.bytes()?;
                let value = if value.is_empty() {
                    None
                } else {
                    Some(AnyValue::decode(value).ok()?)
                };
                Some(KeyValue {
                    key,
                    value,
                    ..Default::default()
                })
            })
            .collect()
    }
}
