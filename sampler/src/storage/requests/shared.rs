//! Span items whose resources are stored once per chunk.
//!
//! A request's spans come under a few resources, but each trace's item used to carry its
//! resource again (about 230 bytes for a typical SDK's resource), and a trace's ten spans
//! arrive in four or five requests: repeated resources were about a quarter of every byte
//! written to the WAL, the memtables and the blob files. Here a chunk holds each resource
//! its items need once, in a frame of its own, and a span item names it by offset:
//!
//! - [`RESOURCE_TAG`] frames: trace id all zeros, payload the `Resource` message's bytes;
//!   not an item (never indexed, never forgotten);
//! - [`SHARED_SPANS_TAG`] frames: per resource group of the trace, `resource offset (u16
//!   LE, [`NO_RESOURCE`] for a group without one) ++ rest length (u32 LE) ++ rest`, the
//!   rest being the group's `ResourceSpans` fields after its resource. Read back, the item
//!   is expanded into a [`BufferedKind::TraceSpans`] payload, so nothing above the storage
//!   sees the difference.
//!
//! Items and their resources always share a chunk, since a kept trace reads only the
//! chunks holding its items.

use std::borrow::Cow;

use otel_tail_shared::otlp::TraceId;
use prost::encoding::{encode_varint, encoded_len_varint};
use smallvec::SmallVec;

use super::{CHUNK_BYTES, FRAME, Location, RequestValue};
use crate::storage::BufferedKind;

/// Frame tag of a resource shared by the span items after it in its chunk.
pub(super) const RESOURCE_TAG: u8 = 0x10;
/// Frame tag of a trace's spans that name their resources (read as
/// [`BufferedKind::TraceSpans`]).
pub(super) const SHARED_SPANS_TAG: u8 = 0x11;
/// Resource offset of a group without a resource.
const NO_RESOURCE: u16 = u16::MAX;
/// Bytes a shared-resource item takes per group besides the group's rest: resource
/// offset and rest length (for sizing a value before filling it).
pub const SHARED_GROUP_HEAD: usize = 2 + 4;
/// Tag of field 1 (length-delimited): `ResourceSpans.resource` and
/// `ExportTraceServiceRequest.resource_spans` alike.
const FIELD_1: u8 = 0x0a;

/// One resource's spans of a trace, for [`RequestValue::push_shared`].
#[derive(Debug, Clone, Copy)]
pub struct SharedGroup<'a> {
    /// The `Resource` message's bytes, if the group has one.
    pub resource: Option<&'a [u8]>,
    /// Length of the rest of the group's `ResourceSpans` encoding (scopes, schema URL).
    pub rest_len: usize,
}

impl SharedGroup<'_> {
    /// Length of the group encoded as a whole `ResourceSpans`.
    fn whole_len(&self) -> usize {
        self.resource.map_or(0, |r| field_len(r.len())) + self.rest_len
    }
}

/// Encoded length of a length-delimited field 1 of `len` bytes.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Writes the start of one group as a `ResourceSpans` field of a request body: the field's
/// key and length, then the resource field; the group's rest (`rest_len` bytes) follows.
fn put_group_head(resource: Option<&[u8]>, rest_len: usize, out: &mut Vec<u8>) {
    out.push(FIELD_1);
    encode_varint(
        (resource.map_or(0, |r| field_len(r.len())) + rest_len) as u64,
        out,
    );
    if let Some(resource) = resource {
        out.push(FIELD_1);
        encode_varint(resource.len() as u64, out);
        out.extend_from_slice(resource);
    }
}

impl RequestValue {
    /// Appends `trace`'s spans under `groups`, each group's rest written by `write_rest`
    /// (called with the group's index), with each resource stored once in the chunk that
    /// holds the item. A trace whose resources could not share a chunk with it (more than
    /// a chunk of them) is stored whole instead.
    pub fn push_shared(
        &mut self,
        trace: TraceId,
        groups: &[SharedGroup<'_>],
        mut write_rest: impl FnMut(usize, &mut Vec<u8>),
    ) {
        // Per group, where its resource is framed in the current chunk (one lookup each:
        // comparing resources is most of the cost of writing a small item).
        let mut at: Offsets = groups
            .iter()
            .map(|g| g.resource.and_then(|r| self.shared_resource(r)))
            .collect();
        let open = self.chunks.last().is_some_and(|start| {
            self.bytes.len() - start + missing_bytes(groups, &at) < CHUNK_BYTES
        });
        if !open {
            self.start_chunk();
            at.iter_mut().for_each(|offset| *offset = None);
            if missing_bytes(groups, &at) >= CHUNK_BYTES {
                return self.push_whole(trace, groups, write_rest);
            }
        }
        for index in 0..groups.len() {
            let Some(resource) = groups[index].resource else {
                continue;
            };
            if at[index].is_some() {
                continue;
            }
            at[index] = match first_alike(groups, index) {
                Some(earlier) => at[earlier],
                None => {
                    let offset = self.frame_here(RESOURCE_TAG, [0; 16], resource.len());
                    let offset =
                        u16::try_from(offset).expect("a resource starts within its chunk's 64 KiB");
                    self.bytes.extend_from_slice(resource);
                    self.resources.push(offset);
                    Some(offset)
                }
            };
        }
        let len = groups.iter().map(|g| SHARED_GROUP_HEAD + g.rest_len).sum();
        self.frame_item(SHARED_SPANS_TAG, trace, BufferedKind::TraceSpans, len);
        for (index, group) in groups.iter().enumerate() {
            let resource = at[index].unwrap_or(NO_RESOURCE);
            self.bytes.extend_from_slice(&resource.to_le_bytes());
            self.bytes
                .extend_from_slice(&(group.rest_len as u32).to_le_bytes());
            let start = self.bytes.len();
            write_rest(index, &mut self.bytes);
            assert_eq!(
                self.bytes.len() - start,
                group.rest_len,
                "a buffered group's encoding has the length it announced"
            );
        }
    }

    /// Appends `trace`'s spans as a self-contained [`BufferedKind::TraceSpans`] item.
    fn push_whole(
        &mut self,
        trace: TraceId,
        groups: &[SharedGroup<'_>],
        mut write_rest: impl FnMut(usize, &mut Vec<u8>),
    ) {
        let len = groups.iter().map(|g| field_len(g.whole_len())).sum();
        self.push_with(trace, BufferedKind::TraceSpans, len, |buf| {
            for (index, group) in groups.iter().enumerate() {
                put_group_head(group.resource, group.rest_len, buf);
                write_rest(index, buf);
            }
        });
    }

    /// Offset in the current chunk of a resource with these bytes, if one is framed there.
    fn shared_resource(&self, resource: &[u8]) -> Option<u16> {
        let chunk = &self.bytes[self.chunk_start()..];
        self.resources
            .iter()
            .copied()
            .find(|&at| resource_at(chunk, usize::from(at)) == Some(resource))
    }

    /// A copy of the shared-resource item `location` of `trace` from `self` into `out`.
    pub(super) fn copy_shared(&self, out: &mut RequestValue, trace: TraceId, location: &Location) {
        let chunk = self.chunk_bytes(location.chunk());
        let parts = groups(chunk, &chunk[location.range()])
            .expect("a value reads back the groups it framed");
        let groups: Vec<SharedGroup<'_>> = parts
            .iter()
            .map(|(resource, rest)| SharedGroup {
                resource: *resource,
                rest_len: rest.len(),
            })
            .collect();
        out.push_shared(trace, &groups, |index, buf| {
            buf.extend_from_slice(parts[index].1)
        });
    }
}

/// Per group of an item, the offset of its resource in the chunk, once framed there.
type Offsets = SmallVec<[Option<u16>; 4]>;

/// The earlier group of `groups` with the same resource as group `index`, if any.
fn first_alike(groups: &[SharedGroup<'_>], index: usize) -> Option<usize> {
    let resource = groups[index].resource?;
    (0..index).find(|&earlier| groups[earlier].resource == Some(resource))
}

/// Bytes the current chunk still needs for the resources of `groups` (framed), given
/// where those already framed in it are (`at`).
fn missing_bytes(groups: &[SharedGroup<'_>], at: &[Option<u16>]) -> usize {
    (0..groups.len())
        .filter(|&index| at[index].is_none() && first_alike(groups, index).is_none())
        .filter_map(|index| groups[index].resource)
        .map(|resource| FRAME + resource.len())
        .sum()
}

/// The payload of the item at `location` in `chunk`, as its kind reads it: a spans item
/// stored with shared resources is expanded. `None` when the chunk does not hold it.
pub(super) fn item_payload<'c>(chunk: &'c [u8], location: &Location) -> Option<Cow<'c, [u8]>> {
    let payload = chunk.get(location.range())?;
    if is_shared(chunk, location) {
        expand(chunk, payload).map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(payload))
    }
}

/// Whether the item at `location` in `chunk` names shared resources.
pub(super) fn is_shared(chunk: &[u8], location: &Location) -> bool {
    location
        .range()
        .start
        .checked_sub(FRAME)
        .and_then(|at| chunk.get(at))
        == Some(&SHARED_SPANS_TAG)
}

/// A shared-resource item's groups: resource bytes (if any) and rest.
type Groups<'c> = Vec<(Option<&'c [u8]>, &'c [u8])>;

/// The groups of a shared-resource item `payload` in `chunk`; `None` when malformed.
fn groups<'c>(chunk: &'c [u8], payload: &'c [u8]) -> Option<Groups<'c>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let head = payload.get(at..at + SHARED_GROUP_HEAD)?;
        let resource = u16::from_le_bytes([head[0], head[1]]);
        let len = u32::from_le_bytes(head[2..6].try_into().expect("4 bytes")) as usize;
        at += SHARED_GROUP_HEAD;
        let rest = payload.get(at..at.checked_add(len)?)?;
        at += len;
        let resource = match resource {
            NO_RESOURCE => None,
            offset => Some(resource_at(chunk, usize::from(offset))?),
        };
        out.push((resource, rest));
    }
    Some(out)
}

/// The `ExportTraceServiceRequest` body (one `ResourceSpans` per group) of a
/// shared-resource item.
fn expand(chunk: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    let groups = groups(chunk, payload)?;
    let mut out = Vec::with_capacity(
        payload.len()
            + groups
                .iter()
                .map(|(r, _)| r.map_or(16, |r| field_len(r.len())) + 8)
                .sum::<usize>(),
    );
    for (resource, rest) in groups {
        put_group_head(resource, rest.len(), &mut out);
        out.extend_from_slice(rest);
    }
    Some(out)
}

/// The resource framed with its payload at `at` in `chunk`.
fn resource_at(chunk: &[u8], at: usize) -> Option<&[u8]> {
    let frame = chunk.get(at.checked_sub(FRAME)?..at)?;
    if frame[0] != RESOURCE_TAG {
        return None;
    }
    let len = u32::from_le_bytes(frame[17..21].try_into().expect("4 bytes")) as usize;
    chunk.get(at..at.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::super::parse_chunk;
    use super::*;

    #[test]
    fn a_damaged_chunk_reads_as_errors_never_as_a_panic() {
        let mut value = RequestValue::default();
        let resources: [&[u8]; 2] = [b"resource one", b"the second resource"];
        for (n, trace) in [[1u8; 16], [2; 16], [3; 16]].into_iter().enumerate() {
            let groups = [
                SharedGroup {
                    resource: Some(resources[n % 2]),
                    rest_len: 5,
                },
                SharedGroup {
                    resource: (n > 0).then_some(resources[0]),
                    rest_len: 3,
                },
            ];
            value.push_shared(trace, &groups, |at, buf| {
                buf.extend(std::iter::repeat_n(b'a' + at as u8, groups[at].rest_len))
            });
        }
        let chunk = value.chunk_bytes(0).to_vec();
        let intact = parse_chunk(&chunk, 0).unwrap();
        assert_eq!(intact.len(), 3, "resources are not items");
        for (_, location) in &intact {
            assert!(item_payload(&chunk, location).is_some());
        }
        // Every byte changed in turn, every way a bit flip or a boundary value would: the
        // chunk is refused, or each item reads back or is reported unreadable.
        for at in 0..chunk.len() {
            for byte in [0x00, 0xff, 0x10, 0x11, chunk[at] ^ 0x01, chunk[at] ^ 0x80] {
                let mut damaged = chunk.clone();
                damaged[at] = byte;
                if let Ok(items) = parse_chunk(&damaged, 0) {
                    for (_, location) in items {
                        let _ = item_payload(&damaged, &location);
                    }
                }
                let _ = parse_chunk(&damaged[..at], 0);
            }
        }
    }
}
